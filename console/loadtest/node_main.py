"""One load worker run as an agent task, for `gantry loadtest --from-nodes`:
`python -m console.loadtest.node_main --spec FILE`, started by the agent (a process, never
an import: the agent imports no console code).

It reads its spec (a serialized gantry.v1.LoadTestTaskSpec, the target's token and the
requests included) and deletes the file, connects to the target, prints a "ready" line
and, from the spec's start time on, one line per snapshot, as task programs report:
`{"message": ..., "figures": {...}, "load": LoadTestSnapshot as JSON}`. It ends with
`{"done": true, "results": {...}, "report": {...}}`: its own totals and histograms, so what
the console merged can be checked against what each node measured. SIGTERM (the agent's
StopTask) stops it cleanly; the last snapshot is still sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from gantry.v1 import task_pb2

from console.loadtest.engine import Engine, tune_gc
from console.loadtest.histogram import Histogram
from console.loadtest.node_wire import (
    READY_MESSAGE,
    WorkerRun,
    snapshot_json,
    snapshot_message,
    worker_run,
)
from console.loadtest.recorder import Recorder, Snapshot
from console.loadtest.targets import make_client


class NodeTotals:
    """The worker's whole run, summed from its snapshots (what its task reports)."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {}
        self.counts = {"sent": 0, "completed": 0, "ok": 0, "good": 0, "tokens": 0}
        self.errors: dict[str, int] = {}
        self.snapshots = 0

    def add(self, snap: Snapshot) -> None:
        self.snapshots += 1
        for name, hist in snap.hists.items():
            self.hists.setdefault(name, Histogram()).merge(hist)
        for name in self.counts:
            self.counts[name] += getattr(snap, name)
        for code, n in snap.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n

    def figures(self) -> dict[str, float]:
        return {**self.counts, "errors": sum(self.errors.values())}

    def report(self, worker: int) -> dict[str, Any]:
        return {
            "worker": worker,
            **self.counts,
            "errors": dict(sorted(self.errors.items())),
            "snapshots": self.snapshots,
            "histograms": {n: h.encode() for n, h in sorted(self.hists.items()) if h.count},
        }


def _print(out: TextIO, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc, separators=(",", ":")) + "\n")
    out.flush()


async def run_worker(run: WorkerRun, out: TextIO) -> int:
    """Runs one worker to its end; 1 (a line on stderr) if the target cannot be reached."""
    client = make_client(run.target)
    try:
        await client.open()
    except Exception as exc:
        await client.close()
        print(
            f"cannot connect to {run.target.address}: {exc or type(exc).__name__}", file=sys.stderr
        )
        return 1
    # The start on this machine's clock: every node maps the same wall-clock instant.
    start_at = time.monotonic() + (run.start_unix_s - time.time())
    plan = run.plan
    recorder = Recorder(
        run.worker,
        plan.open_loop,
        run.slo_ttft_ms,
        run.slo_latency_ms,
        streaming=run.target.streaming,
        warmup=plan.warmup_s > 0,
    )
    totals = NodeTotals()
    seq = 0

    def emit(snap: Snapshot) -> None:
        nonlocal seq
        seq += 1
        totals.add(snap)
        message = snapshot_message(snap, start_at, seq)
        sent = totals.counts["sent"]
        _print(
            out,
            {
                "message": f"sent {sent}",
                "figures": totals.figures(),
                "load": snapshot_json(message),
            },
        )

    engine = Engine(client, plan, run.worker, recorder, emit, run.target.timeout_s)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, engine.stop)
    _print(out, {"message": READY_MESSAGE, "figures": {"ready": 1.0}})
    try:
        # Snapshots begin at the start, not before: the console counts from the first.
        while not engine.stopping and (delay := start_at - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, 0.1))
        tune_gc()
        await engine.run(start_at)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await client.close()
    _print(
        out,
        {"done": True, "results": totals.figures(), "report": totals.report(run.worker)},
    )
    return 0


def read_spec(path: Path) -> task_pb2.LoadTestTaskSpec:
    """The spec, its file deleted once read (it holds the target's token)."""
    spec = task_pb2.LoadTestTaskSpec()
    try:
        spec.ParseFromString(path.read_bytes())
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return spec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m console.loadtest.node_main")
    parser.add_argument("--spec", type=Path, required=True, help="a LoadTestTaskSpec file")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not mix with the task's lines
    try:
        run = worker_run(read_spec(args.spec))
    except OSError as exc:
        print(f"cannot read the load test spec {args.spec}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    sys.exit(asyncio.run(run_worker(run, out)))


if __name__ == "__main__":
    main()
