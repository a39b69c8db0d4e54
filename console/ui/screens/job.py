"""The job screen: a job's state, cost, ranks, charts, events, checkpoints and advice,
with the operator's actions on keys.

    1-5   tabs: ranks, charts, events, checkpoints, advisor
    r     restart dialog for the selected rank's node (or the first failed one)
    s     stop the job (confirmed)
    l     the selected rank's log
    t     charts over steps / over time
    enter on a checkpoint: resume from it (confirmed); on a finding: apply its remedy
    escape back
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.reactive import Reactive
from textual.widget import Widget
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from console.model.advice import Advice, AdvisorInputs, advise
from console.model.bars import DASH, format_bytes
from console.model.cluster import ClusterStore, ConnState, format_age
from console.model.cost import job_cost, total_steps
from console.model.gpu_series import GpuUtilization
from console.model.job_rows import RANK_COLUMNS, job_kind, rank_cells, state_name
from console.model.jobs import BAD_RANK_STATES, JS, JobsStore, JobView, ts
from console.model.remedies import RemedyError, apply_remedy, describe_changes
from console.net.jobs_client import JobCommandError
from console.net.operator import Operator
from console.ui.forked import ForkedError, call_forked
from console.ui.screens import StoreScreen
from console.ui.screens.dialogs import ConfirmScreen, RestartChoice, RestartDialog
from console.ui.widgets.chart_panel import Chart, ChartPanel
from console.ui.widgets.footer import SteadyFooter
from console.ui.widgets.pane_strip import PaneStrip
from console.ui.widgets.rank_table import RankTable

if TYPE_CHECKING:
    from console.model.advice import Taken

CHARTS = (
    # id, label, store field, aggregate, fixed scale
    ("loss", "loss", "loss", "mean", None),
    ("grad_norm", "grad norm", "grad_norm", "mean", None),
    ("lr", "lr", "learning_rate", "mean", None),
    ("tokens", "tokens/s", "tokens_per_s", "total", None),
    ("step_time", "step s", "step_time_s", "mean", None),
    ("forward", " fwd s", "forward_s", "mean", None),
    ("backward", " bwd s", "backward_s", "mean", None),
    ("allreduce", " allred s", "allreduce_s", "mean", None),
    ("optim", " optim s", "optimizer_step_s", "mean", None),
)
# id, label: the tabs, on their keys 1-5
TABS = (
    ("ranks", "1 Ranks"),
    ("charts", "2 Charts"),
    ("events", "3 Events"),
    ("checkpoints", "4 Checkpoints"),
    ("advisor", "5 Advisor"),
)
TAB_FOCUS = {
    "ranks": "#rank-table",
    "events": "#event-table",
    "checkpoints": "#checkpoint-table",
    "advisor": "#findings",
}
EVENT_COLUMNS = ("time", "event", "where", "what")
EVENT_WIDTHS = {"time": 8, "event": 16, "where": 14, "what": 200}
CHART_POINTS = 120
TIME_BUCKET_S = 5.0
MAX_GPU_CHARTS = 4
DRAW_INTERVAL_S = 0.5
ADVISOR_INTERVAL_S = 5.0
# Up to this many metric points and GPU samples (a few ranks and nodes) the advisor
# runs in the UI loop; above, on a thread, and at most 1/ADVISOR_DUTY of the time (a
# thousand ranks keep ~120,000 points: a second of CPU and more, too long to hold keys
# and repaints up).
ADVISOR_INLINE_SIZE = 5_000
ADVISOR_DUTY = 10.0
ADVISOR_TIMEOUT_S = 60.0
AGENT_RESTART_UNAVAILABLE = "needs the SSH set-up of `gantry up` (not configured for this cluster)"


class JobScreen(StoreScreen):
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
        open_logs: Callable[[str, int, int], None] | None = None,
        advice: Callable[[JobView, ClusterStore, float], list[Advice]] | None = None,
        agent_restart: str = AGENT_RESTART_UNAVAILABLE,
    ) -> None:
        super().__init__()
        self.job_name = name
        self.jobs = jobs
        self.cluster = cluster
        self.operator = operator
        self.clock = clock
        self.open_logs = open_logs
        self.advice = advice
        self.agent_restart = agent_restart
        self.by_time = False
        self._drawn = -1
        self._ranks_drawn_at = -DRAW_INTERVAL_S
        self._advised_at = -ADVISOR_INTERVAL_S
        self._advisor_interval_s = ADVISOR_INTERVAL_S
        self._advisor_inputs = AdvisorInputs()
        self._advising = False
        self._events_drawn = 0
        self._events_first_seq = 0
        self._event_rows: list[tuple[str, ...]] = []
        self._event_bad: set[int] = set()
        self._event_warn: set[int] = set()
        self._checkpoints_drawn: tuple[tuple[str, int], ...] = ()
        self._findings: list[Advice] = []
        self._findings_key: tuple[tuple[str, str], ...] | None = None
        self._status = ""
        self._rank_keys: list[int] = []
        self._ready = False
        self.active_tab = "ranks"
        self._advisor_count = 0
        self._shown: dict[str, str] = {}
        self.gpu = GpuUtilization(cluster, CHART_POINTS)

    # -- layout --------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="job-title", markup=False)
        yield Static(id="job-cost", markup=False)
        yield Static(self._tab_bar(), id="job-tab-bar")
        with PaneStrip(id="job-tabs", initial="ranks"):
            with Vertical(id="ranks"):
                yield RankTable(RANK_COLUMNS, id="rank-table")
            with Vertical(id="charts"):
                yield ChartPanel(id="chart-panel")
            with Vertical(id="events"):
                yield RankTable(EVENT_COLUMNS, widths=EVENT_WIDTHS, id="event-table")
            with Vertical(id="checkpoints"):
                yield DataTable(id="checkpoint-table", cursor_type="row")
            with Vertical(id="advisor"):
                yield OptionList(id="findings")
        yield Static(id="job-status", markup=False)
        yield SteadyFooter()

    def on_mount(self) -> None:
        ckpts = self.query_one("#checkpoint-table", DataTable)
        for column in ("tag", "step", "age", "size", ""):
            ckpts.add_column(column, key=column or "flags")
        self.query_one("#rank-table", RankTable).focus()
        self._ready = True
        self.refresh_from_store()

    def on_screen_resume(self) -> None:
        self.refresh_from_store()

    @property
    def view(self) -> JobView | None:
        return self.jobs.get(self.job_name)

    # -- drawing -------------------------------------------------------------------

    def refresh_from_store(self) -> None:
        if not self._ready:  # the app may poll before the tables have their columns
            return
        view = self.view
        now = self.clock()
        if view is None:
            self.query_one("#job-title", Static).update(f"{self.job_name}: not known to any agent")
            return
        # A big job changes every few milliseconds: the costly parts are drawn at most
        # every DRAW_INTERVAL_S (and once a second regardless, so ages move on); the
        # advisor runs every ADVISOR_INTERVAL_S.
        monotonic = time.monotonic()
        since = monotonic - self._ranks_drawn_at
        if (view.version != self._drawn and since >= DRAW_INTERVAL_S) or since >= 1.0:
            self._ranks_drawn_at = monotonic
            self._title(view, now)
            self._draw_ranks(view, now)
            self._draw_charts(view, now)
            self._draw_checkpoints(view, now)
            self._drawn = view.version
        self._draw_events(view)
        if monotonic - self._advised_at >= self._advisor_interval_s:
            self._advised_at = monotonic
            self._draw_findings(view, now)
        self._show("#job-status", self._status)

    def _show(self, selector: str, content: str | Text) -> None:
        """Updates a one-line Static only when its text changed, without a layout pass
        (a layout of a screen holding a thousand-row table is costly)."""
        key = content.markup if isinstance(content, Text) else content
        if self._shown.get(selector) == key:
            return
        self._shown[selector] = key
        self.query_one(selector, Static).update(content, layout=False)

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
            f"restarts {job.restarts_used}/{job.spec.restart.max_restarts}",
            f"leader {view.leader}",
        ]
        bad = sorted(view.bad_nodes() | self._lost_nodes(view))
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
        self._show("#job-cost", "cost " + cost.summary())

    def _lost_nodes(self, view: JobView) -> set[str]:
        lost = set()
        for node in view.nodes():
            if node in self.cluster and self.cluster.node(node).state in (
                ConnState.LOST,
                ConnState.UNAUTHORIZED,
            ):
                lost.add(node)
        return lost

    def _draw_ranks(self, view: JobView, now: float) -> None:
        if self.active_tab != "ranks":
            return
        table = self.query_one("#rank-table", RankTable)
        lost = self._lost_nodes(view)
        rows = view.rank_rows()
        bad = {
            index
            for index, (rank, _) in enumerate(rows)
            if rank.state in BAD_RANK_STATES or rank.node in lost or rank.HasField("unknown_since")
        }
        keys = [rank.rank for rank, _ in rows]
        if keys != self._rank_keys:
            self._rank_keys = keys
            first, last = 0, len(rows)
            cells: list[tuple[str, ...]] = []
        else:
            # Only the rows on screen (and a page around them) are worked out again: a
            # thousand ranks change every second. The rest keep their last text until
            # scrolled near.
            top = table.scroll_offset.y
            height = table.size.height or 60  # not laid out yet: a generous page
            first, last = max(0, top - height), top + 2 * height
            cells = list(table.rows)
        fresh = [
            rank_cells(rank, latest, rank.node in lost, now) for rank, latest in rows[first:last]
        ]
        cells[first:last] = fresh
        table.set_rows(cells, bad)

    def _draw_charts(self, view: JobView, now: float) -> None:
        if self.active_tab != "charts":
            # Hidden, each node's GPU means still take in its new samples (a millisecond
            # for 128 nodes), so that the tab's key does not read them all at once (128
            # nodes' minutes of samples took a few hundred milliseconds, in the key's frame).
            for node in dict.fromkeys(view.nodes()):
                if node in self.cluster:
                    self.gpu.node(node)
            return
        charts = [
            Chart(label, tuple(self._series(view, field, how, now)), fixed)
            for _key, label, field, how, fixed in CHARTS
        ]
        charts.append(Chart("coll %", tuple(self._ratio(view, now)), (0.0, 100.0)))
        charts.extend(self._gpu_charts(view))
        self.query_one("#chart-panel", ChartPanel).show(charts)

    def _series(self, view: JobView, field: str, how: str, now: float) -> list[float]:
        if self.by_time:
            return [
                v
                for v in view.time_series(field, TIME_BUCKET_S, now, CHART_POINTS, how)
                if v is not None
            ]
        return [v for _, v in view.step_series(field, how, CHART_POINTS)]

    def _ratio(self, view: JobView, now: float) -> list[float]:
        coll = self._series(view, "collective_time_s", "mean", now)
        step = self._series(view, "step_time_s", "mean", now)
        return [100 * c / s for c, s in zip(coll, step, strict=False) if s > 0]

    def _gpu_charts(self, view: JobView) -> list[Chart]:
        """One chart per node for the first MAX_GPU_CHARTS nodes, then one for the rest."""
        nodes = [n for n in dict.fromkeys(view.nodes()) if n in self.cluster]
        groups = [[n] for n in nodes[:MAX_GPU_CHARTS]]
        if nodes[MAX_GPU_CHARTS:]:
            groups.append(nodes[MAX_GPU_CHARTS:])
        charts = []
        for group in groups:
            label = f"gpu {group[0]}" if len(group) == 1 else f"gpu +{len(group)}"
            charts.append(Chart(label[:12], self.gpu.group(group), (0.0, 100.0)))
        return charts

    def _draw_events(self, view: JobView) -> None:
        # Only while shown: rows kept up to date on a hidden tab are work nobody sees
        # (the tab's key draws them, and they are few next to a thousand ranks).
        if self.active_tab != "events":
            return
        held = view.events
        first = held[0].seq if held else 0
        if len(held) == self._events_drawn and first == self._events_first_seq:
            return
        if first != self._events_first_seq:  # the bounded deque dropped some: redraw
            self._event_rows, self._event_bad, self._event_warn = [], set(), set()
            self._events_drawn = 0
            self._events_first_seq = first
        events = list(held)
        rows = list(self._event_rows)  # a new list: the table compares it with the last
        for event in events[self._events_drawn :]:
            kind = job_kind(event.kind)
            where = event.node + (f" r{event.rank}" if event.node and event.rank >= 0 else "")
            if kind in ("rank failed", "rank hung", "attempt failed", "failed"):
                self._event_bad.add(len(rows))
            elif kind in ("alert", "nccl"):
                self._event_warn.add(len(rows))
            rows.append(
                (
                    time.strftime("%H:%M:%S", time.localtime(ts(event.time))),
                    kind,
                    where,
                    event.message.splitlines()[0] if event.message else "",
                )
            )
        self._event_rows = rows
        table = self.query_one("#event-table", RankTable)
        table.set_rows(rows, self._event_bad, self._event_warn)
        if len(events) > self._events_drawn and self._events_drawn:
            table.cursor_row = table.row_count - 1
        self._events_drawn = len(events)

    def _draw_checkpoints(self, view: JobView, now: float) -> None:
        key = tuple((c.tag, c.step) for c in view.checkpoints)
        table = self.query_one("#checkpoint-table", DataTable)
        if key != self._checkpoints_drawn:
            self._checkpoints_drawn = key
            table.clear()
            for c in reversed(view.checkpoints):
                # A script's own convention is named (hf: checkpoint-N, deepspeed: a tag).
                foreign = c.format not in ("", "gantry", "universal")
                flags = " ".join(
                    f
                    for f, on in (
                        ("latest", c.latest),
                        ("universal", c.universal),
                        (c.format, foreign),
                    )
                    if on
                )
                table.add_row(c.tag, str(c.step), "", format_bytes(c.size_bytes), flags, key=c.tag)
        for c in view.checkpoints:
            saved = ts(c.saved)
            table.update_cell(c.tag, "age", format_age(now - saved) if saved else DASH)

    def _draw_findings(self, view: JobView, now: float) -> None:
        if self.advice is not None:
            self._show_findings(self.advice(view, self.cluster, now))
            return
        if self._advising:
            return
        taken = self._advisor_inputs.take(view, self.cluster, now)
        if taken.size <= ADVISOR_INLINE_SIZE:
            self._show_findings(advise(taken.build()))
            return
        self._advising = True
        self._advise_on_thread(taken)

    # A description of its own: Textual's default is the repr of the arguments, and that
    # of a thousand ranks' histories took seconds, in the UI loop.
    @work(exclusive=True, group="advisor", description="advisor")
    async def _advise_on_thread(self, taken: Taken) -> None:
        try:
            started = time.monotonic()
            # In a forked child: a thread would hold the GIL against the UI loop.
            try:
                findings = await asyncio.to_thread(
                    call_forked, lambda: advise(taken.build()), ADVISOR_TIMEOUT_S
                )
            except ForkedError as exc:
                self._status = f"advisor: {exc}"
                return
            took = time.monotonic() - started
            self._advisor_interval_s = max(ADVISOR_INTERVAL_S, ADVISOR_DUTY * took)
            self._advised_at = time.monotonic()
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
        options = self.query_one("#findings", OptionList)
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
        self._advisor_count = len(findings)
        self._show("#job-tab-bar", self._tab_bar())

    # -- actions -------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss()

    def action_tab(self, tab: str) -> None:
        if tab == self.active_tab or tab not in dict(TABS):
            return
        self.active_tab = tab
        self.query_one("#job-tabs", PaneStrip).current = tab
        self._show("#job-tab-bar", self._tab_bar())
        focus = TAB_FOCUS.get(tab)
        if focus is not None:
            self.query_one(focus).focus()
        self._draw_tab(tab)

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Focus moved (Tab, a click) into another tab's pane: that tab is shown."""
        pane = self.query_one("#job-tabs", PaneStrip).pane_of(event.widget)
        if pane is not None and pane != self.active_tab:
            self.active_tab = pane
            self.query_one("#job-tabs", PaneStrip).current = pane
            self._show("#job-tab-bar", self._tab_bar())
            self._draw_tab(pane)

    def _draw_tab(self, tab: str) -> None:
        """The tab a key just showed, at once; the rest (the title, the throttled draws)
        is left to the next refresh: in the key's frame, only what it changes."""
        view = self.view
        if view is None or not self._ready:
            return
        now = self.clock()
        if tab == "ranks":
            self._draw_ranks(view, now)
        elif tab == "charts":
            self._draw_charts(view, now)
        elif tab == "events":
            self._draw_events(view)
        elif tab == "checkpoints":
            self._draw_checkpoints(view, now)

    def _tab_bar(self) -> str:
        """The tabs' labels (a click on one switches to it), the active one underlined
        on the line below."""
        labels, under = [], []
        for key, label in TABS:
            if key == "advisor" and self._advisor_count:
                label = f"{label} ({self._advisor_count})"
            active = key == self.active_tab
            link = f"[@click=screen.tab('{key}')]{label}[/]"
            labels.append(f"[bold $foreground]{link}[/]" if active else link)
            bar = "$block-cursor-background" if active else "$foreground 15%"
            under.append(f"[{bar}]{'━' * len(label)}[/]")
        return "  ".join(labels) + "\n" + "[$foreground 15%]━━[/]".join(under)

    def redraw(self) -> None:
        """Everything at once (after a key): the throttles are for streamed changes."""
        self._ranks_drawn_at = -DRAW_INTERVAL_S
        self.refresh_from_store()

    def action_toggle_axis(self) -> None:
        self.by_time = not self.by_time
        self._set_status("charts over " + ("time" if self.by_time else "steps"))
        self.redraw()

    def _selected_rank(self) -> tuple[int, str] | None:
        view = self.view
        if view is None:
            return None
        rows = view.rank_rows()
        if not rows:
            return None
        table = self.query_one("#rank-table", RankTable)
        index = min(max(table.cursor_row, 0), len(rows) - 1)
        rank = rows[index][0]
        return rank.rank, rank.node

    def action_logs(self) -> None:
        view = self.view
        chosen = self._selected_rank()
        attempt = view.latest_attempt() if view else None
        if chosen is None or attempt is None or self.open_logs is None:
            self._set_status("no rank to show the log of")
            return
        self.open_logs(self.job_name, chosen[0], attempt.number)

    def action_restart(self) -> None:
        view = self.view
        if view is None:
            return
        bad = sorted(view.bad_nodes() | self._lost_nodes(view))
        chosen = self._selected_rank()
        node = bad[0] if bad else (chosen[1] if chosen else view.nodes()[0])
        if chosen and chosen[1] in bad:
            node = chosen[1]
        can_exclude = ""
        if len(set(view.nodes())) <= 1:
            can_exclude = "the job has no other node"
        elif not view.checkpoints:
            can_exclude = "no checkpoint to convert yet"
        agent_restart = self.agent_restart
        if self.operator is not None:
            agent_restart = self.operator.agent_restart_unavailable(node)
        dialog = RestartDialog(
            self.job_name, node, can_exclude=can_exclude, agent_restart=agent_restart
        )
        self.app.push_screen(dialog, self._restart_chosen)

    def _restart_chosen(self, choice: RestartChoice | None) -> None:
        if choice is None or self.operator is None:
            return
        operator = self.operator
        if choice.kind == "in-place":
            question = f"Restart {self.job_name} in place from the latest checkpoint?"
            detail = "Every rank on every node is stopped, then a new attempt starts."
            call = lambda: operator.restart(self.job_name, node=choice.node)  # noqa: E731
        elif choice.kind == "agent":
            question = f"Restart the agent of {choice.node} over SSH?"
            detail = "Its ranks keep running; the new agent re-adopts them."
            call = lambda: operator.restart_agent(choice.node)  # noqa: E731
        else:
            question = f"Go on without {choice.node}?"
            detail = (
                "The latest checkpoint is converted to a universal one and the job "
                "resumes at the smaller world size."
            )
            call = lambda: operator.restart(  # noqa: E731
                self.job_name, node=choice.node, exclude=(choice.node,)
            )
        self._confirm_then(question, detail, call)

    def action_stop(self) -> None:
        if self.operator is None:
            return
        operator = self.operator
        self._confirm_then(
            f"Stop {self.job_name}?",
            "Every rank is sent SIGTERM, then SIGKILL after the grace period.",
            lambda: operator.stop(self.job_name),
        )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "checkpoint-table" and self.operator is not None:
            tag = str(event.row_key.value)
            view = self.view
            ckpt = next((c for c in view.checkpoints if c.tag == tag), None) if view else None
            if ckpt is None:
                return
            operator = self.operator
            self._confirm_then(
                f"Resume {self.job_name} from {tag} (step {ckpt.step})?",
                "Every rank is stopped and a new attempt starts from this checkpoint.",
                lambda: operator.restart(self.job_name, from_checkpoint=ckpt.path or tag),
            )

    def on_rank_table_row_selected(self, event: RankTable.RowSelected) -> None:
        if event.table.id == "rank-table":
            self.action_logs()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id != "findings" or self.operator is None:
            return
        index = event.option_index
        if not 0 <= index < len(self._findings):
            return
        finding = self._findings[index]
        view = self.view
        if finding.remedy is None or not finding.applicable or view is None:
            self._set_status(f"{finding.title}: nothing to apply automatically")
            return
        try:
            spec = apply_remedy(finding.remedy, view.spec)
        except RemedyError as exc:
            self._set_status(str(exc))
            return
        changes = "; ".join(describe_changes(view.spec, spec))
        operator = self.operator
        self._confirm_then(
            f"Apply: {finding.remedy.summary}?",
            f"{changes}. The job restarts from its latest checkpoint.",
            lambda: operator.restart(self.job_name, spec=spec),
        )

    def _confirm_then(self, question: str, detail: str, call: Callable[[], Awaitable[str]]) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self._set_status("working…")
                self._run(call)
            else:
                self._set_status("cancelled")

        self.app.push_screen(ConfirmScreen(question, detail), answered)

    @work(exclusive=True, group="job-action")
    async def _run(self, call: Callable[[], Awaitable[str]]) -> None:
        try:
            self._set_status(await call())
        except JobCommandError as exc:
            self._set_status(f"refused: {exc}")

    def _set_status(self, text: str) -> None:
        self._status = text
        if self.is_mounted:
            self._show("#job-status", text)
