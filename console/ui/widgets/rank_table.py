"""The ranks table of the job screen: one line per rank, drawn through Textual's line API
(its events table is one too, with its own column widths).

The screen hands over every row's cell texts with `set_rows`; lines are built only
when Textual asks for a visible one, and each built line is kept keyed by its text,
so a row that reads as it did costs a dict look-up. `set_rows` marks dirty only the
visible lines whose text changed: no layout pass and no re-render of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.model.bars import fit

LEFT_PAD = 1
GAP = 1
HEADER_LINES = 1
MAX_CACHED_LINES = 4096
# Past this many changed visible lines one full refresh beats a region per run.
MAX_LINE_REFRESHES = 8

# Cells per column; a longer text is cut with an ellipsis. Columns without a width
# here get DEFAULT_WIDTH.
COLUMN_WIDTHS = {
    "rank": 4,
    "node": 10,
    "gpu": 4,
    "state": 10,  # a starting rank's phase: "ops 1m15s"
    "step": 6,
    "loss": 7,
    "gnorm": 6,
    "s/step": 6,
    "tok/s": 5,
    "coll%": 5,
    "beat": 5,
}
DEFAULT_WIDTH = 8

# Equal to no style in every terminal, but not to the row's style (see render_line).
_PAD = Style(underline=False)
# How a line is drawn: its tone (0 plain, 1 bad: red, 2 warn: yellow), under the cursor.
_Kind = tuple[int, bool]


class RankTable(ScrollView, can_focus=True):
    """Rows of fixed-width text cells under a header line, with a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open log", show=False),
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,g", "cursor_home", "First", show=False),
        Binding("end,G", "cursor_end", "Last", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rank-table--header",
        "rank-table--cursor",
        "rank-table--bad",
        "rank-table--warn",
    }

    DEFAULT_CSS = """
    RankTable {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        background: $surface;
        & > .rank-table--header { color: $text-muted; text-style: bold; }
        & > .rank-table--cursor { background: $primary 20%; }
        &:focus > .rank-table--cursor {
            color: $block-cursor-foreground;
            background: $block-cursor-background;
            text-style: $block-cursor-text-style;
        }
        & > .rank-table--bad { color: $error; text-style: bold; }
        & > .rank-table--warn { color: $warning; }
    }
    """

    cursor_row: reactive[int] = reactive(0, repaint=False)

    class RowSelected(Message):
        """Enter (or a second click) on a row."""

        def __init__(self, table: RankTable, row: int) -> None:
            super().__init__()
            self.table = table
            self.row = row

        @property
        def control(self) -> RankTable:
            return self.table

    def __init__(
        self,
        columns: Sequence[str],
        *,
        widths: dict[str, int] | None = None,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = tuple(columns)
        chosen = COLUMN_WIDTHS if widths is None else widths
        self.widths = tuple(chosen.get(c, DEFAULT_WIDTH) for c in self.columns)
        self._rows: list[tuple[str, ...]] = []
        self._bad: set[int] = set()
        self._warn: set[int] = set()
        # Built lines by (text, tone, cursor), for one content width and one set of styles.
        self._strips: dict[tuple[str, int, bool], Strip] = {}
        self._strips_width = -1
        self._styles: dict[_Kind, Style] | None = None
        self._header: Strip | None = None
        # Lines built from scratch (cache misses), for tests and benchmarks.
        self.lines_rendered = 0

    # -- public --------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[tuple[str, ...]]:
        return self._rows

    def set_rows(
        self, rows: list[tuple[str, ...]], bad: set[int], warn: set[int] | None = None
    ) -> None:
        """Shows `rows` (one text per column each), the rows indexed by `bad` in red,
        those by `warn` (and not `bad`) in yellow.

        Marks dirty only the visible lines whose text or colour changed (one full
        refresh when many did, or when the row count moved).
        """
        old_rows, old_bad, old_warn = self._rows, self._bad, self._warn
        self._rows, self._bad, self._warn = rows, bad, warn or set()
        if len(rows) != len(old_rows):
            self.virtual_size = Size(0, len(rows) + HEADER_LINES)
            self.cursor_row = self.validate_cursor_row(self.cursor_row)
            self.refresh()
            return
        top = self.scroll_offset.y
        bottom = min(len(rows), top + max(self._view_height() - HEADER_LINES, 0))
        changed = [
            row
            for row in range(top, bottom)
            if rows[row] != old_rows[row]
            or (row in bad) != (row in old_bad)
            or (row in self._warn) != (row in old_warn)
        ]
        if len(changed) > MAX_LINE_REFRESHES:
            self.refresh()
        elif changed:
            width = self.size.width
            self.refresh(*(Region(0, row - top + HEADER_LINES, width, 1) for row in changed))

    def line_text(self, row: int) -> str:
        """The plain text of a row's line (for tests and tools)."""
        return self._text(self._rows[row])

    # -- Textual hooks -------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None
        self._strips.clear()
        self._header = None

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._rows) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        top = self.scroll_offset.y
        for row in (old, new):
            if row >= top:
                self.refresh_line(row - top + HEADER_LINES)
        self._scroll_to_cursor()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if width != self._strips_width:
            self._strips.clear()
            self._header = None
            self._strips_width = width
        if y < HEADER_LINES:
            return self._header_strip(width)
        row = self.scroll_offset.y + y - HEADER_LINES
        if row >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        text = self._text(self._rows[row])
        key = (text, self._tone(row), row == self.cursor_row)
        strip = self._strips.get(key)
        if strip is None:
            self.lines_rendered += 1
            if len(self._strips) >= MAX_CACHED_LINES:
                self._strips.clear()
            style = self._style((key[1], key[2]))
            # The pad in a style of its own, so that the text starts a segment: SVG
            # viewers (librsvg, which draws snapshots) trim a segment's leading spaces.
            pad = Segment(text[:LEFT_PAD], self._style((0, key[2])) + _PAD)
            strip = Strip([pad, Segment(text[LEFT_PAD:], style)]).adjust_cell_length(width, style)
            self._strips[key] = strip
        return strip

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < HEADER_LINES:
            return
        row = self.scroll_offset.y + offset.y - HEADER_LINES
        if row >= len(self._rows):
            return
        if row == self.cursor_row and event.chain >= 2:
            self.action_select_cursor()
        self.cursor_row = row

    # -- actions -------------------------------------------------------------------

    def action_select_cursor(self) -> None:
        if self._rows:
            self.post_message(self.RowSelected(self, self.cursor_row))

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
        self.cursor_row = len(self._rows) - 1

    # -- internals -----------------------------------------------------------------

    def _text(self, cells: tuple[str, ...]) -> str:
        gap = " " * GAP
        return " " * LEFT_PAD + gap.join(
            fit(cell, width) for cell, width in zip(cells, self.widths, strict=False)
        )

    def _tone(self, row: int) -> int:
        return 1 if row in self._bad else 2 if row in self._warn else 0

    def _view_height(self) -> int:
        return self.scrollable_content_region.height

    def _page(self) -> int:
        return max(1, self._view_height() - HEADER_LINES - 1)

    def _scroll_to_cursor(self) -> None:
        visible = max(1, self._view_height() - HEADER_LINES)
        top = self.scroll_offset.y
        row = self.cursor_row
        if row < top:
            self.scroll_to(y=row, animate=False)
        elif row >= top + visible:
            self.scroll_to(y=row - visible + 1, animate=False)

    def _style(self, kind: _Kind) -> Style:
        if self._styles is None:
            base = self.rich_style
            bad = self.get_component_rich_style("rank-table--bad", partial=True)
            cursor = self.get_component_rich_style("rank-table--cursor", partial=True)
            warn = self.get_component_rich_style("rank-table--warn", partial=True)
            self._styles = {
                (tone, under): base + (cursor if under else Style()) + colour
                for tone, colour in enumerate((Style(), bad, warn))
                for under in (False, True)
            }
        return self._styles[kind]

    def _header_strip(self, width: int) -> Strip:
        if self._header is None:
            base = self.rich_style
            style = base + self.get_component_rich_style("rank-table--header", partial=True)
            self._header = Strip(
                [Segment(" " * LEFT_PAD, base), Segment(self._text(self.columns)[LEFT_PAD:], style)]
            ).adjust_cell_length(width, base)
        return self._header
