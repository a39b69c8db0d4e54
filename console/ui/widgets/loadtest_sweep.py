"""The Load Test screen's sweep mode: the SLO fields (one line) and the steps as they finish."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Static

from console.loadtest.sweep import GOODPUT_PCT, STEP_HEADER, Step, SweepReport, step_row


class SloRow(Horizontal):
    """`SLO  TTFT ≤ [   ] ms   latency ≤ [   ] ms   goodput ≥ 99%`, borderless fields."""

    DEFAULT_CSS = """
    SloRow { height: 1; padding: 0 1; }
    SloRow > .slo-label { width: auto; color: $text-muted; }
    SloRow > Input { width: 10; margin: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("SLO  TTFT ≤", classes="slo-label", markup=False)
        yield Input(placeholder="none", compact=True, select_on_focus=False, id="lt-slo-ttft")
        yield Static("ms   latency ≤", classes="slo-label", markup=False)
        yield Input(placeholder="none", compact=True, select_on_focus=False, id="lt-slo-latency")
        yield Static(f"ms   goodput ≥ {GOODPUT_PCT:g}%", classes="slo-label", markup=False)

    def values(self) -> tuple[str, str]:
        """(TTFT, latency) as typed."""
        ttft = self.query_one("#lt-slo-ttft", Input).value
        return ttft, self.query_one("#lt-slo-latency", Input).value


class SweepSteps(Static):
    """The ceiling and each finished step, one line each, then the result."""

    DEFAULT_CSS = """
    SweepSteps { height: auto; max-height: 14; padding: 0 1; }
    """

    def __init__(self, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.ceiling_rps: float | None = None
        self.steps: list[Step] = []

    def begin(self) -> None:
        self.ceiling_rps = None
        self.steps = []
        self._draw()

    def set_ceiling(self, rps: float) -> None:
        self.ceiling_rps = rps
        self._draw()

    def add(self, step: Step) -> None:
        self.steps.append(step)
        self._draw()

    def show_sweep(self, sweep: SweepReport) -> None:
        self.ceiling_rps, self.steps = sweep.ceiling_rps, list(sweep.steps)
        best = sweep.max_rate_within_slo
        self._draw(f"max rate within SLO  {f'{best:.1f}/s' if best is not None else 'none'}")

    def _draw(self, result: str = "") -> None:
        lines = []
        if self.ceiling_rps is not None:
            lines.append(f"ceiling {self.ceiling_rps:.1f}/s answered (closed loop)")
        if self.steps:
            lines += [STEP_HEADER, *(step_row(s) for s in self.steps)]
        if result:
            lines.append(result)
        self.update("\n".join(lines))
