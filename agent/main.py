"""`gantry-agent`: one per node."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.jobs.leader.peer_ssh import configure_peer_ssh
from agent.jobs.leader.peers import configure_peers
from agent.jobs.node.ops_warmup import SWITCH_ENV as WARM_SWITCH_ENV
from agent.jobs.node.ops_warmup import extensions_dir
from agent.rpc.server import ListenError, build_server, check_loopback, split_listen
from agent.runtime import build_job_runtime, tie_kernel_log
from agent.security.auth import TokenError, load_or_create_token
from agent.security.file_modes import PRIVATE_DIR_MODE, set_private_umask, tighten_tree
from agent.security.task_credentials import export_credentials
from agent.security.tls import (
    TlsError,
    TlsMaterial,
    channel_credentials,
    load_tls,
    tls_files_from_flags,
)
from agent.telemetry.kernel_follow import KernelLogFollower
from agent.telemetry.preemption import (
    NoticeSource,
    NoticeSpecError,
    SigtermNotice,
    parse_notice_spec,
)
from agent.telemetry.sampler import Sampler

log = logging.getLogger("gantry.agent")
STOP_GRACE_S = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gantry-agent", description="Gantry node agent")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (port 0: any)")
    parser.add_argument("--node-name", required=True, help="this node's name in the cluster")
    parser.add_argument("--data-dir", required=True, type=Path, help="journal, logs, token")
    parser.add_argument("--token-file", type=Path, help="default: DATA_DIR/token, created")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--tls-ca", type=Path, help="mutual TLS: the cluster's CA certificate")
    parser.add_argument("--tls-cert", type=Path, help="mutual TLS: this agent's certificate")
    parser.add_argument("--tls-key", type=Path, help="mutual TLS: its private key (mode 600)")
    parser.add_argument(
        "--peer-ssh-config",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="SSH mode: OpenSSH config for calls to peer agents (default ~/.ssh/config)",
    )
    parser.add_argument(
        "--torch-extensions-dir",
        type=Path,
        metavar="DIR",
        help="the ranks' TORCH_EXTENSIONS_DIR (default: $TORCH_EXTENSIONS_DIR, else "
        "DATA_DIR/torch_extensions)",
    )
    parser.add_argument(
        "--warm-op",
        action="append",
        default=[],
        metavar="NAME",
        help="a DeepSpeed op builder to build at start besides the comm op (e.g. CPUAdamBuilder)",
    )
    parser.add_argument(
        "--no-warm-ops",
        action="store_true",
        default=os.environ.get(WARM_SWITCH_ENV) == "0",
        help=f"do not build DeepSpeed's ops at start (also {WARM_SWITCH_ENV}=0)",
    )
    parser.add_argument("--sample-interval", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--history", type=float, default=900.0, metavar="SECONDS")
    parser.add_argument(
        "--kernel-log",
        default="auto",
        metavar="auto|off|FILE",
        help="where XIDs and oom kills are read: auto (/dev/kmsg, else journalctl -k), off, "
        "or a file being appended to (a saved or relayed kernel log)",
    )
    parser.add_argument(
        "--preemption-notice",
        action="append",
        default=[],
        metavar="SPEC",
        help="where this node learns of its preemption (repeatable): sigterm (SIGTERM first "
        "announces it, waits for the ranks' checkpoint and stop, then stops the agent), "
        "file:PATH (the file appears), url:URL (polled: GCE's .../instance/preempted, AWS's "
        ".../spot/instance-action)",
    )
    args = parser.parse_args(argv)
    if args.sample_interval <= 0 or args.history <= 0:
        parser.error("--sample-interval and --history must be positive")
    try:
        args.notice_sources = [parse_notice_spec(s) for s in args.preemption_notice]
    except NoticeSpecError as exc:
        parser.error(str(exc))
    return args


def write_endpoint(data_dir: Path, node_name: str, port: int, listen_host: str) -> None:
    """DATA_DIR/agent.json tells launchers (the demo, tests, `gantry up`) where we listen."""
    info = {"node": node_name, "address": f"{listen_host}:{port}", "pid": os.getpid()}
    tmp = data_dir / "agent.json.tmp"
    tmp.write_text(json.dumps(info) + "\n")
    tmp.replace(data_dir / "agent.json")


async def run_agent(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    data_dir.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    opened = tighten_tree(data_dir)  # what an older agent, or another umask, left readable
    if opened:
        log.info("made %d file(s) and folder(s) under %s private to this user", opened, data_dir)
    try:
        token, token_path = load_or_create_token(data_dir, args.token_file)
    except TokenError as exc:
        log.error("%s", exc)
        return 2
    tls: TlsMaterial | None = None
    try:
        files = tls_files_from_flags(args.tls_ca, args.tls_cert, args.tls_key)
        if files is not None:
            tls = load_tls(files)
        if tls is None:  # before anything starts: a refusal should cost nothing
            check_loopback(split_listen(args.listen)[0])
    except (TlsError, ListenError) as exc:
        log.error("%s", exc)
        return 2
    # The inference server of a serve task answers only whom this agent answers.
    export_credentials(os.environ, token_path, files)
    # Calls to peer agents present this agent's certificate (none without TLS).
    configure_peers(args.node_name, channel_credentials(tls) if tls is not None else None)
    configure_peer_ssh(args.peer_ssh_config)
    sampler = Sampler(
        args.node_name,
        interval_s=args.sample_interval,
        history_s=args.history,
        kernel_log=args.kernel_log == "auto",
    )
    if args.kernel_log not in ("auto", "off"):
        sampler.attach_kernel_log(
            KernelLogFollower.follow_file(args.kernel_log, sampler.on_kernel_event)
        )
    gpus = [gpu.index for gpu in sampler.node_info().gpus]
    extensions = extensions_dir(data_dir, args.torch_extensions_dir, os.environ)
    warm = None if args.no_warm_ops else tuple(args.warm_op)
    notices: list[NoticeSource] = getattr(args, "notice_sources", [])
    runtime = build_job_runtime(args.node_name, data_dir, gpus, extensions, warm, notices)
    try:
        server, port, health_servicer = await build_server(
            sampler, token, args.listen, runtime.jobs, tls
        )
    except ListenError as exc:
        log.error("%s", exc)
        return 2
    sampler.start()
    await runtime.start()
    unsubscribe = tie_kernel_log(sampler, runtime.supervisor, asyncio.get_running_loop())
    metrics = None
    if args.metrics_port is not None:
        from agent.telemetry.prometheus import start_metrics_server  # only then: prometheus_client

        metrics = start_metrics_server(sampler, args.metrics_port)
        log.info("Prometheus metrics on 127.0.0.1:%d/metrics", metrics[2])
    await server.start()
    host = args.listen.rpartition(":")[0]
    write_endpoint(data_dir, args.node_name, port, host)
    auth = f"mutual TLS as {tls.name}" if tls is not None else f"token {token_path}"
    log.info("gantry-agent %s listening on %s:%d (%s)", args.node_name, host, port, auth)
    # What start-up built (modules, gRPC, protobuf descriptors) lives as long as the agent:
    # out of the collector's sight, so the collections the per-line work of rank logs sets
    # off do not walk it each time (about a third of reading a chatty rank's lines).
    gc.freeze()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sigterm = next((n for n in notices if isinstance(n, SigtermNotice)), None)
    loop.add_signal_handler(signal.SIGTERM, _on_sigterm(sigterm, runtime.until_ranks_stopped, stop))
    await stop.wait()
    log.info("stopping")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(STOP_GRACE_S)
    unsubscribe()
    await runtime.close()
    sampler.stop()
    if metrics is not None:
        metrics[0].shutdown()
    return 0


def _on_sigterm(
    sigterm: SigtermNotice | None,
    until_ranks_stopped: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
) -> Callable[[], None]:
    """SIGTERM stops the agent; with the ``sigterm`` notice source the first one announces
    the preemption and stops the agent once the ranks are stopped (a second stops it now)."""
    pending: list[asyncio.Task[None]] = []

    async def drain() -> None:
        await until_ranks_stopped()
        log.info("preempted: the ranks here are stopped")
        stop.set()

    def handler() -> None:
        if sigterm is None or pending:
            stop.set()
            return
        log.warning("SIGTERM: announcing this node's preemption")
        sigterm.received()
        pending.append(asyncio.create_task(drain()))

    return handler


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_private_umask()  # before anything is written; the ranks and tasks inherit it
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    sys.exit(asyncio.run(run_agent(args)))


if __name__ == "__main__":
    main()
