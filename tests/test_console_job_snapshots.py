"""Snapshots of the job screens (pytest-textual-snapshot) on a fixed job: 4 ranks on
two nodes, rank 3 hung. Deterministic: fixed data and a fixed clock, times in UTC.
Update with `pytest tests/test_console_job_snapshots.py --snapshot-update` and look at
the SVGs under tests/__snapshots__/ before committing them."""

from __future__ import annotations

from typing import Any

import pytest

from console.ui.app import GantryApp
from tests.console_fixtures import FIXED, cluster_store, targets_for
from tests.job_fixtures import jobs_store

pytestmark = pytest.mark.usefixtures("utc")  # times on screen in UTC


def make_app() -> GantryApp:
    store = cluster_store()
    return GantryApp(
        targets_for(store),
        store=store,
        connect=False,
        clock=lambda: FIXED,
        refresh_interval_s=0.1,
        cluster_name="train-a",
        jobs=jobs_store(),
    )


OPEN_JOB = ["J", "enter"]


def test_jobs_screen_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=["J"], terminal_size=(80, 24))


def test_job_ranks_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=OPEN_JOB, terminal_size=(80, 24))


def test_job_charts_120x40(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=[*OPEN_JOB, "2"], terminal_size=(120, 40))


def test_job_events_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=[*OPEN_JOB, "3"], terminal_size=(80, 24))


def test_job_checkpoints_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=[*OPEN_JOB, "4"], terminal_size=(80, 24))


def test_job_advisor_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=[*OPEN_JOB, "5"], terminal_size=(80, 24))


def test_restart_dialog_80x24(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=[*OPEN_JOB, "r"], terminal_size=(80, 24))


def test_cluster_screen_marks_the_failed_node_80x24(snap_compare: Any) -> None:
    # node-01 holds the hung rank: red, with the job and rank on the bottom line.
    assert snap_compare(make_app(), press=["down"], terminal_size=(80, 24))


async def test_job_tabs_switch_on_keys_and_clicks_and_focus_their_table() -> None:
    from console.ui.screens.job import JobScreen
    from console.ui.widgets.pane_strip import PaneStrip

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*OPEN_JOB)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen) and screen.active_tab == "ranks"
        await pilot.press("3")
        assert screen.active_tab == "events"
        assert screen.query_one("#job-tabs", PaneStrip).current == "events"
        assert app.focused is screen.query_one("#event-table")
        # The events pane fills the strip's view; the ranks pane is out of it.
        view = screen.query_one("#job-tabs").region
        assert screen.query_one("#events").region == view
        assert not view.overlaps(screen.query_one("#ranks").region)
        # "1 Ranks  2 Charts  3 Events  4 Checkpoints  5 Advisor": click on "4 Checkpoints"
        await pilot.click("#job-tab-bar", offset=(1 + len("1 Ranks  2 Charts  3 Events  "), 0))
        await pilot.pause()
        assert screen.active_tab == "checkpoints"
        assert app.focused is screen.query_one("#checkpoint-table")
        await pilot.press("1")
        assert screen.active_tab == "ranks" and app.focused is screen.query_one("#rank-table")
        assert "5 Advisor (1)" in str(screen.query_one("#job-tab-bar").render())
        # Focus moved into another tab's pane (Tab, a click) shows that tab.
        await pilot.press("tab")
        await pilot.pause()
        focused = app.focused
        assert focused is not None and focused is not screen.query_one("#rank-table")
        pane = screen.query_one("#job-tabs", PaneStrip).pane_of(focused)
        assert pane is not None and screen.active_tab == pane
        assert screen.query_one(f"#{pane}").region == screen.query_one("#job-tabs").region
