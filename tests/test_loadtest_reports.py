"""Reports to look at (console.loadtest.report_files): the CSV of every interval checked
against the report's own totals, and the HTML pages opened in a real headless chromium:
the plots drawn, nothing fetched from the network. Real runs against tests/loadtest_servers.py."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from console.loadtest.aggregate import Aggregate
from console.loadtest.compare import compare
from console.loadtest.config import LoadTestConfig
from console.loadtest.intervals import IntervalLog
from console.loadtest.report import NodeFigures, Report
from console.loadtest.report_files import write_compare_html, write_csv, write_html
from console.loadtest.runner import run_loadtest
from console.loadtest.store import load_report, write_report
from console.loadtest.sweep import CapacitySearch, Slo, StepFigures, SweepReport
from tests.loadtest_servers import Timing, grpc_server_in_thread

ROOT = Path(__file__).resolve().parents[1]
BROWSER_TIMEOUT_S = 120
SLO_TTFT_MS = 60.0
# The server: first token after 20 ms, then 3 more 5 ms apart (about 35 ms a request).
TIMING = Timing(first_s=0.02, gap_s=0.005, tokens=4)
HOSTILE = "<img src=http://192.0.2.1/x.png> & </table>"


@dataclass
class Runs:
    probe: Report  # closed loop, the capacity search's ceiling
    slow: Report  # open loop, 30/s
    fast: Report  # open loop, 60/s for 2 s


async def run_with_intervals(config: LoadTestConfig) -> Report:
    """A real run. Until aggregate.py keeps the intervals itself (the hook this slice's
    report asks for), the same snapshots Aggregate.add gets go to an IntervalLog here."""
    if "intervals" in Report.__dataclass_fields__:
        return await run_loadtest(config)
    add, to_report = Aggregate.add, Aggregate.to_report
    logs: dict[int, IntervalLog] = {}

    def hooked_add(self: Aggregate, snap: Any) -> None:
        log = logs.setdefault(id(self), IntervalLog(self.start_at + self.plan.warmup_s))
        log.add(snap)
        add(self, snap)

    def hooked_to_report(self: Aggregate, *args: Any, **kwargs: Any) -> Report:
        report = to_report(self, *args, **kwargs)
        vars(report)["intervals"] = logs[id(self)].to_json()
        return report

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Aggregate, "add", hooked_add)
        patch.setattr(Aggregate, "to_report", hooked_to_report)
        return await run_loadtest(config)


@pytest.fixture(scope="module")
def runs() -> Iterator[Runs]:
    with grpc_server_in_thread(TIMING) as address:

        async def all_three() -> Runs:
            def open_loop(rate: float, seconds: float) -> LoadTestConfig:
                return LoadTestConfig(
                    address, rate=rate, duration_s=seconds, slo_ttft_ms=SLO_TTFT_MS
                )

            # At once (each run its own aggregate and intervals): 2 s for the three.
            probe, slow, fast = await asyncio.gather(
                run_with_intervals(LoadTestConfig(address, concurrency=4, requests=40)),
                run_with_intervals(open_loop(30, 2)),
                run_with_intervals(open_loop(60, 2)),
            )
            return Runs(probe, slow, fast)

        yield asyncio.run(all_three())


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_csv_has_every_interval_and_they_add_up_to_the_report(
    runs: Runs, tmp_path: Path
) -> None:
    report = runs.fast
    path = tmp_path / "run.csv"
    write_csv(report, path)
    rows = read_csv(path)
    header = list(rows[0])
    counts = {"sent", "completed", "ok", "errors", "good", "tokens", "in_flight"}
    assert all(name in counts or name.endswith(("_s", "_ms")) for name in header), header
    # One row per second of the 2 s window (and the drain), contiguous from 0.
    assert 2 <= len(rows) <= 4
    assert float(rows[0]["start_s"]) == 0.0
    for before, after in itertools.pairwise(rows):
        assert float(after["start_s"]) == float(before["end_s"])

    def total(column: str) -> int:
        return sum(int(row[column]) for row in rows)

    assert total("sent") == report.sent == 120
    assert total("completed") == report.completed
    assert total("ok") == report.ok
    assert total("errors") == report.error_count
    assert total("good") == report.good
    assert total("tokens") == report.tokens == 4 * report.ok
    # The intervals' histograms are the run's, split: the worst of them is the run's worst.
    assert max(float(r["latency_max_ms"]) for r in rows if r["latency_max_ms"]) == (
        report.latency_ms.max
    )
    ttft = report.ttft_ms
    assert ttft is not None
    assert max(float(r["ttft_max_ms"]) for r in rows if r["ttft_max_ms"]) == ttft.max
    assert all(float(r["send_lag_p99_ms"]) >= 0 for r in rows if r["send_lag_p99_ms"])
    full = [r for r in rows if float(r["end_s"]) - float(r["start_s"]) == 1.0 and int(r["sent"])]
    assert full and all(50 <= float(r["sent_per_s"]) <= 70 for r in full)


def test_a_report_kept_as_json_writes_the_same_csv(runs: Runs, tmp_path: Path) -> None:
    write_report(runs.slow, tmp_path / "run.json")
    write_csv(runs.slow, tmp_path / "direct.csv")
    write_csv(load_report(tmp_path / "run.json"), tmp_path / "saved.csv")
    assert (tmp_path / "direct.csv").read_text() == (tmp_path / "saved.csv").read_text()
    assert len(read_csv(tmp_path / "saved.csv")) >= 2


class Dom(HTMLParser):
    """What the browser left: plots drawn, and any address the page would load."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: list[str] = []  # ids of the divs plotly drew into
        self.main_svgs = 0
        self.remote: list[str] = []
        self.imgs = 0
        self.text: list[str] = []
        self.table_rows: dict[str, int] = {}
        self._table = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        classes = (values.get("class") or "").split()
        if "js-plotly-plot" in classes:
            self.plots.append(values.get("id") or "")
        if tag == "svg" and "main-svg" in classes:
            self.main_svgs += 1
        if tag == "img":
            self.imgs += 1
        for name, value in attrs:
            remote = (value or "").strip().lower().startswith(("http:", "https:", "//", "ftp:"))
            if name in ("src", "href", "srcset", "action", "poster", "data") and remote:
                self.remote.append(f"{tag} {name}={value}")
        if tag == "table":
            self._table = values.get("id") or ""
        if tag == "tr" and self._table:
            self.table_rows[self._table] = self.table_rows.get(self._table, 0) + 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)


