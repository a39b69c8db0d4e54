"""The Load Test screen (one screen just past 400 lines: its form, run and sweep parts live in
console/model/loadtest_*form.py and console/ui/widgets/loadtest*.py): load a served endpoint
from the console and read the results.

The form picks the endpoint (the running servers are offered; any HOST:PORT or http(s)
URL can be typed), the mode, the rate / concurrency / schedule, the duration, max tokens
and whether completions ignore end-of-sequence. The sweep mode searches the highest rate
whose SLOs (the fields it shows) hold, showing each step as it finishes and the result;
a sweep is saved under sweeps/ beside the runs. The run goes in a child process (the
console's event loop only merges its figures), with live requests/s and the run's latency
percentiles (the report's own figures), the latency histogram, the errors and warnings.
Every finished (or stopped) run is saved and listed; any two compare side by side, with a
warning when they are not comparable (open against closed loop, another target...).
Keys typed into a field go to the field; the screen's letter keys act elsewhere.

    ctrl+r  run            ctrl+x  stop the run (the partial report is kept)
    m       mark a past run for comparison (the last two marked)
    c       compare the two marked runs (or the selected one against the one before)
    enter   show the selected past run        escape  back
"""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import DataTable, Footer, Input, Select, Static

from console.loadtest.compare import compare, format_compare, incomparable
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.progress import Progress
from console.loadtest.report import Report
from console.loadtest.runner import run_loadtest
from console.loadtest.store import DEFAULT_DIR, list_reports, load_report, save_report
from console.loadtest.sweep import SweepReport
from console.loadtest.sweep_run import run_sweep, save_sweep
from console.model.loadtest_form import MODE_HELP, MODES, YES_NO, LoadForm, config_from_form
from console.model.loadtest_sweep_form import SWEEP_HELP, SWEEP_MODE, sweep_config_from_form
from console.ui.widgets.chart import ChartRow
from console.ui.widgets.loadtest_sweep import SloRow, SweepSteps

HISTORY = 120  # progress points kept for the charts (two a second: a minute)
HISTOGRAM_ROWS = 8
FORM_LABELS = (
    ("endpoint", "target"),
    ("mode", "mode"),
    ("load", "load"),
    ("run for", "duration"),
    ("tokens", "max-tokens"),
    ("ignore EOS", "eos"),
)
RUN_COLUMNS = ("run", "target", "load", "req/s", "p50 ms", "p99 ms", "errors", "")


