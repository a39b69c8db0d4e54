"""The one writer of this node's rank rows and rank events: every state change is an edge of
the rank table (``rank_states``), journaled with its events and read offsets in one
transaction, then announced."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal, RankRow
from agent.jobs.node.live_rank import EventBatch
from agent.jobs.node.rank_states import RankEdge, RankState, transition

__all__ = ["OnEvent", "RankJournal"]

log = logging.getLogger(__name__)

OnEvent = Callable[[job_pb2.JobEvent], None]


class RankJournal:
    """Rank edges, rank events and their commit, for one node."""

    def __init__(
        self, journal: Journal, wall_clock: Callable[[], float], on_event: OnEvent | None
    ) -> None:
        self.journal = journal
        self.wall_clock = wall_clock
        self.on_event = on_event

    def edge(self, row: RankRow, edge: RankEdge, **changes: object) -> RankRow:
        """``row`` after ``edge`` (raises ``IllegalTransition``), with ``changes`` applied."""
        state = transition(RankState(row.state), edge)
        return replace(row, state=int(state), **changes)  # type: ignore[arg-type]

    def emit(
        self,
        batch: EventBatch,
        row: RankRow,
        kind: job_pb2.JobEventKind,
        message: str,
        details: Mapping[str, str] | None = None,
        metrics: job_pb2.RankMetrics | None = None,
        when: float | None = None,
    ) -> None:
        """Adds an event about ``row``'s rank to ``batch`` (``when``: wall clock, default now)."""
        event = job_pb2.JobEvent(
            job_name=row.job,
            attempt=row.attempt,
            kind=kind,
            node=row.node,
            rank=row.rank,
            message=message,
            details=dict(details or {}),
        )
        event.time.FromNanoseconds(int((self.wall_clock() if when is None else when) * 1e9))
        if metrics is not None:
            event.metrics.CopyFrom(metrics)
        batch.events.append(event)

    def commit(self, row: RankRow, batch: EventBatch) -> None:
        """Journals the rank, its new events and the offsets they were read up to, at once."""
        with self.journal.transaction():
            self.journal.upsert_rank(row)
            for event in batch.events:
                self.journal.append_event(event)
            for path, offset in batch.offsets.items():
                self.journal.set_offset(path, offset)
        if self.on_event is None:
            return
        for event in batch.events:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for %s", event.kind)
