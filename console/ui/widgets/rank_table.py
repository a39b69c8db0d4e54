"""The job screen's tables of text cells (its ranks, its events): one line per row in
fixed-width columns, on the shared line-table base.

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
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.strip import Strip

from console.model.bars import fit
from console.ui.widgets.line_table import HEADER_LINES, LineTable

__all__ = ["COLUMN_WIDTHS", "HEADER_LINES", "RankTable"]

LEFT_PAD = 1
GAP = 1
MAX_CACHED_LINES = 4096
# Past this many changed visible lines one full refresh beats a region per line.
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
    "d,t,e": 7,  # a rank's (data, tensor, expert) coordinates
}
DEFAULT_WIDTH = 8

# Equal to no style in every terminal, but not to the row's style (see render_row).
_PAD = Style(underline=False)
# How a line is drawn: its tone (0 plain, 1 bad: red, 2 warn: yellow), under the cursor.
_Kind = tuple[int, bool]


class RankTable(LineTable):
    """Rows of fixed-width text cells under a header line, with a row cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open log", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "rank-table--header",
        "rank-table--cursor",
        "rank-table--bad",
        "rank-table--warn",
    }

    DEFAULT_CSS = """
    RankTable {
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
        self._chosen_widths = COLUMN_WIDTHS if widths is None else widths
        self.columns = tuple(columns)
        self.widths = tuple(self._chosen_widths.get(c, DEFAULT_WIDTH) for c in self.columns)
        self._rows: list[tuple[str, ...]] = []
        self._bad: set[int] = set()
        self._warn: set[int] = set()
        # Built lines by text, per kind of line, for one content width. Kept across
        # restyles (a focus change restyles the table) while their kind's style holds.
        self._strips: dict[_Kind, dict[str, Strip]] = {}
        self._strips_width = -1
        self._styles: dict[_Kind, Style] | None = None
        self._styles_stale = True
        self._header: Strip | None = None
        # Lines built from scratch (cache misses), for tests and benchmarks.
        self.lines_rendered = 0

    # -- public --------------------------------------------------------------------

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
            self.set_row_count(len(rows))
            return
        changed = [
            row
            for row in self.visible_rows()
            if rows[row] != old_rows[row]
            or (row in bad) != (row in old_bad)
            or (row in self._warn) != (row in old_warn)
        ]
        if len(changed) > MAX_LINE_REFRESHES:
            self.refresh()
        elif changed:
            self.refresh_row_lines(changed)

    def set_columns(self, columns: Sequence[str]) -> None:
        """Other columns (a job with parallelism adds one); rows must follow with set_rows."""
        columns = tuple(columns)
        if columns == self.columns:
            return
        self.columns = columns
        self.widths = tuple(self._chosen_widths.get(c, DEFAULT_WIDTH) for c in columns)
        self._strips.clear()
        self._header = None
        self._rows = []
        self.refresh()

    def line_text(self, row: int) -> str:
        """The plain text of a row's line (for tests and tools)."""
        return self._text(self._rows[row])

    # -- LineTable and Textual hooks ---------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        # The component styles are read again at the next line: they are not applied yet.
        self._styles_stale = True
        self._header = None

    def select_row(self, row: int) -> None:
        self.post_message(self.RowSelected(self, row))

    def render_header(self, width: int) -> Strip:
        self._check_width(width)
        if self._header is None:
            base = self.rich_style
            style = base + self.get_component_rich_style("rank-table--header", partial=True)
            self._header = Strip(
                [Segment(" " * LEFT_PAD, base), Segment(self._text(self.columns)[LEFT_PAD:], style)]
            ).adjust_cell_length(width, base)
        return self._header

    def render_row(self, row: int, width: int, cursor: bool) -> Strip:
        self._check_width(width)
        text = self._text(self._rows[row])
        kind = (self._tone(row), cursor)
        styles = self._current_styles()
        strips = self._strips.setdefault(kind, {})
        strip = strips.get(text)
        if strip is None:
            self.lines_rendered += 1
            if len(strips) >= MAX_CACHED_LINES:
                strips.clear()
            style = styles[kind]
            # The pad in a style of its own, so that the text starts a segment: SVG
            # viewers (librsvg, which draws snapshots) trim a segment's leading spaces.
            pad = Segment(text[:LEFT_PAD], styles[(0, cursor)] + _PAD)
            strip = Strip([pad, Segment(text[LEFT_PAD:], style)]).adjust_cell_length(width, style)
            strips[text] = strip
        return strip

    # -- internals -----------------------------------------------------------------

    def _text(self, cells: tuple[str, ...]) -> str:
        gap = " " * GAP
        return " " * LEFT_PAD + gap.join(
            fit(cell, width) for cell, width in zip(cells, self.widths, strict=False)
        )

    def _tone(self, row: int) -> int:
        return 1 if row in self._bad else 2 if row in self._warn else 0

    def _check_width(self, width: int) -> None:
        if width != self._strips_width:
            self._strips.clear()
            self._header = None
            self._strips_width = width

    def _current_styles(self) -> dict[_Kind, Style]:
        """The lines' styles; after a restyle, the built lines of a kind whose style (or
        its pad's) moved are dropped."""
        if self._styles is not None and not self._styles_stale:
            return self._styles
        self._styles_stale = False
        base = self.rich_style
        bad = self.get_component_rich_style("rank-table--bad", partial=True)
        cursor = self.get_component_rich_style("rank-table--cursor", partial=True)
        warn = self.get_component_rich_style("rank-table--warn", partial=True)
        styles = {
            (tone, under): base + (cursor if under else Style()) + colour
            for tone, colour in enumerate((Style(), bad, warn))
            for under in (False, True)
        }
        old = self._styles or {}
        for under in (False, True):
            if any(styles[(tone, under)] != old.get((tone, under)) for tone in range(3)):
                for tone in range(3):
                    self._strips.pop((tone, under), None)
        self._styles = styles
        return styles
