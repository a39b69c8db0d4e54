"""Issue 16, the console's screens: every action on the right job, nothing misleading
or cut off at 80x24. Fixed data and a fixed clock; `App.run_test()` for the screens."""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2

from console.model.cost import job_cost
from console.model.jobs import EK, JS, RS, JobsStore
from console.model.reasons import fit, short_reason
from console.net.operator import Operator
from console.ui.app import GantryApp
from console.ui.screens.dialogs import RestartDialog
from console.ui.screens.help import HelpScreen
from console.ui.screens.job import JobScreen
from console.ui.screens.job.event_detail import ErrorLines
from console.ui.screens.jobs import JobsScreen
from console.ui.widgets.chart_panel import ChartPanel
from tests.console_fixtures import FIXED, cluster_store, targets_for
from tests.job_fixtures import checkpoints, demo_job, jobs_store

pytestmark = pytest.mark.usefixtures("utc")

OOM = (
    "rank 3 failed: CUDA out of memory. Tried to allocate 3.40 GiB. GPU 1 has a total "
    "capacity of 79.10 GiB of which 1.2 GiB is free. (exit code 1)"
)


def one_rank_job(
    name: str, node: str, job_state: int, rank_state: int, started: float, gpu: bool = True
) -> job_pb2.Job:
    job = job_pb2.Job(state=job_state, leader=node)  # type: ignore[arg-type]
    job.created.FromSeconds(int(started))
    job.spec.name = name
    job.spec.nodes.add(node=node, slots=1)
    attempt = job.attempts.add(number=1, state=job_state)
    attempt.started.FromSeconds(int(started))
    rank = attempt.ranks.add(rank=1, node=node, state=rank_state)
    if gpu:
        rank.gpu_indices.append(0)
    return job


def make_app(jobs: JobsStore, operator: Operator | None = None) -> GantryApp:
    store = cluster_store()
    return GantryApp(
        targets_for(store),
        store=store,
        connect=False,
        clock=lambda: FIXED,
        refresh_interval_s=0.05,
        cluster_name="train-a",
        jobs=jobs,
        operator=operator,
    )


# -- 1. the cluster screen marks and restarts the current job -------------------------


def history_on_node_01() -> JobsStore:
    """node-01: typo-moe failed an hour ago; demo-moe failed there since; old-moe, a
    stopped job with a failed rank, is older still."""
    jobs = JobsStore()
    failed, stopped = JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED
    bad = RS.RANK_STATE_FAILED
    jobs.apply_job("node-01", one_rank_job("old-moe", "node-01", stopped, bad, FIXED - 9000))
    jobs.apply_job("node-01", one_rank_job("typo-moe", "node-01", failed, bad, FIXED - 3600))
    jobs.apply_job("node-01", one_rank_job("demo-moe", "node-01", failed, bad, FIXED - 600))
    return jobs


def test_only_a_current_job_marks_a_node() -> None:
    jobs = history_on_node_01()
    faults = jobs.current_faults()
    assert [view.name for view, _ in faults["node-01"]] == ["demo-moe"]
    # A running job is current even when a newer job failed on its node.
    running = one_rank_job(
        "long-moe", "node-02", JS.JOB_STATE_RUNNING, RS.RANK_STATE_HUNG, FIXED - 7200
    )
    jobs.apply_job("node-02", running)
    newer = one_rank_job("new-moe", "node-02", JS.JOB_STATE_FAILED, RS.RANK_STATE_FAILED, FIXED)
    jobs.apply_job("node-02", newer)
    assert [v.name for v, _ in jobs.current_faults()["node-02"]] == ["new-moe", "long-moe"]
    # A job that succeeded since: the old failure on that node is history.
    done = one_rank_job(
        "fixed-moe", "node-01", JS.JOB_STATE_SUCCEEDED, RS.RANK_STATE_EXITED, FIXED + 60
    )
    jobs.apply_job("node-01", done)
    assert "node-01" not in jobs.current_faults()


