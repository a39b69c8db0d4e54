"""The command line of `python -m agent.serve` (see agent.serve.main): flags, their checks,
and the names and addresses they give."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.security.task_credentials import (
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_FILE_ENV,
    env_path,
)
from agent.serve.cpu_binding import NONE, BindingError, allowed_cpus, plan_binding
from agent.serve.loading import DEFAULT_THREADS

DEFAULT_LISTEN = "127.0.0.1:50061"
# The trainer's layout: OUTPUT_DIR/final is known by OUTPUT_DIR's name, and its int8
# artifact OUTPUT_DIR/final-int8 (agent.tasks.quantize, the demo) as OUTPUT_DIR-int8.
TRAINER_FINAL_DIR = "final"
UNNAMED_MODEL = "model"  # a model directory with no name of its own (/)
MAX_STREAM_INTERVAL = 1024  # larger is the same as "the first token, then the rest at the end"
# The prefix cache's default size: on the demo model 2 KiB a token (128 K tokens); on a
# 7B model with a key and value head per query head (Llama 2) in bf16, 0.5 MiB a token
# (512 tokens: a long system prompt).
DEFAULT_PREFIX_CACHE_MB = 256


class ListenError(ValueError):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agent.serve", description="Gantry inference server"
    )
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument(
        "--model-name",
        help="the name clients see (GetServerStats, /v1/models); default: the directory's",
    )
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0: any)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="default: 8 on CPU; on CUDA sized from free GPU memory, 64-256",
    )
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        metavar="N",
        help="stream a request's tokens N at a time after its first (default 1: each as "
        "decoded); larger N: less work per token for this server and its clients",
    )
    parser.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=DEFAULT_PREFIX_CACHE_MB,
        metavar="MB",
        help="keep the keys and values of prompts' token blocks, up to MB, so that a prompt "
        f"starting with them runs only the rest (default {DEFAULT_PREFIX_CACHE_MB}; 0: off)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=env_path(os.environ, TOKEN_FILE_ENV),
        help=f"require this bearer token (default: ${TOKEN_FILE_ENV}, as the agent sets it)",
    )
    for flag, env, what in (
        ("--tls-ca", TLS_CA_ENV, "the cluster's CA certificate"),
        ("--tls-cert", TLS_CERT_ENV, "this server's certificate"),
        ("--tls-key", TLS_KEY_ENV, "its private key (mode 600)"),
    ):
        parser.add_argument(
            flag, type=Path, default=env_path(os.environ, env), help=f"mutual TLS: {what} (${env})"
        )
    parser.add_argument("--ready-file", type=Path, help="written (address, pid) once serving")
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="P",
        help="also serve the OpenAI-compatible HTTP API on the --listen host, port P (0: any)",
    )
    parser.add_argument("--drain-s", type=float, default=10.0, help="grace for requests on stop")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS") or DEFAULT_THREADS),
        help=f"torch threads (default: $OMP_NUM_THREADS, else {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--engine-cpus",
        default=NONE,
        metavar="CPUS",
        help="bind the engine process to these CPUs (e.g. 3, 2-3) and the front end to the "
        "others; auto: the last --threads CPUs; none (default): no binding",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        args.binding = plan_binding(args.engine_cpus, allowed_cpus(), args.threads)
    except BindingError as exc:
        parser.error(str(exc))
    if args.max_batch_size is not None and args.max_batch_size < 1:
        parser.error("--max-batch-size must be at least 1")
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        parser.error(f"--http-port {args.http_port} is not a port (0 to 65535)")
    if args.prefix_cache_mb < 0:
        parser.error("--prefix-cache-mb must not be negative (0 turns it off)")
    if not 1 <= args.stream_interval <= MAX_STREAM_INTERVAL:
        parser.error(f"--stream-interval must be between 1 and {MAX_STREAM_INTERVAL}")
    if args.max_queue_delay_ms < 0 or args.drain_s < 0:
        parser.error("--max-queue-delay-ms and --drain-s must not be negative")
    try:
        split_listen(args.listen)
    except ListenError as exc:
        parser.error(str(exc))
    if args.token_file is None and all(
        f is None for f in (args.tls_ca, args.tls_cert, args.tls_key)
    ):
        parser.error(
            "give credentials: --token-file F (the agent's token), or --tls-ca, --tls-cert "
            "and --tls-key; the server answers no one without them"
        )
    if args.model_name is not None and not args.model_name.strip():
        parser.error("--model-name must not be empty")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (not a Hugging Face model directory)")
    return args


def model_name(model_dir: Path, given: str | None = None) -> str:
    """`given`, else the model directory's name: OUTPUT_DIR for OUTPUT_DIR/final, and
    OUTPUT_DIR-int8 for OUTPUT_DIR/final-int8. Never a path."""
    if given and given.strip():
        return given.strip()
    path = model_dir.resolve()
    stem, dash, suffix = path.name.partition("-")
    if stem == TRAINER_FINAL_DIR and path.parent.name:
        return path.parent.name + dash + suffix
    return path.name or UNNAMED_MODEL


def split_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50061")
    return host, int(port)
