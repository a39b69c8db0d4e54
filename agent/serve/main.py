"""`python -m agent.serve`: the inference server of a trained model.

    python -m agent.serve --model DIR [--model-name NAME] [--listen 127.0.0.1:PORT]
        [--max-batch-size N] [--max-queue-delay-ms 10]
        [--token-file F | --tls-ca CA --tls-cert C --tls-key K]
        [--ready-file PATH] [--drain-s 10] [--device auto|cpu|cuda] [--http-port P]
        [--threads N] [--engine-cpus none|auto|CPUS]

DIR is a Hugging Face model directory with its tokenizer (the trainer's
`OUTPUT_DIR/final`) or an int8 artifact of `agent.tasks.quantize`. Clients know the model
by NAME, never by its path (default: agent.serve.flags.model_name). The server listens
first, with grpc.health.v1 NOT_SERVING while the model loads (and reflection v1 and
v1alpha on), then turns SERVING and writes the ready file (JSON: address, pid, and with
`--http-port` http_address) so that a supervising agent knows the ports; `--listen
HOST:0` takes any free port. It prints JSON progress lines on stdout (the agent's task
protocol), the addresses included.

`--http-port P` also serves the OpenAI-compatible HTTP API (agent.serve.http_api) on the
--listen host, port P (0: any free port), from the same engine and event loop.

Every RPC but health (and every HTTP path but /health) is authenticated: with
`--token-file`, by `authorization: Bearer TOKEN`; with `--tls-*`, by a client certificate
from the cluster's CA (mutual TLS), as the agent does. A serve task gets its agent's
files through the environment (`agent.security.task_credentials`); without either the
server refuses to start, and without TLS it listens on loopback only (HTTP too).

SIGTERM or SIGINT: health turns NOT_SERVING, new requests get UNAVAILABLE, requests
in flight have `--drain-s` seconds to finish, then the server exits 0.

The contract clients in other languages build on (auth, limits, status codes):
protos/gantry/v1/inference_service.proto; request bytes that do not decode get
INVALID_ARGUMENT (agent.serve.undecodable).

Batching: see agent.serve.batching (admission) and agent.serve.decode (model stepping);
`--engine-cpus`, the engine's own cores: agent.serve.cpu_binding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from gantry.v1 import inference_service_pb2, inference_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from agent.security.auth import TokenAuthInterceptor, TokenError, load_or_create_token
from agent.security.listen import OpenListenError, require_loopback_without_tls
from agent.security.tls import (
    TlsError,
    TlsMaterial,
    load_tls,
    server_credentials,
    tls_files_from_flags,
)
from agent.serve.cpu_binding import AUTO, allowed_cpus, bind_process, format_cpus
from agent.serve.flags import ListenError, model_name, parse_args, split_listen
from agent.serve.http_api import (
    HttpApi,
    HttpListenError,
    HttpServer,
    server_ssl_context,
    start_http,
)
from agent.serve.loading import build_backend, start_engine
from agent.serve.reflection_v1 import enable_server_reflection
from agent.serve.rpc import InferenceServicer
from agent.serve.stats import ServerStats
from agent.serve.undecodable import UndecodableRequestInterceptor

log = logging.getLogger("gantry.serve")

SERVICE = inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STOP_GRACE_S = 2.0
DRAIN_POLL_S = 0.02
# gRPC's default, set here so that the documented RESOURCE_EXHAUSTED limit holds.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
T = TypeVar("T")


def emit(doc: dict[str, Any]) -> None:
    """A progress line for the supervising agent (see agent.tasks.runner)."""
    with contextlib.suppress(OSError):  # an agent that restarted no longer reads our stdout
        print(json.dumps(doc), flush=True)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def write_ready_file(path: Path, address: str, http_address: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    doc: dict[str, Any] = {"address": address, "pid": os.getpid()}
    if http_address:
        doc["http_address"] = http_address
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)


def remove_ready_file(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def in_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """Runs `work` in a daemon thread: a stop during a long load need not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            outcome: tuple[bool, Any] = (True, work())
        except BaseException as exc:
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed first
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="gantry-serve-load", daemon=True).start()
    return future


# --- the server -----------------------------------------------------------------------


