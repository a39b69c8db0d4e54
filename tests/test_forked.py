"""console.ui.forked: a pure computation in a forked child, its answer back through a pipe."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import psutil
import pytest

from console.ui.forked import ForkedError, call_forked

T = TypeVar("T")


def test_the_child_sees_the_parents_data_and_answers() -> None:
    data = {"ranks": list(range(10_000))}  # not pickled on the way in: inherited
    pid, total = call_forked(lambda: (os.getpid(), sum(data["ranks"])), timeout_s=30)
    assert total == sum(range(10_000))
    assert pid != os.getpid()
    assert not psutil.pid_exists(pid)  # reaped


def test_an_error_in_the_child_is_raised_in_the_parent() -> None:
    def fail() -> int:
        raise ValueError("no data for rank 7")

    with pytest.raises(ForkedError, match="ValueError: no data for rank 7"):
        call_forked(fail, timeout_s=30)


def test_a_child_past_its_time_is_killed() -> None:
    started = time.monotonic()
    with pytest.raises(ForkedError, match=r"took over 0\.5 s"):
        call_forked(lambda: time.sleep(30), timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert psutil.Process().children() == []  # killed and reaped


def test_a_child_that_dies_says_so() -> None:
    with pytest.raises(ForkedError, match="died without an answer"):
        call_forked(lambda: os._exit(3), timeout_s=30)


async def test_the_job_screens_advisor_runs_forked_past_the_inline_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A big job's advisor runs in a forked child, and its findings reach the screen."""
    import console.ui.screens.job.advisor as job_advisor
    from console.ui.screens.job import JobScreen
    from tests.test_console_job_snapshots import OPEN_JOB, make_app

    monkeypatch.setattr(job_advisor, "ADVISOR_INLINE_SIZE", 0)  # the demo job counts as big
    forked: list[float] = []
    real = call_forked

    def spy(fn: Callable[[], T], timeout_s: float) -> T:
        forked.append(timeout_s)
        return real(fn, timeout_s)

    monkeypatch.setattr(job_advisor, "call_forked", spy)
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(*OPEN_JOB)
        screen = app.screen
        assert isinstance(screen, JobScreen)
        deadline = time.monotonic() + 30
        while not screen.findings:
            assert time.monotonic() < deadline, "no findings"
            await pilot.pause(0.1)
        assert forked and screen.findings[0].title == "GPUs starved for input"
        assert "5 Advisor (1)" in str(screen.query_one("#job-tab-bar").render())