class Opening:
    """`page` opening in a headless chromium of its own, in `folder`: several open at once
    (each takes seconds, most of them on one core). `dom()` waits for it."""

    def __init__(self, page: Path, folder: Path) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            pytest.fail(
                "chromium is not installed; this test opens the report in a real browser "
                "(apt-get install chromium)",
                pytrace=False,
            )
        argv = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={folder / 'profile'}",
            # Any request the page made would fail: the plots must draw without one.
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ]
        self.page = page
        folder.mkdir(parents=True, exist_ok=True)
        self._out, self._err = folder / "dom.html", folder / "stderr.txt"
        # Files, not pipes: a page's DOM waits for no reader.
        with self._out.open("w") as out, self._err.open("w") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err)
        self._dom: Dom | None = None

    def dom(self) -> Dom:
        if self._dom is None:
            try:
                code = self.proc.wait(BROWSER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.close()
                raise
            assert code == 0, self._err.read_text()[-2000:]
            self._dom = Dom()
            self._dom.feed(self._out.read_text())
        return self._dom

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Pages:
    """The pages the browser opens, written and opening at once."""

    report: Report  # the run page's: the fast run, with a hostile note
    run: Opening
    sweep: Opening  # the slow run's page, with the sweep of the fast and the slow runs
    compare: Opening  # the slow run ("30/s <open>") against the probe ("closed")


@pytest.fixture(scope="module")
def pages(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """Each page keeps a chromium busy for seconds: the three open side by side."""
    root = tmp_path_factory.mktemp("pages")
    report = dataclasses.replace(runs.fast, notes=[*runs.fast.notes, HOSTILE])
    write_html(report, root / "run.html")
    search = CapacitySearch(Slo(ttft_ms=SLO_TTFT_MS, latency_ms=None))
    search.record_probe(4, runs.probe.throughput_rps)
    for run, rate in ((runs.fast, 60.0), (runs.slow, 30.0)):
        search.record(StepFigures.from_report(rate, run))
    sweep = SweepReport.from_search(search, [runs.fast, runs.slow]).to_json()
    write_html(runs.slow, root / "sweep.html", sweep=sweep)
    write_compare_html(runs.slow, runs.probe, "30/s <open>", "closed", root / "compare.html")
    openings: list[Opening] = []
    try:
        for name in ("run", "sweep", "compare"):
            openings.append(Opening(root / f"{name}.html", root / name))
        yield Pages(report, *openings)
    finally:
        for opening in openings:
            opening.close()


def test_the_html_report_draws_its_plots_offline(pages: Pages) -> None:
    report = pages.report
    assert "<script src" not in pages.run.page.read_text()
    dom = pages.run.dom()
    assert dom.plots == ["latency-over-time", "latency-histogram", "token-latencies"]
    assert dom.main_svgs >= 2 * len(dom.plots)
    assert dom.remote == [] and dom.imgs == 0
    text = " ".join(dom.text)
    assert HOSTILE in text  # shown as text, not markup
    assert report.target in text
    # The summary: latency, service, send lag, TTFT and inter-token, under a header row.
    assert dom.table_rows["summary"] == 6


def test_the_sweep_page_has_the_curve_and_every_step(pages: Pages) -> None:
    dom = pages.sweep.dom()
    assert dom.plots[0] == "sweep-curve" and len(dom.plots) == 4
    assert dom.main_svgs >= 2 * len(dom.plots)
    assert dom.remote == []
    assert dom.table_rows["sweep-steps"] == 1 + 2  # the fast and the slow runs' steps
    text = " ".join(dom.text)
    assert "max rate within SLO" in text and "closed-loop ceiling" in text


def test_the_compare_page_overlays_both_runs_with_the_differences(runs: Runs, pages: Pages) -> None:
    dom = pages.compare.dom()
    assert dom.plots == ["latency-over-time", "latency-histogram", "token-latencies"]
    assert dom.main_svgs >= 2 * len(dom.plots)
    assert dom.remote == []
    assert dom.table_rows["differences"] == 1 + len(compare(runs.slow, runs.probe))
    text = " ".join(dom.text)
    assert "30/s <open>" in text
    # Open against closed loop: the page says they do not measure the same thing.
    assert "not comparable: A is open loop and B is closed loop" in text
    # Both runs' traces are in the plots' legends, named by their labels.
    legend = [t for t in dom.text if t.startswith(("A 30/s <open>: ", "B closed: "))]
    for what in ("latency p99 ms", "latency", "TTFT", "inter-token"):
        assert f"A 30/s <open>: {what}" in legend and f"B closed: {what}" in legend


def test_a_run_from_the_cluster_shows_each_nodes_send_lag(runs: Runs, tmp_path: Path) -> None:
    r = runs.slow
    lag = r.send_lag_ms
    assert lag is not None
    # As the run's one worker would be reported if it had run on node "<b>".
    node = NodeFigures("<b>", 1, r.sent, r.completed, r.ok, r.error_count, lag.p99, None)
    page = tmp_path / "nodes.html"
    write_html(dataclasses.replace(r, nodes=[node]), page)
    dom = Dom()
    dom.feed(page.read_text())
    assert dom.table_rows["nodes"] == 1 + 1
    assert f"{lag.p99:.2f}" in dom.text and "<b>" in dom.text
    write_html(r, page)
    dom = Dom()
    dom.feed(page.read_text())
    assert "nodes" not in dom.table_rows


def test_a_report_saved_before_intervals_still_writes_both_files(
    runs: Runs, tmp_path: Path
) -> None:
    data = runs.probe.to_json()
    data.pop("intervals", None)
    older = Report.from_json(data)
    write_csv(older, tmp_path / "old.csv")
    assert (tmp_path / "old.csv").read_text().startswith("start_s,end_s,sent,")
    assert read_csv(tmp_path / "old.csv") == []
    write_html(older, tmp_path / "old.html")
    assert "latency-histogram" in (tmp_path / "old.html").read_text()


def test_the_console_does_not_load_the_plotting_library_at_start_up() -> None:
    check = (
        "import sys, console.cli, console.verbs.loadtest, console.loadtest.report_files\n"
        "assert 'plotly' not in sys.modules, 'plotly imported at start-up'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