async def build_server(
    servicer: InferenceServicer,
    listen: str,
    token: str | None,
    tls: TlsMaterial | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Binds the server: every RPC but health needs `token`, or with `tls` a client
    certificate from the cluster's CA. At least one of them."""
    if not token and tls is None:
        raise ListenError("the server needs a token or TLS files: it answers no one without")
    host, port = split_listen(listen)
    try:
        require_loopback_without_tls(host, tls is not None)
    except OpenListenError as exc:
        raise ListenError(str(exc)) from None
    auth = TokenAuthInterceptor(token or "", certificate_verified=tls is not None)
    server = grpc.aio.server(
        # Authentication first: a caller it refuses is never parsed.
        interceptors=[auth, UndecodableRequestInterceptor()],
        options=[
            # Without this a second server on the same fixed port would silently share it.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
        ],
    )
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_server_reflection((SERVICE, HEALTH_SERVICE), server)
    bind = join_host_port(host, port)
    try:
        if tls is None:
            bound = server.add_insecure_port(bind)
        else:
            bound = server.add_secure_port(bind, server_credentials(tls))
    except RuntimeError:
        raise ListenError(f"cannot listen on {listen}: address in use or not available") from None
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, bound, health


def load_credentials(args: argparse.Namespace) -> tuple[str | None, TlsMaterial | None]:
    """(token, TLS material) from the flags; TokenError or TlsError names what to fix."""
    files = tls_files_from_flags(args.tls_ca, args.tls_cert, args.tls_key)
    tls = load_tls(files) if files is not None else None
    token = None
    if args.token_file is not None:
        token, _ = load_or_create_token(args.token_file.parent, args.token_file)
    return token, tls


async def serve(args: argparse.Namespace) -> int:
    try:
        token, tls = load_credentials(args)
        require_loopback_without_tls(split_listen(args.listen)[0], tls is not None)
    except (TokenError, TlsError, OpenListenError) as exc:
        log.error("%s", exc)
        return 2
    stats = ServerStats()
    name = model_name(args.model, args.model_name)
    # Until the model is loaded (which sizes an unset one), the batch size asked for.
    servicer = InferenceServicer(name, stats, args.max_batch_size or 0, args.max_queue_delay_ms)
    try:
        server, port, health = await build_server(servicer, args.listen, token, tls)
    except ListenError as exc:
        log.error("%s", exc)
        return 2
    host = split_listen(args.listen)[0]
    try:
        http = await _start_http(args, servicer, host, token, tls)
    except HttpListenError as exc:
        log.error("%s", exc)
        await server.stop(None)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    addresses = {"address": join_host_port(host, port)}
    if http is not None:
        addresses["http_address"] = join_host_port(host, http.port)
    auth = "mutual TLS" if tls is not None else f"token {args.token_file}"
    log.info("listening on %s (%s); loading %s", _where(addresses), auth, args.model)
    emit({"progress": 0.0, "message": f"loading {args.model}", **addresses})

    code = await _load_and_serve(args, servicer, health, stats, stop, addresses)
    await _drain(servicer, health, args.drain_s)
    if http is not None:
        await http.close()
    await server.stop(STOP_GRACE_S)
    if args.ready_file is not None:
        remove_ready_file(args.ready_file)
    log.info("stopped")
    return code


async def _start_http(
    args: argparse.Namespace,
    servicer: InferenceServicer,
    host: str,
    token: str | None,
    tls: TlsMaterial | None,
) -> HttpServer | None:
    """The HTTP API with the gRPC server's credentials, or None without --http-port."""
    if args.http_port is None:
        return None
    api = HttpApi(servicer, token, certificate_verified=tls is not None)
    context = server_ssl_context(tls.ca, args.tls_cert, args.tls_key) if tls else None
    return await start_http(api, host, args.http_port, context)


def _where(addresses: dict[str, str]) -> str:
    where = addresses["address"]
    return f"{where} (gRPC), {addresses['http_address']} (HTTP)" if len(addresses) > 1 else where


async def _load_and_serve(
    args: argparse.Namespace,
    servicer: InferenceServicer,
    health: HealthServicer,
    stats: ServerStats,
    stop: asyncio.Event,
    addresses: dict[str, str],
) -> int:
    engine = start_engine(args, stats)
    loading = in_thread(lambda: build_backend(args.model, engine))
    stopped = asyncio.ensure_future(stop.wait())
    either: list[asyncio.Future[Any]] = [loading, stopped]
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        log.info("stopped while loading")
        loading.cancel()
        await asyncio.to_thread(engine.kill)
        return 0
    try:
        backend = loading.result()
    except Exception as exc:
        stopped.cancel()
        await asyncio.to_thread(engine.kill)
        log.error("cannot serve %s: %s", args.model, exc)
        return 1
    lost: list[str] = []

    def engine_lost(why: str) -> None:  # the server stops, with an error
        lost.append(why)
        stop.set()

    engine.on_lost = engine_lost
    servicer.backend = backend
    servicer.max_batch_size = engine.max_batch_size
    engine.start()
    for name in ("", SERVICE):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    if args.ready_file is not None:
        write_ready_file(args.ready_file, addresses["address"], addresses.get("http_address", ""))
    log.info("serving %s on %s", args.model, _where(addresses))
    emit({"message": f"serving on {_where(addresses)}", **addresses})
    await stopped
    return 1 if lost else 0


async def _drain(servicer: InferenceServicer, health: HealthServicer, drain_s: float) -> None:
    servicer.draining = True
    await health.enter_graceful_shutdown()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    if servicer.inflight:
        log.info("draining %d request(s), up to %gs", servicer.inflight, drain_s)
    while servicer.inflight and loop.time() < deadline:
        await asyncio.sleep(DRAIN_POLL_S)
    if servicer.backend is not None:
        # Requests still running fail with UNAVAILABLE; the loop thread ends.
        await asyncio.to_thread(servicer.backend.engine.stop)
    # Let the handlers send the failures before the server closes.
    while servicer.inflight and loop.time() < deadline + STOP_GRACE_S:
        await asyncio.sleep(DRAIN_POLL_S)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    bind_front_end(args)  # before gRPC and the engine process start their threads
    sys.exit(asyncio.run(serve(args)))


def bind_front_end(args: argparse.Namespace) -> None:
    binding = args.binding
    if binding is not None:
        bind_process(binding.front)
        log.info(
            "engine on CPUs %s, front end on CPUs %s",
            format_cpus(binding.engine),
            format_cpus(binding.front),
        )
    elif args.engine_cpus.strip().lower() == AUTO:
        cpus = len(allowed_cpus())
        log.info("--engine-cpus auto: not bound (%d CPUs, %d engine threads)", cpus, args.threads)


if __name__ == "__main__":
    main()
