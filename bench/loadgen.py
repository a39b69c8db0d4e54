"""The load tester against a trivial unary echo server on 127.0.0.1 (both on this machine).

- closed loop: the load tester's requests/s against a bare grpc.aio client loop making the
  same calls with the same concurrency and number of processes, alternated in one run;
- open loop at 4,000 requests/s: achieved rate against target, and the p99 lag of actual
  behind scheduled send;
- the client's CPU per call (this process's user+system time over the calls it made, open
  loop at the fixed rate), and streamed messages/s through Gantry's Generate (100 messages
  a request, 8 in flight; a bare loop's figure alongside);
- for reference, open loop at half the bare loop's rate (what this machine can sustain now);
- capacity search (`gantry loadtest --sweep`) against an echo server of known capacity: N
  requests served at once, each holding its slot S ms (the others wait), so N/S requests/s;
  `sweep_capacity_error_pct` is the found max_rate_within_slo's distance from N/S, in %
  (latency SLO 3 S; each step --sweep-seconds).

The server runs in a child process (`--serve`), so its CPU is not counted as the client's.

    .venv/bin/python bench/loadgen.py [--seconds 3] [--concurrency 32] [--rate 4000]
                                      [--slots 16] [--slot-ms 50] [--sweep-seconds 3]

Last line: {"closed_loop_ratio_vs_bare": ..., "open_loop_rate_error_pct": ...,
            "send_lag_p99_ms": ..., "client_cpu_us_per_call": ..., "stream_msgs_per_s": ...,
            "sweep_capacity_error_pct": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from gantry.v1 import inference_service_pb2 as pb  # noqa: E402
from gantry.v1 import inference_service_pb2_grpc  # noqa: E402

METHOD = "gantry.v1.InferenceService/Complete"


# -- the server (child process) --------------------------------------------------------------
class Echo(inference_service_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        return pb.CompleteResponse(text=request.prompt)

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        for i in range(request.params.max_tokens):
            yield pb.GenerateResponse(text="x", token_ids=[i])
        yield pb.GenerateResponse(done=True)


class SlotsEcho(Echo):
    """Complete answers `slots` requests at once, each after `slot_s`: slots / slot_s
    requests/s at most, whatever the load."""

    def __init__(self, slots: int, slot_s: float) -> None:
        self.slot_s = slot_s
        self.free = asyncio.Semaphore(slots)

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        async with self.free:
            await asyncio.sleep(self.slot_s)
        return pb.CompleteResponse(text=request.prompt)


async def serve(slots: int = 0, slot_s: float = 0.0) -> None:
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server()
    servicer = SlotsEcho(slots, slot_s) if slots else Echo()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    service = "gantry.v1.InferenceService"
    reflection.enable_server_reflection((service, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


# -- the bare client loop ---------------------------------------------------------------------
async def bare_closed_loop(address: str, concurrency: int, seconds: float) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = pb.CompleteRequest(prompt="hello")
        await stub.Complete(request)
        done = 0
        end = time.monotonic() + seconds

        async def user() -> None:
            nonlocal done
            while time.monotonic() < end:
                await stub.Complete(request)
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return done / (time.monotonic() - start)


async def bare_stream(address: str, concurrency: int, seconds: float, tokens: int) -> float:
    """Streamed messages/s of a bare loop over Generate, for reference."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = pb.GenerateRequest(prompt="hello", params=pb.SamplingParams(max_tokens=tokens))
        received = 0
        end = time.monotonic() + seconds

        async def user() -> None:
            nonlocal received
            while time.monotonic() < end:
                async for message in stub.Generate(request):
                    received += len(message.token_ids)

        start = time.monotonic()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return received / (time.monotonic() - start)


