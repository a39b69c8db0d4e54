"""The job screen: a job's state and cost over five tabs (ranks, charts, events,
checkpoints, advice), with the operator's actions on keys.

    1-5   tabs: ranks, charts, events, checkpoints, advisor
    r     restart dialog for the selected rank's node (or the first failed one)
    s     stop the job (confirmed)
    l     the selected rank's log
    t     charts over steps / over time
    / o O on the events tab: filter (esc clears), sort column, reverse
    enter on a checkpoint: resume from it (confirmed); on a finding: apply its remedy;
          on an event: its detail (a failure: its cause and last error lines; l opens
          the rank's log at the error)
    escape back

Each tab is a pane that draws itself at its own cadence while shown; the screen draws
the title, routes keys and runs the operator's actions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from gantry.v1 import job_pb2
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import Reactive
from textual.widget import Widget
from textual.widgets import Static

from console.model.advice import Advice
from console.model.cluster import ClusterStore
from console.model.cost import job_cost, total_steps
from console.model.job_rows import lost_nodes, state_name
from console.model.jobs import JS, JobsStore, JobView
from console.model.transport import transport_by_node, transport_summary
from console.net.operator import Operator
from console.ui.screens.job.actions import AGENT_RESTART_UNAVAILABLE, JobActions
from console.ui.screens.job.advisor import AdviceSource, AdvisorPane
from console.ui.screens.job.charts import ChartsPane
from console.ui.screens.job.checkpoints import CheckpointsPane
from console.ui.screens.job.events import EventsPane
from console.ui.screens.job.pane import DRAW_INTERVAL_S, Cadence, JobPane
from console.ui.screens.job.ranks import RanksPane
from console.ui.widgets.footer import SteadyFooter
from console.ui.widgets.pane_strip import PaneStrip


class JobScreen(JobActions):
    """One job: its title and cost over a strip of tab panes, and a status line."""

    # The tabs are a one-line bar over a PaneStrip of fixed-height panes rather than a
    # TabbedContent: its panes are `height: auto` (each switch measured the new pane's
    # content), its tab bar restyled itself and animated its underline for 0.3 s, a
    # repaint every frame, under the next keys; and a ContentSwitcher's display toggle
    # rebuilt the whole screen on every tab key.
    DEFAULT_CSS = """
    JobScreen #job-tab-bar {
        height: 2;
        padding: 0 1;
        link-style: none;
        link-color: $foreground 50%;
        link-background-hover: transparent;
        link-style-hover: underline;
    }
    JobScreen #job-tabs > Vertical {
        width: 100%;
        height: 1fr;
    }
    """

    # Screen.focused repaints the whole screen when it changes, and every tab key moves
    # the focus to its pane's table; the widgets that lose or gain the focus restyle
    # (and repaint) themselves already.
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("r", "restart", "Restart"),
        Binding("s", "stop", "Stop"),
        Binding("l", "logs", "Logs"),
        Binding("t", "toggle_axis", "Steps/time"),
        Binding("1", "tab('ranks')", "Ranks", show=False),
        Binding("2", "tab('charts')", "Charts", show=False),
        Binding("3", "tab('events')", "Events", show=False),
        Binding("4", "tab('checkpoints')", "Checkpoints", show=False),
        Binding("5", "tab('advisor')", "Advisor", show=False),
    ]

    def __init__(
        self,
        name: str,
        jobs: JobsStore,
        cluster: ClusterStore,
        operator: Operator | None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        open_logs: Callable[[str, int, int], None] | None = None,
        advice: AdviceSource | None = None,
        agent_restart: str = AGENT_RESTART_UNAVAILABLE,
    ) -> None:
        super().__init__(
            name, jobs, cluster, operator, open_logs=open_logs, agent_restart=agent_restart
        )
        self.clock = clock
        self.monotonic = monotonic
        self.ranks = RanksPane(cluster, monotonic=monotonic)
        self.charts = ChartsPane(cluster, monotonic=monotonic)
        self.advisor = AdvisorPane(
            cluster,
            monotonic=monotonic,
            advice=advice,
            on_findings=lambda _: self._show("#job-tab-bar", self._tab_bar()),
            on_status=self._set_status,
        )
        self._panes: dict[str, JobPane] = {
            pane.TAB: pane
            for pane in (
                self.ranks,
                self.charts,
                EventsPane(cluster, monotonic=monotonic),
                CheckpointsPane(cluster, monotonic=monotonic),
                self.advisor,
            )
        }
        self._header = Cadence(DRAW_INTERVAL_S)
        self._ready = False
        self._active_tab = "ranks"

    # -- public --------------------------------------------------------------------

    @property
    def active_tab(self) -> str:
        """The name of the tab shown ("ranks", "charts", ...)."""
        return self._active_tab

    @property
    def findings(self) -> list[Advice]:
        """The advisor's findings, in the order its tab lists them."""
        return self.advisor.findings

    def pane(self, tab: str) -> JobPane:
        """The pane of a tab, by its name."""
        return self._panes[tab]

    def selected_rank(self) -> job_pb2.Rank | None:
        view = self.view
        return self.ranks.selected_rank(view) if view is not None else None

    # -- layout --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="job-title", markup=False)
        yield Static(id="job-cost", markup=False)
        yield Static(self._tab_bar(), id="job-tab-bar")
        with PaneStrip(id="job-tabs", initial=self._active_tab):
            yield from self._panes.values()
        yield Static(id="job-status", markup=False)
        yield SteadyFooter()

    def on_mount(self) -> None:
        self.ranks.shown = True
        self.ranks.table.focus()
        self._ready = True
        self.refresh_from_store()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    # -- drawing -------------------------------------------------------------------

    def refresh_from_store(self) -> None:
        if not self._ready:  # the app may poll before the tables have their columns
            return
        view = self.view
        now = self.clock()
        if view is None:
            self.query_one("#job-title", Static).update(f"{self.job_name}: not known to any agent")
            return
        monotonic = self.monotonic()
        if self._header.due(view.version, monotonic):
            self._header.drawn(view.version, monotonic)
            self._title(view, now)
        for pane in self._panes.values():
            pane.refresh_from(view, now, monotonic)
        self._show("#job-status", self._status)

    def redraw(self) -> None:
        """Everything at once (after a key): the cadences are for streamed changes."""
        self._header.expire()
        for pane in self._panes.values():
            pane.expire()
        self.refresh_from_store()

    def _title(self, view: JobView, now: float) -> None:
        job = view.job
        attempt = view.latest_attempt()
        step = view.last_step()
        total = total_steps(view.spec)
        parts = [
            view.name,
            state_name(job.state, "JOB_STATE_"),
            f"attempt {attempt.number}" if attempt else "no attempt",
            f"step {step}" + (f"/{total}" if total else ""),
            *([f"eval loss {evaluated[1]:.4g}"] if (evaluated := view.last_eval()) else []),
            f"restarts {job.restarts_used}/{job.spec.restart.max_restarts}",
            f"leader {view.leader}",
        ]
        bad = sorted(view.bad_nodes() | lost_nodes(view, self.cluster))
        title = Text(parts[0])
        if bad:  # first: the rest may be cut off at 80 columns
            title.append(f" · failed: {', '.join(bad)}", style="bold red")
        title.append(" · " + " · ".join(parts[1:]))
        if job.reason and job.state != JS.JOB_STATE_RUNNING:
            title.append(f" · {job.reason}", style="dim")
        self._show("#job-title", title)
        step_times = [
            t
            for r in view.ranks.values()
            if r.history and (t := r.history[-1].step_time_s) is not None
        ]
        mean_step = sum(step_times) / len(step_times) if step_times else None
        cost = job_cost(job, now, step, mean_step)
        line = "cost " + cost.summary()
        attempt = view.latest_attempt()
        net = transport_summary(transport_by_node(view.events, attempt.number if attempt else None))
        self._show("#job-cost", f"{net} · {line}" if net else line)

    def _tab_bar(self) -> str:
        """The tabs' labels (a click on one switches to it), the active one underlined
        on the line below."""
        labels, under = [], []
        for key, pane in self._panes.items():
            label = pane.LABEL
            if pane is self.advisor and self.advisor.findings:
                label = f"{label} ({len(self.advisor.findings)})"
            active = key == self._active_tab
            link = f"[@click=screen.tab('{key}')]{label}[/]"
            labels.append(f"[bold $foreground]{link}[/]" if active else link)
            bar = "$block-cursor-background" if active else "$foreground 15%"
            under.append(f"[{bar}]{'━' * len(label)}[/]")
        return "  ".join(labels) + "\n" + "[$foreground 15%]━━[/]".join(under)

    # -- tabs ----------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        if tab == self._active_tab or tab not in self._panes:
            return
        target = self._panes[tab].focus_target
        self._switch_to(tab)
        if target is not None:
            target.focus()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Focus moved (Tab, a click) into another tab's pane: that tab is shown."""
        pane = self.query_one("#job-tabs", PaneStrip).pane_of(event.widget)
        if pane is not None and pane != self._active_tab:
            self._switch_to(pane)

    def _switch_to(self, tab: str) -> None:
        """Shows `tab`, drawn at once; the rest (the title, the other panes) waits for
        the next refresh: in the key's frame, only what it changes."""
        self._panes[self._active_tab].hide()
        self._active_tab = tab
        self.query_one("#job-tabs", PaneStrip).current = tab
        self._show("#job-tab-bar", self._tab_bar())
        view = self.view if self._ready else None
        self._panes[tab].show(view, self.clock(), self.monotonic())

    def action_toggle_axis(self) -> None:
        self.charts.by_time = not self.charts.by_time
        self._set_status("charts over " + ("time" if self.charts.by_time else "steps"))
        self.redraw()
