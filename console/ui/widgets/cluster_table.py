"""The node table: one row per node of a `ClusterStore`, on the shared `LineTable`.

Only visible rows are rendered, and each row's strip is cached on everything
that can change its text (the node's version, the layout, the cursor and the
shown age). `refresh_rows` marks just the lines whose key moved as dirty, so
Textual renders those lines again and takes every other one from its cache: a
repaint in which few nodes moved costs little more than the lines that moved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip

from console.model.cluster import ClusterStore, ConnState, NodeView
from console.ui.widgets.cluster_cells import (
    Palette,
    gpu_count,
    header_text,
    make_palettes,
    row_segments,
)
from console.ui.widgets.cluster_columns import (
    LEFT_PAD,
    MAX_NAME_WIDTH,
    TableLayout,
    choose_layout,
)
from console.ui.widgets.line_table import LineTable

__all__ = ["ClusterTable", "TableLayout", "choose_layout"]

RowKey = tuple[int, TableLayout, bool, str]


class ClusterTable(LineTable):
    """Nodes of a `ClusterStore`, one per row, with a cursor.

    The owner calls `refresh_rows()` whenever the store may have changed (and once
    a second, so ages of lost nodes tick); only rows whose text moved repaint.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open node"),
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

    # Rows of a repaint are mostly adjacent runs; a region per run is cheaper than
    # rendering every visible line again, however many runs there are.
    MAX_REFRESH_RUNS: ClassVar[int] = 1_000_000

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
        self._palettes: tuple[Palette, Palette] | None = None
        # What every row of one render pass shares: the layout and the time.
        self._row_pass: tuple[TableLayout, float] | None = None

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
        return self._layout_for(self.content_width)

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
        layout = self._layout_for(self.content_width)
        if layout is not self._drawn_layout:
            # A new width (the scrollbar came or went) or a new column set.
            self._moved.clear()
            self.refresh()
            return
        self.refresh_row_lines(self._stale_rows(layout))

    def row_strip(self, row: int) -> Strip:
        """A row's line as it is drawn now (for tests and tools)."""
        node = self._views[row]
        layout = self._layout_for(self.content_width)
        return self._row_strip(node, self.clock(), layout, row == self.cursor_row)

    def row_text(self, row: int) -> str:
        """The plain text of a row as it is drawn now (for tests and tools)."""
        return self.row_strip(row).text

    # -- LineTable hooks -------------------------------------------------------
    def render_header(self, width: int) -> Strip:
        layout = self._layout_for(width)
        if self._header is not None and self._header[0] == layout:
            return self._header[1]
        style = self.get_component_rich_style("cluster-table--header")
        # The left pad in the widget's own style: the labels start a segment.
        segments = [
            Segment(" " * LEFT_PAD, self._palette(False).base),
            Segment(header_text(layout), style),
        ]
        strip = Strip(segments).adjust_cell_length(layout.width, style)
        self._header = (layout, strip)
        return strip

    def render_row(self, row: int, width: int, cursor: bool) -> Strip:
        if self._row_pass is None:
            layout, now = self._layout_for(width), self.clock()
        else:
            layout, now = self._row_pass
        node = self._views[row]
        strip = self._row_strip(node, now, layout, cursor)
        if node.latest is not None:
            sample_time = node.sample_time
            if sample_time > self._drawn_sample_time.get(node.name, 0.0):
                self._drawn_sample_time[node.name] = sample_time
                self.repaint_delays_s.append(now - sample_time)
        return strip

    def select_row(self, row: int) -> None:
        self.post_message(self.NodeSelected(self._names[row]))

    def highlight_row(self, row: int) -> None:
        self.post_message(self.NodeHighlighted(self._names[row]))

    # -- Textual hooks (the base's run after these) ----------------------------
    def on_mount(self) -> None:
        self._sync()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._palettes = None
        self._rows.clear()
        self._header = None

    def render_lines(self, crop: Region) -> list[Strip]:
        # Looked up once per pass, not once per line.
        layout = self._drawn_layout = self._layout_for(self.content_width)
        self._row_pass = (layout, self.clock())
        try:
            return super().render_lines(crop)
        finally:
            self._row_pass = None

    # -- internals -------------------------------------------------------------
    def _stale_rows(self, layout: TableLayout) -> list[int]:
        """The visible rows whose key moved, ascending."""
        moved = self._moved
        self._moved = set()
        visible = self.visible_rows()
        top, bottom = visible.start, visible.stop
        candidates = sorted(r for r in moved | self._not_live if top <= r < bottom)
        if not candidates:
            return []
        views, rows, row_key = self._views, self._rows, self._row_key
        now, cursor = self.clock(), self.cursor_row
        stale = []
        for row in candidates:
            node = views[row]
            cached = rows.get(node.name)
            if cached is None or cached[0] != row_key(node, now, layout, row == cursor):
                stale.append(row)
        return stale

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
            self._gpu_counts = [gpu_count(view) for view in self._views]
            self._not_live = {
                row for row, view in enumerate(self._views) if view.state is not ConnState.LIVE
            }
            self._synced_version = store.version
            self._slots = max(self._gpu_counts, default=0)
            longest = max((len(n) for n in self._names), default=4)
            self._name_w = min(max(longest, 4), MAX_NAME_WIDTH)
            self.set_row_count(len(self._names))
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
                count = gpu_count(view)
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

    def _palette(self, cursor: bool) -> Palette:
        if self._palettes is None:
            # Full component styles: partial ones drop the alpha of "$primary 20%".
            def full(name: str) -> Style:
                return self.get_component_rich_style(f"cluster-table--{name}")

            self._palettes = make_palettes(full, self.rich_style)
        return self._palettes[1 if cursor else 0]

    def _row_key(self, node: NodeView, now: float, layout: TableLayout, cursor: bool) -> RowKey:
        age = node.status_text(now) if node.state is not ConnState.LIVE else ""
        return (node.version, layout, cursor, age)

    def _row_strip(self, node: NodeView, now: float, layout: TableLayout, cursor: bool) -> Strip:
        key = self._row_key(node, now, layout, cursor)
        cached = self._rows.get(node.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        self.rows_rendered += 1
        palette = self._palette(cursor)
        segments = row_segments(node, now, layout, palette)
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
