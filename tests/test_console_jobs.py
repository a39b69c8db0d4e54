"""The console's job screens driven by keys (`App.run_test()`) against two real agents
running a real job (the fake training script: no DeepSpeed).

The test kills a rank; its node turns red on the cluster and job screens; `r`, `a`
and `y` restart the job, and the new attempt's steps arrive. Then the rank's log,
the command palette, stop with confirmation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from textual.pilot import Pilot

from console.model.job_spec import load_job_spec
from console.net.cluster_file import dump_cluster_file
from console.net.jobs_client import JobsClient
from console.ui.app import GantryApp
from console.ui.screens.dialogs import ConfirmScreen, RestartDialog
from console.ui.screens.job import JobScreen
from console.ui.screens.jobs import JobsScreen
from console.ui.screens.logs import LogScreen
from console.ui.widgets.rank_table import RankTable
from tests.conftest import StartAgent
from tests.test_jobs_e2e import FAKE_RANK

WAIT_S = 60.0


async def until(
    pilot: Pilot[Any], what: str, check: Callable[[], bool], timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def current(app: GantryApp) -> object:
    """The app's screen, typed loosely: keys change it under mypy's narrowing."""
    return app.screen


def write_spec(tmp_path: Path) -> Path:
    spec = {
        "name": "live-job",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "100000", "--step-s", "0.1"],
        "working_dir": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
    }
    path = tmp_path / "live-job.yaml"
    path.write_text(json.dumps(spec))
    return path


async def test_kill_a_rank_then_restart_it_from_the_console(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    dump_cluster_file(tmp_path / "cluster.yaml", targets)
    client = JobsClient(targets)
    await client.launch(load_job_spec(write_spec(tmp_path)))
    app = GantryApp(targets, refresh_interval_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.jobs_session is not None
        app.jobs_session.list_interval_s = 0.3
        await until(pilot, "the job listed", lambda: "live-job" in app.jobs)
        # Cluster screen: which job and rank runs on each node.
        await until(
            pilot, "node marks", lambda: "live-job r1" in app.store.node("node-b").jobs_text
        )
        await pilot.press("J")
        assert isinstance(app.screen, JobsScreen)
        await pilot.press("enter")
        assert isinstance(app.screen, JobScreen)
        screen = app.screen
        view = app.jobs.get("live-job")
        assert view is not None
        await until(pilot, "steps", lambda: view.last_step() >= 3 and len(view.rank_rows()) == 2)
        table = screen.query_one("#rank-table", RankTable)
        assert table.row_count == 2

        # kill -9 of rank 1's training process (the child of its wrapper)
        attempt = view.latest_attempt()
        assert attempt is not None
        pid = next(r.pid for r in attempt.ranks if r.rank == 1)
        psutil.Process(pid).children()[0].kill()
        await until(pilot, "node-b red", lambda: "node-b" in view.bad_nodes())
        await until(pilot, "cluster mark", lambda: "failed" in app.store.node("node-b").job_fault)
        assert app.store.node("node-b").status_text(time.time()) == "failed r1 live-job"
        await until(
            pilot,
            "red title",
            lambda: "failed: node-b" in str(screen.query_one("#job-title").render()),
        )

        await pilot.press("r")
        assert isinstance(app.screen, RestartDialog)
        assert app.screen.node == "node-b"
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        assert current(app) is screen
        await until(
            pilot,
            "attempt 2 steps",
            lambda: (
                (a := view.latest_attempt()) is not None
                and a.number == 2
                and all(
                    latest is not None and latest.metrics.step >= 2
                    for _, latest in view.rank_rows()
                )
            ),
        )
        assert "node-b" not in view.bad_nodes()
        operator = [e for e in view.events if e.kind == 14]  # OPERATOR_ACTION
        assert operator and "restart" in operator[-1].message

        # The rank's log: `l` on the selected rank.
        await pilot.press("l")
        assert isinstance(app.screen, LogScreen)
        log_screen = app.screen
        await until(
            pilot,
            "log lines",
            lambda: any(
                "attempt 2" in log_screen.buffer.line(i)
                for i in range(log_screen.buffer.first_index, log_screen.buffer.end_index)
            ),
        )
        await pilot.press("escape")
        assert current(app) is screen

        # Stop, confirmed.
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, "stopped", lambda: view.state == 6)  # JOB_STATE_STOPPED
        await asyncio.sleep(0)


async def test_out_of_memory_is_advised_and_the_fix_applied_with_one_key(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    spec_path = write_spec(tmp_path)
    spec = json.loads(spec_path.read_text())
    spec["args"] = [
        *spec["args"],
        "--oom-above",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
    ]
    spec_path.write_text(json.dumps(spec))
    await JobsClient(targets).launch(load_job_spec(spec_path))
    app = GantryApp(targets, refresh_interval_s=0.05)
    async with app.run_test(size=(100, 30)) as pilot:
        assert app.jobs_session is not None
        app.jobs_session.list_interval_s = 0.3
        await until(pilot, "the job listed", lambda: "live-job" in app.jobs)
        screen = app.open_job("live-job")
        await pilot.pause()
        await pilot.press("5")
        await until(pilot, "the OOM finding", lambda: any(f.rule == "oom" for f in screen.findings))
        finding = next(f for f in screen.findings if f.rule == "oom")
        assert finding.applicable and "CUDA out of memory" in finding.evidence
        assert finding.remedy is not None and finding.remedy.kind == "halve-micro-batch"
        options = screen.advisor.options
        options.focus()
        options.highlighted = screen.findings.index(finding)
        await pilot.press("enter")
        assert isinstance(app.screen, ConfirmScreen)
        assert "--per_device_train_batch_size 8 -> 4" in app.screen.detail
        await pilot.press("y")
        view = app.jobs.get("live-job")
        assert view is not None
        await until(
            pilot,
            "attempt 2 steps past the OOM",
            lambda: (
                (a := view.latest_attempt()) is not None
                and a.number == 2
                and all(
                    latest is not None and latest.metrics.step >= 4
                    for _, latest in view.rank_rows()
                )
            ),
        )
        args = list(view.spec.args)
        assert args[args.index("--per_device_train_batch_size") + 1] == "4"
        assert args[args.index("--gradient_accumulation_steps") + 1] == "2"


# -- pieces of the job screen, without agents --------------------------------------------


def naive_gpu_util(store: Any, nodes: list[str], points: int) -> list[float]:
    """What the charts showed before the per-sample cache: every sample read again."""
    series = []
    for name in nodes:
        values = []
        for sample in list(store.node(name).history)[-points:]:
            utils = [g.gpu_util_percent for g in sample.gpus if g.HasField("gpu_util_percent")]
            if utils:
                values.append(sum(utils) / len(utils))
        series.append(values)
    length = min((len(s) for s in series), default=0)
    if not length:
        return []
    return [sum(s[-length + i] for s in series) / len(series) for i in range(length)]


def test_gpu_charts_read_each_sample_once_and_match_a_full_read() -> None:
    from console.model.cluster import ClusterStore
    from console.ui.screens.job.charts import CHART_POINTS
    from tests.console_fixtures import make_sample
    from tests.job_fixtures import jobs_store

    store = ClusterStore(history=CHART_POINTS + 30)
    nodes = ["node-00", "node-01", "node-02"]
    for i, name in enumerate(nodes):
        store.add_node(name, f"10.0.0.{i}:1", 0.0)
    screen = JobScreen("demo-moe", jobs_store(), store, None)
    gpu = screen.charts.gpu
    for step in range(CHART_POINTS + 20):  # past the window: the oldest drop out
        for i, name in enumerate(nodes):
            store.apply_sample(
                name,
                make_sample(name, i, step, 100.0 + step, 8, unsupported_gpu=2 if i else None),
                100.0 + step,
            )
        if step % 7 in (0, 3):  # now and then, as draws come
            for group in ([nodes[0]], nodes[1:], nodes):
                expected = naive_gpu_util(store, group, CHART_POINTS)
                assert list(gpu.group(group)) == pytest.approx(expected)
    newest = gpu.newest_read("node-00")
    assert gpu.group(nodes) is gpu.group(nodes)  # cached: the same tuple
    store.apply_sample("node-00", make_sample("node-00", 0, 999, 999.0, 8), 999.0)
    assert list(gpu.group(nodes)) == pytest.approx(naive_gpu_util(store, nodes, CHART_POINTS))
    assert gpu.newest_read("node-00") is not newest  # moved on by one sample


def test_advisor_sorts_big_inputs_in_pieces_as_one_stable_sort() -> None:
    import random
    from operator import itemgetter

    from console.model.advice import SORT_PIECE, _sorted_in_pieces

    rng = random.Random(3)
    points = [(rng.randrange(500), rng.randrange(8), i) for i in range(3 * SORT_PIECE + 17)]
    key = itemgetter(0, 1)
    assert _sorted_in_pieces(points, key) == sorted(points, key=key)
    assert _sorted_in_pieces(points[:50], key) == sorted(points[:50], key=key)


@pytest.mark.parametrize("nan", [False, True])
def test_advisor_orders_big_inputs_by_time_and_rank_as_sorted_does(nan: bool) -> None:
    import math
    import random
    from operator import attrgetter

    from console.model.advice import SORT_PIECE, _by_time_and_rank, _sorted_in_pieces
    from console.model.advisor import MetricPoint

    rng = random.Random(5)

    def at(i: int) -> MetricPoint:
        t = math.nan if nan and i % 997 == 0 else float(rng.randrange(300)) + rng.choice([0, 0.5])
        return MetricPoint(rng.randrange(40), "n", i, t, None, None, None, None, None, None)

    points = [at(i) for i in range(3 * SORT_PIECE + 17)]  # many equal keys: stability shows
    for chosen in (points, points[:50]):
        key = attrgetter("time", "rank")
        # NaN has no order: what the advisor did before numpy sorted its input
        expected = _sorted_in_pieces(chosen, key) if nan else sorted(chosen, key=key)
        got = _by_time_and_rank(list(chosen))
        assert [id(p) for p in got] == [id(p) for p in expected]


async def test_chart_panel_draws_each_chart_on_a_line_and_repaints_only_changes() -> None:
    from textual.app import App, ComposeResult

    from console.model.bars import DASH
    from console.ui.widgets.chart_panel import Chart, ChartPanel

    class Charts(App[None]):
        def compose(self) -> ComposeResult:
            yield ChartPanel()

    app = Charts()
    async with app.run_test(size=(80, 10)) as pilot:
        panel = app.query_one(ChartPanel)
        charts = [
            Chart("loss", (3.0, 2.0, 1.5)),
            Chart(" fwd s", ()),
            Chart("gpu node-00", (50.0, 100.0), (0.0, 100.0)),
        ]
        panel.show(charts)
        await pilot.pause()
        loss = panel.line_text(0)
        assert loss.startswith("loss ") and loss.rstrip().endswith("1.50 1.50..3.00")
        # 12 cells of label, the sparkline right-aligned on the data's range, the value
        assert len(loss) == 80 and loss[12:56] == " " * 41 + "█▃▁"
        assert panel.line_text(1) == " fwd s" + " " * 51 + DASH + " " * 22
        assert panel.line_text(2)[54:56] == "▅█"  # on the fixed 0..100 scale: 50 is level 4
        drawn = panel.lines_rendered
        panel.show(list(charts))  # the same: nothing to draw
        await pilot.pause()
        assert panel.lines_rendered == drawn
        charts[0] = Chart("loss", (3.0, 2.0, 1.5, 1.2))
        panel.show(charts)
        await pilot.pause()
        assert panel.lines_rendered == drawn + 1  # that line alone
        assert panel.line_text(0).rstrip().endswith("1.20 1.20..3.00")
