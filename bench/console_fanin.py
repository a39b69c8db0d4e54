"""Fan-in: many agents streaming 1 Hz telemetry into one console.

128 agents x 8 fake GPUs (real gRPC servers, in one child process so their CPU
is not counted) stream into the console's store and cluster screen, run
headless under App.run_test(). Prints the console's CPU-seconds per
wall-second, its longest event-loop stall, the p99 delay from a sample leaving
an agent to its row being repainted, and the agent sampler's CPU cost.

    .venv/bin/python bench/console_fanin.py [--nodes 128] [--gpus 8] [--seconds 30]

Last line: {"console_cpu_s_per_s": ..., "console_stall_max_ms": ...,
            "repaint_p99_ms": ..., "sampler_cpu_s_per_s": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests/fakes, which is not an installed package


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- the agents' side (child process) --------------------------------------------------
async def serve_agents(nodes: int, gpus: int, interval_s: float) -> None:
    import tempfile

    from agent.rpc.server import build_server
    from agent.runtime import build_job_runtime
    from agent.telemetry.sampler import Sampler
    from tests.fakes.fake_nvml import FakeNvml

    token = "bench-token-" + "x" * 32
    data_root = Path(tempfile.mkdtemp(prefix="gantry-fanin-"))
    samplers, servers, ports = [], [], []
    for i in range(nodes):
        sampler = Sampler(f"node-{i:03d}", nvml_lib=FakeNvml(gpus, seed=i), interval_s=interval_s)
        runtime = build_job_runtime(f"node-{i:03d}", data_root / f"node-{i:03d}", [])
        server, port, _ = await build_server(sampler, token, "127.0.0.1:0", runtime.jobs)
        await server.start()
        samplers.append(sampler)
        servers.append(server)
        ports.append(port)
    # Spread the agents' phases over one interval, as on a real cluster.
    for i, sampler in enumerate(samplers):
        await asyncio.sleep(interval_s / nodes)
        sampler.start()
        del i
    print(json.dumps({"ports": ports, "token": token}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # parent gone: stdin closes
    await stop.wait()
    for sampler in samplers:
        sampler.stop()
    await asyncio.gather(*(s.stop(0) for s in servers))
    shutil.rmtree(data_root, ignore_errors=True)


# -- the console's side ------------------------------------------------------------------
async def stall_monitor(period_s: float, stalls: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    expected = loop.time() + period_s
    while not stop.is_set():
        await asyncio.sleep(period_s)
        now = loop.time()
        stalls.append(max(0.0, now - expected))
        expected = now + period_s


async def measure_console(
    ports: list[int], token: str, seconds: float, warmup_s: float
) -> dict[str, float]:
    from console.model.cluster import ConnState
    from console.net.cluster_file import NodeTarget
    from console.ui.app import GantryApp
    from console.ui.widgets.cluster_table import ClusterTable

    token_dir = Path(tempfile.mkdtemp(prefix="gantry-bench-"))
    token_file = token_dir / "token"
    token_file.write_text(token)
    targets = [
        NodeTarget(f"node-{i:03d}", f"127.0.0.1:{port}", token_file) for i, port in enumerate(ports)
    ]
    app = GantryApp(targets)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 60
        while not all(n.state is ConnState.LIVE for n in app.store):
            if time.monotonic() > deadline:
                raise SystemExit("not every agent became live within 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(warmup_s)
        table = app.screen.query_one(ClusterTable)
        stalls: list[float] = []
        stop = asyncio.Event()
        monitor = asyncio.create_task(stall_monitor(0.005, stalls, stop))
        table.repaint_delays_s.clear()
        samples_before = sum(len(n.history) for n in app.store)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        stop.set()
        await monitor
        delays = list(table.repaint_delays_s)
        samples = sum(len(n.history) for n in app.store) - samples_before
        await pilot.press("q")
    shutil.rmtree(token_dir, ignore_errors=True)
    wall = wall1 - wall0
    return {
        "console_cpu_s_per_s": (cpu1 - cpu0) / wall,
        "console_stall_max_ms": max(stalls) * 1000 if stalls else float("nan"),
        "repaint_p50_ms": percentile(delays, 50) * 1000,
        "repaint_p99_ms": percentile(delays, 99) * 1000,
        "repaints_measured": float(len(delays)),
        "samples_per_s": samples / wall,
    }


def measure_sampler(gpus: int, ticks: int = 300) -> float:
    """CPU-seconds per second of one agent's sampler at 1 Hz with `gpus` fake GPUs."""
    from agent.telemetry.sampler import Sampler
    from tests.fakes.fake_nvml import FakeNvml

    sampler = Sampler("bench", nvml_lib=FakeNvml(gpus))
    sampler.sample_once()  # opens NVML, primes the rate counters
    per_tick = []
    for _ in range(ticks):
        t0 = time.thread_time()
        sampler.sample_once()
        per_tick.append(time.thread_time() - t0)
    sampler.stop()
    return statistics.mean(per_tick) * 1.0  # one tick per second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--serve-agents", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agents:
        asyncio.run(serve_agents(args.nodes, args.gpus, 1.0))
        return

    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve-agents",
            "--nodes",
            str(args.nodes),
            "--gpus",
            str(args.gpus),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit("the agents' process exited before it was ready")
        ready = json.loads(line)
        figures = asyncio.run(
            measure_console(ready["ports"], ready["token"], args.seconds, args.warmup)
        )
    finally:
        child.terminate()
        child.wait(30)
    figures["sampler_cpu_s_per_s"] = measure_sampler(args.gpus)

    print(
        f"console fan-in: {args.nodes} nodes x {args.gpus} GPUs at 1 Hz, "
        f"{args.seconds:.0f} s measured, 160x48 headless"
    )
    rows = [
        ("console CPU-s per wall-s", figures["console_cpu_s_per_s"], "< 0.10"),
        ("longest event-loop stall (ms)", figures["console_stall_max_ms"], "< 50"),
        ("sample -> repaint p50 (ms)", figures["repaint_p50_ms"], ""),
        ("sample -> repaint p99 (ms)", figures["repaint_p99_ms"], "< 250"),
        ("repaints measured", figures["repaints_measured"], ""),
        ("samples received per s", figures["samples_per_s"], f"{args.nodes}"),
        ("sampler CPU-s per s (8 GPUs)", figures["sampler_cpu_s_per_s"], "< 0.01"),
    ]
    print(f"{'figure':32} {'measured':>12} {'goal':>8}")
    for name, value, goal in rows:
        print(f"{name:32} {value:12.4f} {goal:>8}")
    keys = ("console_cpu_s_per_s", "console_stall_max_ms", "repaint_p99_ms", "sampler_cpu_s_per_s")
    print(json.dumps({k: round(figures[k], 4) for k in keys}))


if __name__ == "__main__":
    main()
