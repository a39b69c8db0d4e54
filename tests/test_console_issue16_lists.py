"""Issue 16, the console's lists: `/` filter and a sort key on the jobs list and the
events timeline, `d` forgets a finished job; and rank log lines carry no terminal
control. `App.run_test()` on fixed data."""

from __future__ import annotations

import pytest

from console.model.jobs import EK, JS, RS, JobsStore
from console.model.list_query import ListQuery
from console.model.log_buffer import LogBuffer
from console.net.jobs_client import JobCommandError
from console.net.operator import Operator
from console.ui.screens.dialogs import ConfirmScreen
from console.ui.screens.job import JobScreen
from console.ui.screens.job.events import EventsPane
from console.ui.screens.jobs import JobsScreen
from console.ui.widgets.filter_bar import FilterBar
from tests.console_fixtures import FIXED
from tests.job_fixtures import jobs_store
from tests.test_console_issue16_screens import make_app, one_rank_job

pytestmark = pytest.mark.usefixtures("utc")


# -- 7. filter, sort, forget ----------------------------------------------------------


def test_list_query_filters_on_every_word_and_sorts_numbers_as_numbers() -> None:
    rows = [("a", "10/300", "running"), ("b", "9/300", "failed"), ("c", "-", "failed oom")]
    assert ListQuery("FAILED").apply(rows) == [1, 2]
    assert ListQuery("failed oom").apply(rows) == [2]
    by_step = ListQuery().next_sort(3).next_sort(3)
    assert by_step.sort_column == 1 and by_step.apply(rows) == [1, 0, 2]
    assert by_step.reversed().apply(rows) == [2, 0, 1]
    assert ListQuery(sort_column=2).next_sort(3).sort_column is None
    assert by_step.reversed().describe(("job", "step", "state")) == "sorted by step ↓"


class ForgettingOperator(Operator):
    def __init__(self, refuse: str = "") -> None:
        super().__init__([])
        self.forgotten: list[str] = []
        self.refuse = refuse

    async def forget(self, name: str) -> str:
        if self.refuse:
            raise JobCommandError(self.refuse)
        self.forgotten.append(name)
        return f"{name}: forgotten"


def two_jobs() -> JobsStore:
    jobs = jobs_store()  # demo-moe, running
    done = one_rank_job(
        "typo-moe", "node-00", JS.JOB_STATE_FAILED, RS.RANK_STATE_FAILED, FIXED - 7200
    )
    jobs.apply_job("node-00", done)
    return jobs


async def test_jobs_screen_filters_sorts_and_forgets_a_finished_job() -> None:
    jobs = two_jobs()
    operator = ForgettingOperator()
    app = make_app(jobs, operator)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        assert screen.table.row_count == 2
        await pilot.press("slash", *"typo")
        await pilot.pause()
        assert screen.table.row_count == 1 and screen._shown == ["typo-moe"]
        await pilot.press("escape")  # in the filter bar: clears it
        await pilot.pause()
        assert screen.table.row_count == 2 and not screen.query_one(FilterBar).is_open
        assert app.focused is screen.table
        await pilot.press("o")  # sort on the job's name
        await pilot.pause()
        assert screen._shown == ["demo-moe", "typo-moe"]
        await pilot.press("O")
        await pilot.pause()
        assert screen._shown == ["typo-moe", "demo-moe"]
        # demo-moe runs: forgetting it is refused before anything is asked.
        assert screen.selected_job().name == "typo-moe"  # type: ignore[union-attr]
        await pilot.press("down", "d")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert "stop it first" in screen.message and operator.forgotten == []
        await pilot.press("up", "d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause(0.2)
        assert operator.forgotten == ["typo-moe"]
        assert "typo-moe" not in jobs and screen.table.row_count == 1
        assert screen.message == "typo-moe: forgotten"


async def test_a_refused_forget_changes_nothing() -> None:
    jobs = two_jobs()
    app = make_app(jobs, ForgettingOperator(refuse="typo-moe is not finished"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J", "o", "O", "d", "y")
        await pilot.pause(0.2)
        screen = app.screen
        assert isinstance(screen, JobsScreen)
        assert "typo-moe" in jobs and screen.table.row_count == 2
        assert screen.message == "refused: typo-moe is not finished"


async def test_events_timeline_filters_and_sorts() -> None:
    app = make_app(jobs_store())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("J", "enter", "3")
        await pilot.pause()
        pane = app.screen.query_one(EventsPane)
        assert pane.table.row_count == 6
        await pilot.press("slash", *"timeout", "enter")
        await pilot.pause()
        # Matched in the whole message, though the row shows its short form.
        assert pane.table.row_count == 1
        event = pane.event_at(0)
        assert event is not None and event.kind == EK.JOB_EVENT_KIND_RANK_HUNG
        assert app.focused is pane.table
        await pilot.press("escape")  # the first escape clears the filter
        await pilot.pause()
        assert pane.table.row_count == 6 and isinstance(app.screen, JobScreen)
        await pilot.press("o", "o", "O")  # sort on the kind, reversed
        await pilot.pause()
        kinds = [row[1] for row in pane.table.rows]
        assert kinds == sorted(kinds, reverse=True)
        first = pane.event_at(0)
        assert first is not None and first.kind == EK.JOB_EVENT_KIND_SUBMITTED
        await pilot.press("escape")  # no filter: back to the jobs list
        await pilot.pause()
        assert isinstance(app.screen, JobsScreen)


# -- 8. escape codes neutralised in rank logs -----------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "\x9b31mred\x9b0m",  # an 8-bit CSI
        "\x1b]0;owned\x07title",  # an OSC setting the terminal's title
        "safe\u202etxt.exe",  # a bidi override reversing what follows
        "\x1b[2J\x1b[Hcleared",
    ],
)
def test_log_lines_carry_no_terminal_control(raw: str) -> None:
    buffer = LogBuffer()
    buffer.append(raw)
    line = buffer.line(buffer.first_index)
    assert not any(0x80 <= ord(c) <= 0x9F or ord(c) < 0x20 or c == "\u202e" for c in line)


def test_the_jobs_list_shows_the_last_step_reached_not_a_resumed_attempts_zero() -> None:
    from gantry.v1 import job_pb2

    from console.model.jobs import JobsStore

    job = job_pb2.Job(spec=job_pb2.JobSpec(name="demo"), state=job_pb2.JOB_STATE_SUCCEEDED)
    first = job.attempts.add(number=1)
    first.ranks.add(rank=0).metrics.step = 300
    job.attempts.add(number=2).ranks.add(rank=0)  # resumed at the end: no step reported
    view = JobsStore().apply_job("node-a", job)
    assert view.last_step() == 300


def test_a_job_whose_ranks_reported_no_step_shows_a_dash_not_zero() -> None:
    from gantry.v1 import job_pb2

    from console.model.jobs import JobsStore
    from console.ui.screens.jobs import COLUMNS, job_row

    job = job_pb2.Job(spec=job_pb2.JobSpec(name="demo"), state=job_pb2.JOB_STATE_SUCCEEDED)
    job.spec.args.extend(["--max_steps", "300"])
    job.attempts.add(number=1).ranks.add(rank=0)
    row = dict(zip(COLUMNS, job_row(JobsStore().apply_job("node-a", job)), strict=True))
    assert row["step"] == "-/300"
