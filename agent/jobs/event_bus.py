"""Job events: the journal numbers and keeps them; followers read it by seq.

An in-memory signal only wakes followers, who then read what is new from the store, one
batch at a time: nothing is queued per follower, so nothing is ever dropped, and a slow
follower holds one batch at most."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from gantry.v1 import job_pb2

# Events in one batch at most (a metric event is ~300 bytes: ~300 kB a message).
MAX_BATCH = 1_000
# How long a woken follower lets more events come before it reads.
COALESCE_S = 0.01
METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS
NOT_METRICS = tuple(k for k in job_pb2.JobEventKind.values() if k != METRICS)

Appender = Callable[[job_pb2.JobEvent], int]
History = Callable[[int, str], list[job_pb2.JobEvent]]


@runtime_checkable
class EventStore(Protocol):
    """Where events are numbered and kept: the agent's Journal."""

    def append_event(self, event: job_pb2.JobEvent) -> int: ...

    def events_after(
        self,
        seq: int,
        job: str | None = None,
        limit: int | None = None,
        kinds: Sequence[int] = (),
        up_to: int | None = None,
    ) -> list[job_pb2.JobEvent]: ...

    def metrics_tail_start(self, seq: int, job: str | None, metrics_tail: int) -> int: ...

    def last_seq(self) -> int: ...


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


class _Callables:
    """An EventStore over an in-memory log given as two callables (what bench/ keeps):
    `append` numbers an event, `history(after_seq, job)` reads back."""

    def __init__(self, append: Appender, history: History) -> None:
        self._append = append
        self._history = history

    def append_event(self, event: job_pb2.JobEvent) -> int:
        return self._append(event)

    def events_after(
        self,
        seq: int,
        job: str | None = None,
        limit: int | None = None,
        kinds: Sequence[int] = (),
        up_to: int | None = None,
    ) -> list[job_pb2.JobEvent]:
        wanted = (
            e
            for e in self._history(seq, job or "")
            if e.seq > seq
            and (not job or e.job_name == job)
            and (not kinds or e.kind in kinds)
            and (up_to is None or e.seq <= up_to)
        )
        return list(itertools.islice(wanted, limit))

    def metrics_tail_start(self, seq: int, job: str | None, metrics_tail: int) -> int:
        metrics = [e.seq for e in self.events_after(0, job) if e.kind == METRICS]
        if not metrics_tail or len(metrics) <= metrics_tail:
            return seq
        return max(seq, metrics[-metrics_tail - 1])

    def last_seq(self) -> int:
        events = self._history(0, "")
        return events[-1].seq if events else 0


class EventBus:
    """`publish` stores an event (the store numbers it) and wakes the followers;
    `follow_batches` reads the store by seq.

    Built on an EventStore (the journal), or, for an in-memory log, on two callables:
    `EventBus(append, history)`."""

    def __init__(self, store: EventStore | Appender, history: History | None = None) -> None:
        if isinstance(store, EventStore):
            self.store: EventStore = store
        elif history is None:
            raise TypeError("EventBus(append, history): history is missing")
        else:
            self.store = _Callables(store, history)
        self._wakers: set[asyncio.Event] = set()

    def publish(self, event: job_pb2.JobEvent) -> job_pb2.JobEvent:
        """Journals a new event (assigning its seq) and wakes the followers. Inside a
        journal transaction the followers read it only after the commit: they run on this
        loop, after the caller's synchronous code."""
        event.seq = self.store.append_event(event)
        self.notify()
        return event

    def notify(self, event: job_pb2.JobEvent | None = None) -> None:
        """Wakes every follower, to read what is new; for events someone else journaled."""
        for wake in self._wakers:
            wake.set()

    def followers(self) -> int:
        return len(self._wakers)

    def _pages(
        self, job: str | None, after_seq: int, metrics_tail: int, max_batch: int, up_to: int
    ) -> Iterator[list[job_pb2.JobEvent]]:
        """The store's events in (after_seq, up_to] in batches of `max_batch` (the last
        one shorter); of the metric events only the last `metrics_tail` (0: all)."""
        pending: list[job_pb2.JobEvent] = []
        for page in self._reads(job, after_seq, metrics_tail, max_batch, up_to):
            pending += page
            if len(pending) >= max_batch:
                yield pending[:max_batch]
                pending = pending[max_batch:]
        if pending:
            yield pending

    def _reads(
        self, job: str | None, after_seq: int, metrics_tail: int, limit: int, up_to: int
    ) -> Iterator[list[job_pb2.JobEvent]]:
        last = after_seq
        # Up to `cut`, every event but the metric ones; after it, every event.
        cut = self.store.metrics_tail_start(after_seq, job, metrics_tail)
        while last < cut:
            page = self.store.events_after(last, job, limit, NOT_METRICS, min(cut, up_to))
            if not page:
                break
            last = page[-1].seq
            yield page
        last = max(last, cut)
        while page := self.store.events_after(last, job, limit, up_to=up_to):
            last = page[-1].seq
            yield page

    def replay(
        self, job_name: str, after_seq: int, metrics_tail: int = 0
    ) -> list[job_pb2.JobEvent]:
        """The journaled events after `after_seq` in seq order; of the metric events only
        the last `metrics_tail` (0: all)."""
        pages = self._pages(job_name or None, after_seq, metrics_tail, MAX_BATCH, self.last_seq())
        return [event for page in pages for event in page]

    def last_seq(self) -> int:
        return self.store.last_seq()

    async def follow(
        self, job_name: str, after_seq: int, *, follow: bool = True, metrics_tail: int = 0
    ) -> AsyncGenerator[job_pb2.JobEvent, None]:
        """Journaled events after `after_seq`, then (when following) new ones, in seq order."""
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
    ) -> AsyncGenerator[list[job_pb2.JobEvent], None]:
        """As `follow`, in batches of at most `max_batch` events: what was journaled when
        asked (the metric tail cut applies to it), then each time the followers are woken,
        what is new (never empty; seq order within and across batches)."""
        job = job_name or None
        wake = asyncio.Event()
        # Listen before looking at the journal, so nothing falls between the two.
        self._wakers.add(wake)
        try:
            last = max(after_seq, self.store.last_seq())
            for batch in self._pages(job, after_seq, metrics_tail, max_batch, last):
                yield batch
            while follow:
                wake.clear()
                batch = self.store.events_after(last, job, max_batch)
                if batch:
                    last = batch[-1].seq
                    yield batch
                else:
                    await wake.wait()
                    # A burst (a node's poll, a peer's stream) is then read once, not per event.
                    await asyncio.sleep(COALESCE_S)
        finally:
            self._wakers.discard(wake)
