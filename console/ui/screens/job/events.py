"""The events tab: the job's events as they come, failures in red, alerts in yellow."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult

from console.model.cluster import ClusterStore
from console.model.job_rows import job_kind
from console.model.jobs import JobView, ts
from console.ui.screens.job.pane import JobPane
from console.ui.widgets.rank_table import RankTable

EVENT_COLUMNS = ("time", "event", "where", "what")
EVENT_WIDTHS = {"time": 8, "event": 16, "where": 14, "what": 200}
BAD_KINDS = frozenset(("rank failed", "rank hung", "attempt failed", "failed"))
WARN_KINDS = frozenset(("alert", "nccl"))


class EventsPane(JobPane):
    TAB = "events"
    LABEL = "3 Events"
    # Looked at on every refresh: new events are few, and only they are drawn.
    INTERVAL_S = 0.0

    def __init__(
        self, cluster: ClusterStore, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(cluster, monotonic=monotonic)
        self.table = RankTable(EVENT_COLUMNS, widths=EVENT_WIDTHS, id="event-table")
        self._drawn = 0
        self._first_seq = 0
        self._rows: list[tuple[str, ...]] = []
        self._bad: set[int] = set()
        self._warn: set[int] = set()

    def compose(self) -> ComposeResult:
        yield self.table

    @property
    def focus_target(self) -> RankTable:
        return self.table

    def draw(self, view: JobView, now: float) -> None:
        held = view.events
        first = held[0].seq if held else 0
        if len(held) == self._drawn and first == self._first_seq:
            return
        if first != self._first_seq:  # the bounded deque dropped some: redraw
            self._rows, self._bad, self._warn = [], set(), set()
            self._drawn = 0
            self._first_seq = first
        events = list(held)
        rows = list(self._rows)  # a new list: the table compares it with the last
        for event in events[self._drawn :]:
            kind = job_kind(event.kind)
            where = event.node + (f" r{event.rank}" if event.node and event.rank >= 0 else "")
            if kind in BAD_KINDS:
                self._bad.add(len(rows))
            elif kind in WARN_KINDS:
                self._warn.add(len(rows))
            rows.append(
                (
                    time.strftime("%H:%M:%S", time.localtime(ts(event.time))),
                    kind,
                    where,
                    event.message.splitlines()[0] if event.message else "",
                )
            )
        self._rows = rows
        table = self.table
        table.set_rows(rows, self._bad, self._warn)
        if len(events) > self._drawn and self._drawn:
            table.cursor_row = table.row_count - 1
        self._drawn = len(events)
