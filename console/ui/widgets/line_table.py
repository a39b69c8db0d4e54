"""A table drawn through Textual's line API: a fixed header, one line per row, a row cursor.

A subclass says what a line looks like (`render_header`, `render_row`) and, through
`set_row_count`, how many rows there are; the base scrolls, moves the cursor, turns
enter or a second click into `select_row`, and repaints only the rows it is told moved
(`refresh_row_lines`). Textual asks for every line of a dirty region again, so a
subclass should keep each strip it builds, keyed on what can change the line's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

HEADER_LINES = 1


class LineTable(ScrollView, can_focus=True):
    """Rows under a one-line header, drawn line by line, with a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Select", show=False),
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,g", "cursor_home", "First", show=False),
        Binding("end,G", "cursor_end", "Last", show=False),
    ]

    DEFAULT_CSS = """
    LineTable {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        background: $surface;
    }
    """

    # Past this many runs of changed rows, one full refresh replaces a region per run.
    MAX_REFRESH_RUNS: ClassVar[int] = 16

    # No watcher call at mount: `on_mount` highlights the first row once rows exist.
    cursor_row: reactive[int] = reactive(0, repaint=False, init=False)

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._row_count = 0
        # What every line of one render pass shares: content width, top row, cursor row.
        self._pass: tuple[int, int, int] | None = None

    # -- for subclasses ----------------------------------------------------------------
    def render_header(self, width: int) -> Strip:
        """The header line, `width` cells."""
        raise NotImplementedError

    def render_row(self, row: int, width: int, cursor: bool) -> Strip:
        """Row `row`'s line, `width` cells; `cursor` when the cursor is on it."""
        raise NotImplementedError

    def render_blank(self, width: int) -> Strip:
        """A line below the last row."""
        return Strip.blank(width, self.rich_style)

    def select_row(self, row: int) -> None:
        """Enter, or a second click, on row `row` (which exists)."""

    def highlight_row(self, row: int) -> None:
        """The cursor moved onto row `row` (which exists), or the table mounted with rows."""

    # -- public ------------------------------------------------------------------------
    @property
    def row_count(self) -> int:
        return self._row_count

    @property
    def content_width(self) -> int:
        """Cells a line spans: the widget's width less the vertical scrollbar's."""
        return self.scrollable_content_region.width

    def set_row_count(self, count: int) -> None:
        """Makes the table `count` rows long and repaints every line."""
        self._row_count = count
        self.virtual_size = Size(0, count + HEADER_LINES)
        self.cursor_row = self.validate_cursor_row(self.cursor_row)
        self.refresh()

    def visible_rows(self) -> range:
        """The rows on screen now."""
        top = self.scroll_offset.y
        height = max(self.scrollable_content_region.height - HEADER_LINES, 0)
        return range(top, max(top, min(self._row_count, top + height)))

    def refresh_row_lines(self, rows: Iterable[int]) -> None:
        """Marks the lines of `rows` (ascending; off-screen ones are skipped) as dirty.

        One region per run of adjacent rows; many runs make one full refresh.
        """
        visible = self.visible_rows()
        shown = [row for row in rows if row in visible]
        if not shown:
            return
        top, width = visible.start, self.content_width
        regions = []
        first = last = shown[0]
        for row in shown[1:]:
            if row != last + 1:
                regions.append(Region(0, first - top + HEADER_LINES, width, last - first + 1))
                first = row
            last = row
        regions.append(Region(0, first - top + HEADER_LINES, width, last - first + 1))
        if len(regions) > self.MAX_REFRESH_RUNS:
            self.refresh()
        else:
            self.refresh(*regions)

    # -- Textual hooks -----------------------------------------------------------------
    def on_mount(self) -> None:
        if self._row_count:
            self.highlight_row(self.cursor_row)

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, self._row_count - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        # `refresh_line` of a scroll view takes the line's place in the virtual size.
        self.refresh_line(old + HEADER_LINES)
        self.refresh_line(new + HEADER_LINES)
        self._scroll_to_cursor()
        if self._row_count:
            self.highlight_row(new)

    def render_lines(self, crop: Region) -> list[Strip]:
        self._pass = (self.content_width, self.scroll_offset.y, self.cursor_row)
        try:
            return super().render_lines(crop)
        finally:
            self._pass = None

    def render_line(self, y: int) -> Strip:
        if self._pass is None:
            width, top, cursor = self.content_width, self.scroll_offset.y, self.cursor_row
        else:
            width, top, cursor = self._pass
        if y < HEADER_LINES:
            return self.render_header(width)
        row = top + y - HEADER_LINES
        if row >= self._row_count:
            return self.render_blank(width)
        return self.render_row(row, width, row == cursor)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < HEADER_LINES:
            return
        row = self.scroll_offset.y + offset.y - HEADER_LINES
        if row >= self._row_count:
            return
        if row == self.cursor_row and event.chain >= 2:
            self.action_select_cursor()
        self.cursor_row = row

    # -- actions -----------------------------------------------------------------------
    def action_select_cursor(self) -> None:
        if self._row_count:
            self.select_row(self.cursor_row)

    def action_cursor_up(self) -> None:
        self.cursor_row -= 1

    def action_cursor_down(self) -> None:
        self.cursor_row += 1

    def action_page_up(self) -> None:
        self.cursor_row -= self._page()

    def action_page_down(self) -> None:
        self.cursor_row += self._page()

    def action_cursor_home(self) -> None:
        self.cursor_row = 0

    def action_cursor_end(self) -> None:
        self.cursor_row = self._row_count - 1

    # -- internals ---------------------------------------------------------------------
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - HEADER_LINES - 1)

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self.scrollable_content_region.height - HEADER_LINES)
        top = self.scroll_offset.y
        row = self.cursor_row
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False)