def histogram_lines(buckets: list[tuple[float, int]], rows: int = HISTOGRAM_ROWS) -> list[str]:
    """(upper bound ms, count) buckets as text bars, merged down to at most `rows`."""
    buckets = [(upper, count) for upper, count in buckets if count]
    if not buckets:
        return ["no answers yet"]
    per = -(-len(buckets) // rows)
    merged = [
        (buckets[min(i + per, len(buckets)) - 1][0], sum(c for _, c in buckets[i : i + per]))
        for i in range(0, len(buckets), per)
    ]
    top = max(count for _, count in merged)
    return [
        f"≤{upper:>9.1f} ms {'█' * max(1, round(30 * count / top))} {count}"
        for upper, count in merged
    ]


def run_row(path: Path, report: Report) -> tuple[str, ...]:
    lat = report.latency_ms
    errors = f"{report.error_count}" + (f" ({report.error_pct:.1f}%)" if report.error_count else "")
    return (
        path.stem,
        report.target,
        report.load,
        f"{report.achieved_rps:.1f}",
        f"{lat.p50:.1f}" if lat.count else "-",
        f"{lat.p99:.1f}" if lat.count else "-",
        errors,
        "partial" if report.partial else "",
    )


class LoadTestScreen(ModalScreen[None]):
    """Not a StoreScreen: it talks to the endpoint, not to the agents."""

    DEFAULT_CSS = """
    LoadTestScreen { background: $surface; }
    LoadTestScreen #lt-form { height: 3; }
    LoadTestScreen #lt-labels { height: 1; }
    LoadTestScreen .lt-label { padding: 0 1; color: $text-muted; }
    LoadTestScreen #lt-form > Input, LoadTestScreen #lt-labels > .lt-label { width: 1fr; }
    LoadTestScreen #lt-form > #lt-target, LoadTestScreen #lt-labels > .lt-target { width: 3fr; }
    LoadTestScreen #lt-form > #lt-mode, LoadTestScreen #lt-labels > .lt-mode { width: 16; }
    LoadTestScreen #lt-form > #lt-eos, LoadTestScreen #lt-labels > .lt-eos { width: 12; }
    LoadTestScreen #lt-help { height: 1; padding: 0 1; color: $text-muted; }
    LoadTestScreen #lt-progress { height: 1; padding: 0 1; }
    LoadTestScreen #lt-notes { height: auto; padding: 0 1; color: $warning; }
    LoadTestScreen #lt-live { height: auto; padding: 0 1; }
    LoadTestScreen #lt-histogram { height: auto; max-height: 9; padding: 0 1; }
    LoadTestScreen #lt-runs { height: 8; }
    LoadTestScreen #lt-detail { height: 1fr; padding: 0 1; background: $panel; }
    LoadTestScreen #lt-status { height: 1; padding: 0 1; }
    LoadTestScreen #lt-slo, LoadTestScreen #lt-steps { display: none; }
    LoadTestScreen.-sweep #lt-slo, LoadTestScreen.-sweep #lt-steps { display: block; }
    LoadTestScreen.-sweep #lt-live, LoadTestScreen.-sweep #lt-histogram { display: none; }
    LoadTestScreen.-sweep #lt-runs, LoadTestScreen.-sweep #lt-load { display: none; }
    LoadTestScreen.-sweep #lt-labels > .lt-load { display: none; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+r", "run", "Run", priority=True),
        Binding("ctrl+x", "stop_run", "Stop run", priority=True),
        Binding("m", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self,
        endpoints: list[str] | None = None,
        *,
        reports_dir: Path = DEFAULT_DIR,
        token_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.endpoints = endpoints or []
        self.reports_dir = reports_dir
        self.token_file = token_file
        self.stop_event: asyncio.Event | None = None
        self.runs: list[tuple[Path, Report]] = []
        self.marked: list[Path] = []
        self.rates: deque[float] = deque(maxlen=HISTORY)
        self.p50s: deque[float] = deque(maxlen=HISTORY)
        self.p99s: deque[float] = deque(maxlen=HISTORY)
        self.last_report: Report | None = None
        self.last_sweep: SweepReport | None = None

    def compose(self) -> ComposeResult:
        yield Static("load test", id="lt-title")
        with Horizontal(id="lt-labels"):
            for label, name in FORM_LABELS:
                yield Static(label, classes=f"lt-label lt-{name}")
        with Horizontal(id="lt-form"):
            # Not selected on focus: a key typed into a field adds to it, never replaces
            # the endpoint with that one letter.
            yield Input(
                value=self.endpoints[-1] if self.endpoints else "",
                placeholder="HOST:PORT or http(s)://HOST/v1/completions",
                suggester=SuggestFromList(self.endpoints) if self.endpoints else None,
                select_on_focus=False,
                id="lt-target",
            )
            modes = [*MODES, SWEEP_MODE]
            yield Select([(m, m) for m in modes], value="closed", allow_blank=False, id="lt-mode")
            for value, name in (("4", "load"), ("10s", "duration"), ("32", "max-tokens")):
                yield Input(value=value, placeholder=name, select_on_focus=False, id=f"lt-{name}")
            yield Select([(v, v) for v in YES_NO], value="no", allow_blank=False, id="lt-eos")
        yield SloRow(id="lt-slo")
        yield Static(id="lt-help", markup=False)
        yield Static("not running: ctrl+r runs", id="lt-progress", markup=False)
        yield Static(id="lt-notes", markup=False)
        yield SweepSteps(id="lt-steps")
        with Vertical(id="lt-live"):
            yield ChartRow("req/s", id="lt-rate")
            yield ChartRow("p50 ms", id="lt-p50")
            yield ChartRow("p99 ms", id="lt-p99")
        yield Static(id="lt-histogram", markup=False)
        yield DataTable(id="lt-runs", cursor_type="row")
        with VerticalScroll(id="lt-detail"):
            yield Static(id="lt-detail-text", markup=False)
        yield Static(id="lt-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#lt-runs", DataTable)
        for column in RUN_COLUMNS:
            table.add_column(column, key=column or "flag")
        self._show_help()
        self.load_runs()
        self.query_one("#lt-target", Input).focus()

    # --- the form -------------------------------------------------------------------

    def form(self) -> LoadForm:
        mode = self.query_one("#lt-mode", Select).value
        return LoadForm(
            target=self.query_one("#lt-target", Input).value,
            mode=str(mode),
            load=self.query_one("#lt-load", Input).value,
            duration=self.query_one("#lt-duration", Input).value,
            max_tokens=self.query_one("#lt-max-tokens", Input).value,
            ignore_eos=str(self.query_one("#lt-eos", Select).value),
        )

    def on_select_changed(self, event: Select.Changed) -> None:
        self._show_help()

    def _show_help(self) -> None:
        mode = str(self.query_one("#lt-mode", Select).value)
        self.set_class(mode == SWEEP_MODE, "-sweep")
        known = f" · servers: {', '.join(self.endpoints)}" if self.endpoints else ""
        what = f"sweep: {SWEEP_HELP}" if mode == SWEEP_MODE else f"load: {MODE_HELP.get(mode, '')}"
        self.query_one("#lt-help", Static).update(f"{what}{known}")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_run()

    # --- running --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.stop_event is not None

    def action_run(self) -> None:
        if self.running:
            self._status("a run is going: ctrl+x stops it")
            return
        form = self.form()
        try:
            if form.mode == SWEEP_MODE:
                slo = self.query_one(SloRow).values()
                config = sweep_config_from_form(form, *slo, token_file=self.token_file)
            else:
                config = config_from_form(form, self.token_file)
        except LoadTestError as exc:
            self._status(str(exc))
            return
        self.stop_event = asyncio.Event()
        self._clear_series()
        self._show_notes([])
        self._status(f"reaching {config.target}…")
        if config.sweep:
            self.query_one(SweepSteps).begin()
            self._run_sweep(config, self.stop_event)
        else:
            self._run(config, self.stop_event)

    def _clear_series(self) -> None:
        for series in (self.rates, self.p50s, self.p99s):
            series.clear()

    @work(exclusive=True, group="loadtest")
    async def _run(self, config: LoadTestConfig, stop: asyncio.Event) -> None:
        try:
            # A child process makes the load: this loop only merges its figures.
            report = await run_loadtest(config, self.show_progress, stop, in_process=False)
        except LoadTestError as exc:
            self._status(str(exc))
            return
        finally:
            self.stop_event = None
        path = save_report(report, self.reports_dir)
        self.last_report = report
        self.query_one("#lt-detail-text", Static).update(report.to_table())
        self._show_notes(report.notes)
        state = "stopped (partial)" if report.partial else "done"
        self._status(f"{state}: saved {path}")
        self.load_runs()

    @work(exclusive=True, group="loadtest")
    async def _run_sweep(self, config: LoadTestConfig, stop: asyncio.Event) -> None:
        steps = self.query_one(SweepSteps)

        def event(kind: str, value: float) -> None:
            self._clear_series()
            if kind == "ceiling":
                steps.set_ceiling(value)
            else:
                what = f"probe, {value:g} in flight" if kind == "probe" else f"{value:.1f}/s"
                self._status(f"sweep: {what}…")

        try:
            sweep = await run_sweep(
                config, steps.add, self.show_progress, stop, on_event=event, in_process=False
            )
        except LoadTestError as exc:
            self._status(str(exc))
            return
        finally:
            self.stop_event = None
        path = save_sweep(sweep, self.reports_dir / "sweeps")
        self.show_sweep(sweep)
        best = sweep.max_rate_within_slo
        found = f"{best:.1f}/s" if best is not None else "none"
        state = "stopped" if stop.is_set() else "done"
        self._status(f"sweep {state}: max rate within SLO {found}: saved {path}")

    def show_sweep(self, sweep: SweepReport) -> None:
        """A finished sweep: its steps and result, and its table in the detail pane."""
        self.last_sweep = sweep
        self.query_one(SweepSteps).show_sweep(sweep)
        self.query_one("#lt-detail-text", Static).update(sweep.to_table())

    def show_progress(self, progress: Progress) -> None:
        self.query_one("#lt-progress", Static).update(progress.line())
        self._show_notes(progress.notes)
        if progress.phase == "warmup":
            return
        self.rates.append(progress.achieved_rps)
        self.p50s.append(progress.latency_ms.get("p50", 0.0))
        self.p99s.append(progress.latency_ms.get("p99", 0.0))
        self.query_one("#lt-rate", ChartRow).show(self.rates)
        self.query_one("#lt-p50", ChartRow).show(self.p50s)
        self.query_one("#lt-p99", ChartRow).show(self.p99s)
        lines = histogram_lines(progress.histogram)
        if progress.errors:
            errors = ", ".join(f"{k} {v}" for k, v in sorted(progress.errors.items()))
            lines.append(f"errors: {errors}")
        self.query_one("#lt-histogram", Static).update("\n".join(lines))

    def _show_notes(self, notes: list[str]) -> None:
        self.query_one("#lt-notes", Static).update("\n".join(f"warning: {n}" for n in notes))

    def action_stop_run(self) -> None:
        if self.stop_event is None:
            self._status("nothing running")
            return
        self.stop_event.set()
        self._status("stopping: the partial report is kept")

    def action_back(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        self.dismiss(None)

    # --- past runs ------------------------------------------------------------------

    def load_runs(self) -> None:
        """Reads the saved reports (after a run, and on opening)."""
        runs = []
        unreadable = 0
        for path in list_reports(self.reports_dir):
            try:
                runs.append((path, load_report(path)))
            except ValueError:
                unreadable += 1
        self.runs = runs
        self._draw_runs(len(runs) - 1)
        if unreadable:
            self._status(f"{unreadable} file(s) in {self.reports_dir} are not load test reports")

    def _draw_runs(self, cursor: int) -> None:
        table = self.query_one("#lt-runs", DataTable)
        table.clear()
        for path, report in self.runs:
            cells = run_row(path, report)
            style = "bold" if path in self.marked else ""
            table.add_row(*(Text(c, style=style) for c in cells), key=str(path))
        if self.runs:
            table.move_cursor(row=cursor)

    def selected_run(self) -> tuple[Path, Report] | None:
        if not self.runs:
            return None
        row = self.query_one("#lt-runs", DataTable).cursor_row
        return self.runs[min(max(row, 0), len(self.runs) - 1)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        chosen = self.selected_run()
        if chosen is not None:
            self.query_one("#lt-detail-text", Static).update(chosen[1].to_table())

    def action_mark(self) -> None:
        chosen = self.selected_run()
        if chosen is None:
            self._status("no past runs yet")
            return
        path = chosen[0]
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked = [*self.marked, path][-2:]
        self._draw_runs(self.runs.index(chosen))
        names = " and ".join(p.stem for p in self.marked) or "none"
        self._status(f"marked: {names}" + (" · c compares" if len(self.marked) == 2 else ""))

    def action_compare(self) -> None:
        by_path = dict(self.runs)
        pair = [p for p in self.marked if p in by_path]
        if len(pair) != 2:
            chosen = self.selected_run()
            index = self.runs.index(chosen) if chosen else -1
            if index < 1:
                self._status("mark two runs with m, or select a run that has one before it")
                return
            pair = [self.runs[index - 1][0], self.runs[index][0]]
        a, b = pair
        rows = compare(by_path[a], by_path[b])
        warnings = incomparable(by_path[a], by_path[b])
        text = format_compare(
            rows, f"{a.stem} {by_path[a].load}", f"{b.stem} {by_path[b].load}", warnings
        )
        self.query_one("#lt-detail-text", Static).update(text)
        self._status(f"comparing {a.stem} (A) with {b.stem} (B)")

    def _status(self, text: str) -> None:
        self.query_one("#lt-status", Static).update(text)
