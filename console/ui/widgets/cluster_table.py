"""The node table: one row per node, drawn through Textual's line API.

Only visible rows are rendered, and each row's strip is cached on everything
that can change its text (the node's version, the layout, the cursor and the
shown age). `refresh_rows` marks just the lines whose key moved as dirty, so
Textual renders those lines again and takes every other one from its cache: a
repaint in which few nodes moved costs little more than the lines that moved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gantry.v1 import telemetry_pb2
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.model.bars import (
    DASH,
    block,
    fit,
    format_bytes_short,
    format_rate,
    format_rate_short,
    hbar,
)
from console.model.cluster import ClusterStore, ConnState, NodeView

LEFT_PAD = 1
GAP = 2
HEADER_LINES = 1
MEM_HIGH_PERCENT = 95.0
MAX_NAME_WIDTH = 24


@dataclass(frozen=True, slots=True)
class TableLayout:
    """Column widths for one content width. `*_bar == 0` draws one block glyph per GPU."""

    width: int
    name_w: int
    slots: int
    util_bar: int
    mem_bar: int
    wide: bool

    @property
    def state_w(self) -> int:
        return 16 if self.wide else 11

    @property
    def rate_w(self) -> int:
        return 8 if self.wide else 4

    def group_w(self, bar: int, minimum: int) -> int:
        if bar == 0:
            return max(self.slots, minimum)
        return max(self.slots * (bar + 4) + max(self.slots - 1, 0), minimum)

    @property
    def util_w(self) -> int:
        return self.group_w(self.util_bar, 6)  # room for "no GPU"

    @property
    def mem_w(self) -> int:
        return self.group_w(self.mem_bar, 3)

    @property
    def total(self) -> int:
        widths = (
            self.name_w,
            self.state_w,
            self.util_w,
            self.mem_w,
            4,  # CPU "100%"
            9,  # RAM "412G/1.0T"
            self.rate_w,
            self.rate_w,
        )
        return LEFT_PAD + sum(widths) + GAP * (len(widths) - 1) + 1


def choose_layout(width: int, slots: int, name_w: int) -> TableLayout:
    """The richest layout that fits `width`: bars with percentages, then block glyphs."""
    candidates = [TableLayout(width, name_w, slots, b, b, True) for b in range(8, 2, -1)]
    candidates += [TableLayout(width, name_w, slots, b, 0, True) for b in range(8, 1, -1)]
    candidates.append(TableLayout(width, name_w, slots, 0, 0, True))
    for layout in candidates:
        if layout.total <= width:
            return layout
    return TableLayout(width, name_w, slots, 0, 0, False)


# A GPU's cell in a group with bars: the padding before its figure, that padding
# after a gap as a segment, the figure, the bar.
_BarCell = tuple[str, Segment, Segment, Segment]
_CellKey = tuple[int, bool, float | str | None]  # bar width, stale, value or "!"
MAX_CACHED_CELLS = 4096


@dataclass(frozen=True, slots=True)
class _GroupStyles:
    """How one GPU group colours a value (`high` from `high_at` percent up).

    Also holds the group's bar cells drawn so far for whole-number values (GPU
    utilisation comes in whole percent): rows are rebuilt every second, and most
    GPUs show a figure seen before.
    """

    glyph: Style
    glyph_high: Style
    bar: Style
    bar_high: Style
    high_at: float
    bar_cells: dict[_CellKey, _BarCell] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Palette:
    base: Style
    name: Style
    live: Style
    lost: Style
    unauthorized: Style
    connecting: Style
    util: Style
    mem: Style
    mem_high: Style
    # The same colours drawn over the bar's track, and a stale row's bar.
    util_bar: Style
    mem_bar: Style
    mem_high_bar: Style
    stale_bar: Style
    track: Style
    error: Style
    muted: Style
    # Figures of a live row: they look like `base`, but are a style of their own
    # so that a figure always starts a new segment and the padding before it stays
    # with the gap. Viewers that trim each segment's leading spaces (librsvg, which
    # draws snapshot SVGs) then still show right-aligned figures in place.
    figure: Style
    util_group: _GroupStyles
    mem_group: _GroupStyles


RowKey = tuple[int, TableLayout, bool, str]
# A figure's own style: equal to none in every terminal, but not to `base`.
_FIGURE = Style(bold=False)


class ClusterTable(ScrollView, can_focus=True):
    """Nodes of a `ClusterStore`, one per row, with a cursor.

    The owner calls `refresh_rows()` whenever the store may have changed (and once
    a second, so ages of lost nodes tick); only rows whose text moved repaint.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open node"),
        Binding("up,k", "cursor_up", "Up", show=False),
        Binding("down,j", "cursor_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home,g", "cursor_home", "First", show=False),
        Binding("end,G", "cursor_end", "Last", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "cluster-table--header",
        "cluster-table--cursor",
        "cluster-table--name",
        "cluster-table--live",
        "cluster-table--lost",
        "cluster-table--unauthorized",
        "cluster-table--connecting",
        "cluster-table--util",
        "cluster-table--mem",
        "cluster-table--mem-high",
        "cluster-table--track",
        "cluster-table--error",
        "cluster-table--muted",
    }

    DEFAULT_CSS = """
    ClusterTable {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        background: $surface;
        & > .cluster-table--header { color: $text-muted; text-style: bold; }
        & > .cluster-table--cursor { background: $primary 20%; }
        &:focus > .cluster-table--cursor { background: $primary 40%; }
        & > .cluster-table--name { text-style: bold; }
        & > .cluster-table--live { color: $success; }
        & > .cluster-table--lost { color: $error; text-style: bold; }
        & > .cluster-table--unauthorized { color: $warning; text-style: bold; }
        & > .cluster-table--connecting { color: $text-muted; }
        & > .cluster-table--util { color: $success; }
        & > .cluster-table--mem { color: $text-primary; }
        & > .cluster-table--mem-high { color: $warning; }
        & > .cluster-table--track { background: $foreground 10%; }
        & > .cluster-table--error { color: $error; text-style: bold; }
        & > .cluster-table--muted { color: $text-muted; }
    }
    """

    cursor_row: reactive[int] = reactive(0, repaint=False)

    class NodeSelected(Message):
        """Enter (or a second click) on a row."""

        def __init__(self, node_name: str) -> None:
            super().__init__()
            self.node_name = node_name

    class NodeHighlighted(Message):
        """The cursor moved onto a node."""

        def __init__(self, node_name: str) -> None:
            super().__init__()
            self.node_name = node_name

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, ClusterTable.NodeHighlighted)

    def __init__(
        self,
        store: ClusterStore,
        *,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.store = store
        self.clock = clock
        # Seconds from a sample being taken to its row being drawn (benchmarks).
        self.repaint_delays_s: deque[float] = deque(maxlen=100_000)
        # Rows built from scratch (cache misses); unchanged rows do not add to it.
        self.rows_rendered = 0
        self._names: list[str] = []
        # The store's nodes in row order (a store never replaces a node's view),
        # with the version and GPU count each had when `_sync` last looked.
        self._views: list[NodeView] = []
        self._seen_versions: list[int] = []
        self._gpu_counts: list[int] = []
        self._synced_version = -1
        # Rows whose node moved since `refresh_rows` last looked, and rows whose
        # shown age ticks: the only rows that can need drawing again, short of a
        # new layout (a full refresh) or a cursor move (which refreshes its lines).
        self._moved: set[int] = set()
        self._not_live: set[int] = set()
        # The layout of the last render pass: rows drawn in another need drawing again.
        self._drawn_layout: TableLayout | None = None
        self._slots = 0
        self._name_w = 4
        self._layout: TableLayout | None = None
        self._header: tuple[TableLayout, Strip] | None = None
        self._rows: dict[str, tuple[RowKey, Strip]] = {}
        self._drawn_sample_time: dict[str, float] = {}
        self._palettes: tuple[_Palette, _Palette] | None = None
        # What every line of one render pass shares: layout, time, top row, cursor.
        self._pass: tuple[TableLayout, float, int, int] | None = None

    # -- public ----------------------------------------------------------------
    @property
    def node_names(self) -> list[str]:
        return list(self._names)

    @property
    def cursor_node(self) -> str | None:
        if 0 <= self.cursor_row < len(self._names):
            return self._names[self.cursor_row]
        return None

    @property
    def layout_in_use(self) -> TableLayout:
        return self._layout_for(self._view_width())

    def refresh_rows(self) -> None:
        """Marks the visible lines whose text changed since they were drawn as dirty.

        Textual then renders only those lines again; the header and every other
        row come from its line cache. Costs one integer compare per node plus a
        key compare per visible row that moved (or shows an age), and no layout.
        """
        if self._sync():
            self._moved.clear()
            self.refresh()
            return
        layout = self._layout_for(self._view_width())
        if layout is not self._drawn_layout:
            # A new width (the scrollbar came or went) or a new column set.
            self._moved.clear()
            self.refresh()
            return
        regions = self._stale_line_regions(layout)
        if regions:
            self.refresh(*regions)

    def row_strip(self, row: int) -> Strip:
        """A row's line as it is drawn now (for tests and tools)."""
        node = self._views[row]
        layout = self._layout_for(self._view_width())
        return self._row_strip(node, row, self.clock(), layout, self.cursor_row)

    def row_text(self, row: int) -> str:
        """The plain text of a row as it is drawn now (for tests and tools)."""
        return self.row_strip(row).text

    # -- Textual hooks ---------------------------------------------------------
    def on_mount(self) -> None:
        self._sync()
        if self._names:
            self.post_message(self.NodeHighlighted(self._names[self.cursor_row]))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._palettes = None
        self._rows.clear()
        self._header = None

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self._names) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh_line(old + HEADER_LINES)
        self.refresh_line(new + HEADER_LINES)
        self._scroll_to_cursor()
        if self._names:
            self.post_message(self.NodeHighlighted(self._names[new]))

    def render_lines(self, crop: Region) -> list[Strip]:
        # Looked up once per pass, not once per line.
        layout = self._drawn_layout = self._layout_for(self._view_width())
        self._pass = (layout, self.clock(), self.scroll_offset.y, self.cursor_row)
        try:
            return super().render_lines(crop)
        finally:
            self._pass = None

    def render_line(self, y: int) -> Strip:
        if self._pass is None:
            layout = self._layout_for(self._view_width())
            now, top, cursor = self.clock(), self.scroll_offset.y, self.cursor_row
        else:
            layout, now, top, cursor = self._pass
        if y < HEADER_LINES:
            return self._header_strip(layout)
        row = top + y - HEADER_LINES
        if row >= len(self._views):
            return Strip.blank(layout.width, self._palette(False).base)
        node = self._views[row]
        strip = self._row_strip(node, row, now, layout, cursor)
        if node.latest is not None:
            sample_time = node.sample_time
            if sample_time > self._drawn_sample_time.get(node.name, 0.0):
                self._drawn_sample_time[node.name] = sample_time
                self.repaint_delays_s.append(now - sample_time)
        return strip

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < HEADER_LINES:
            return
        row = self.scroll_offset.y + offset.y - HEADER_LINES
        if row >= len(self._names):
            return
        if row == self.cursor_row and event.chain >= 2:
            self.action_select_cursor()
        self.cursor_row = row

    # -- actions ---------------------------------------------------------------
    def action_select_cursor(self) -> None:
        if self._names:
            self.post_message(self.NodeSelected(self._names[self.cursor_row]))

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
        self.cursor_row = len(self._names) - 1

    # -- internals -------------------------------------------------------------
    def _view_width(self) -> int:
        # `size` includes the columns the vertical scrollbar is drawn over.
        return self.scrollable_content_region.width

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

    def _stale_line_regions(self, layout: TableLayout) -> list[Region]:
        """Regions (runs of whole lines) of the visible rows whose key moved."""
        moved = self._moved
        self._moved = set()
        top = self.scroll_offset.y
        bottom = min(len(self._views), top + max(self._view_height() - HEADER_LINES, 0))
        candidates = sorted(r for r in moved | self._not_live if top <= r < bottom)
        if not candidates:
            return []
        views, rows, row_key = self._views, self._rows, self._row_key
        now, cursor = self.clock(), self.cursor_row
        stale = []
        for row in candidates:
            node = views[row]
            cached = rows.get(node.name)
            if cached is None or cached[0] != row_key(node, row, now, layout, cursor):
                stale.append(row)
        if not stale:
            return []
        # One region per run of adjacent rows: one refresh, however many lines.
        width = layout.width
        regions = []
        first = last = stale[0]
        for row in stale[1:]:
            if row != last + 1:
                regions.append(Region(0, first - top + HEADER_LINES, width, last - first + 1))
                first = row
            last = row
        regions.append(Region(0, first - top + HEADER_LINES, width, last - first + 1))
        return regions

    def _sync(self) -> bool:
        """Picks up added nodes and GPU counts; True when every row must repaint.

        Cheap when nothing was added: nothing at all if the store did not move,
        else one integer compare per node, and a GPU count only for nodes that
        changed.
        """
        store = self.store
        if len(self._names) != len(store):
            self._names = store.names()
            self._views = [store.node(name) for name in self._names]
            self._seen_versions = [view.version for view in self._views]
            self._gpu_counts = [_gpu_count(view) for view in self._views]
            self._not_live = {
                row for row, view in enumerate(self._views) if view.state is not ConnState.LIVE
            }
            self._synced_version = store.version
            self._slots = max(self._gpu_counts, default=0)
            longest = max((len(n) for n in self._names), default=4)
            self._name_w = min(max(longest, 4), MAX_NAME_WIDTH)
            self.virtual_size = Size(0, len(self._names) + HEADER_LINES)
            self.cursor_row = self.validate_cursor_row(self.cursor_row)
            return True
        if store.version == self._synced_version:
            return False
        self._synced_version = store.version
        seen, counts = self._seen_versions, self._gpu_counts
        counts_moved = False
        for i, view in enumerate(self._views):
            if view.version != seen[i]:
                seen[i] = view.version
                self._moved.add(i)
                if view.state is ConnState.LIVE:
                    self._not_live.discard(i)
                else:
                    self._not_live.add(i)
                count = _gpu_count(view)
                if count != counts[i]:
                    counts[i] = count
                    counts_moved = True
        if counts_moved:
            slots = max(counts, default=0)
            if slots != self._slots:
                self._slots = slots
                return True
        return False

    def _layout_for(self, width: int) -> TableLayout:
        layout = self._layout
        if (
            layout is None
            or layout.width != width
            or layout.slots != self._slots
            or layout.name_w != self._name_w
        ):
            layout = self._layout = choose_layout(width, self._slots, self._name_w)
        return layout

    def _palette(self, cursor: bool) -> _Palette:
        if self._palettes is None:
            # Full component styles: partial ones drop the alpha of "$primary 20%".
            def full(name: str) -> Style:
                return self.get_component_rich_style(f"cluster-table--{name}")

            track_bg = Style(bgcolor=full("track").bgcolor)
            cursor_bg = Style(bgcolor=full("cursor").bgcolor)

            def make(row_bg: Style | None) -> _Palette:
                def part(name: str) -> Style:
                    style = full(name)
                    return style if row_bg is None else style + row_bg

                base = self.rich_style if row_bg is None else self.rich_style + row_bg
                util, util_bar = part("util"), full("util") + track_bg
                mem, mem_high = part("mem"), part("mem-high")
                mem_bar, mem_high_bar = full("mem") + track_bg, full("mem-high") + track_bg
                return _Palette(
                    base=base,
                    name=part("name"),
                    live=part("live"),
                    lost=part("lost"),
                    unauthorized=part("unauthorized"),
                    connecting=part("connecting"),
                    util=util,
                    mem=mem,
                    mem_high=mem_high,
                    util_bar=util_bar,
                    mem_bar=mem_bar,
                    mem_high_bar=mem_high_bar,
                    stale_bar=full("muted") + track_bg,
                    track=full("track"),
                    error=part("error"),
                    muted=part("muted"),
                    figure=base + _FIGURE,
                    util_group=_GroupStyles(util, util, util_bar, util_bar, float("inf")),
                    mem_group=_GroupStyles(mem, mem_high, mem_bar, mem_high_bar, MEM_HIGH_PERCENT),
                )

            self._palettes = (make(None), make(cursor_bg))
        return self._palettes[1 if cursor else 0]

    def _row_key(
        self, node: NodeView, row: int, now: float, layout: TableLayout, cursor: int
    ) -> RowKey:
        age = node.status_text(now) if node.state is not ConnState.LIVE else ""
        return (node.version, layout, row == cursor, age)

    def _row_strip(
        self, node: NodeView, row: int, now: float, layout: TableLayout, cursor: int
    ) -> Strip:
        key = self._row_key(node, row, now, layout, cursor)
        cached = self._rows.get(node.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        self.rows_rendered += 1
        palette = self._palette(key[2])
        segments = _row_segments(node, now, layout, palette)
        width = layout.width
        if node.name.isascii():
            # Every glyph of a row is one cell wide: its length is its width.
            length = sum(len(segment.text) for segment in segments)
            if length < width:
                segments.append(Segment(" " * (width - length), palette.base))
            if length <= width:
                strip = Strip(segments, width)
                self._rows[node.name] = (key, strip)
                return strip
        strip = Strip(segments).adjust_cell_length(width, palette.base)
        self._rows[node.name] = (key, strip)
        return strip

    def _header_strip(self, layout: TableLayout) -> Strip:
        if self._header is not None and self._header[0] == layout:
            return self._header[1]
        style = self.get_component_rich_style("cluster-table--header")
        util = _label(("GPU UTIL %", "GPU UTIL", "UTIL"), layout.util_w)
        mem = _label(("GPU MEM %", "GPU MEM", "MEM"), layout.mem_w)
        cells = [
            fit("NODE", layout.name_w),
            fit("STATE", layout.state_w),
            util,
            mem,
            " CPU",
            "      RAM",
            ("  NET RX" if layout.wide else "RX/s"),
            ("  NET TX" if layout.wide else "TX/s"),
        ]
        # The left pad in the widget's own style: the labels start a segment.
        segments = [
            Segment(" " * LEFT_PAD, self._palette(False).base),
            Segment((" " * GAP).join(cells), style),
        ]
        strip = Strip(segments).adjust_cell_length(layout.width, style)
        self._header = (layout, strip)
        return strip


def _gpu_count(node: NodeView) -> int:
    count = len(node.latest.gpus) if node.latest is not None else 0
    if node.info is not None:
        count = max(count, node.info.gpu_count)
    return count


def _label(choices: tuple[str, ...], width: int) -> str:
    """The longest of `choices` that fits `width`, padded to it."""
    for text in choices:
        if len(text) <= width:
            return text.ljust(width)
    return fit(choices[-1], width)


def _state_style(node: NodeView, palette: _Palette) -> Style:
    if node.state is ConnState.LIVE:
        return palette.lost if node.job_fault else palette.live
    if node.state is ConnState.LOST:
        return palette.lost
    if node.state is ConnState.UNAUTHORIZED:
        return palette.unauthorized
    return palette.connecting


def _state_text(node: NodeView, now: float, width: int) -> str:
    text = node.status_text(now)
    if len(text) > width:
        text = text.replace("unauthorized", "unauth").replace("connecting", "connect…")
    return fit(text, width)


def _util_values(gpus: Sequence[telemetry_pb2.GpuSample]) -> list[float | None]:
    return [
        None if gpu.error or not gpu.HasField("gpu_util_percent") else gpu.gpu_util_percent
        for gpu in gpus
    ]


def _mem_values(gpus: Sequence[telemetry_pb2.GpuSample]) -> list[float | None]:
    values: list[float | None] = []
    for gpu in gpus:
        total = gpu.mem_total_bytes
        if gpu.error or not total or not gpu.HasField("mem_used_bytes"):
            values.append(None)
        else:
            values.append(100.0 * gpu.mem_used_bytes / total)
    return values


def _bar_cell(
    value: float | str | None, bar: int, stale: bool, styles: _GroupStyles, palette: _Palette
) -> _BarCell:
    """A cell with a bar: the figure right-aligned in three cells, a space, the bar."""
    if value == "!":
        text, text_style = "! ", palette.error
        bar_segment = Segment(" " * bar, palette.track)
    elif not isinstance(value, float):
        text, text_style = DASH + " ", palette.muted
        bar_segment = Segment(" " * bar, palette.track)
    else:
        text = f"{value:.0f} "
        if stale:
            text_style, bar_style = palette.muted, palette.stale_bar
        else:
            text_style = palette.figure
            bar_style = styles.bar_high if value >= styles.high_at else styles.bar
        bar_segment = Segment(hbar(value, bar), bar_style)
    # The figure's padding goes with the base text before it, so the figure
    # starts its segment.
    pad = " " * (4 - len(text))
    return (pad, Segment(" " + pad, palette.base), Segment(text, text_style), bar_segment)


def _group(
    out: list[Segment],
    pending: str,
    gpus: Sequence[telemetry_pb2.GpuSample],
    values: list[float | None],
    layout: TableLayout,
    bar: int,
    width: int,
    styles: _GroupStyles,
    palette: _Palette,
    stale: bool,
) -> str:
    """Appends one GPU group (utilisation or memory), exactly `width` cells.

    `pending` is base-styled text not yet appended (gaps and padding), so that
    neighbouring base text shares one segment; returns what is pending after it.
    """
    base = palette.base
    count = min(len(values), layout.slots)
    if bar == 0:
        # One block glyph per GPU; neighbours of one style share a segment.
        if pending:
            out.append(Segment(pending, base))
        glyphs = ""
        glyphs_style = base
        for i in range(count):
            v = values[i]
            if gpus[i].error:
                glyph, style = "!", palette.error
            elif v is None:
                glyph, style = DASH, palette.muted
            else:
                glyph = block(v)
                if stale:
                    style = palette.muted
                else:
                    style = styles.glyph_high if v >= styles.high_at else styles.glyph
            if style is not glyphs_style:
                if glyphs:
                    out.append(Segment(glyphs, glyphs_style))
                glyphs, glyphs_style = glyph, style
            else:
                glyphs += glyph
        if glyphs:
            out.append(Segment(glyphs, glyphs_style))
        return " " * (width - count)
    bar_cells = styles.bar_cells
    if len(bar_cells) > MAX_CACHED_CELLS:
        bar_cells.clear()
    for i in range(count):
        v = values[i]
        value: float | str | None = "!" if gpus[i].error else v
        cached = None
        if v is None or v.is_integer():
            key = (bar, stale, value)
            cached = bar_cells.get(key)
            if cached is None:
                cached = bar_cells[key] = _bar_cell(value, bar, stale, styles, palette)
        pad, head, figure, bar_segment = cached or _bar_cell(value, bar, stale, styles, palette)
        if i:
            out.append(head)
        elif pending or pad:
            out.append(Segment(pending + pad, base))
        out.append(figure)
        out.append(bar_segment)
    pending = "" if count else pending
    used = count * (bar + 4) + max(count - 1, 0)
    for i in range(count, layout.slots):
        pending += (" " if i else "") + " " * (bar + 4)
        used += (1 if i else 0) + bar + 4
    return pending + " " * (width - used)


def _row_segments(
    node: NodeView, now: float, layout: TableLayout, palette: _Palette
) -> list[Segment]:
    base = palette.base
    gap = " " * GAP
    out = [
        Segment(" " * LEFT_PAD, base),
        Segment(fit(node.name, layout.name_w), palette.name),
        Segment(gap, base),
        Segment(_state_text(node, now, layout.state_w), _state_style(node, palette)),
    ]
    pending = gap
    sample = node.latest
    if sample is None:
        return out
    stale = node.state is not ConnState.LIVE
    gpus = sample.gpus
    if not gpus:
        out.append(Segment(pending, base))
        out.append(Segment(fit("no GPU", layout.util_w), palette.muted))
        pending = gap + " " * layout.mem_w
    else:
        pending = _group(
            out,
            pending,
            gpus,
            _util_values(gpus),
            layout,
            layout.util_bar,
            layout.util_w,
            palette.util_group,
            palette,
            stale,
        )
        pending = _group(
            out,
            pending + gap,
            gpus,
            _mem_values(gpus),
            layout,
            layout.mem_bar,
            layout.mem_w,
            palette.mem_group,
            palette,
            stale,
        )
    pending += gap
    if sample.HasField("host"):
        host = sample.host
        rate = format_rate if layout.wide else format_rate_short
        used, total = host.mem_used_bytes, host.mem_total_bytes
        ram = f"{format_bytes_short(used)}/{format_bytes_short(total)}"
        cpu = f"{host.cpu_percent:.0f}%"
        text = gap.join(
            (
                cpu,
                f"{ram:>9}",
                f"{rate(host.net_rx_bytes_per_s):>{layout.rate_w}}",
                f"{rate(host.net_tx_bytes_per_s):>{layout.rate_w}}",
            )
        )
        # As in the GPU groups: the CPU figure's padding goes with the gap.
        out.append(Segment(pending + " " * (4 - len(cpu)), base))
        out.append(Segment(text, palette.muted if stale else palette.figure))
        return out
    out.append(Segment(pending, base))
    return out
