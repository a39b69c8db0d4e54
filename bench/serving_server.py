"""bench/serving.py's servers: `python -m agent.serve` launched as the agent launches a
serve task, waited for through its ready file, and stopped as the agent stops it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.failover_cluster import BenchError

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
START_TIMEOUT_S = 300.0  # torch + transformers imports and the load, on a busy small machine
STOP_TIMEOUT_S = 20.0


def server_env(threads: int) -> dict[str, str]:
    """The agent's environment for a task (agent.tasks.runner), OMP threads as asked."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    dir: Path
    address: str = ""
    http_address: str = ""  # with --http-port

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def logs(self) -> str:
        return (self.dir / "stderr.log").read_text(errors="replace")[-3000:]


def launch_server(
    model: Path,
    base: Path,
    max_batch_size: int,
    args: argparse.Namespace,
    env: dict[str, str],
    http: bool = False,
    engine_cpus: str | None = None,
) -> Server:
    """The server of `model` (`engine_cpus`: its --engine-cpus, else the bench's)."""
    base.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "agent.serve", "--model", str(model), "--listen", "127.0.0.1:0"]
    argv += ["--token-file", str(args.token_file)] + (["--http-port", "0"] if http else [])
    argv += ["--ready-file", str(base / "ready.json"), "--drain-s", "5"]
    argv += ["--device", args.device, "--max-batch-size", str(max_batch_size)]
    argv += ["--max-queue-delay-ms", f"{args.max_queue_delay_ms:g}"]
    argv += ["--stream-interval", str(args.stream_interval)]
    if args.prefix_cache_mb is not None:
        argv += ["--prefix-cache-mb", str(args.prefix_cache_mb)]
    argv += ["--engine-cpus", engine_cpus or args.engine_cpus]
    with (base / "stdout.log").open("wb") as out, (base / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
    return Server(proc, base)


def wait_ready(server: Server, deadline: float) -> None:
    """Until the server writes its ready file (address, pid), as the agent waits for it."""
    ready = server.dir / "ready.json"
    while not ready.is_file():
        if server.proc.poll() is not None:
            raise BenchError(f"the server exited ({server.proc.returncode}):\n{server.logs()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the server was not ready in {START_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    doc = json.loads(ready.read_text())
    server.address, server.http_address = doc["address"], doc.get("http_address", "")


def stop_server(server: Server) -> None:
    """SIGTERM (it drains and exits 0), then SIGKILL if it does not."""
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