async def test_cluster_r_opens_the_job_that_failed_last_on_the_node() -> None:
    app = make_app(history_on_node_01())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        assert app.store.node("node-01").job_fault == "failed r1 demo-moe"
        await pilot.press("down", "r")
        await pilot.pause(0.2)
        dialog = app.screen
        assert isinstance(dialog, RestartDialog)
        assert dialog.job == "demo-moe" and dialog.node == "node-01"
        assert dialog.heading == "restart demo-moe · node-01: rank 1 failed"


# -- 2. dialogs say what they do ------------------------------------------------------


async def test_restart_dialog_of_a_healthy_job_names_no_failed_node() -> None:
    app = make_app(jobs_store(failed=False))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J", "enter", "r")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, RestartDialog)
        assert dialog.heading == "restart demo-moe"
        assert "failed" not in str(dialog.query_one(".dialog-title").render())


async def test_a_folder_without_a_step_is_not_offered_as_a_checkpoint() -> None:
    jobs = jobs_store()
    tokenizer = job_pb2.Checkpoint(tag="tokenizer", step=-1, path="/data/out/tokenizer")
    jobs.apply_job("node-00", demo_job(), [*checkpoints(), tokenizer], FIXED)
    view = jobs.get("demo-moe")
    assert view is not None and [c.tag for c in view.checkpoints] == ["step20", "step40", "step60"]
    app = make_app(jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J", "enter", "4")
        await pilot.pause()
        table = app.screen.query_one("#checkpoint-table")
        assert "tokenizer" not in [str(key.value) for key in table.rows]  # type: ignore[attr-defined]


# -- 3. reasons readable at 80x24 -----------------------------------------------------


def test_short_reason_puts_the_cause_first() -> None:
    assert short_reason(OOM) == "OOM gpu1: tried 3.4 GiB · r3 · exit 1"
    assert short_reason("rank 3 hung") == "hung · r3"
    assert short_reason("no progress for 90 s (hang timeout 90 s)") == "hung: no progress 90 s"
    assert short_reason("checkpoint step200 to resume from does not exist") == (
        "checkpoint step200 to resume from does not exist"
    )
    assert fit("abcdef", 4) == "abc…" and fit("abc", 4) == "abc"


async def test_jobs_screen_shows_the_cause_first_and_the_whole_reason_below() -> None:
    jobs = jobs_store()
    job = demo_job(state=JS.JOB_STATE_FAILED)
    job.reason = OOM
    jobs.apply_job("node-00", job)
    app = make_app(jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        table = screen.table
        cell = str(table.get_cell("demo-moe", "reason"))
        assert cell.startswith("OOM gpu1: tried 3.4 GiB")
        assert table.virtual_size.width <= 80  # nothing scrolled out of sight
        status = str(screen.query_one("#jobs-status").render())
        assert "rank 3 failed: CUDA out of memory" in status and "79.10 GiB" in status


# -- 4. help: the screen's keys first, compact, scrollable ----------------------------


async def test_help_lists_the_screens_own_keys_first_and_scrolls() -> None:
    app = make_app(jobs_store())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        descriptions = [d for _, _, d in help_screen.rows]
        assert descriptions[:3] == ["Jobs", "Tasks", "Restart"]
        assert descriptions.index("Focus Next") > descriptions.index("Quit")
        box = help_screen.query_one("#help-keys")
        assert box.region.height >= 3 and box.region.right <= 80
        await pilot.press("question_mark")
        assert not isinstance(app.screen, HelpScreen)
        # The job screen has more keys than 24 lines hold: they scroll.
        await pilot.press("J", "enter", "question_mark")
        await pilot.pause()
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        rows = [d for _, _, d in help_screen.rows]
        assert rows[:5] == ["Back", "Restart", "Stop", "Logs", "Steps/time"]
        box = help_screen.query_one("#help-keys")
        assert box.max_scroll_y > 0
        await pilot.press("down", "down")
        await pilot.pause()
        assert box.scroll_y > 0
        await pilot.press("escape")
        assert isinstance(app.screen, JobScreen)


# -- 5. CPU ranks are billed in CPU-hours ---------------------------------------------


def test_cpu_ranks_are_billed_in_cpu_hours() -> None:
    job = one_rank_job("cpu", "node-05", JS.JOB_STATE_SUCCEEDED, 0, FIXED - 3600, gpu=False)
    job.attempts[0].ended.FromSeconds(int(FIXED))
    cost = job_cost(job, FIXED, 10, None)
    assert cost.unit == "CPU" and "1.00 CPU-h" in cost.summary()
    assert "GPU" not in cost.summary()
    job.spec.cost.price_per_gpu_hour = 0.5
    assert job_cost(job, FIXED, 10, None).summary().endswith("$0.5/CPU-h)")
    gpu_job = one_rank_job("gpu", "node-00", JS.JOB_STATE_SUCCEEDED, 0, FIXED - 3600)
    assert "GPU-h" in job_cost(gpu_job, FIXED, 10, None).summary()


# -- 6. the charts show the collectives that were timed ----------------------------


def zero3_store() -> JobsStore:
    jobs = JobsStore()
    job = demo_job(failed=False)
    jobs.apply_job("node-00", job, [], FIXED)
    seq = 0
    for step in range(1, 11):
        for rank in range(4):
            seq += 1
            event = job_pb2.JobEvent(
                seq=seq, job_name="demo-moe", attempt=2, kind=EK.JOB_EVENT_KIND_METRICS, rank=rank
            )
            m = event.metrics
            m.step, m.loss, m.step_time_s = step, 2.0, 0.5
            m.collective_time_by_op_s["all_gather_into_tensor"] = 0.1
            m.collective_time_by_op_s["reduce_scatter_tensor"] = 0.05
            m.collective_time_s = 0.15
            m.time.FromSeconds(int(FIXED - 10 + step))
            jobs.apply_event(event)
    return jobs


async def test_zero3_charts_show_all_gather_and_reduce_scatter_not_an_empty_allreduce() -> None:
    jobs = zero3_store()
    view = jobs.get("demo-moe")
    assert view is not None
    assert view.collective_ops() == ["all_gather_into_tensor", "reduce_scatter_tensor"]
    app = make_app(jobs)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("J", "enter", "2")
        await pilot.pause(0.3)
        charts = {c.label: c for c in app.screen.query_one(ChartPanel).charts}
        assert " allred s" not in charts
        assert charts["allgather s"].values and charts["redscatter s"].values
        assert charts["allgather s"].values[-1] == pytest.approx(0.1)


async def test_an_events_error_lines_wrap_at_80_columns() -> None:
    jobs = jobs_store()
    long_line = "torch.OutOfMemoryError: " + "x" * 150 + " END"
    failed = job_pb2.JobEvent(
        seq=1000,
        job_name="demo-moe",
        kind=EK.JOB_EVENT_KIND_RANK_FAILED,
        node="node-01",
        rank=2,
        attempt=2,
        message="rank 2 failed: torch.OutOfMemoryError",
    )
    failed.details.update({"cause": "out of memory", "last_lines": f"Traceback\n{long_line}"})
    jobs.apply_event(failed)
    app = make_app(jobs)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J", "enter", "3", "end", "enter")
        await pilot.pause()
        lines = app.screen.query_one("#event-lines", ErrorLines)
        assert lines.max_scroll_x == 0 and lines.region.right <= 80
        static = app.screen.query_one("#event-lines Static")
        shown = [strip.text for strip in static.render_lines(static.region.reset_offset)]
        assert len(shown) >= 3 and all(len(text.rstrip()) <= 80 for text in shown)
        assert "END" in "".join(shown)  # the end of the long line is on screen, wrapped
