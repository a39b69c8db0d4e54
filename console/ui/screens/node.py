"""The node screen: one node's GPUs over time, its host figures and its XID events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from gantry.v1 import telemetry_pb2
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Footer, Static

from console.model.bars import format_bytes_pair, format_rate, percent_of
from console.model.cluster import DEFAULT_HISTORY, ClusterStore, ConnState, NodeView
from console.model.node_gpus import GpuSeries, xid_counts, xid_label, xid_row, xid_style
from console.ui.screens import StoreScreen
from console.ui.widgets.gpu_panel import GpuPanel
from console.ui.widgets.spans import spaces_outside_spans

__all__ = ["NodeScreen"]

MAX_XID_LINES = 200
TIMES = "\u00d7"
NARROW_WIDTH = 112


def _gpu_indexes(node: NodeView) -> list[int]:
    if node.latest is not None and node.latest.gpus:
        return [g.index for g in node.latest.gpus]
    if node.info is not None:
        return [g.index for g in node.info.gpus]
    return []


def _fmt_time(t: float) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(t))


class NodeScreen(StoreScreen):
    """One node in detail; escape returns to the cluster."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        node_name: str,
        store: ClusterStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.node_name = node_name
        self.store = store
        self.clock = clock
        self._drawn_version = -1
        self._consumed_until = 0.0
        self._series: dict[int, GpuSeries] = {}
        self._shown: dict[str, str] = {}
        self._hidden_since_drawn: set[int] = set()

    @property
    def node(self) -> NodeView:
        return self.store.node(self.node_name)

    def compose(self) -> ComposeResult:
        yield Static(id="node-title")
        yield Static(id="node-host")
        with Horizontal(id="node-body"):
            with VerticalScroll(id="gpu-panels"):
                indexes = _gpu_indexes(self.node)
                for index in indexes:
                    yield GpuPanel(index)
                if not indexes:
                    yield Static("no GPU on this node", id="no-gpu")
            with VerticalScroll(id="xid-pane"):
                yield Static(id="xid-summary")
                yield Static(id="xid-list")
        yield Footer()

    def on_mount(self) -> None:
        self._fit_width(self.app.size.width)
        self.refresh_from_store()
        panels = self.query_one("#gpu-panels", VerticalScroll)
        self.watch(panels, "scroll_y", self._panels_scrolled, init=False)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_width(event.size.width)
        self.call_after_refresh(self._panels_scrolled)

    def _fit_width(self, width: int) -> None:
        # Below this the XID pane leaves the sparklines too little room: it moves under them.
        self.set_class(width < NARROW_WIDTH, "-narrow")

    def action_back(self) -> None:
        self.dismiss()

    def refresh_from_store(self) -> None:
        node = self.node
        now = self.clock()
        self._set("#node-title", *self._title(node, now), layout=False)
        if node.version == self._drawn_version:
            return
        self._drawn_version = node.version
        self._consume_history(node)
        self._set("#node-host", *self._host(node), layout=False)
        self._show_gpus(node)
        self._show_xids(node)

    # -- parts -----------------------------------------------------------------
    def _set(
        self,
        selector: str,
        markup: str,
        values: dict[str, str] | None = None,
        *,
        layout: bool = True,
    ) -> None:
        """Updates a Static when its text changed; `layout=False` for fixed-size ones."""
        values = values or {}
        key = markup + "\0" + "\0".join(values.values())
        if self._shown.get(selector) == key:
            return
        self._shown[selector] = key
        content = spaces_outside_spans(Content.from_markup(markup, **values))
        self.query_one(selector, Static).update(content, layout=layout)

    def _title(self, node: NodeView, now: float) -> tuple[str, dict[str, str]]:
        values = {"name": node.name, "status": node.status_text(now), "reason": node.error}
        colour = {
            ConnState.LIVE: "$success",
            ConnState.LOST: "$error",
            ConnState.UNAUTHORIZED: "$warning",
            ConnState.CONNECTING: "$text-muted",
        }[node.state]
        parts = [f"[b]$name[/b]  [{colour} b]$status[/]"]
        if node.error and node.state is not ConnState.LIVE:
            parts[0] += f" [{colour}]$reason[/]"
        info = node.info
        if info is None:
            parts.append("[$text-muted]waiting for the agent[/]")
            return " · ".join(parts), values
        values.update(
            host=info.hostname,
            driver=info.driver_version,
            cuda=info.cuda_driver_version,
            nvml=info.nvml_error,
            agent=info.agent_version,
        )
        parts.append("$host")
        if info.driver_version:
            parts.append("driver $driver" + (" · CUDA $cuda" if info.cuda_driver_version else ""))
        else:
            parts.append("[$warning]no NVIDIA driver: $nvml[/]")
        parts.append("agent $agent")
        parts.append(f"{info.gpu_count} GPU" + ("" if info.gpu_count == 1 else "s"))
        if info.sample_interval_s:
            parts.append(f"every {info.sample_interval_s:g} s")
        return " · ".join(parts), values

    def _host(self, node: NodeView) -> tuple[str, dict[str, str]]:
        sample = node.latest
        if sample is None or not sample.HasField("host"):
            return "[$text-muted]no sample yet[/]", {}
        h = sample.host
        mem_pct = percent_of(h.mem_used_bytes, h.mem_total_bytes)
        parts = [
            f"CPU [b]{h.cpu_percent:.0f}%[/b] {TIMES}{h.cpu_count}",
            f"load {h.load1:.1f} {h.load5:.1f} {h.load15:.1f}",
            f"RAM [b]{format_bytes_pair(h.mem_used_bytes, h.mem_total_bytes)}[/b]"
            + (f" {mem_pct:.0f}%" if mem_pct is not None else ""),
            f"net ↓{format_rate(h.net_rx_bytes_per_s)} ↑{format_rate(h.net_tx_bytes_per_s)}",
            f"disk r {format_rate(h.disk_read_bytes_per_s)} "
            f"w {format_rate(h.disk_write_bytes_per_s)}",
        ]
        return " · ".join(parts), {}

    def _consume_history(self, node: NodeView) -> None:
        """Feeds the samples that arrived since the last call into the GPU series."""
        fresh: list[telemetry_pb2.NodeSample] = []
        for sample in reversed(node.history):
            t = sample.time.seconds + sample.time.nanos / 1e9
            if t <= self._consumed_until:
                break
            fresh.append(sample)
        if not fresh:
            return
        latest = fresh[0]
        self._consumed_until = latest.time.seconds + latest.time.nanos / 1e9
        maxlen = node.history.maxlen or DEFAULT_HISTORY
        for sample in reversed(fresh):
            for gpu in sample.gpus:
                series = self._series.get(gpu.index)
                if series is None:
                    series = self._series[gpu.index] = GpuSeries(maxlen)
                series.add(gpu)

    def _show_gpus(self, node: NodeView) -> None:
        container = self.query_one("#gpu-panels", VerticalScroll)
        panels = {p.index: p for p in container.query(GpuPanel)}
        missing = [GpuPanel(i) for i in _gpu_indexes(node) if i not in panels]
        if missing:
            self.query("#no-gpu").remove()
            container.mount_all(missing)
            # Panels mounted now get their figures on the next refresh.
            self._drawn_version = -1
        gpus = {g.index: g for g in node.latest.gpus} if node.latest is not None else {}
        top = container.scroll_offset.y
        bottom = top + container.scrollable_content_region.height
        for index, panel in panels.items():
            region = panel.virtual_region
            # Off-screen panels wait until scrolled into view; before the first
            # layout regions are empty and every panel is drawn.
            if region.height and (region.bottom <= top or region.y >= bottom):
                self._hidden_since_drawn.add(index)
                continue
            self._hidden_since_drawn.discard(index)
            panel.show(gpus.get(index), self._series.get(index) or GpuSeries(1))

    def _panels_scrolled(self) -> None:
        if self._hidden_since_drawn:
            self._show_gpus(self.node)

    def _show_xids(self, node: NodeView) -> None:
        counts = xid_counts(node.latest, node.xid_events)
        total = sum(counts.values())
        if not total:
            self._set("#xid-summary", "[b]XID events[/b]\n[$text-muted]none[/]")
            self._set("#xid-list", "")
            return
        lines = [f"[b]XID events[/b] ({total})"]
        for code, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(
                f"[{xid_style(code)} b]{code:>3}[/] {TIMES}{count}  "
                f"[$text-muted]{xid_label(code)}[/]"
            )
        self._set("#xid-summary", "\n".join(lines))
        events: Iterable[telemetry_pb2.XidEvent] = reversed(node.xid_events)
        rows = ["", "[b]newest first[/b]"]
        for i, event in enumerate(events):
            if i == MAX_XID_LINES:
                rows.append(f"[$text-muted]… {len(node.xid_events) - i} older[/]")
                break
            t = event.time.seconds + event.time.nanos / 1e9
            rows.append(f"{_fmt_time(t)}  {xid_row(event)}")
        self._set("#xid-list", "\n".join(rows))
