"""What a load test does (the options of `gantry loadtest`), checked before anything runs."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from console.loadtest.schedule import parse_schedule


class LoadTestError(Exception):
    """Bad input or an unusable target; the message is one line naming what to fix."""


ARRIVALS = ("constant", "poisson")
MAX_WORKERS = 64
METHOD_RE = re.compile(r"^[A-Za-z_][\w.]*/[A-Za-z_]\w*$")
DEFAULT_DURATION_S = 10.0


@dataclass(frozen=True)
class LoadTestConfig:
    target: str  # "HOST:PORT" or "http(s)://.../v1/completions" (or chat/completions)
    method: str = ""  # "" = gantry.v1.InferenceService/Generate; else "pkg.Service/Method"
    data: str = ""  # JSON request body for --method (HTTP: extra fields of the body)
    prompts: Path | None = None  # a prompts file (console/loadtest/prompts.py); default: built-in
    max_tokens: int = 32
    rate: float | None = None  # open loop, requests/s
    arrival: str = "constant"  # or "poisson"
    concurrency: int | None = None  # closed loop
    schedule: str = ""  # open loop in steps and ramps: "100:30s,200:30s,ramp:400:60s"
    duration_s: float | None = None  # measured time; default 10 s unless `requests` is given
    requests: int | None = None  # measured requests
    warmup_s: float = 0.0
    workers: int = 1
    slo_ttft_ms: float | None = None
    slo_latency_ms: float | None = None
    token_file: Path | None = None
    model: str = ""  # HTTP: the body's "model" (default: the server's first model)
    timeout_s: float = 30.0  # per request
    seed: int | None = None  # Poisson arrivals; None: a fresh one per run
    ignore_eos: bool = False  # decode max_tokens past end-of-sequence (gantry, vLLM)
    # Capacity search (console.loadtest.sweep): the highest open-loop rate whose SLOs hold.
    sweep: bool = False
    # --proto FILE (repeatable) and -I DIR: the method's schema without server reflection.
    proto_files: tuple[Path, ...] = ()
    import_paths: tuple[Path, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()  # --metadata k=v: sent with every request
    # TLS: a gRPC target with any of these (or an https URL) is reached over TLS, the
    # server's certificate verified against tls_ca (else the system's roots) unless
    # `insecure`; tls_cert + tls_key: the client's certificate (mutual TLS).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False  # TLS without verifying the server's certificate; asked for only
    # Load from the cluster: these agents run the load workers (an audited task).
    from_nodes: tuple[str, ...] = ()
    cluster: Path | None = None  # the cluster file naming them (default: the usual search)

    @property
    def is_http(self) -> bool:
        return self.target.startswith(("http://", "https://"))

    @property
    def open_loop(self) -> bool:
        return self.concurrency is None

    @property
    def uses_tls_flags(self) -> bool:
        return any((self.tls_ca, self.tls_cert, self.tls_key, self.insecure))

    @property
    def uses_tls(self) -> bool:
        """Reached over TLS: an https URL, or a gRPC target given a TLS flag."""
        if self.is_http:
            return self.target.startswith("https://")
        return self.uses_tls_flags


def split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadTestError(
            f"--target {target!r}: expected HOST:PORT or http(s)://HOST/v1/completions "
            "(or /v1/chat/completions)"
        )
    return host, int(port)


def _positive(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise LoadTestError(f"{name} must be a positive number, not {value:g}")


def validate(config: LoadTestConfig) -> None:
    """Raises LoadTestError with a one-line message on the first problem found."""
    if not config.target:
        raise LoadTestError("give the endpoint: --target HOST:PORT or --target http(s)://URL")
    if not config.is_http:
        split_host_port(config.target)
    given = [
        flag
        for flag, value in (
            ("--rate", config.rate),
            ("--concurrency", config.concurrency),
            ("--schedule", config.schedule or None),
        )
        if value is not None
    ]
    if config.sweep:
        _check_sweep(config, given)
    elif not given:
        raise LoadTestError(
            "give the load: --rate R (open loop), --concurrency N (closed loop) or --schedule S"
        )
    if len(given) > 1:
        raise LoadTestError(f"give one of --rate, --concurrency or --schedule, not {given}")
    _positive("--rate", config.rate)
    if config.concurrency is not None and config.concurrency < 1:
        raise LoadTestError(f"--concurrency must be at least 1, not {config.concurrency}")
    if config.schedule:
        try:
            parse_schedule(config.schedule)
        except ValueError as exc:
            raise LoadTestError(f"--schedule {config.schedule!r}: {exc}") from None
        if config.duration_s is not None:
            raise LoadTestError("--schedule sets the duration itself: drop --duration")
    if config.arrival not in ARRIVALS:
        raise LoadTestError(f"--arrival {config.arrival!r}: expected constant or poisson")
    if config.arrival == "poisson" and not config.open_loop:
        raise LoadTestError("--arrival poisson needs --rate or --schedule (open loop)")
    _positive("--duration", config.duration_s)
    if config.requests is not None and config.requests < 1:
        raise LoadTestError(f"--requests must be at least 1, not {config.requests}")
    if not math.isfinite(config.warmup_s) or config.warmup_s < 0:
        raise LoadTestError(f"--warmup must be 0 or more, not {config.warmup_s:g}")
    if not 1 <= config.workers <= MAX_WORKERS:
        raise LoadTestError(f"--workers must be 1 to {MAX_WORKERS}, not {config.workers}")
    if config.concurrency is not None and config.concurrency < config.workers:
        raise LoadTestError(
            f"--concurrency {config.concurrency} is below --workers {config.workers}: "
            "each worker needs at least one request in flight"
        )
    if config.max_tokens < 1:
        raise LoadTestError(f"--max-tokens must be at least 1, not {config.max_tokens}")
    _positive("--slo-ttft-ms", config.slo_ttft_ms)
    _positive("--slo-latency-ms", config.slo_latency_ms)
    _positive("--timeout", config.timeout_s)
    _check_method_and_data(config)
    if config.ignore_eos and config.method:
        raise LoadTestError(
            "--ignore-eos is for the Gantry endpoint or an HTTP completions URL, not --method"
        )
    files = [("--prompts", config.prompts), ("--token-file", config.token_file)]
    files += [("--tls-ca", config.tls_ca), ("--tls-cert", config.tls_cert)]
    files += [("--tls-key", config.tls_key), *(("--proto", p) for p in config.proto_files)]
    for flag, path in files:
        if path is not None and not path.is_file():
            raise LoadTestError(f"{flag} {path}: no such file")
    _check_proto_metadata_tls(config)
    for name in config.from_nodes:
        if not NODE_RE.match(name):
            raise LoadTestError(f"--from-nodes: {name!r} is not a node name")


def _check_method_and_data(config: LoadTestConfig) -> None:
    if config.method:
        if config.is_http:
            raise LoadTestError("--method is for gRPC targets; an HTTP target is its URL")
        if not METHOD_RE.match(config.method):
            raise LoadTestError(f"--method {config.method!r}: expected pkg.Service/Method")
    if config.data:
        if not config.method and not config.is_http:
            raise LoadTestError("--data goes with --method (the Gantry endpoint takes --prompts)")
        try:
            body = json.loads(config.data)
        except ValueError as exc:
            raise LoadTestError(f"--data is not JSON: {exc}") from None
        if config.is_http and not isinstance(body, dict):  # gRPC: the request type judges
            raise LoadTestError('--data must be a JSON object, e.g. \'{"name": "x"}\'')


def _check_sweep(config: LoadTestConfig, given: list[str]) -> None:
    if given:
        raise LoadTestError(f"--sweep chooses the rates itself: drop {', '.join(given)}")
    if config.slo_ttft_ms is None and config.slo_latency_ms is None:
        raise LoadTestError("--sweep needs an SLO: --slo-ttft-ms MS and/or --slo-latency-ms MS")
    if config.requests is not None:
        raise LoadTestError("--sweep runs each step for --duration: drop --requests")


def _check_proto_metadata_tls(config: LoadTestConfig) -> None:
    if config.proto_files and not config.method:
        raise LoadTestError("--proto describes the --method to call: give --method too")
    if config.proto_files and config.is_http:
        raise LoadTestError("--proto is for gRPC targets, not an HTTP URL")
    for path in config.import_paths:
        if not path.is_dir():
            raise LoadTestError(f"-I {path}: no such directory")
    if config.import_paths and not config.proto_files:
        raise LoadTestError("-I is where --proto files import from: give --proto too")
    for key, value in config.metadata:
        if not METADATA_KEY_RE.match(key):
            raise LoadTestError(
                f"--metadata {key!r}: a key is lowercase letters, digits, '-', '_' or '.'"
            )
        if key.startswith("grpc-") or key in RESERVED_METADATA:
            raise LoadTestError(f"--metadata {key!r}: reserved; the load tester sets it")
        if not key.endswith("-bin") and not all(" " <= c <= "~" for c in value):
            raise LoadTestError(f"--metadata {key}: the value must be printable ASCII")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise LoadTestError("--tls-cert and --tls-key go together (the client's certificate)")
    if config.is_http and config.target.startswith("http://") and config.uses_tls_flags:
        raise LoadTestError("TLS flags need an https:// URL, not http://")
    if config.insecure and config.tls_ca is not None:
        raise LoadTestError("--insecure skips the check --tls-ca is for: give one of them")


NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
METADATA_KEY_RE = re.compile(r"^[0-9a-z_.-]+$")
# Set by the load tester or the transport: --token-file carries the bearer token.
RESERVED_METADATA = frozenset({"authorization", "content-type", "te", "user-agent", ":authority"})


def parse_metadata(items: list[str]) -> tuple[tuple[str, str], ...]:
    """--metadata k=v (repeatable) as pairs; keys lowercased (gRPC's rule)."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LoadTestError(f"--metadata {item!r}: expected KEY=VALUE")
        pairs.append((key.strip().lower(), value))
    return tuple(pairs)
