"""bench/serving.py's load: closed-loop cells of gRPC `Generate` calls against one server,
what each reply and window measured, and the CPU the server (with its engine process),
the bench and everything else used meanwhile."""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc

RPC_TIMEOUT_S = 120.0
DRAIN_MIN_S = 5.0  # at least this long for the requests running at a window's end
# The servers answer only a bearer token, as an agent's serve task does.
BENCH_TOKEN = secrets.token_urlsafe(24)
METADATA = (("authorization", f"Bearer {BENCH_TOKEN}"),)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


@dataclass
class Reply:
    sent: float
    first: float | None = None
    ended: float | None = None
    tokens: int = 0
    server_ttft_ms: float | None = None
    prompt_tokens: int = 0  # the server's Usage
    cached_tokens: int = 0  # of them, found in its prefix cache
    finish: str = ""
    error: str = ""
    cut_at: float | None = None  # cancelled by the bench before it ended


@dataclass
class Cell:
    setting: str
    concurrency: int
    window_s: float
    tokens: int = 0  # completion tokens that arrived in the window
    completed: int = 0  # replies that ended in the window
    replies: list[Reply] = field(default_factory=list)  # the requests sent in the window
    errors: Counter[str] = field(default_factory=Counter)
    mean_batch: float = float("nan")
    server_cpu: float = float("nan")  # CPU-s per s over the window
    client_cpu: float = float("nan")
    other_cpu: float = float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.window_s

    @property
    def tokens_per_cpu_s(self) -> float:
        """Tokens per CPU-second of the server: steadier than tokens/s when other work
        takes a varying share of the machine (but OpenMP threads spinning count too)."""
        return ratio(self.tokens_per_s, self.server_cpu)

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.window_s

    def ttft_ms(self, q: float) -> float:
        """A request cut before its first token counts with its wait so far (a lower bound)."""
        values = [(t - r.sent) * 1000 for r in self.replies if (t := r.first or r.cut_at)]
        return percentile(values, q)

    @property
    def cut(self) -> int:
        """Requests sent in the window that had not ended when the bench gave up on them."""
        return sum(1 for r in self.replies if r.cut_at is not None)

    def server_ttft_ms(self, q: float) -> float:
        values = [r.server_ttft_ms for r in self.replies if r.server_ttft_ms is not None]
        return percentile(values, q)

    @property
    def mean_completion_tokens(self) -> float:
        done = [r.tokens for r in self.replies if r.finish]
        return sum(done) / len(done) if done else float("nan")

    @property
    def cached_share(self) -> float:
        """The share of the ended replies' prompt tokens the server found in its prefix cache."""
        done = [r for r in self.replies if r.finish]
        return ratio(sum(r.cached_tokens for r in done), sum(r.prompt_tokens for r in done))

    @property
    def finishes(self) -> str:
        counts = Counter(r.finish for r in self.replies if r.finish)
        return ",".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "-"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when there is nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Window:
    """The measured interval, [start, end) on the monotonic clock."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end


class CpuMeter:
    """CPU seconds used by the server (with its engine process), this process and everything
    else, over an interval."""

    def __init__(self, server: psutil.Process) -> None:
        self.server = server
        self.me = psutil.Process()
        self._marks: tuple[float, float, float, float] | None = None

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    @staticmethod
    def _cpu(proc: psutil.Process, with_children: bool = False) -> float:
        """The process's CPU time, with its children's (the server's engine process)."""
        total = 0.0
        for each in (proc, *(CpuMeter._children(proc) if with_children else ())):
            try:
                t = each.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system
        return total

    @staticmethod
    def _children(proc: psutil.Process) -> list[psutil.Process]:
        try:
            return list(proc.children(recursive=True))
        except psutil.Error:
            return []

    def mark(self) -> tuple[float, float, float, float]:
        server = self._cpu(self.server, with_children=True)
        return (time.monotonic(), server, self._cpu(self.me), self._busy())

    def start(self) -> None:
        self._marks = self.mark()

    def stop(self, cell: Cell) -> None:
        if self._marks is None:
            return
        t0, s0, c0, b0 = self._marks
        t1, s1, c1, b1 = self.mark()
        wall = max(t1 - t0, 1e-9)
        cell.server_cpu = (s1 - s0) / wall
        cell.client_cpu = (c1 - c0) / wall
        cell.other_cpu = max(0.0, (b1 - b0) - (s1 - s0) - (c1 - c0)) / wall


async def one_request(stub: Any, prompt: str, max_tokens: int, window: Window, cell: Cell) -> None:
    reply = Reply(sent=time.monotonic())
    counted = reply.sent in window
    if counted:
        cell.replies.append(reply)
    request = pb.GenerateRequest(
        prompt=prompt, params=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )
    try:
        async for message in stub.Generate(request, timeout=RPC_TIMEOUT_S, metadata=METADATA):
            now = time.monotonic()
            n = len(message.token_ids)
            if n and reply.first is None:
                reply.first = now
            reply.tokens += n
            if now in window:
                cell.tokens += n
            if message.done:
                reply.ended = now
                reply.finish = message.usage.finish_reason
                reply.server_ttft_ms = message.usage.time_to_first_token_ms
                reply.prompt_tokens = message.usage.prompt_tokens
                reply.cached_tokens = message.usage.cached_prompt_tokens
                if now in window:
                    cell.completed += 1
    except grpc.aio.AioRpcError as exc:
        reply.error = f"{exc.code().name}: {exc.details()}"
        if counted or time.monotonic() in window:
            cell.errors[reply.error] += 1
    except asyncio.CancelledError:  # the bench gave up on it after the window
        reply.cut_at = time.monotonic()
        raise


async def closed_loop(
    address: str,
    setting: str,
    c: int,
    prompts: list[str],
    args: argparse.Namespace,
    meter: CpuMeter,
) -> Cell:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        await channel.channel_ready()
        start = time.monotonic() + args.warmup_s
        window = Window(start, start + args.seconds)
        cell = Cell(setting, c, args.seconds)
        turn = iter(range(1 << 62))
        before: dict[int, int] = {}

        async def worker() -> None:
            while time.monotonic() < window.end:
                i = next(turn)
                await one_request(stub, prompts[i % len(prompts)], args.max_tokens, window, cell)

        async def marks() -> None:
            nonlocal before
            await asyncio.sleep(max(0.0, window.start - time.monotonic()))
            meter.start()
            before = dict((await server_stats(stub)).batch_size_histogram)
            await asyncio.sleep(max(0.0, window.end - time.monotonic()))
            meter.stop(cell)
            after = dict((await server_stats(stub)).batch_size_histogram)
            cell.mean_batch = mean_batch(before, after)

        tasks = [asyncio.ensure_future(w) for w in [marks(), *(worker() for _ in range(c))]]
        # The requests still running at the window's end get a grace to finish, then
        # are cancelled (a server that has fallen far behind would take minutes).
        grace = window.end + max(DRAIN_MIN_S, args.seconds) - time.monotonic()
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cell


async def server_stats(stub: Any) -> pb.GetServerStatsResponse:
    response: pb.GetServerStatsResponse = await stub.GetServerStats(
        pb.GetServerStatsRequest(), timeout=30, metadata=METADATA
    )
    return response


def mean_batch(before: dict[int, int], after: dict[int, int]) -> float:
    """Mean decode batch size of the steps between two histograms (size 0: prefill only)."""
    steps = {k: after.get(k, 0) - before.get(k, 0) for k in after if k > 0}
    total = sum(steps.values())
    return sum(k * v for k, v in steps.items()) / total if total else float("nan")


def merge(cells: list[Cell]) -> Cell:
    """One cell over several windows of the same setting and concurrency."""
    if len(cells) == 1:
        return cells[0]
    m = Cell(cells[0].setting, cells[0].concurrency, sum(c.window_s for c in cells))
    m.tokens = sum(c.tokens for c in cells)
    m.completed = sum(c.completed for c in cells)
    m.replies = [r for c in cells for r in c.replies]
    m.errors = sum((c.errors for c in cells), Counter())
    m.mean_batch = sum(c.mean_batch for c in cells) / len(cells)
    m.server_cpu = sum(c.server_cpu for c in cells) / len(cells)
    m.client_cpu = sum(c.client_cpu for c in cells) / len(cells)
    m.other_cpu = sum(c.other_cpu for c in cells) / len(cells)
    return m
