"""The events tab: the job's events as they come, failures in red, alerts in yellow;
enter opens one (a failure or an alert on its diagnosed cause), and from there `l`
opens the rank's log at the error."""

from __future__ import annotations

import time
from collections.abc import Callable

from gantry.v1 import job_pb2
from textual.app import ComposeResult

from console.model.cluster import ClusterStore
from console.model.event_detail import EventDetail, event_detail
from console.model.job_rows import job_kind
from console.model.jobs import JobView, ts
from console.ui.screens.job.actions import JobActions
from console.ui.screens.job.event_detail import EventDetailScreen
from console.ui.screens.job.pane import JobPane
from console.ui.screens.logs import LogScreen
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
        self._events: list[job_pb2.JobEvent] = []  # one per row
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
            self._events = []
            self._drawn = 0
            self._first_seq = first
        events = list(held)
        rows = list(self._rows)  # a new list: the table compares it with the last
        for event in events[self._drawn :]:
            self._events.append(event)
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

    def event_at(self, row: int) -> job_pb2.JobEvent | None:
        """The event drawn on a row of the table."""
        return self._events[row] if 0 <= row < len(self._events) else None

    def on_rank_table_row_selected(self, message: RankTable.RowSelected) -> None:
        if message.table is not self.table:
            return
        message.stop()
        event = self.event_at(message.row)
        if event is not None:
            self.open_event(event)

    def open_event(self, event: job_pb2.JobEvent) -> None:
        """The event's detail; `l` there opens its rank's log at the error."""
        screen = self.screen
        actions = screen if isinstance(screen, JobActions) else None
        detail = event_detail(event)
        can_open = actions is not None and actions.open_logs is not None

        def closed(open_log: bool | None) -> None:
            if open_log and actions is not None:
                self._open_log(actions, detail)

        self.app.push_screen(EventDetailScreen(detail, can_open_log=can_open), closed)

    def _open_log(self, actions: JobActions, detail: EventDetail) -> None:
        if actions.open_logs is None or detail.rank is None:
            return
        actions.open_logs(actions.job_name, detail.rank, detail.attempt)
        # The app pushes the log screen at once: point it at the error.
        log = self.app.screen
        if isinstance(log, LogScreen):
            log.seek(detail.seek_line)
