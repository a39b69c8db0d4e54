"""The job screen's panes: each draws at its own cadence, and only while shown."""

from __future__ import annotations

import math

import pytest
from gantry.v1 import job_pb2
from textual.widgets import Static

from console.ui.screens.job import JobScreen
from console.ui.screens.job.checkpoints import CheckpointsPane
from console.ui.screens.job.event_detail import ErrorLines, EventDetailScreen
from console.ui.screens.job.events import EventsPane
from console.ui.screens.job.pane import Cadence
from console.ui.screens.job.ranks import RanksPane
from console.ui.screens.logs import LogScreen
from tests.job_fixtures import NODES, checkpoints, demo_job
from tests.test_console_job_snapshots import OPEN_JOB, make_app

pytestmark = pytest.mark.usefixtures("utc")


def test_a_cadence_draws_changes_at_most_every_interval_and_idles_at_most_idle_s() -> None:
    cadence = Cadence(interval_s=0.5, idle_s=1.0)
    assert cadence.due(version=1, monotonic=0.0)  # never drawn
    cadence.drawn(1, 0.0)
    assert not cadence.due(1, 0.9)  # nothing new, not idle long enough
    assert not cadence.due(2, 0.4)  # new, but too soon
    assert cadence.due(2, 0.5)
    assert cadence.due(1, 1.0)  # nothing new, but ages move on
    cadence.drawn(2, 0.6)
    assert not cadence.due(2, 1.5)
    cadence.expire()
    assert cadence.due(2, 1.5)
    assert cadence.drawn_at == -math.inf


async def test_hidden_panes_wait_for_their_tab_and_draw_when_shown() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*OPEN_JOB)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen)
        ranks, events = screen.pane("ranks"), screen.pane("events")
        checkpoints = screen.pane("checkpoints")
        assert isinstance(ranks, RanksPane) and isinstance(events, EventsPane)
        assert isinstance(checkpoints, CheckpointsPane)
        assert ranks.shown and ranks.table.row_count == 4
        # Not shown yet: nothing drawn into them, however many refreshes went by.
        screen.redraw()
        assert not events.shown and events.table.row_count == 0
        assert checkpoints.table.row_count == 0
        await pilot.press("4")
        assert screen.active_tab == "checkpoints" and checkpoints.shown and not ranks.shown
        assert checkpoints.table.row_count == 3
        await pilot.press("3")
        assert not checkpoints.shown and events.table.row_count > 0
        # Back on the ranks tab the cursor is where it was.
        await pilot.press("1", "down")
        assert ranks.shown and ranks.table.cursor_row == 1
        selected = screen.selected_rank()
        assert selected is not None and selected.rank == 1


async def test_the_status_line_and_the_findings_are_public() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*OPEN_JOB)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen)
        assert [f.title for f in screen.findings] == ["GPUs starved for input"]
        await pilot.press("t")
        assert screen.status == "charts over time" and screen.charts.by_time
        assert "charts over time" in str(screen.query_one("#job-status").render())


async def test_a_tab_shown_again_within_its_interval_waits_for_its_cadence() -> None:
    app = make_app()
    monotonic = [100.0]
    async with app.run_test(size=(80, 24)) as pilot:
        screen = JobScreen(
            "demo-moe", app.jobs, app.store, None, clock=app.clock, monotonic=lambda: monotonic[0]
        )
        app.push_screen(screen)
        await pilot.pause()
        pane = screen.pane("checkpoints")
        assert isinstance(pane, CheckpointsPane)
        await pilot.press("4")
        assert pane.table.row_count == 3  # never drawn: drawn at once
        await pilot.press("1")
        more = checkpoints()
        more.append(job_pb2.Checkpoint(tag="step80", step=80))
        app.jobs.apply_job(NODES[0], demo_job(), more, app.clock())
        monotonic[0] += 0.2
        await pilot.press("4")
        assert pane.table.row_count == 3  # drawn 0.2 s ago: its last lines for now
        monotonic[0] += 0.3
        screen.refresh_from_store()
        assert pane.table.row_count == 4  # its interval passed: the change is drawn
        await pilot.press("1")
        more.append(job_pb2.Checkpoint(tag="step100", step=100))
        app.jobs.apply_job(NODES[0], demo_job(), more, app.clock())
        monotonic[0] += 10.0
        screen.refresh_from_store()
        assert pane.table.row_count == 4  # hidden: not drawn
        await pilot.press("4")
        assert pane.table.row_count == 5  # shown past its interval: drawn at once


async def test_enter_on_a_failure_opens_its_cause_and_l_its_log_at_the_error() -> None:
    app = make_app()
    line = "train.py: error: argument --deepspeed_config: can't open '/work/ds.json'"
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*OPEN_JOB)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen)
        view = app.jobs.get("demo-moe")
        assert view is not None
        failed = job_pb2.JobEvent(
            seq=1000,
            job_name="demo-moe",
            kind=job_pb2.JOB_EVENT_KIND_RANK_FAILED,
            node="node-01",
            rank=2,
            attempt=2,
            message="rank 2 failed: argument --deepspeed_config: can't open '/work/ds.json'",
        )
        failed.details.update(
            {
                "cause": "argument --deepspeed_config: can't open '/work/ds.json'",
                "reason": "argument --deepspeed_config: can't open '/work/ds.json'",
                "last_lines": f"usage: train.py [-h] [--deepspeed_config DEEPSPEED_CONFIG]\n{line}",
            }
        )
        app.jobs.apply_event(failed)
        await pilot.press("3")
        events = screen.pane("events")
        assert isinstance(events, EventsPane)
        screen.redraw()
        row = events.table.row_count - 1
        assert events.event_at(row) == failed
        events.table.cursor_row = row
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, EventDetailScreen)
        assert str(detail.query_one("#event-cause", Static).render()).startswith(
            "argument --deepspeed_config: can't open"
        )
        lines = detail.query_one("#event-lines", ErrorLines)
        assert lines.buffer.line(1) == line
        await pilot.press("l")
        await pilot.pause()
        log = app.screen
        assert isinstance(log, LogScreen)
        assert log.pending_seek == line  # shown once the log brings it


async def test_an_event_without_a_rank_has_no_log_key() -> None:
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*OPEN_JOB, "3")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen)
        events = screen.pane("events")
        assert isinstance(events, EventsPane)
        events.table.cursor_row = 0  # "submitted by alice"
        await pilot.press("enter")
        detail = app.screen
        assert isinstance(detail, EventDetailScreen) and not detail.can_open_log
        await pilot.press("l")
        assert app.screen is detail
        await pilot.press("escape")
        top: object = app.screen
        assert top is screen


async def test_the_title_says_the_newest_evaluation_and_its_step() -> None:
    app = make_app()
    async with app.run_test(size=(120, 24)) as pilot:
        event = job_pb2.JobEvent(
            seq=10_000,
            job_name="demo-moe",
            attempt=2,
            kind=job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS,
            rank=0,
            node=NODES[0],
        )
        event.metrics.step, event.metrics.eval_loss, event.metrics.eval_step = 60, 2.345, 60
        app.jobs.apply_event(event)
        screen = JobScreen("demo-moe", app.jobs, app.store, None, clock=app.clock)
        app.push_screen(screen)
        await pilot.pause()
        assert "eval loss 2.345" in str(screen.query_one("#job-title").render())
