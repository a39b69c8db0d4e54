"""The node table's cells: a node's row and the header as Rich segments (no widget here).

Rows are rebuilt whenever their node moves, so the hot path avoids Rich `Text`: a row is
a short list of segments, and a GPU's bar cell is built once per (width, stale, value)
and shared by every row that shows that figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gantry.v1 import telemetry_pb2
from rich.segment import Segment
from rich.style import Style

from console.model.bars import (
    DASH,
    block,
    fit,
    format_bytes_short,
    format_rate,
    format_rate_short,
    hbar,
)
from console.model.cluster import ConnState, NodeView
from console.ui.widgets.cluster_columns import GAP, LEFT_PAD, TableLayout

MEM_HIGH_PERCENT = 95.0
# A figure's own style: equal to none in every terminal, but not to `base`.
_FIGURE = Style(bold=False)

# A GPU's cell in a group with bars: the padding before its figure, that padding
# after a gap as a segment, the figure, the bar.
_BarCell = tuple[str, Segment, Segment, Segment]
_CellKey = tuple[int, bool, float | str | None]  # bar width, stale, value or "!"
MAX_CACHED_CELLS = 4096


@dataclass(frozen=True, slots=True)
class GroupStyles:
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
class Palette:
    """Every style a row is drawn in, for rows off or under the cursor."""

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
    util_group: GroupStyles
    mem_group: GroupStyles


def make_palettes(full: Callable[[str], Style], base: Style) -> tuple[Palette, Palette]:
    """The palettes of a row off and under the cursor.

    `full(name)` is the full style of component class `cluster-table--{name}`;
    `base` is the widget's own style.
    """
    track_bg = Style(bgcolor=full("track").bgcolor)
    cursor_bg = Style(bgcolor=full("cursor").bgcolor)

    def make(row_bg: Style | None) -> Palette:
        def part(name: str) -> Style:
            style = full(name)
            return style if row_bg is None else style + row_bg

        row_base = base if row_bg is None else base + row_bg
        util, util_bar = part("util"), full("util") + track_bg
        mem, mem_high = part("mem"), part("mem-high")
        mem_bar, mem_high_bar = full("mem") + track_bg, full("mem-high") + track_bg
        return Palette(
            base=row_base,
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
            figure=row_base + _FIGURE,
            util_group=GroupStyles(util, util, util_bar, util_bar, float("inf")),
            mem_group=GroupStyles(mem, mem_high, mem_bar, mem_high_bar, MEM_HIGH_PERCENT),
        )

    return make(None), make(cursor_bg)


def header_text(layout: TableLayout) -> str:
    """The header's labels after the left pad, each padded to its column."""
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
    return (" " * GAP).join(cells)


def gpu_count(node: NodeView) -> int:
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


def _state_style(node: NodeView, palette: Palette) -> Style:
    if node.state is ConnState.LIVE:
        return palette.lost if node.job_fault or node.gpu_fault else palette.live
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
    value: float | str | None, bar: int, stale: bool, styles: GroupStyles, palette: Palette
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
    styles: GroupStyles,
    palette: Palette,
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


def row_segments(
    node: NodeView, now: float, layout: TableLayout, palette: Palette
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
