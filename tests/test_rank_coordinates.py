"""The ranks table's (data, tensor, expert) column: shown for a job with tensor or expert
parallelism, after the rank's number; absent for data parallelism alone."""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2

from console.model.jobs import JobsStore
from console.model.rank_coordinates import (
    COORDINATES_COLUMN,
    cells_with_coordinates,
    coordinates_cell,
    has_parallelism,
    with_coordinates,
)
from console.ui.app import GantryApp
from console.ui.screens.job import JobScreen
from console.ui.screens.job.ranks import RanksPane
from tests.console_fixtures import FIXED, cluster_store, targets_for
from tests.job_fixtures import NODES, checkpoints, demo_job
from tests.test_console_job_snapshots import OPEN_JOB

pytestmark = pytest.mark.usefixtures("utc")


def test_the_column_follows_the_rank_and_waits_for_coordinates() -> None:
    columns = ("rank", "node", "state")
    assert with_coordinates(columns) == ("rank", COORDINATES_COLUMN, "node", "state")
    rank = job_pb2.Rank(rank=5)
    assert coordinates_cell(rank) == "-"
    rank.coordinates.CopyFrom(job_pb2.RankCoordinates(data=1, tensor=0, expert=3))
    assert cells_with_coordinates(columns, ("5", "a", "running"), rank) == (
        "5",
        "1,0,3",
        "a",
        "running",
    )
    spec = job_pb2.JobSpec()
    assert not has_parallelism(spec)
    spec.parallelism.CopyFrom(job_pb2.Parallelism(tensor=1, expert=1))
    assert not has_parallelism(spec)  # data parallel only
    spec.parallelism.expert = 2
    assert has_parallelism(spec)


def app_for(job: job_pb2.Job) -> GantryApp:
    store = cluster_store()
    jobs = JobsStore()
    jobs.apply_job(NODES[0], job, checkpoints(), FIXED)
    return GantryApp(
        targets_for(store),
        store=store,
        connect=False,
        clock=lambda: FIXED,
        refresh_interval_s=0.1,
        cluster_name="train-a",
        jobs=jobs,
    )


async def ranks_lines(job: job_pb2.Job) -> tuple[tuple[str, ...], list[str]]:
    app = app_for(job)
    async with app.run_test(size=(120, 24)) as pilot:
        await pilot.press(*OPEN_JOB)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobScreen)
        pane = screen.pane("ranks")
        assert isinstance(pane, RanksPane)
        table = pane.table
        return table.columns, [table.line_text(row) for row in range(table.row_count)]


async def test_a_job_with_expert_parallelism_shows_each_ranks_coordinates() -> None:
    job = demo_job()
    job.spec.parallelism.CopyFrom(job_pb2.Parallelism(tensor=1, expert=2))
    for rank in job.attempts[-1].ranks:
        rank.coordinates.CopyFrom(
            job_pb2.RankCoordinates(data=rank.rank // 2, tensor=0, expert=rank.rank % 2)
        )
    header, lines = await ranks_lines(job)
    assert header[:3] == ("rank", COORDINATES_COLUMN, "node")
    assert [line.split()[:2] for line in lines] == [
        ["0", "0,0,0"],
        ["1", "0,0,1"],
        ["2", "1,0,0"],
        ["3", "1,0,1"],
    ]


async def test_a_data_parallel_job_has_no_coordinates_column() -> None:
    header, lines = await ranks_lines(demo_job())
    assert COORDINATES_COLUMN not in header
    assert header[:2] == ("rank", "node") and len(lines) == 4
