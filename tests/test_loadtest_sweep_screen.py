"""The Load Test screen's sweep mode: its form (pure), a live sweep against an endpoint of
known capacity on 127.0.0.1 at 80x24, and a snapshot of a finished sweep at 80x24."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Select

from console.loadtest.config import LoadTestError
from console.loadtest.sweep_run import load_sweep
from console.model.loadtest_form import LoadForm
from console.model.loadtest_sweep_form import sweep_config_from_form
from console.ui.screens.loadtest import LoadTestScreen
from console.ui.widgets.loadtest_sweep import SweepSteps
from tests.loadtest_sweep_server import start_slots
from tests.test_console_loadtest import Host, text_of, wait_for
from tests.test_loadtest_sweep import sample_sweep

# --- the form (pure) ------------------------------------------------------------------


def test_sweep_form_reads_the_slos_and_the_other_fields() -> None:
    form = LoadForm("127.0.0.1:5000", "sweep", "", "3s", "16", ignore_eos="yes")
    config = sweep_config_from_form(form, "500", "")
    assert config.sweep and (config.slo_ttft_ms, config.slo_latency_ms) == (500.0, None)
    assert (config.duration_s, config.max_tokens, config.ignore_eos) == (3.0, 16, True)
    assert config.rate is None and config.concurrency is None
    both = sweep_config_from_form(form, " 250 ms", "2000")
    assert (both.slo_ttft_ms, both.slo_latency_ms) == (250.0, 2000.0)


@pytest.mark.parametrize(
    ("ttft", "latency", "form", "message"),
    [
        ("", "", LoadForm("h:1", "sweep", "", "3s"), "--sweep needs an SLO"),
        ("fast", "", LoadForm("h:1", "sweep", "", "3s"), "SLO TTFT 'fast': not a number"),
        ("", "-5", LoadForm("h:1", "sweep", "", "3s"), "SLO latency '-5': must be a positive"),
        ("100", "", LoadForm("h:1", "sweep", "", "soon"), "duration 'soon': not a duration"),
        ("100", "", LoadForm("", "sweep", "", "3s"), "give the endpoint"),
    ],
)
def test_sweep_form_errors_are_one_line_naming_the_field(
    ttft: str, latency: str, form: LoadForm, message: str
) -> None:
    with pytest.raises(LoadTestError) as caught:
        sweep_config_from_form(form, ttft, latency)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- live -----------------------------------------------------------------------------


async def test_a_sweep_from_the_screen_shows_each_step_and_the_result(tmp_path: Path) -> None:
    server, address = await start_slots(4, 0.04)  # capacity 100 requests/s
    screen = LoadTestScreen([address], reports_dir=tmp_path)
    try:
        async with Host(screen).run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert not screen.query_one("#lt-slo").display
            screen.query_one("#lt-mode", Select).value = "sweep"
            await pilot.pause()
            assert screen.query_one("#lt-slo").display
            assert not screen.query_one("#lt-runs", DataTable).display
            assert text_of(screen, "#lt-help").startswith("sweep: the highest rate")
            await pilot.press("ctrl+r")  # no SLO yet
            assert "--sweep needs an SLO" in text_of(screen, "#lt-status")
            # Short steps and an SLO every step keeps: the search runs its shortest course
            # (up from the ceiling to 4x it: four steps), each step still shown as it ends.
            screen.query_one("#lt-slo-latency", Input).value = "10000"
            screen.query_one("#lt-duration", Input).value = "200ms"
            await pilot.press("ctrl+r")
            steps = screen.query_one(SweepSteps)

            def first_step() -> bool:
                shown = str(steps.render())
                return " pass" in shown or " fail" in shown

            await wait_for(pilot, first_step, 60, "the first step")
            assert "ceiling " in str(steps.render()) and screen.running
            done: Callable[[], bool] = lambda: "sweep done" in text_of(screen, "#lt-status")  # noqa: E731
            await wait_for(pilot, done, 120, "the sweep")
            status = text_of(screen, "#lt-status")
            assert "max rate within SLO " in status and "\n" not in status
            saved = list((tmp_path / "sweeps").glob("*-sweep.json"))
            assert len(saved) == 1 and f"saved {saved[0]}" in status
            sweep = load_sweep(saved[0])
            assert sweep.max_rate_within_slo is not None
            shown = str(steps.render())
            assert f"max rate within SLO  {sweep.max_rate_within_slo:.1f}/s" in shown
            assert shown.count(" pass") + shown.count(" fail") == len(sweep.steps)
            assert "capacity search" in text_of(screen, "#lt-detail-text")
            screen.query_one("#lt-mode", Select).value = "open"
            await pilot.pause()
            assert screen.query_one("#lt-runs", DataTable).display
            assert list(tmp_path.glob("*.json")) == []  # not listed as single runs
    finally:
        await server.stop(None)


# --- snapshot -------------------------------------------------------------------------


def test_finished_sweep_snapshot_at_80x24(snap_compare: Any, tmp_path: Path) -> None:
    async def setup(pilot: Any) -> None:
        screen = pilot.app.lt
        await pilot.pause()
        screen.query_one("#lt-mode", Select).value = "sweep"
        screen.query_one("#lt-slo-ttft", Input).value = "500"
        await pilot.pause()
        screen.show_sweep(sample_sweep())
        await pilot.pause()

    screen = LoadTestScreen(["127.0.0.1:50051"], reports_dir=tmp_path)
    assert snap_compare(Host(screen), run_before=setup, terminal_size=(80, 24))
