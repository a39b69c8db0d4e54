"""The log screen: one rank's log, live, with search and a jump to the first error.

Something else feeds the `LogBuffer` (a `gantry logs -f` stream, a test); the screen
polls `buffer.version` and redraws only when it moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.content import Content, Span
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from console.model.log_buffer import LogBuffer, LogSearch
from console.ui.widgets.log_view import LogView

POLL_INTERVAL_S = 0.1
# The view takes in new lines at most this often: a followed log repaints all its rows for
# them, and a paused one too once its ring drops lines (the rows shift under the view), so
# under a firehose (thousands of lines a second) every poll was a full repaint. A quiet
# log's line shows at the next poll all the same; keys sync at once.
SYNC_INTERVAL_S = 0.25
MAX_SHOWN_QUERY = 24


class SearchInput(Input):
    """The `/` prompt; hidden until asked for."""

    DEFAULT_CSS = """
    SearchInput {
        display: none;
        height: 1;
        border: none;
        padding: 0 1;
        background: $panel;
        &:focus { border: none; background-tint: $foreground 5%; }
    }
    """


class LogScreen(Screen[None]):
    """`title` names the log (job · rank · attempt · stream); `buffer` holds its lines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("slash", "open_search", "Search", key_display="/"),
        Binding("n", "next_match", "Next"),
        Binding("N", "previous_match", "Previous match", show=False),
        Binding("e", "first_error", "Error"),
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
        buffer: LogBuffer,
        *,
        follow: bool = True,
        poll_interval_s: float = POLL_INTERVAL_S,
        sync_interval_s: float = SYNC_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.log_title = title
        self.buffer = buffer
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
            yield Static(self.log_title, id="log-title", markup=False)
            yield Static(id="log-counts")
        yield LogView(self.buffer, follow=self._follow, id="log-view")
        yield SearchInput(placeholder="search (re: for a regex)", id="log-search")
        yield Static(id="log-status")
        yield Footer()

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
        self.set_interval(self.poll_interval_s, self.poll, name="poll-log")
        self.call_after_refresh(self.poll)

    def poll(self) -> None:
        """Redraws what changed since the last poll; cheap when nothing did."""
        view, now = self.view, self.monotonic()
        if now - self._synced_at < self.sync_interval_s:
            return  # new lines wait for the next poll past the interval
        if view.sync():
            self._synced_at = now
        self._update_header()
        self._update_status()

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

    def action_first_error(self) -> None:
        self._message = None
        self.view.sync()
        index = self.buffer.first_error()
        if index is None:
            self._message = Content("no error lines")
        else:
            self.view.jump_to(index)
        self._update_status()

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
    def _update_header(self) -> None:
        counts = (self.buffer.error_count, self.buffer.warning_count)
        if counts == self._shown_counts:
            return
        self._shown_counts = counts
        errors, warnings = counts
        parts: list[str | tuple[str, str]] = []
        if errors:
            parts.append((f"{errors:,} error{'s' if errors != 1 else ''}", "bold $text-error"))
        if warnings:
            if parts:
                parts.append("  ")
            parts.append((f"{warnings:,} warning{'s' if warnings != 1 else ''}", "$text-warning"))
        # No layout pass: the line's size never changes, and a layout per update costs
        # a repaint of the whole screen several times a second.
        self.query_one("#log-counts", Static).update(Content.assemble(*parts), layout=False)

    def status_text(self) -> str:
        """The status line as plain text (for tests)."""
        return self._status().plain

    def _status(self) -> Content:
        view, buffer = self.view, self.buffer
        first, last = view.visible_range()
        position = "no lines yet" if last < first else f"{first + 1:,}-{last + 1:,}"
        items: list[Content] = [Content(f"{position} of {buffer.end_index:,}")]
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
        # A styled item ends with its own space: SVG viewers (librsvg) drop the leading
        # spaces of a run, which a separator of its own would start with.
        status = items[0]
        for item in items[1:]:
            status += ("· " if status.plain.endswith(" ") else " · ") + item
        return status.rstrip()

    def _update_status(self) -> None:
        status = self._status()
        key = (status.plain, tuple(status.spans))  # Content's == compares text only
        if key != self._shown_status:
            self._shown_status = key
            self.query_one("#log-status", Static).update(status, layout=False)
