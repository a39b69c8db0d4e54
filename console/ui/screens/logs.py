"""The log screen: one rank's log, live, with search and jumps from error to error.

Shown from a `LogBuffer` (one stream), or from `RankLogs`: stdout and stderr merged,
stderr's lines marked in a gutter, or either alone (`s` cycles). Something else feeds
the lines (the `feeds` the screen runs while open, a test); the screen polls the
shown buffer's `version` and redraws only when it moved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.content import Content, Span
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from console.model.log_buffer import LogBuffer, LogSearch
from console.model.log_errors import ErrorJumps, LineSeek
from console.model.log_streams import LogMode, RankLogs
from console.ui.screens.log_status import SearchInput, counts_line, join_status
from console.ui.widgets.log_view import LogView

POLL_INTERVAL_S = 0.1
# The view takes in new lines at most this often: a followed log repaints all its rows for
# them, and a paused one too once its ring drops lines (the rows shift under the view), so
# under a firehose (thousands of lines a second) every poll was a full repaint. A quiet
# log's line shows at the next poll all the same; keys sync at once.
SYNC_INTERVAL_S = 0.25
MAX_SHOWN_QUERY = 24
# A feed: a coroutine the screen runs while it is open (it follows a stream until cancelled).
Feed = Callable[[], Coroutine[Any, Any, None]]


class LogScreen(Screen[None]):
    """`title` names the log (job · rank · attempt, and the stream of a lone buffer);
    `logs` holds its lines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("slash", "open_search", "Search", key_display="/"),
        Binding("n", "next_match", "Next"),
        Binding("N", "previous_match", "Previous match", show=False),
        Binding("e", "next_error", "Error"),
        Binding("E", "previous_error", "Previous error", show=False),
        Binding("s", "cycle_stream", "Stream"),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
    ]

    DEFAULT_CSS = """
    LogScreen {
        #log-header { height: 1; background: $panel; }
        #log-title {
            width: 1fr;
            padding: 0 1;
            text-wrap: nowrap;
            text-overflow: ellipsis;
            text-style: bold;
        }
        #log-counts { width: 28; padding: 0 1; text-align: right; }
        #log-status {
            height: 1;
            padding: 0 1;
            background: $panel;
            text-wrap: nowrap;
            text-overflow: ellipsis;
        }
    }
    """

    def __init__(
        self,
        title: str,
        logs: LogBuffer | RankLogs,
        *,
        follow: bool = True,
        feeds: Sequence[Feed] = (),
        poll_interval_s: float = POLL_INTERVAL_S,
        sync_interval_s: float = SYNC_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.log_title = title
        self.logs = logs if isinstance(logs, RankLogs) else None
        self.mode = LogMode.MERGED
        self._lone = logs if isinstance(logs, LogBuffer) else None
        self._feeds = feeds
        self._tasks: list[asyncio.Task[None]] = []
        self._jumps = ErrorJumps()
        self._seek: LineSeek | None = None  # where an event that opened the log points
        self.poll_interval_s = poll_interval_s
        self.sync_interval_s = sync_interval_s
        self.monotonic = monotonic
        self._synced_at = -sync_interval_s
        self._follow = follow
        self._query = ""
        self._message: Content | None = None
        self._shown_status: tuple[str, tuple[Span, ...]] | None = None
        self._shown_counts = (-1, -1)

    def compose(self) -> ComposeResult:
        with Horizontal(id="log-header"):
            yield Static(self._title(), id="log-title", markup=False)
            yield Static(id="log-counts")
        marked = self.logs is not None and self.mode is LogMode.MERGED
        yield LogView(self.buffer, follow=self._follow, marked=marked, id="log-view")
        yield SearchInput(placeholder="search (re: for a regex)", id="log-search")
        yield Static(id="log-status")
        yield Footer()

    @property
    def buffer(self) -> LogBuffer:
        """The buffer shown now (one stream, or both merged)."""
        if self.logs is not None:
            return self.logs.buffer(self.mode)
        assert self._lone is not None
        return self._lone

    @property
    def view(self) -> LogView:
        return self.query_one("#log-view", LogView)

    @property
    def search_input(self) -> SearchInput:
        return self.query_one("#log-search", SearchInput)

    @property
    def query_text(self) -> str:
        """The active search query ("" for none)."""
        return self._query

    def on_mount(self) -> None:
        self.view.focus()
        self._tasks = [asyncio.create_task(feed(), name="log-feed") for feed in self._feeds]
        self.set_interval(self.poll_interval_s, self.poll, name="poll-log")
        self.call_after_refresh(self.poll)

    def on_unmount(self) -> None:
        for task in self._tasks:
            task.cancel()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # One stream only: no key to cycle, and none in the footer.
        return self.logs is not None or action != "cycle_stream"

    def poll(self) -> None:
        """Redraws what changed since the last poll; cheap when nothing did."""
        view, now = self.view, self.monotonic()
        if self.logs is not None:
            self.logs.poll()
        if now - self._synced_at < self.sync_interval_s:
            return  # new lines wait for the next poll past the interval
        if view.sync():
            self._synced_at = now
        if self._seek is not None:
            self._try_seek(self._seek)
        self._update_header()
        self._update_status()

    @property
    def pending_seek(self) -> str | None:
        """The line the screen waits to show ("" for the last error), None if none."""
        return self._seek.target if self._seek is not None else None

    def seek(self, line: str = "") -> None:
        """Shows `line` once it arrives, else the last error once the backlog is in:
        where the event that opened the log points."""
        self._seek = LineSeek(line)
        if self.is_mounted:
            self.poll()

    def _try_seek(self, seek: LineSeek) -> None:
        buffer = self.buffer
        # A lone buffer's backlog comes in one batch.
        settled = self.logs.settled if self.logs is not None else len(buffer) > 0
        done, index = seek.find(buffer, self._jumps.index(buffer), settled)
        if done:
            self._seek = None
        if index is not None:
            self.view.jump_to(index)
            self._message = self._error_message(index)

    # -- actions ---------------------------------------------------------------
    def action_back(self) -> None:
        if self.search_input.display:
            self._close_search()
            return
        self.dismiss()

    def action_toggle_follow(self) -> None:
        self._message = None
        self.view.toggle_follow()
        self._update_status()

    def action_toggle_pause(self) -> None:
        self._message = None
        self.view.toggle_pause()
        self._update_status()

    def action_open_search(self) -> None:
        search = self.search_input
        search.value = self._query
        search.display = True
        self.set_focus(search)
        search.select_all()

    def action_next_match(self) -> None:
        self._step(backwards=False)

    def action_previous_match(self) -> None:
        self._step(backwards=True)

    def action_next_error(self) -> None:
        """The first error, or the one after the error shown (wrapping)."""
        self._step_error(backwards=False)

    def action_previous_error(self) -> None:
        self._step_error(backwards=True)

    def action_cycle_stream(self) -> None:
        """Merged → stdout → stderr → merged."""
        if self.logs is None:
            return
        self._message = None
        self._seek = None
        self.mode = self.mode.next
        search = self.view.search
        self.view.set_buffer(self.buffer, marked=self.mode is LogMode.MERGED)
        self.query_one("#log-title", Static).update(self._title())
        if search is not None:
            self.view.set_search(LogSearch(self.buffer, search.query))
        self._shown_counts = (-1, -1)
        self._update_header()
        self._update_status()

    def _step_error(self, backwards: bool) -> None:
        self._message = None
        self._seek = None
        view = self.view
        view.sync()
        index = self._jumps.step(self.buffer, view.current_line, backwards)
        if index is None:
            self._message = Content("no error lines")
        else:
            view.jump_to(index)
            self._message = self._error_message(index)
        self._update_status()

    def _error_message(self, index: int) -> Content | None:
        if self._jumps.index(self.buffer).ordinal(index) is None:
            return None  # the event's own line, not an error start
        return Content.styled(self._jumps.describe(self.buffer, index) + " ", "$text-error")

    def action_top(self) -> None:
        self._message = None
        self.view.scroll_to_top()
        self._update_status()

    def action_bottom(self) -> None:
        self._message = None
        self.view.scroll_to_bottom()
        self._update_status()

    # -- search ----------------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._close_search()
        self.run_search(event.value)

    def run_search(self, query: str) -> None:
        """Searches from the top of the view down (wrapping); "" ends the search."""
        view = self.view
        self._message = None
        view.sync()
        if not query:
            self._query = ""
            view.set_search(None)
            view.clear_current()
            self._update_status()
            return
        try:
            search = LogSearch(self.buffer, query)
        except ValueError as exc:
            self._message = Content.styled(str(exc), "$text-error")
            self._update_status()
            return
        self._query = query
        view.set_search(search)
        top = view.top_index
        index = search.nearest(top)
        if index is None:
            view.clear_current()
            self._message = Content.styled(f"no match for {query!r}", "$text-warning")
        else:
            if index < top:
                self._message = Content("wrapped")
            self._jump(search, index)
        self._update_status()

    def _step(self, backwards: bool) -> None:
        view = self.view
        self._message = None
        view.sync()
        search = view.search
        if search is None:
            self._message = Content("no search: press / first")
        else:
            current = view.current_line
            if current is None:
                start = view.top_index - 1 if backwards else view.top_index
            else:
                start = current - 1 if backwards else current + 1
            index = search.nearest(start, backwards=backwards)
            if index is None:
                self._message = Content.styled(f"no match for {self._query!r}", "$text-warning")
            else:
                if (index < start) != backwards:
                    self._message = Content("wrapped")
                self._jump(search, index)
        self._update_status()

    def _jump(self, search: LogSearch, index: int) -> None:
        spans = search.spans(index)
        self.view.jump_to(index, column=spans[0][0] if spans else 0)

    def _close_search(self) -> None:
        self.search_input.display = False
        # At once (Widget.focus waits a turn): the next key must not reach the input.
        self.set_focus(self.view)

    # -- header and status -----------------------------------------------------
    def _title(self) -> str:
        if self.logs is None:
            return self.log_title
        return f"{self.log_title} · {self.mode.value}"

    def _update_header(self) -> None:
        counts = (self.buffer.error_count, self.buffer.warning_count)
        if counts == self._shown_counts:
            return
        self._shown_counts = counts
        # No layout pass: the line's size never changes, and a layout per update costs
        # a repaint of the whole screen several times a second.
        self.query_one("#log-counts", Static).update(counts_line(*counts), layout=False)

    def status_text(self) -> str:
        """The status line as plain text (for tests)."""
        return self._status().plain

    def _status(self) -> Content:
        view, buffer = self.view, self.buffer
        first, last = view.visible_range()
        if last >= first:
            position = f"{first + 1:,}-{last + 1:,} of {buffer.end_index:,}"
        elif self.logs is not None:
            position = self.logs.empty_note(self.mode)
        else:
            position = "no lines yet"
        items: list[Content] = [Content(position)]
        if view.live:
            items.append(Content.styled("follow ", "bold $text-success"))
        else:
            mode = "paused " if view.paused else "follow off "
            items.append(Content.styled(mode, "bold $text-warning"))
            if view.new_lines:
                items[-1] += f"+{view.new_lines:,} new"
        search = view.search
        if search is not None:
            query = self._query
            if len(query) > MAX_SHOWN_QUERY:
                query = query[: MAX_SHOWN_QUERY - 1] + "…"
            current = view.current_line
            ordinal = search.ordinal(current) if current is not None else None
            if ordinal is None:
                found = f"{len(search):,} matches"
            else:
                found = f"match {ordinal:,} of {len(search):,}"
            items.append(Content(f"/{query} {found}"))
        if self._message is not None:
            items.append(self._message)
        return join_status(items)

    def _update_status(self) -> None:
        status = self._status()
        key = (status.plain, tuple(status.spans))  # Content's == compares text only
        if key != self._shown_status:
            self._shown_status = key
            self.query_one("#log-status", Static).update(status, layout=False)
