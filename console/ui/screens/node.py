"""The node screen: one node's GPUs over time, its host figures and its XID events."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from gantry.v1 import telemetry_pb2
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content, Span
from textual.strip import Strip
from textual.widgets import Footer, Sparkline, Static

from console.model.bars import (
    DASH,
    format_bytes_pair,
    format_percent,
    format_rate,
    percent_of,
)
from console.model.cluster import DEFAULT_HISTORY, ClusterStore, ConnState, NodeView
from console.ui.screens import StoreScreen

MAX_XID_LINES = 200
TIMES = "\u00d7"
NARROW_WIDTH = 112

# Common XIDs from NVIDIA's XID catalogue, to spare the operator a look-up.
XID_MEANINGS: dict[int, str] = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    32: "invalid push buffer stream",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    61: "micro-controller breakpoint",
    62: "micro-controller halt",
    63: "ECC page retirement / row remap",
    64: "ECC page retirement failure",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}


BARS = "▁▂▃▄▅▆▇█"


def sparkline_levels(
    data: Sequence[float],
    width: int,
    floor: float,
    ceiling: float,
    summary: Callable[[Sequence[float]], float] = max,
) -> list[int]:
    """Bar levels (0-7) on a fixed scale, one per cell, newest value last.

    Every sample gets a cell when they fit; a longer history is summarised in
    `width` buckets.
    """
    n = len(data)
    if n > width:
        values = [summary(data[i * n // width : (i + 1) * n // width]) for i in range(width)]
    else:
        values = list(data)
    extent = (ceiling - floor) or 1.0
    top = len(BARS) - 1
    return [min(top, max(0, int((v - floor) / extent * len(BARS)))) for v in values]


class ScaledSparkline(Sparkline):
    """Textual's Sparkline on a fixed scale, drawn through the line API.

    Textual's own renderable scales between the data's min and max, which makes a
    GPU steady at 97-99 % look like it swings wildly; and a Rich renderable costs
    far more to draw than one Strip, with a whole node's sparklines moving every
    second.
    """

    def __init__(
        self,
        *,
        floor: float = 0.0,
        ceiling: float = 100.0,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__((), id=id, classes=classes)
        self.floor = floor
        self.ceiling = ceiling
        self._styles: list[Style] | None = None

    def show(self, data: Sequence[float], ceiling: float | None = None) -> None:
        if ceiling is not None and ceiling != self.ceiling:
            self.ceiling = ceiling
            self.refresh()
        self.data = data

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None

    def _level_styles(self) -> list[Style]:
        if self._styles is None:
            _, base = self.background_colors
            low = base + self.get_component_styles("sparkline--min-color").color
            high = base + self.get_component_styles("sparkline--max-color").color
            background = base.rich_color
            self._styles = [
                Style(color=low.blend(high, i / (len(BARS) - 1)).rich_color, bgcolor=background)
                for i in range(len(BARS))
            ]
        return self._styles

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        styles = self._level_styles()
        if y or width <= 0:
            return Strip.blank(width, self.rich_style)
        levels = sparkline_levels(self.data or (), width, self.floor, self.ceiling)
        segments = [Segment(" " * (width - len(levels)), self.rich_style)]
        for level in levels:
            segments.append(Segment(BARS[level], styles[level]))
        return Strip(segments, width).simplify()


@dataclass
class GpuSeries:
    """The buffered history of one GPU, kept incrementally as samples arrive."""

    maxlen: int
    util: deque[float] = field(init=False)
    mem: deque[float] = field(init=False)
    temp: deque[float] = field(init=False)
    power: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.util = deque(maxlen=self.maxlen)
        self.mem = deque(maxlen=self.maxlen)
        self.temp = deque(maxlen=self.maxlen)
        self.power = deque(maxlen=self.maxlen)

    def add(self, gpu: telemetry_pb2.GpuSample) -> None:
        if gpu.error:
            return
        if gpu.HasField("gpu_util_percent"):
            self.util.append(gpu.gpu_util_percent)
        if gpu.HasField("mem_used_bytes") and gpu.HasField("mem_total_bytes"):
            mem = percent_of(gpu.mem_used_bytes, gpu.mem_total_bytes)
            if mem is not None:
                self.mem.append(mem)
        if gpu.HasField("temperature_c"):
            self.temp.append(gpu.temperature_c)
        if gpu.HasField("power_draw_w"):
            self.power.append(gpu.power_draw_w)


def spaces_outside_spans(content: Content) -> Content:
    """The same text and look, with no styled span starting or ending before a space.

    Each span gives up its leading spaces and takes the spaces that follow it, so
    every change of style falls just before a visible character. A terminal shows
    the same thing (for spans without a background); viewers that trim every run of
    text (librsvg, which draws the snapshot SVGs) no longer swallow the space after
    a bold or coloured word. For markup whose spans have no background.
    """
    text = content.plain
    end_of_text = len(text)
    spans = []
    for span in content.spans:
        start, end = span.start, span.end
        while start < end and text[start] == " ":
            start += 1
        while end < end_of_text and text[end] == " ":
            end += 1
        if start < end:
            spans.append(Span(start, end, span.style))
    return Content(text, spans, strip_control_codes=False)


def _opt(gpu: telemetry_pb2.GpuSample, name: str) -> float | None:
    return float(getattr(gpu, name)) if gpu.HasField(name) else None


def gpu_values(gpu: telemetry_pb2.GpuSample) -> dict[str, str]:
    """The figures shown beside the sparklines; a dash for what the GPU does not report."""
    if gpu.error:
        return {"util": DASH, "mem": DASH, "temp": DASH, "power": DASH}
    used, total = _opt(gpu, "mem_used_bytes"), _opt(gpu, "mem_total_bytes")
    mem = format_bytes_pair(used, total)
    mem_pct = percent_of(used, total)
    if mem_pct is not None:
        mem += f" {mem_pct:.0f}%"
    temp = _opt(gpu, "temperature_c")
    draw, limit = _opt(gpu, "power_draw_w"), _opt(gpu, "power_limit_w")
    if draw is None:
        power = DASH
    elif limit is None:
        power = f"{draw:.0f} W"
    else:
        power = f"{draw:.0f}/{limit:.0f} W"
    return {
        "util": format_percent(_opt(gpu, "gpu_util_percent")),
        "mem": mem,
        "temp": DASH if temp is None else f"{temp:.0f} °C",
        "power": power,
    }


def _num(gpu: telemetry_pb2.GpuSample, name: str) -> str:
    return str(getattr(gpu, name)) if gpu.HasField(name) else DASH


def gpu_details(gpu: telemetry_pb2.GpuSample) -> str:
    """Markup for clocks, PCIe, NVLink, throttling and ECC (four lines)."""
    if gpu.error:
        return "[$error b]read failed[/]\n[$error]$error[/]"
    sm = f"{gpu.sm_clock_mhz} MHz" if gpu.HasField("sm_clock_mhz") else DASH
    link = DASH
    if gpu.HasField("pcie_link_gen") and gpu.HasField("pcie_link_width"):
        link = f"gen{gpu.pcie_link_gen} x{gpu.pcie_link_width}"
    first = f"SM {sm} · PCIe {link}"
    if gpu.nvlinks:
        up = sum(1 for n in gpu.nvlinks if n.HasField("active") and n.active)
        errors = sum(n.replay_errors + n.crc_errors + n.recovery_errors for n in gpu.nvlinks)
        first += f" · NVL {up}/{len(gpu.nvlinks)}"
        if errors:
            first += f" [$error]{errors} err[/]"
    rx = format_rate(_opt(gpu, "pcie_rx_bytes_per_s"))
    tx = format_rate(_opt(gpu, "pcie_tx_bytes_per_s"))
    second = f"PCIe ↓{rx} ↑{tx}"
    if not gpu.HasField("throttle_reasons"):
        third = f"throttle {DASH}"
    elif gpu.throttle_reason_names:
        third = "[$warning]throttle " + ", ".join(gpu.throttle_reason_names) + "[/]"
    elif gpu.throttle_reasons:
        third = f"[$warning]throttle {gpu.throttle_reasons:#x}[/]"
    else:
        third = "throttle none"
    vol = f"{_num(gpu, 'ecc_corrected_volatile')}/{_num(gpu, 'ecc_uncorrected_volatile')}"
    agg = f"{_num(gpu, 'ecc_corrected_aggregate')}/{_num(gpu, 'ecc_uncorrected_aggregate')}"
    fourth = f"ECC c/u vol {vol} agg {agg}"
    if gpu.ecc_uncorrected_volatile or gpu.ecc_uncorrected_aggregate:
        fourth = f"[$error]{fourth}[/]"
    return "\n".join((first, second, third, fourth))


METRICS = ("util", "mem", "temp", "power")


class GpuPanel(Horizontal):
    """One GPU: four sparklines with their current figures, and the details beside.

    Few widgets on purpose (labels, figures and details are one Static each):
    every one of them costs a render when the GPU's figures move.
    """

    def __init__(self, index: int) -> None:
        super().__init__(id=f"gpu-{index}", classes="gpu-panel")
        self.index = index
        self.border_title = f"GPU {index}"
        self._values: dict[str, str] = {}
        self._details_key = ""
        # Kept, not queried: a refresh touches every one of them.
        self._sparks = {key: ScaledSparkline(classes=f"spark spark-{key}") for key in METRICS}
        self._figures = Static("", classes="gpu-figures")
        self._details = Static("", classes="gpu-details")

    def compose(self) -> ComposeResult:
        yield Static("\n".join(METRICS), classes="gpu-labels")
        with Vertical(classes="gpu-sparks"):
            yield from self._sparks.values()
        yield self._figures
        yield self._details

    def show(self, gpu: telemetry_pb2.GpuSample | None, series: GpuSeries) -> None:
        if gpu is None:
            return
        title = f"GPU {gpu.index}" + (f" · {gpu.name}" if gpu.name else "")
        if self.border_title != title:
            self.border_title = title
        job = ""
        if gpu.job_name:
            ranks = ",".join(str(r) for r in gpu.ranks)
            job = f"{gpu.job_name}" + (f" rank {ranks}" if ranks else "")
        if self.border_subtitle != job:
            self.border_subtitle = job
        self.set_class(bool(gpu.error), "-error")
        values = gpu_values(gpu)
        if values != self._values:
            self._values = values
            self._figures.update("\n".join(values[key] for key in METRICS), layout=False)
        details = gpu_details(gpu)
        if details + gpu.error != self._details_key:
            lines_changed = details.count("\n") != self._details_key.count("\n")
            self._details_key = details + gpu.error
            self._details.update(
                spaces_outside_spans(Content.from_markup(details, error=gpu.error)),
                layout=lines_changed,
            )
        power_ceiling = _opt(gpu, "power_limit_w") or max(series.power, default=0.0) or 1.0
        self._sparks["util"].show(tuple(series.util))
        self._sparks["mem"].show(tuple(series.mem))
        self._sparks["temp"].show(tuple(series.temp), max(100.0, max(series.temp, default=0.0)))
        self._sparks["power"].show(tuple(series.power), power_ceiling)

    def value_text(self, key: str) -> str:
        """The figure shown beside a sparkline ("util", "mem", "temp", "power")."""
        return self._values.get(key, "")

    def spark_data(self, key: str) -> tuple[float, ...]:
        return tuple(self._sparks[key].data or ())


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
        counts: Counter[int] = Counter()
        if node.latest is not None:
            for gpu in node.latest.gpus:
                for code, count in gpu.xid_counts.items():
                    counts[code] += count
        if not counts:
            counts.update(e.xid for e in node.xid_events)
        total = sum(counts.values())
        if not total:
            self._set("#xid-summary", "[b]XID events[/b]\n[$text-muted]none[/]")
            self._set("#xid-list", "")
            return
        lines = [f"[b]XID events[/b] ({total})"]
        for code, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            meaning = XID_MEANINGS.get(code, "")
            lines.append(f"[$error b]{code:>3}[/] {TIMES}{count}  [$text-muted]{meaning}[/]")
        self._set("#xid-summary", "\n".join(lines))
        events: Iterable[telemetry_pb2.XidEvent] = reversed(node.xid_events)
        rows = ["", "[b]newest first[/b]"]
        for i, event in enumerate(events):
            if i == MAX_XID_LINES:
                rows.append(f"[$text-muted]… {len(node.xid_events) - i} older[/]")
                break
            t = event.time.seconds + event.time.nanos / 1e9
            rows.append(f"{_fmt_time(t)}  GPU {event.gpu_index:<2} XID [$error]{event.xid}[/]")
        self._set("#xid-list", "\n".join(rows))
