"""The one writer of this node's rank rows and rank events: every state change is an edge of
the rank table (``rank_states``), journaled with its events and read offsets in one
transaction, then announced."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal, RankRow
from agent.jobs.journal_db import JournalWriteError
from agent.jobs.node.live_rank import EventBatch
from agent.jobs.node.rank_states import RankEdge, RankState, transition

__all__ = ["OnEvent", "RankJournal"]

log = logging.getLogger(__name__)

OnEvent = Callable[[job_pb2.JobEvent], None]
MAX_HELD_EVENTS = 100_000  # what a node holds in memory while its journal cannot be written


class RankJournal:
    """Rank edges, rank events and their commit, for one node."""

    def __init__(
        self, journal: Journal, wall_clock: Callable[[], float], on_event: OnEvent | None
    ) -> None:
        self.journal = journal
        self.wall_clock = wall_clock
        self.on_event = on_event
        # What commits could not journal (a full disk), for the next commit to write.
        self._held_rows: dict[tuple[str, int, int], RankRow] = {}
        self._held_events: list[job_pb2.JobEvent] = []
        self._held_offsets: dict[str, int] = {}

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
        """Journals the rank, its new events and the offsets they were read up to, at once.
        A journal that cannot be written (a full disk) is said in the agent's log, and what
        it could not take is held in memory and journaled with the next commit that can."""
        rows = {**self._held_rows, row.key: row}
        events = self._held_events + list(batch.events)
        offsets = {**self._held_offsets, **batch.offsets}
        try:
            with self.journal.transaction():
                for held in rows.values():
                    self.journal.upsert_rank(held)
                for event in events:
                    self.journal.append_event(event)
                for path, offset in offsets.items():
                    self.journal.set_offset(path, offset)
        except JournalWriteError as exc:
            self._hold(rows, events, offsets, exc)
            return
        if self._held_rows:
            log.warning("journal written again: %d held event(s) saved", len(events))
            self._held_rows, self._held_events, self._held_offsets = {}, [], {}
        if self.on_event is None:
            return
        for event in events:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for %s", event.kind)

    def _hold(
        self,
        rows: dict[tuple[str, int, int], RankRow],
        events: list[job_pb2.JobEvent],
        offsets: dict[str, int],
        exc: JournalWriteError,
    ) -> None:
        """Keeps what a failed commit could not write, for the next; says so, loudly."""
        if not self._held_rows:
            log.error("%s; holding the ranks' events in memory until it can be written", exc)
        dropped = len(events) - MAX_HELD_EVENTS
        if dropped > 0:
            log.error("journal still not written: %d oldest held event(s) dropped", dropped)
            events = events[dropped:]
        self._held_rows, self._held_events, self._held_offsets = rows, events, offsets
