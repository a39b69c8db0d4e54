"""Many one-line charts in one widget, drawn through Textual's line API.

Each line reads as a `ChartRow` does (a label, a sparkline on the data's own range or a
fixed one, the latest value with the range), but the whole panel is one widget: a
screen of charts is one node to lay out instead of four per chart, and `show` marks
dirty only the lines whose chart changed (no layout pass, no re-render of the rest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.model.bars import DASH
from console.model.figures_text import format_figure
from console.ui.widgets.sparkline import BARS, level_styles, sparkline_levels

LABEL_WIDTH = 12
VALUE_WIDTH = 24  # one cell of it a gap before the value
# Equal to no style in every terminal, but not to the label's own (see _line): SVG
# viewers (librsvg, which draws snapshots) trim a segment's leading spaces.
_PAD = Style(underline=False)


@dataclass(frozen=True)
class Chart:
    """One line: `values` oldest first, on `fixed` (low, high) or else their own range."""

    label: str
    values: tuple[float, ...] = ()
    fixed: tuple[float, float] | None = None
    fmt: Callable[[float | None], str] = field(default=format_figure, compare=False)


class ChartPanel(ScrollView, can_focus=False):
    """One chart a line, in the order given to `show`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "chart-panel--label",
        "chart-panel--range",
        "chart-panel--min-color",
        "chart-panel--max-color",
    }

    DEFAULT_CSS = """
    ChartPanel {
        height: 1fr;
        overflow-x: hidden;
        scrollbar-size-vertical: 1;
        & > .chart-panel--label { color: $text-muted; }
        & > .chart-panel--range { text-style: dim; }
        & > .chart-panel--min-color { color: $primary 30%; }
        & > .chart-panel--max-color { color: $primary; }
    }
    """

    def __init__(
        self, *, name: str | None = None, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._charts: list[Chart] = []
        self._strips: dict[int, Strip] = {}
        self._strips_width = -1
        self._levels: list[Style] | None = None
        # Lines built from scratch, for tests and benchmarks.
        self.lines_rendered = 0

    @property
    def charts(self) -> list[Chart]:
        return self._charts

    def show(self, charts: Sequence[Chart]) -> None:
        """Shows `charts`, one a line; repaints only the lines that changed."""
        new = list(charts)
        old, self._charts = self._charts, new
        if len(new) != len(old):
            self._strips.clear()
            self.virtual_size = Size(0, len(new))
            self.refresh()
            return
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if not changed:
            return
        for i in changed:
            self._strips.pop(i, None)
        top = self.scroll_offset.y
        width = self.size.width
        self.refresh(*(Region(0, i - top, width, 1) for i in changed if i >= top))

    def line_text(self, index: int) -> str:
        """The plain text of a chart's line (for tests and tools)."""
        return self._line(self._charts[index], self._content_width()).text

    # -- Textual hooks -------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._levels = None
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        width = self._content_width()
        if width != self._strips_width:
            self._strips.clear()
            self._strips_width = width
        index = self.scroll_offset.y + y
        if index >= len(self._charts):
            return Strip.blank(width, self.rich_style)
        strip = self._strips.get(index)
        if strip is None:
            self.lines_rendered += 1
            strip = self._line(self._charts[index], width)
            self._strips[index] = strip
        return strip

    # -- internals -----------------------------------------------------------------

    def _content_width(self) -> int:
        return self.scrollable_content_region.width

    def _line(self, chart: Chart, width: int) -> Strip:
        base = self.rich_style
        label_style = base + self.get_component_rich_style("chart-panel--label")
        label = chart.label[:LABEL_WIDTH].ljust(LABEL_WIDTH)
        text = label.lstrip(" ")
        segments = []
        if len(text) < len(label):
            segments.append(Segment(label[: len(label) - len(text)], base + _PAD))
        segments.append(Segment(text, label_style))
        spark_width = max(0, width - LABEL_WIDTH - VALUE_WIDTH)
        segments.extend(self._spark(chart, spark_width))
        segments.append(Segment(" ", base + _PAD))  # its own segment, as the label's pad
        value = Text(style=base, no_wrap=True, end="")
        values = chart.values
        if values:
            # The gap ends the value's segment (a segment's leading spaces: see _PAD).
            value.append(f"{chart.fmt(values[-1])} ", style=base)
            dim = base + self.get_component_rich_style("chart-panel--range", partial=True)
            value.append(f"{chart.fmt(min(values))}..{chart.fmt(max(values))}", style=dim)
        else:
            value.append(DASH, style=base)
        value.truncate(VALUE_WIDTH - 1, overflow="crop", pad=True)
        segments.extend(value.render(self.app.console))
        return Strip(segments).adjust_cell_length(width, base).simplify()

    def _spark(self, chart: Chart, width: int) -> list[Segment]:
        values = chart.values
        if width <= 0:
            return []
        if not values:
            return [Segment(" " * width, self.rich_style)]
        low, high = chart.fixed if chart.fixed else (min(values), max(values))
        if high <= low:
            low, high = low - 1.0, high + 1.0
        levels = sparkline_levels(values, width, low, high)
        styles = self._level_styles()
        segments = [Segment(" " * (width - len(levels)), self.rich_style)]
        segments.extend(Segment(BARS[level], styles[level]) for level in levels)
        return segments

    def _level_styles(self) -> list[Style]:
        if self._levels is None:
            self._levels = level_styles(self, "chart-panel")
        return self._levels
