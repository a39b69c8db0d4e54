"""The events tab: the job's events as they come, failures in red, alerts in yellow;
enter opens one (a failure or an alert on its diagnosed cause), and from there `l`
opens the rank's log at the error. `/` filters the events, `o` sorts them (`O`
reverses), escape clears the filter."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from gantry.v1 import job_pb2
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from console.model.cluster import ClusterStore
from console.model.event_detail import EventDetail, event_detail
from console.model.job_rows import job_kind
from console.model.jobs import JobView, ts
from console.model.list_query import ListQuery
from console.model.reasons import short_reason
from console.ui.screens.job.actions import JobActions
from console.ui.screens.job.event_detail import EventDetailScreen
from console.ui.screens.job.pane import JobPane
from console.ui.screens.logs import LogScreen
from console.ui.widgets.filter_bar import FilterBar
from console.ui.widgets.rank_table import RankTable

EVENT_COLUMNS = ("time", "event", "where", "what")
EVENT_WIDTHS = {"time": 8, "event": 16, "where": 14, "what": 200}
BAD_KINDS = frozenset(("rank failed", "rank hung", "attempt failed", "failed"))
WARN_KINDS = frozenset(("alert", "nccl"))


class EventsPane(JobPane):
    TAB = "events"
    LABEL = "3 Events"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("o", "sort", "Sort"),
        Binding("O", "reverse", "Reverse", show=False, key_display="O"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]
    DEFAULT_CSS = """
    EventsPane #event-query { height: 1; padding: 0 1; color: $text-muted; }
    """
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
        self.list_query = ListQuery()
        self._search: list[tuple[str, ...]] = []  # each row and its whole message: filtered
        self._visible: list[int] | None = None  # rows shown, by index in _rows; None: all
        self._requery = False

    def compose(self) -> ComposeResult:
        yield Static(id="event-query", markup=False)
        yield self.table
        yield FilterBar(id="event-filter")

    def on_mount(self) -> None:
        self.query_one("#event-query", Static).display = False

    @property
    def focus_target(self) -> RankTable:
        return self.table

    def draw(self, view: JobView, now: float) -> None:
        held = view.events
        first = held[0].seq if held else 0
        if len(held) == self._drawn and first == self._first_seq and not self._requery:
            return
        if first != self._first_seq:  # the bounded deque dropped some: redraw
            self._rows, self._bad, self._warn = [], set(), set()
            self._events, self._search = [], []
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
            row = (
                time.strftime("%H:%M:%S", time.localtime(ts(event.time))),
                kind,
                where,
                # The cause first (the where column names the rank); enter shows it all.
                short_reason(event.message),
            )
            rows.append(row)
            self._search.append((*row, event.message))
        self._rows = rows
        table = self.table
        grew = len(events) > self._drawn and self._drawn
        if self.list_query.active:
            # Filtered or sorted: the rows shown are a new selection each time.
            self._visible = self.list_query.apply(self._search)
            table.set_rows(
                [rows[i] for i in self._visible],
                {n for n, i in enumerate(self._visible) if i in self._bad},
                {n for n, i in enumerate(self._visible) if i in self._warn},
            )
        else:
            self._visible = None
            table.set_rows(rows, self._bad, self._warn)
            if grew:
                table.cursor_row = table.row_count - 1
        self._drawn = len(events)
        self._requery = False
        self._show_query()

    def event_at(self, row: int) -> job_pb2.JobEvent | None:
        """The event drawn on a row of the table."""
        if self._visible is not None:
            row = self._visible[row] if 0 <= row < len(self._visible) else -1
        return self._events[row] if 0 <= row < len(self._events) else None

    # -- filter and sort -------------------------------------------------------------

    def action_filter(self) -> None:
        self.query_one(FilterBar).open()

    def on_filter_bar_edited(self, event: FilterBar.Edited) -> None:
        event.stop()
        self._set_query(self.list_query.with_text(event.text))

    def on_filter_bar_done(self, event: FilterBar.Done) -> None:
        event.stop()
        self.table.focus()

    def action_sort(self) -> None:
        self._set_query(self.list_query.next_sort(len(EVENT_COLUMNS)))

    def action_reverse(self) -> None:
        self._set_query(self.list_query.reversed())

    def action_clear_filter(self) -> None:
        self.query_one(FilterBar).clear_filter()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_filter":
            return bool(self.list_query.text)  # else escape goes on to the screen (back)
        return True

    def _set_query(self, query: ListQuery) -> None:
        self.list_query = query
        self._requery = True
        self.expire()
        view = self._view_of_screen()
        if view is not None:
            self.draw(view, time.time())

    def _view_of_screen(self) -> JobView | None:
        screen = self.screen
        return screen.view if isinstance(screen, JobActions) else None

    def _show_query(self) -> None:
        line = self.list_query.describe(EVENT_COLUMNS)
        if self.list_query.text and self._visible is not None:
            line = f"{len(self._visible)} of {len(self._rows)} · {line}"
        label = self.query_one("#event-query", Static)
        label.update(line)
        label.display = bool(line)

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
