"""The advisor tab: what the rules find wrong with the job, each with its remedy.

The rules run every ADVISOR_INTERVAL_S whether the tab is shown or not: the tab's
label counts the findings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from console.model.advice import Advice, AdvisorInputs, advise
from console.model.cluster import ClusterStore
from console.model.jobs import JobView
from console.ui.forked import ForkedError, call_forked
from console.ui.screens.job.pane import JobPane

if TYPE_CHECKING:
    from console.model.advice import Taken

ADVISOR_INTERVAL_S = 5.0
# Up to this many metric points and GPU samples (a few ranks and nodes) the advisor
# runs in the UI loop; above, in a forked child, and at most 1/ADVISOR_DUTY of the time
# (a thousand ranks keep ~120,000 points: half a second of CPU and more, too long to hold
# keys and repaints up). At 1/10 it was a third of the console's CPU under a 1,024-rank
# job; what it finds there (stragglers, stalls, loss trends) holds for tens of seconds.
ADVISOR_INLINE_SIZE = 5_000
ADVISOR_DUTY = 20.0
ADVISOR_TIMEOUT_S = 60.0

AdviceSource = Callable[[JobView, ClusterStore, float], list[Advice]]


class AdvisorPane(JobPane):
    TAB = "advisor"
    LABEL = "5 Advisor"
    INTERVAL_S = ADVISOR_INTERVAL_S

    def __init__(
        self,
        cluster: ClusterStore,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        advice: AdviceSource | None = None,
        on_findings: Callable[[int], None] = lambda count: None,
        on_status: Callable[[str], None] = lambda text: None,
    ) -> None:
        super().__init__(cluster, monotonic=monotonic)
        self.cadence.idle_s = ADVISOR_INTERVAL_S
        self.options = OptionList(id="findings")
        self.advice = advice
        self.on_findings = on_findings
        self.on_status = on_status
        self._findings: list[Advice] = []
        self._findings_key: tuple[tuple[str, str], ...] | None = None
        self._inputs = AdvisorInputs()
        self._advising = False

    def compose(self) -> ComposeResult:
        yield self.options

    @property
    def focus_target(self) -> OptionList:
        return self.options

    @property
    def findings(self) -> list[Advice]:
        """What the rules found at their last run, in the order shown."""
        return self._findings

    def expire(self) -> None:
        """Kept: the rules run on their own cadence, not on keys."""

    def draw(self, view: JobView, now: float) -> None:
        if self.advice is not None:
            self._show_findings(self.advice(view, self.cluster, now))
            return
        if self._advising:
            return
        taken = self._inputs.take(view, self.cluster, now)
        if taken.size <= ADVISOR_INLINE_SIZE:
            self._show_findings(advise(taken.build()))
            return
        self._advising = True
        self._advise_forked(taken)

    def refresh_from(self, view: JobView, now: float, monotonic: float) -> None:
        """The rules run on their cadence whether the tab is shown or not."""
        if self.cadence.due(view.version, monotonic):
            self.cadence.drawn(view.version, monotonic)
            self.draw(view, now)

    def show(self, view: JobView | None, now: float, monotonic: float) -> None:
        """Shown as found at the rules' last run: its key does not run them."""
        self.shown = True

    # A description of its own: Textual's default is the repr of the arguments, and that
    # of a thousand ranks' histories took seconds, in the UI loop.
    @work(exclusive=True, group="advisor", description="advisor")
    async def _advise_forked(self, taken: Taken) -> None:
        try:
            started = self.monotonic()
            # In a forked child: a thread would hold the GIL against the UI loop.
            try:
                findings = await asyncio.to_thread(
                    call_forked, lambda: advise(taken.build()), ADVISOR_TIMEOUT_S
                )
            except ForkedError as exc:
                self.on_status(f"advisor: {exc}")
                return
            took = self.monotonic() - started
            self.cadence.interval_s = self.cadence.idle_s = max(
                ADVISOR_INTERVAL_S, ADVISOR_DUTY * took
            )
            self.cadence.drawn_at = self.monotonic()
            if self.is_attached and not self._closing:
                with contextlib.suppress(NoMatches):  # the screen is being taken down
                    self._show_findings(findings)
        finally:
            self._advising = False

    def _show_findings(self, findings: list[Advice]) -> None:
        key = tuple((f.rule, f.evidence) for f in findings)
        if key == self._findings_key:
            return
        self._findings_key = key
        self._findings = findings
        options = self.options
        options.clear_options()
        if not findings:
            options.add_option(Option("no findings: the rules see nothing wrong", disabled=True))
        for finding in findings:
            text = Text()
            style = "bold red" if finding.severity == "critical" else "bold yellow"
            text.append(f"{finding.title}\n", style=style)
            text.append(f"  {finding.evidence}\n", style="")
            if finding.remedy is not None:
                text.append(f"  fix: {finding.remedy.summary}", style="green")
                if finding.applicable:
                    text.append("  [enter applies]", style="dim")
            options.add_option(Option(text))
        self.on_findings(len(findings))
