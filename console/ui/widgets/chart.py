"""A one-line chart: a label, a sparkline on the data's own range (or a fixed one),
and the latest value with the range shown, so the shape and the numbers read together
at 80 columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from console.model.bars import DASH
from console.model.figures_text import format_figure
from console.ui.widgets.sparkline import ScaledSparkline


class ChartRow(Horizontal):
    DEFAULT_CSS = """
    ChartRow { height: 1; }
    ChartRow > .chart-label { width: 12; color: $text-muted; }
    ChartRow > ScaledSparkline { width: 1fr; height: 1; }
    ChartRow > .chart-value { width: 24; padding: 0 0 0 1; text-wrap: nowrap; }
    """

    def __init__(
        self,
        label: str,
        *,
        fixed: tuple[float, float] | None = None,
        fmt: Callable[[float | None], str] = format_figure,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.label = label
        self.fixed = fixed
        self.fmt = fmt
        self._shown: tuple[float, ...] | None = None

    def compose(self) -> ComposeResult:
        yield Static(self.label, classes="chart-label")
        yield ScaledSparkline()
        yield Static(DASH, classes="chart-value")

    def show(self, data: Sequence[float]) -> None:
        values = tuple(data)
        if values == self._shown:
            return
        self._shown = values
        spark = self.query_one(ScaledSparkline)
        value = self.query_one(".chart-value", Static)
        if not values:
            spark.show(())
            value.update(DASH)
            return
        low, high = self.fixed if self.fixed else (min(values), max(values))
        if high <= low:
            low, high = low - 1.0, high + 1.0
        spark.floor = low
        spark.show(values, ceiling=high)
        last = values[-1]
        value.update(f"{self.fmt(last)} [dim]{self.fmt(min(values))}..{self.fmt(max(values))}[/]")