def bare_in_processes(address: str, concurrency: int, seconds: float, procs: int) -> float:
    if procs == 1:
        return asyncio.run(bare_closed_loop(address, concurrency, seconds))
    args = [sys.executable, __file__, "--bare", address, str(concurrency // procs), str(seconds)]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    return sum(float(c.communicate()[0]) for c in children)


# -- the load tester ---------------------------------------------------------------------------
def cpu_s() -> float:
    """This process's CPU time and that of its children once they end (--workers N)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def loadtest(**kw: Any) -> tuple[Any, float]:
    """(report, this process's CPU seconds during the run)."""
    from console.loadtest.config import LoadTestConfig
    from console.loadtest.engine import tune_gc
    from console.loadtest.runner import run_loadtest

    config = LoadTestConfig(**kw)
    tune_gc()  # as `gantry loadtest` does
    before = cpu_s()
    report = asyncio.run(run_loadtest(config))
    return report, cpu_s() - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--workers", type=int, default=1, help="client processes")
    parser.add_argument("--rounds", type=int, default=4, help="bare/load tester pairs")
    parser.add_argument("--slots", type=int, default=16, help="sweep: the server's slots")
    parser.add_argument("--slot-ms", type=float, default=50.0, help="sweep: each request's")
    parser.add_argument("--sweep-seconds", type=float, default=3.0, help="sweep: each step's")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-slots", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.slots if args.serve_slots else 0, args.slot_ms / 1000))
        return
    if args.bare:
        address, conc, seconds = args.bare
        print(asyncio.run(bare_closed_loop(address, int(conc), float(seconds))))
        return

    load = os.getloadavg()[0]  # other work on this machine skews every figure
    with echo_server() as address:
        figures = measure(address, args)
    slots = ["--serve-slots", "--slots", str(args.slots), "--slot-ms", str(args.slot_ms)]
    with echo_server(*slots) as address:
        figures.update(measure_sweep(address, args))
    report(figures, args, load)


@contextlib.contextmanager
def echo_server(*flags: str) -> Iterator[str]:
    """The echo server in a child process (its CPU not counted as the client's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *flags], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        yield f"127.0.0.1:{json.loads(server.stdout.readline())['port']}"
    finally:
        server.terminate()
        server.wait(10)


def measure_sweep(address: str, args: argparse.Namespace) -> dict[str, float]:
    """The capacity search against the slots server: the found rate against N/S."""
    from console.loadtest.config import LoadTestConfig
    from console.loadtest.engine import tune_gc
    from console.loadtest.sweep_run import run_sweep

    capacity = args.slots / (args.slot_ms / 1000)
    config = LoadTestConfig(
        target=address, method=METHOD, data=json.dumps({"prompt": "hello"}), sweep=True,
        slo_latency_ms=3 * args.slot_ms, duration_s=args.sweep_seconds, warmup_s=0.5,
        workers=args.workers,
    )  # fmt: skip
    tune_gc()
    started = time.monotonic()
    sweep = asyncio.run(run_sweep(config))
    print(sweep.to_table() + "\n")
    found = sweep.max_rate_within_slo or 0.0
    return {
        "sweep_capacity_rps": capacity,
        "sweep_ceiling_rps": sweep.ceiling_rps,
        "sweep_found_rps": found,
        "sweep_steps": float(len(sweep.steps)),
        "sweep_s": time.monotonic() - started,
        "sweep_capacity_error_pct": 100 * abs(found - capacity) / capacity,
    }


def measure(address: str, args: argparse.Namespace) -> dict[str, float]:
    data = json.dumps({"prompt": "hello"})
    closed = dict(
        target=address, method=METHOD, data=data, concurrency=args.concurrency,
        duration_s=args.seconds, warmup_s=0.5, workers=args.workers,
    )  # fmt: skip
    bare_rps: list[float] = []
    tester_rps: list[float] = []
    closed_cpu: list[float] = []
    bare_in_processes(address, args.concurrency, 0.5, args.workers)  # warm the server up
    # Alternated, in either order, and compared pair by pair: the machine's other load
    # drifts over seconds.
    for round_ in range(args.rounds):
        for which in ("bare", "tester") if round_ % 2 == 0 else ("tester", "bare"):
            if which == "bare":
                bare_rps.append(
                    bare_in_processes(address, args.concurrency, args.seconds, args.workers)
                )
            else:
                rep, cpu = loadtest(**closed)
                tester_rps.append(rep.throughput_rps)
                closed_cpu.append(cpu / max(1, rep.completed + rep.warmup_requests) * 1e6)
    ratios = [t / b for t, b in zip(tester_rps, bare_rps, strict=True)]

    open_rep, open_cpu = loadtest(
        target=address, method=METHOD, data=data, rate=args.rate, duration_s=args.seconds + 2,
        warmup_s=1.0, workers=args.workers,
    )  # fmt: skip
    calls = open_rep.completed + open_rep.warmup_requests
    assert open_rep.target_rps is not None and open_rep.send_lag_ms is not None

    # The same at half what the bare loop reached: on a busy machine 4,000/s can be more
    # than client and server together manage, and then only overload is measured.
    half = round(statistics.median(bare_rps) / 2)
    half_rep, half_cpu = loadtest(
        target=address, method=METHOD, data=data, rate=half, duration_s=args.seconds,
        warmup_s=0.5, workers=args.workers,
    )  # fmt: skip
    assert half_rep.target_rps is not None and half_rep.send_lag_ms is not None

    bare_stream_rate = asyncio.run(bare_stream(address, 8, args.seconds, 100))
    stream_rep, _ = loadtest(
        target=address, max_tokens=100, concurrency=8, duration_s=args.seconds, warmup_s=0.5,
        workers=args.workers,
    )  # fmt: skip
    return {
        "bare_rps": statistics.median(bare_rps),
        "tester_rps": statistics.median(tester_rps),
        "closed_loop_ratio_vs_bare": statistics.median(ratios),
        "closed_cpu_us_per_call": statistics.median(closed_cpu),
        "open_target_rps": open_rep.target_rps,
        "open_achieved_rps": open_rep.achieved_rps,
        "open_loop_rate_error_pct": 100
        * abs(open_rep.achieved_rps - open_rep.target_rps)
        / open_rep.target_rps,
        "send_lag_p50_ms": open_rep.send_lag_ms.p50,
        "send_lag_p99_ms": open_rep.send_lag_ms.p99,
        "open_latency_p50_ms": open_rep.latency_ms.p50,
        "open_latency_p99_ms": open_rep.latency_ms.p99,
        "open_errors": float(open_rep.error_count),
        "client_cpu_us_per_call": open_cpu / max(1, calls) * 1e6,
        "half_rate": float(half),
        "half_cpu_us_per_call": half_cpu
        / max(1, half_rep.completed + half_rep.warmup_requests)
        * 1e6,
        "half_rate_error_pct": 100
        * abs(half_rep.achieved_rps - half_rep.target_rps)
        / half_rep.target_rps,
        "half_send_lag_p99_ms": half_rep.send_lag_ms.p99,
        "half_latency_p99_ms": half_rep.latency_ms.p99,
        "stream_msgs_per_s": stream_rep.tokens_per_s,
        "bare_stream_msgs_per_s": bare_stream_rate,
        "stream_errors": float(stream_rep.error_count),
    }


def report(f: dict[str, float], args: argparse.Namespace, load: float) -> None:
    print(
        f"load tester vs a unary echo server on 127.0.0.1, {os.cpu_count()} cores shared, "
        f"{args.workers} client process(es), {args.rounds} closed-loop pairs of "
        f"{args.seconds:g} s, "
        f"load average {load:.1f} before"
    )
    rows = [
        ("closed loop: bare grpc.aio req/s (median)", f["bare_rps"], "~5,500-6,000"),
        ("closed loop: load tester req/s (median)", f["tester_rps"], ""),
        ("closed loop: ratio vs bare (median of pairs)", f["closed_loop_ratio_vs_bare"], ">= 0.9"),
        ("closed loop: client CPU us/call", f["closed_cpu_us_per_call"], ""),
        (f"open loop: target req/s ({args.rate:g})", f["open_target_rps"], ""),
        ("open loop: achieved req/s", f["open_achieved_rps"], ""),
        ("open loop: rate error %", f["open_loop_rate_error_pct"], "<= 1"),
        ("open loop: send lag p50 ms", f["send_lag_p50_ms"], ""),
        ("open loop: send lag p99 ms", f["send_lag_p99_ms"], "< 2"),
        ("open loop: latency p50 ms", f["open_latency_p50_ms"], ""),
        ("open loop: latency p99 ms", f["open_latency_p99_ms"], ""),
        ("open loop: errors", f["open_errors"], "0"),
        ("open loop: client CPU us/call", f["client_cpu_us_per_call"], "<= 150"),
        (f"open loop at {f['half_rate']:.0f}/s: rate error %", f["half_rate_error_pct"], ""),
        (f"open loop at {f['half_rate']:.0f}/s: send lag p99 ms", f["half_send_lag_p99_ms"], ""),
        (f"open loop at {f['half_rate']:.0f}/s: latency p99 ms", f["half_latency_p99_ms"], ""),
        (f"open loop at {f['half_rate']:.0f}/s: client CPU us/call", f["half_cpu_us_per_call"], ""),
        ("stream: bare grpc.aio messages/s", f["bare_stream_msgs_per_s"], "~30,000"),
        ("stream: load tester messages/s", f["stream_msgs_per_s"], ""),
        (
            f"sweep: capacity req/s ({args.slots} x {args.slot_ms:g} ms)",
            f["sweep_capacity_rps"],
            "",
        ),
        ("sweep: closed-loop ceiling req/s", f["sweep_ceiling_rps"], ""),
        ("sweep: max rate within SLO req/s", f["sweep_found_rps"], ""),
        ("sweep: open-loop steps", f["sweep_steps"], "<= 12"),
        ("sweep: seconds in all", f["sweep_s"], ""),
        ("sweep: capacity error %", f["sweep_capacity_error_pct"], "<= 10"),
    ]
    print(f"{'figure':44} {'measured':>12} {'goal':>14}")
    for name, value, goal in rows:
        print(f"{name:44} {value:12.2f} {goal:>14}")
    keys = (
        "closed_loop_ratio_vs_bare",
        "open_loop_rate_error_pct",
        "send_lag_p99_ms",
        "client_cpu_us_per_call",
        "stream_msgs_per_s",
        "sweep_capacity_error_pct",
    )
    print(json.dumps({k: round(f[k], 4) for k in keys}))


if __name__ == "__main__":
    main()
