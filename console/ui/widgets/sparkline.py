"""Sparklines on a fixed scale: the bar glyphs, the levels of a series, and a widget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Sparkline

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


def level_styles(widget: Widget, component: str) -> list[Style]:
    """One style per bar level, blended from the widget's `{component}--min-color` to its
    `{component}--max-color` over its background."""
    _, base = widget.background_colors
    low = base + widget.get_component_styles(f"{component}--min-color").color
    high = base + widget.get_component_styles(f"{component}--max-color").color
    background = base.rich_color
    return [
        Style(color=low.blend(high, i / (len(BARS) - 1)).rich_color, bgcolor=background)
        for i in range(len(BARS))
    ]


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
        """Shows `data`, oldest first, on the scale up to `ceiling` (None: kept)."""
        if ceiling is not None and ceiling != self.ceiling:
            self.ceiling = ceiling
            self.refresh()
        self.data = data

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._styles = None

    def _level_styles(self) -> list[Style]:
        if self._styles is None:
            self._styles = level_styles(self, "sparkline")
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
