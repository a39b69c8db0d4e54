"""Job events: appended to the journal (which numbers them), then fanned out live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from gantry.v1 import job_pb2

SUBSCRIBER_QUEUE_LIMIT = 10_000
# Events in one batch at most (a metric event is ~300 bytes: ~300 kB a message).
MAX_BATCH = 1_000
METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS

Appender = Callable[[job_pb2.JobEvent], int]
History = Callable[[int, str], list[job_pb2.JobEvent]]
# (after_seq, job, metrics_tail): the events after `after_seq`, but of the metric events
# only the last `metrics_tail` (what Journal.events_after_metrics_tail answers).
TailHistory = Callable[[int, str, int], list[job_pb2.JobEvent]]


def keep_metrics_tail(events: list[job_pb2.JobEvent], metrics_tail: int) -> list[job_pb2.JobEvent]:
    """`events` without their metric events but the last `metrics_tail` (0: all)."""
    if not metrics_tail:
        return events
    metrics = sum(1 for e in events if e.kind == METRICS)
    drop = metrics - metrics_tail
    if drop <= 0:
        return events
    out = []
    for event in events:
        if event.kind == METRICS and drop > 0:
            drop -= 1
            continue
        out.append(event)
    return out


class EventBus:
    """`append` stores an event and returns its seq; `history(after_seq, job)` reads back;
    `tail_history`, when given, answers a replay with a metrics tail without reading every
    metric event (otherwise `history` is read and cut here)."""

    def __init__(
        self, append: Appender, history: History, tail_history: TailHistory | None = None
    ) -> None:
        self._append = append
        self._history = history
        self._tail_history = tail_history
        self._subscribers: set[asyncio.Queue[job_pb2.JobEvent]] = set()

    def publish(self, event: job_pb2.JobEvent) -> job_pb2.JobEvent:
        """Journals a new event (assigning its seq) and hands it to live followers."""
        event.seq = self._append(event)
        self.fan_out(event)
        return event

    def fan_out(self, event: job_pb2.JobEvent) -> None:
        """For an event someone else already journaled."""
        for queue in list(self._subscribers):
            if queue.qsize() < SUBSCRIBER_QUEUE_LIMIT:
                queue.put_nowait(event)

    def replay(
        self, job_name: str, after_seq: int, metrics_tail: int = 0
    ) -> list[job_pb2.JobEvent]:
        """The journaled events after `after_seq` in seq order; of the metric events only
        the last `metrics_tail` (0: all)."""
        if not metrics_tail:
            return self._history(after_seq, job_name)
        if self._tail_history is not None:
            return self._tail_history(after_seq, job_name, metrics_tail)
        return keep_metrics_tail(self._history(after_seq, job_name), metrics_tail)

    async def follow(
        self, job_name: str, after_seq: int, *, follow: bool = True, metrics_tail: int = 0
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Journaled events after `after_seq`, then (when following) live ones, in seq order."""
        async for batch in self.follow_batches(
            job_name, after_seq, follow=follow, metrics_tail=metrics_tail
        ):
            for event in batch:
                yield event

    async def follow_batches(
        self,
        job_name: str,
        after_seq: int,
        *,
        follow: bool = True,
        metrics_tail: int = 0,
        max_batch: int = MAX_BATCH,
    ) -> AsyncIterator[list[job_pb2.JobEvent]]:
        """As `follow`, in batches of at most `max_batch` events: the journal's in slices,
        then each time live events arrive, every one already queued (never empty; seq
        order within and across batches)."""
        queue: asyncio.Queue[job_pb2.JobEvent] = asyncio.Queue()
        # Subscribe before reading the journal, so nothing falls between the two.
        self._subscribers.add(queue)
        try:
            last = after_seq
            history = self.replay(job_name, after_seq, metrics_tail)
            for start in range(0, len(history), max_batch):
                batch = history[start : start + max_batch]
                last = max(last, batch[-1].seq)
                yield batch
            if not follow:
                return
            while True:
                batch = []
                event = await queue.get()
                while True:
                    if event.seq > last and not (job_name and event.job_name != job_name):
                        last = event.seq
                        batch.append(event)
                    if len(batch) >= max_batch or queue.empty():
                        break
                    event = queue.get_nowait()
                if batch:
                    yield batch
        finally:
            self._subscribers.discard(queue)
