"""Job events: appended to the journal (which numbers them), then fanned out live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from gantry.v1 import job_pb2

SUBSCRIBER_QUEUE_LIMIT = 10_000

Appender = Callable[[job_pb2.JobEvent], int]
History = Callable[[int, str], list[job_pb2.JobEvent]]


class EventBus:
    """`append` stores an event and returns its seq; `history(after_seq, job)` reads back."""

    def __init__(self, append: Appender, history: History) -> None:
        self._append = append
        self._history = history
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

    async def follow(
        self, job_name: str, after_seq: int, *, follow: bool = True
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Journaled events after `after_seq`, then (when following) live ones, in seq order."""
        queue: asyncio.Queue[job_pb2.JobEvent] = asyncio.Queue()
        # Subscribe before reading the journal, so nothing falls between the two.
        self._subscribers.add(queue)
        try:
            last = after_seq
            for event in self._history(after_seq, job_name):
                last = max(last, event.seq)
                yield event
            if not follow:
                return
            while True:
                event = await queue.get()
                if event.seq <= last or (job_name and event.job_name != job_name):
                    continue
                last = event.seq
                yield event
        finally:
            self._subscribers.discard(queue)
