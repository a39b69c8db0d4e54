"""The node table: one row per node, drawn through Textual's line API.

Only visible rows are rendered, and each row's strip is cached on everything
that can change its text (the node's version, the layout, the cursor and the
shown age), so a repaint in which few nodes moved costs little more than the
lines that moved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from gantry.v1 import telemetry_pb2
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.store import ClusterStore, ConnState, NodeView
from console.widgets.bars import (
    DASH,
    block,
    fit,
    format_bytes_short,
    format_rate,
    format_rate_short,
    hbar,
    percent_of,
)

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


RowKey = tuple[int, TableLayout, bool, str]


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
        self._slots = 0
        self._name_w = 4
        self._layout: TableLayout | None = None
        self._header: tuple[TableLayout, Strip] | None = None
        self._rows: dict[str, tuple[RowKey, Strip]] = {}
        self._drawn_sample_time: dict[str, float] = {}
        self._palettes: tuple[_Palette, _Palette] | None = None

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
        """Repaints visible rows whose text changed since they were drawn."""
        if self._sync():
            self.refresh()
            return
        layout = self._layout_for(self._view_width())
        now = self.clock()
        top = self.scroll_offset.y
        bottom = min(len(self._names), top + max(self._view_height() - HEADER_LINES, 0))
        for row in range(top, bottom):
            name = self._names[row]
            cached = self._rows.get(name)
            node = self.store.node(name)
            if cached is None or cached[0] != self._row_key(node, row, now, layout):
                self.refresh_line(row + HEADER_LINES)

    def row_text(self, row: int) -> str:
        """The plain text of a row as it is drawn now (for tests and tools)."""
        name = self._names[row]
        node = self.store.node(name)
        return self._row_strip(node, row, self.clock(), self._layout_for(self._view_width())).text

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

    def render_line(self, y: int) -> Strip:
        width = self._view_width()
        layout = self._layout_for(width)
        if y < HEADER_LINES:
            return self._header_strip(layout)
        row = self.scroll_offset.y + y - HEADER_LINES
        if row >= len(self._names):
            return Strip.blank(width, self._palette(False).base)
        name = self._names[row]
        node = self.store.node(name)
        now = self.clock()
        strip = self._row_strip(node, row, now, layout)
        if node.latest is not None:
            sample_time = node.sample_time
            if sample_time > self._drawn_sample_time.get(name, 0.0):
                self._drawn_sample_time[name] = sample_time
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

    def _sync(self) -> bool:
        """Picks up added nodes and GPU counts; True when every row must repaint."""
        changed = False
        if len(self._names) != len(self.store):
            self._names = self.store.names()
            longest = max((len(n) for n in self._names), default=4)
            self._name_w = min(max(longest, 4), MAX_NAME_WIDTH)
            self.virtual_size = Size(0, len(self._names) + HEADER_LINES)
            self.cursor_row = self.validate_cursor_row(self.cursor_row)
            changed = True
        slots = 0
        for node in self.store:
            count = len(node.latest.gpus) if node.latest is not None else 0
            if node.info is not None:
                count = max(count, node.info.gpu_count)
            slots = max(slots, count)
        if slots != self._slots:
            self._slots = slots
            changed = True
        return changed

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

                return _Palette(
                    base=self.rich_style if row_bg is None else self.rich_style + row_bg,
                    name=part("name"),
                    live=part("live"),
                    lost=part("lost"),
                    unauthorized=part("unauthorized"),
                    connecting=part("connecting"),
                    util=part("util"),
                    mem=part("mem"),
                    mem_high=part("mem-high"),
                    util_bar=full("util") + track_bg,
                    mem_bar=full("mem") + track_bg,
                    mem_high_bar=full("mem-high") + track_bg,
                    stale_bar=full("muted") + track_bg,
                    track=full("track"),
                    error=part("error"),
                    muted=part("muted"),
                )

            self._palettes = (make(None), make(cursor_bg))
        return self._palettes[1 if cursor else 0]

    def _row_key(self, node: NodeView, row: int, now: float, layout: TableLayout) -> RowKey:
        age = node.status_text(now) if node.state is not ConnState.LIVE else ""
        return (node.version, layout, row == self.cursor_row, age)

    def _row_strip(self, node: NodeView, row: int, now: float, layout: TableLayout) -> Strip:
        key = self._row_key(node, row, now, layout)
        cached = self._rows.get(node.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        self.rows_rendered += 1
        palette = self._palette(key[2])
        strip = Strip(_row_segments(node, now, layout, palette)).adjust_cell_length(
            layout.width, palette.base
        )
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
        text = " " * LEFT_PAD + (" " * GAP).join(cells)
        strip = Strip([Segment(text, style)]).adjust_cell_length(layout.width, style)
        self._header = (layout, strip)
        return strip


def _label(choices: tuple[str, ...], width: int) -> str:
    """The longest of `choices` that fits `width`, padded to it."""
    for text in choices:
        if len(text) <= width:
            return text.ljust(width)
    return fit(choices[-1], width)


def _state_style(node: NodeView, palette: _Palette) -> Style:
    if node.state is ConnState.LIVE:
        return palette.live
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


def _gpu_util(gpu: telemetry_pb2.GpuSample) -> float | None:
    return gpu.gpu_util_percent if gpu.HasField("gpu_util_percent") else None


def _gpu_mem(gpu: telemetry_pb2.GpuSample) -> float | None:
    if not gpu.HasField("mem_used_bytes") or not gpu.HasField("mem_total_bytes"):
        return None
    return percent_of(gpu.mem_used_bytes, gpu.mem_total_bytes)


class _Runs:
    """Builds a row as few segments as possible: equal neighbours share one."""

    __slots__ = ("_parts", "_segments", "_style")

    def __init__(self) -> None:
        self._segments: list[Segment] = []
        self._parts: list[str] = []
        self._style: Style | None = None

    def add(self, text: str, style: Style) -> None:
        # Palette styles are shared objects, so identity is enough to merge.
        if style is not self._style:
            self._flush()
            self._style = style
        self._parts.append(text)

    def _flush(self) -> None:
        if self._parts:
            self._segments.append(Segment("".join(self._parts), self._style))
            self._parts = []

    def segments(self) -> list[Segment]:
        self._flush()
        return self._segments


def _group(
    runs: _Runs,
    gpus: list[telemetry_pb2.GpuSample],
    layout: TableLayout,
    bar: int,
    width: int,
    value: Callable[[telemetry_pb2.GpuSample], float | None],
    style: Callable[[float, bool], Style],
    palette: _Palette,
    stale: bool,
) -> None:
    """Adds one GPU group (utilisation or memory), exactly `width` cells."""
    used = 0
    base = palette.base
    for i in range(layout.slots):
        gpu = gpus[i] if i < len(gpus) else None
        if bar and i:
            runs.add(" ", base)
            used += 1
        if gpu is None:
            cell = " " * (bar + 4 if bar else 1)
            runs.add(cell, base)
            used += len(cell)
            continue
        v = None if gpu.error else value(gpu)
        if bar == 0:
            if gpu.error:
                runs.add("!", palette.error)
            elif v is None:
                runs.add(DASH, palette.muted)
            else:
                runs.add(block(v), palette.muted if stale else style(v, False))
            used += 1
            continue
        if gpu.error:
            runs.add("  ! ", palette.error)
        elif v is None:
            runs.add(f"{DASH:>3} ", palette.muted)
        else:
            runs.add(f"{v:3.0f} ", palette.muted if stale else base)
        bar_style = palette.track
        if v is not None:
            bar_style = palette.stale_bar if stale else style(v, True)
        runs.add(hbar(v, bar), bar_style)
        used += bar + 4
    if used < width:
        runs.add(" " * (width - used), base)


def _mem_style(percent: float, bar: bool, palette: _Palette) -> Style:
    if percent >= MEM_HIGH_PERCENT:
        return palette.mem_high_bar if bar else palette.mem_high
    return palette.mem_bar if bar else palette.mem


def _row_segments(
    node: NodeView, now: float, layout: TableLayout, palette: _Palette
) -> list[Segment]:
    runs = _Runs()
    base = palette.base
    gap = " " * GAP
    runs.add(" " * LEFT_PAD, base)
    runs.add(fit(node.name, layout.name_w), palette.name)
    runs.add(gap, base)
    runs.add(_state_text(node, now, layout.state_w), _state_style(node, palette))
    runs.add(gap, base)
    sample = node.latest
    if sample is None:
        return runs.segments()
    stale = node.state is not ConnState.LIVE
    gpus = list(sample.gpus)
    if not gpus:
        runs.add(fit("no GPU", layout.util_w), palette.muted)
        runs.add(gap + " " * layout.mem_w, base)
    else:
        _group(
            runs,
            gpus,
            layout,
            layout.util_bar,
            layout.util_w,
            _gpu_util,
            lambda _v, bar: palette.util_bar if bar else palette.util,
            palette,
            stale,
        )
        runs.add(gap, base)
        _group(
            runs,
            gpus,
            layout,
            layout.mem_bar,
            layout.mem_w,
            _gpu_mem,
            lambda v, bar: _mem_style(v, bar, palette),
            palette,
            stale,
        )
    runs.add(gap, base)
    if sample.HasField("host"):
        host = sample.host
        rate = format_rate if layout.wide else format_rate_short
        used, total = host.mem_used_bytes, host.mem_total_bytes
        ram = f"{format_bytes_short(used)}/{format_bytes_short(total)}"
        text = gap.join(
            (
                f"{host.cpu_percent:3.0f}%",
                f"{ram:>9}",
                f"{rate(host.net_rx_bytes_per_s):>{layout.rate_w}}",
                f"{rate(host.net_tx_bytes_per_s):>{layout.rate_w}}",
            )
        )
        runs.add(text, palette.muted if stale else base)
    return runs.segments()
