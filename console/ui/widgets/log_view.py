"""A rank's log, drawn through Textual's line API from a `LogBuffer`.

Only visible lines are rendered, and each rendered line is cached under its absolute
index (a line never changes once appended), so new lines cost nothing until they are
on screen and scrolling back costs only the lines not seen before.

The view is *live* while it follows and is not paused: it then sticks to the end as
lines arrive. Otherwise it stays on the same lines, even while the oldest drop out of
the ring, and counts the lines that arrived since it stopped being live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.cache import LRUCache
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.model.log_buffer import LogBuffer, LogSearch, Severity

# A merged log's stderr lines are marked in a gutter this wide (a bar, then a space).
GUTTER_CELLS = 2
GUTTER_MARK = "│ "
# Rows above a jumped-to line, as a share of the view: some context before it.
JUMP_CONTEXT = 3
STRIP_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class _Palette:
    """Line styles by severity, for plain lines and the current line, and match styles."""

    lines: tuple[Style, Style, Style]
    current_lines: tuple[Style, Style, Style]
    match: Style
    current_match: Style
    stderr: Style


class LogView(ScrollView, can_focus=True):
    """Lines of a `LogBuffer`: errors red, warnings yellow, search matches reversed;
    with `marked`, lines tagged as stderr behind a red bar in a gutter.

    The owner calls `sync()` when `buffer.version` moved (LogScreen polls it); nothing
    is redrawn per appended line.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "log-view--error",
        "log-view--warning",
        "log-view--match",
        "log-view--current",
        "log-view--current-match",
        "log-view--stderr",
    }

    DEFAULT_CSS = """
    LogView {
        height: 1fr;
        background: $surface;
        color: $text;
        scrollbar-size-vertical: 1;
        scrollbar-size-horizontal: 1;
        & > .log-view--error { color: $text-error; }
        & > .log-view--warning { color: $text-warning; }
        & > .log-view--match { text-style: reverse; }
        & > .log-view--current { background: $primary 30%; }
        & > .log-view--current-match { text-style: reverse bold underline; }
        & > .log-view--stderr { color: $text-error 70%; }
    }
    """

    def __init__(
        self,
        buffer: LogBuffer,
        *,
        follow: bool = True,
        marked: bool = False,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._follow = follow
        self._paused = False
        self._strips: LRUCache[tuple[int, bool], Strip] = LRUCache(STRIP_CACHE_SIZE)
        self._palette: _Palette | None = None
        self.lines_rendered = 0  # uncached line renders (tests and benchmarks)
        self._reset(buffer, marked)

    def _reset(self, buffer: LogBuffer, marked: bool) -> None:
        self.buffer = buffer
        self.marked = marked
        self._gutter = GUTTER_CELLS if marked else 0
        self._current: int | None = None
        self._search: LogSearch | None = None
        # The buffer as last synced: rows are drawn from these, not from the live buffer.
        self._synced_version = -1
        self._synced_first = buffer.first_index
        self._synced_end = buffer.first_index
        # end_index when the view stopped being live (new lines are counted from it).
        self._frozen_end = buffer.end_index
        self._strips.clear()

    # -- state -----------------------------------------------------------------
    @property
    def follow(self) -> bool:
        return self._follow

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def live(self) -> bool:
        """Sticking to the end as lines arrive."""
        return self._follow and not self._paused

    @property
    def new_lines(self) -> int:
        """Lines that arrived since the view stopped being live (0 while live)."""
        return 0 if self.live else max(0, self._synced_end - self._frozen_end)

    @property
    def synced_version(self) -> int:
        return self._synced_version

    @property
    def current_line(self) -> int | None:
        """The marked line (a search match or a jumped-to error), absolute index."""
        return self._current

    @property
    def search(self) -> LogSearch | None:
        return self._search

    @property
    def top_index(self) -> int:
        """The absolute index of the top visible row (it may not be held yet)."""
        return self._synced_first + self.scroll_offset.y

    def visible_range(self) -> tuple[int, int]:
        """Absolute indices (first, last) of the visible lines; last < first if none."""
        top = self.top_index
        bottom = min(self._synced_end, top + self._view_height()) - 1
        return top, bottom

    def visible_text(self) -> list[str]:
        """The lines on screen now, unclipped (for tests and tools)."""
        first, last = self.visible_range()
        return [self.buffer.line(i) for i in range(first, last + 1) if i in self.buffer]

    def set_follow(self, follow: bool) -> None:
        self._set_state(follow, self._paused)

    def set_paused(self, paused: bool) -> None:
        self._set_state(self._follow, paused)

    def toggle_follow(self) -> None:
        self._set_state(not self._follow, self._paused if self._follow else False)

    def toggle_pause(self) -> None:
        self._set_state(self._follow, not self._paused)

    def set_buffer(self, buffer: LogBuffer, *, marked: bool = False) -> None:
        """Shows another buffer (a log's other stream): from its end if live, else its
        top; the search and the marked line are dropped."""
        self._reset(buffer, marked)
        self.scroll_to(0, 0, animate=False, force=True)
        self.sync()
        self.refresh()

    def set_search(self, search: LogSearch | None) -> None:
        self._search = search
        self._strips.clear()
        self.refresh()

    def sync(self) -> bool:
        """Picks up lines appended or dropped since the last call; False if none were."""
        buffer = self.buffer
        if buffer.version == self._synced_version:
            return False
        self._synced_version = buffer.version
        if self._search is not None:
            self._search.update()
        old_end = self._synced_end
        dropped = buffer.first_index - self._synced_first
        self._synced_first, self._synced_end = buffer.first_index, buffer.end_index
        top = self.scroll_offset.y
        self.virtual_size = Size(buffer.max_line_length + self._gutter, len(buffer))
        if self.live:
            self._scroll_to_end()
            self.refresh()
        elif dropped:
            # Stay on the same lines: they moved up by `dropped` rows in the ring.
            self._scroll_rows(max(0, top - dropped))
            self.refresh()
        elif self._synced_end > old_end:
            self.refresh_lines(old_end - self._synced_first, self._synced_end - old_end)
        return True

    def jump_to(self, index: int, column: int = 0) -> None:
        """Marks line `index`, stops being live and brings it (and `column`) into view."""
        self.sync()
        if index not in self.buffer:
            return
        if self.live:
            self._set_state(self._follow, True)
        self._current = index
        self._show_row(index)
        # A scrollbar that comes with these lines takes a row only at the next layout.
        self.call_after_refresh(self._show_row, index)
        width = self._view_width() - self._gutter
        x = self.scroll_offset.x
        if not x <= column < x + width:
            self._scroll_rows(x=max(0, column - width // 4))
        self.refresh()

    def _show_row(self, index: int) -> None:
        row = index - self._synced_first
        height = self._view_height()
        top = self.scroll_offset.y
        if not top <= row < top + height:
            self._scroll_rows(max(0, row - height // JUMP_CONTEXT))

    def clear_current(self) -> None:
        if self._current is not None:
            self._current = None
            self.refresh()

    def scroll_to_top(self) -> None:
        self._scroll_rows(0)

    def scroll_to_bottom(self) -> None:
        """The last line; with follow on, the view is live again."""
        if self._follow and self._paused:
            self._set_state(True, False)
        else:
            self._scroll_to_end()

    # -- Textual hooks ---------------------------------------------------------
    def on_mount(self) -> None:
        self.sync()

    def on_resize(self) -> None:
        # The first layout: before it there is no height to scroll by.
        if self.live:
            self._scroll_to_end()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._palette = None
        self._strips.clear()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Scrolling up (keys, wheel, scrollbar) leaves the end: pause, or the next
        # line would pull the view back down.
        if self.live and new_value < old_value and round(new_value) < self.max_scroll_y:
            self._set_state(self._follow, True)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self._view_width()
        index = self._synced_first + scroll_y + y
        palette = self._styles()
        if not (index < self._synced_end and index in self.buffer):
            return Strip.blank(width, palette.lines[0])
        current = index == self._current
        strip = self._strips.get((index, current))
        if strip is None:
            strip = self._line_strip(index, current, palette)
            self._strips[(index, current)] = strip
        severity = self.buffer.severity(index)
        pad = (palette.current_lines if current else palette.lines)[severity]
        if not self._gutter:
            return strip.crop_extend(scroll_x, scroll_x + width, pad)
        # The gutter stays put while the text scrolls sideways.
        body = strip.crop_extend(scroll_x, scroll_x + width - self._gutter, pad)
        if self.buffer.tag(index):
            mark = Segment(GUTTER_MARK, palette.stderr)
        else:
            mark = Segment(" " * self._gutter, palette.lines[0])
        return Strip([mark, *body], width)

    # -- internals -------------------------------------------------------------
    def _set_state(self, follow: bool, paused: bool) -> None:
        was_live = self.live
        self._follow, self._paused = follow, paused
        if self.live and not was_live:
            self._scroll_to_end()
        elif was_live and not self.live:
            self._frozen_end = self._synced_end

    def _scroll_to_end(self) -> None:
        self._scroll_rows(self.max_scroll_y)
        # A scrollbar that comes with these lines takes a row only at the next layout.
        self.call_after_refresh(self._keep_at_end)

    def _keep_at_end(self) -> None:
        if self.live and self.scroll_offset.y != self.max_scroll_y:
            self._scroll_rows(self.max_scroll_y)

    def _scroll_rows(self, y: int | None = None, x: int | None = None) -> None:
        # Forced: right after new lines, Textual has not shown the scrollbar yet and
        # would refuse to scroll; the target is clamped to the virtual size anyway.
        self.scroll_to(x=x, y=y, animate=False, force=True)

    def _view_width(self) -> int:
        # `size` includes the scrollbar's columns.
        return self.scrollable_content_region.width

    def _view_height(self) -> int:
        return max(1, self.scrollable_content_region.height)

    def _line_strip(self, index: int, current: bool, palette: _Palette) -> Strip:
        self.lines_rendered += 1
        text = self.buffer.line(index)
        severity = self.buffer.severity(index)
        style = (palette.current_lines if current else palette.lines)[severity]
        spans = self._search.spans(index) if self._search is not None else []
        if not spans:
            return Strip([Segment(text, style)], cell_len(text))
        match = style + (palette.current_match if current else palette.match)
        segments: list[Segment] = []
        at = 0
        for start, end in spans:
            if start > at:
                segments.append(Segment(text[at:start], style))
            segments.append(Segment(text[start:end], match))
            at = end
        if at < len(text):
            segments.append(Segment(text[at:], style))
        return Strip(segments, cell_len(text))

    def _styles(self) -> _Palette:
        if self._palette is None:
            base = self.rich_style
            current_bg = Style(bgcolor=self.get_component_rich_style("log-view--current").bgcolor)

            def severity_styles(extra: Style | None) -> tuple[Style, Style, Style]:
                styles = (
                    base,
                    self.get_component_rich_style("log-view--warning"),
                    self.get_component_rich_style("log-view--error"),
                )
                if extra is None:
                    return styles
                return (styles[0] + extra, styles[1] + extra, styles[2] + extra)

            lines = severity_styles(None)
            assert len(lines) == len(Severity)
            self._palette = _Palette(
                lines=lines,
                current_lines=severity_styles(current_bg),
                match=self.get_component_rich_style("log-view--match", partial=True),
                current_match=self.get_component_rich_style(
                    "log-view--current-match", partial=True
                ),
                stderr=self.get_component_rich_style("log-view--stderr"),
            )
        return self._palette
