"""What the agent accepts in a load test task's spec (StartTask's `loadtest`), checked
before the servicer sees it: one `ValidationError` line naming the field (pure)."""

from __future__ import annotations

import math
import re

from gantry.v1 import task_pb2
from gantry.v1.rules import (
    MAX_NUMBER,
    MAX_TOKEN_CHARS,
    ValidationError,
    check_address,
    check_at_most,
    check_number,
    check_seconds,
    check_text,
)

KINDS = ("gantry", "grpc", "http")
ARRIVALS = {True: ("constant", "poisson"), False: ("closed",)}
URL_RE = re.compile(r"https?://[^\s/]+(/\S*)?\Z")
MAX_BODIES = 100_000
MAX_BODY_BYTES = 1 << 20
MAX_PHASES = 1_000
MAX_LOAD_WORKERS = 4096
MAX_CONCURRENCY = 1_000_000
MAX_REQUESTS = 10**12
MAX_RATE = 1e9
MAX_METADATA = 64
MAX_METADATA_VALUE = 8192
MAX_PEM_BYTES = 1 << 20
METADATA_KEY_RE = re.compile(r"[0-9a-z_.-]{1,128}\Z")


def _rate(value: float, field: str) -> None:
    if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
        raise ValidationError(f"{field}: {value!r} must be a rate of 0-{MAX_RATE:g} requests/s")


def check_loadtest_spec(spec: task_pb2.LoadTestTaskSpec) -> None:
    if not spec.target:
        raise ValidationError("loadtest.target: give the target (HOST:PORT or an http(s) URL)")
    if spec.kind not in KINDS:
        raise ValidationError(f"loadtest.kind: {spec.kind!r} must be one of {', '.join(KINDS)}")
    if spec.kind == "http":
        check_text(spec.target, "loadtest.target")
        if not URL_RE.match(spec.target):
            raise ValidationError(f"loadtest.target: {spec.target[:60]!r} is not an http(s) URL")
    else:
        check_address(spec.target, "loadtest.target")
    check_text(spec.method, "loadtest.method")
    check_text(spec.prompt_set, "loadtest.prompt_set")
    check_text(spec.token, "loadtest.token", MAX_TOKEN_CHARS)
    if not 1 <= len(spec.bodies) <= MAX_BODIES:
        raise ValidationError(f"loadtest.bodies: give 1 to {MAX_BODIES} requests")
    for i, body in enumerate(spec.bodies):
        if len(body) > MAX_BODY_BYTES:
            raise ValidationError(f"loadtest.bodies[{i}]: larger than {MAX_BODY_BYTES} bytes")
    if not 0 < spec.timeout_s <= 3600:
        raise ValidationError(f"loadtest.timeout_s: {spec.timeout_s!r} must be 0-3600 s, not 0")
    if spec.arrival not in ARRIVALS[spec.open_loop]:
        loop = "open" if spec.open_loop else "closed"
        wanted = " or ".join(ARRIVALS[spec.open_loop])
        raise ValidationError(f"loadtest.arrival: {spec.arrival!r}: {loop} loop takes {wanted}")
    _check_plan(spec)
    if not 1 <= spec.workers <= MAX_LOAD_WORKERS:
        raise ValidationError(f"loadtest.workers: {spec.workers} must be 1-{MAX_LOAD_WORKERS}")
    if spec.worker >= spec.workers:
        raise ValidationError(f"loadtest.worker: {spec.worker} must be below {spec.workers}")
    check_number(spec.slo_ttft_ms, "loadtest.slo_ttft_ms")
    check_number(spec.slo_latency_ms, "loadtest.slo_latency_ms")
    _check_metadata_tls(spec)
    if not math.isfinite(spec.start_unix_s) or spec.start_unix_s <= 0:
        raise ValidationError("loadtest.start_unix_s: give the start (seconds since 1970)")


def _check_plan(spec: task_pb2.LoadTestTaskSpec) -> None:
    check_seconds(spec.warmup_s, "loadtest.warmup_s")
    check_seconds(spec.run_s, "loadtest.run_s")
    check_at_most(spec.requests, "loadtest.requests", MAX_REQUESTS)
    if spec.open_loop:
        if not 1 <= len(spec.phases) <= MAX_PHASES:
            raise ValidationError(f"loadtest.phases: give 1 to {MAX_PHASES} phases")
        for i, phase in enumerate(spec.phases):
            _rate(phase.start_rate, f"loadtest.phases[{i}].start_rate")
            _rate(phase.end_rate, f"loadtest.phases[{i}].end_rate")
            if not phase.start_rate and not phase.end_rate:
                raise ValidationError(f"loadtest.phases[{i}]: sends nothing (rates 0); drop it")
            check_seconds(phase.duration_s, f"loadtest.phases[{i}].duration_s", MAX_NUMBER)
            if not phase.duration_s and i != len(spec.phases) - 1:
                raise ValidationError(
                    f"loadtest.phases[{i}].duration_s: only the last phase may be unbounded (0)"
                )
        if not spec.phases[-1].duration_s and not spec.requests:
            raise ValidationError("loadtest.requests: an unbounded last phase needs a count")
    else:
        if spec.phases:
            raise ValidationError("loadtest.phases: a closed loop has no rates")
        if not spec.workers <= spec.concurrency <= MAX_CONCURRENCY:
            raise ValidationError(
                f"loadtest.concurrency: {spec.concurrency} must be {spec.workers} "
                f"(one a worker) to {MAX_CONCURRENCY}"
            )
        if not spec.run_s and not spec.requests:
            raise ValidationError("loadtest.run_s: a closed loop needs a duration or a count")


def _check_metadata_tls(spec: task_pb2.LoadTestTaskSpec) -> None:
    if len(spec.metadata) > MAX_METADATA:
        raise ValidationError(f"loadtest.metadata: more than {MAX_METADATA} pairs")
    for i, pair in enumerate(spec.metadata):
        if not METADATA_KEY_RE.match(pair.key) or pair.key == "authorization":
            raise ValidationError(f"loadtest.metadata[{i}].key: {pair.key[:60]!r} is not a key")
        check_text(pair.value, f"loadtest.metadata[{i}].value", MAX_METADATA_VALUE)
    if not spec.HasField("tls"):
        return
    tls = spec.tls
    for name in ("ca_pem", "cert_pem", "key_pem"):
        if len(getattr(tls, name)) > MAX_PEM_BYTES:
            raise ValidationError(f"loadtest.tls.{name}: larger than {MAX_PEM_BYTES} bytes")
    if bool(tls.cert_pem) != bool(tls.key_pem):
        raise ValidationError("loadtest.tls: cert_pem and key_pem go together")
    check_text(tls.server_name, "loadtest.tls.server_name", 253)
