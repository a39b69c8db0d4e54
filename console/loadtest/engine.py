"""One worker's share of the load, on its own event loop: sends, times and records.

Open loop: each request is sent at its scheduled time whatever happens to the others, and
its latency runs from that scheduled time, so a server stall (or the client falling
behind) shows in the percentiles instead of silently thinning the load.
Closed loop: a fixed number of requests in flight, each sent when the previous returns.
Worker i of n takes the arrivals k with k % n == i of one shared sequence, so any number of
workers sends exactly the schedule one worker would.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

from console.loadtest.plan import Plan, share
from console.loadtest.recorder import Recorder, Snapshot
from console.loadtest.schedule import arrivals
from console.loadtest.targets import Client, ServerCount

SNAPSHOT_INTERVAL_S = 0.5
LONGEST_SLEEP_S = 0.1  # so that a stop is seen within this, even between slow arrivals
DRAIN_GRACE_S = 2.0  # past the per-request timeout


def tune_gc() -> None:
    """For a process that does little but generate load: what exists before the run is
    never garbage, and full collections over thousands of requests in flight delay sends;
    collect young objects less often. Not for a process with other work (the console)."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000)


class Engine:
    def __init__(
        self,
        client: Client,
        plan: Plan,
        index: int,
        recorder: Recorder,
        emit: Callable[[Snapshot], None],
        timeout_s: float,
    ) -> None:
        self.client = client
        self.plan = plan
        self.index = index
        self.rec = recorder
        self.emit = emit
        self.timeout_s = timeout_s
        self.stopping = False
        self.stopped_at = 0.0
        self._stop_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stopped_at = time.monotonic()
            self._stop_event.set()

    async def run(self, start_at: float) -> None:
        """Runs the share to its end (or a stop); the last snapshot emitted is final."""
        ticker = asyncio.create_task(self._tick())
        window_end = 0.0
        try:
            delay = start_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), delay)
            if self.plan.open_loop:
                window_end = await self._open_loop(start_at)
            else:
                window_end = await self._closed_loop(start_at)
        finally:
            ticker.cancel()
            await self._cancel_all()
            snap = self.rec.snapshot(time.monotonic())
            snap.final = True
            snap.stopped = self.stopping
            snap.window_end = self.stopped_at if self.stopping else window_end
            self.emit(snap)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            self.emit(self.rec.snapshot(time.monotonic()))

    async def _request(self, index: int, scheduled: float, warm: bool) -> None:
        rec = self.rec
        client = self.client
        clock = time.monotonic
        actual = clock()
        rec.sent(warm, scheduled, actual)
        first: float | None = None
        tokens = 0
        counted: int | None = None  # the server's own count, where it gives one
        finish = ""
        try:
            if client.streaming:
                last = 0.0
                async for n in client.stream(index):
                    if isinstance(n, str):
                        finish = n
                    elif isinstance(n, ServerCount):
                        counted = n.tokens
                    elif n:
                        now = clock()
                        if first is None:
                            first = now
                        elif not warm:
                            rec.itl.record((now - last) * 1000)
                        last = now
                        tokens += n
            else:
                answer = await client.unary(index)
                if answer is not None:
                    tokens, finish = answer
            code = "OK"
        except asyncio.CancelledError:
            rec.cancelled(warm)
            raise
        except Exception as exc:
            code = client.error_code(exc)
        if counted is not None and (counted > 0 or tokens == 0):
            tokens = counted  # a server that sends a usage of 0 beside its text counts nothing
        rec.done(warm, scheduled, actual, clock(), code, first, tokens, finish)

    async def _open_loop(self, start_at: float) -> float:
        """Returns when sending was due to end (absolute time)."""
        plan = self.plan
        assert plan.timeline is not None
        workers, me = plan.workers, self.index
        limit = plan.requests
        warmup_s = plan.warmup_s
        due_end = plan.timeline.total_s
        clock = time.monotonic
        sleep = asyncio.sleep
        create_task = asyncio.get_running_loop().create_task
        tasks = self._tasks
        request = self._request
        measured = 0
        for k, t in enumerate(arrivals(plan.timeline, plan.arrival, plan.seed)):
            warm = t < warmup_s
            if not warm:
                if limit is not None and measured >= limit:
                    due_end = t
                    break
                measured += 1
            if k % workers != me:
                continue
            when = start_at + t
            while not self.stopping and (delay := when - clock()) > 0:
                await sleep(delay if delay < LONGEST_SLEEP_S else LONGEST_SLEEP_S)
            if self.stopping:
                break
            task = create_task(request(k, when, warm))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._drain()
        return start_at + due_end

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.timeout_s + DRAIN_GRACE_S
        while self._tasks and not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(list(self._tasks), timeout=min(remaining, LONGEST_SLEEP_S))

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _closed_loop(self, start_at: float) -> float:
        plan = self.plan
        users = share(plan.concurrency, self.index, plan.workers)
        limit = None if plan.requests is None else share(plan.requests, self.index, plan.workers)
        end = None if plan.end_s is None else start_at + plan.end_s
        measure_start = start_at + plan.warmup_s
        issued = 0
        next_index = self.index
        request = self._request
        clock = time.monotonic

        async def user() -> None:
            nonlocal issued, next_index
            while not self.stopping:
                now = clock()
                if end is not None and now >= end:
                    return
                warm = now < measure_start
                if not warm:
                    if limit is not None and issued >= limit:
                        return
                    issued += 1
                index = next_index
                next_index += plan.workers
                await request(index, now, warm)

        loop = asyncio.get_running_loop()
        for _ in range(users):
            task = loop.create_task(user())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        stop_wait = loop.create_task(self._stop_event.wait())
        try:
            pending: set[asyncio.Future[Any]] = set(self._tasks)
            while pending and not self.stopping:
                _, pending = await asyncio.wait(
                    pending | {stop_wait}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop_wait)
        finally:
            stop_wait.cancel()
        if end is not None:
            return end
        return max(self.rec.last_end, measure_start)
