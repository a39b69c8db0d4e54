"""The Load Test screen: its form (pure), live runs against a fake endpoint on 127.0.0.1
(run, stop with a partial report, compare two past runs), bad input and an unreachable
target, and a snapshot of a comparison."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import App
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Input, Select, Static

from console.loadtest.config import LoadTestError
from console.loadtest.histogram import Dist
from console.loadtest.report import Report
from console.loadtest.store import list_reports, load_report, write_report
from console.model.loadtest_form import LoadForm, config_from_form
from console.ui.screens.loadtest import LoadTestScreen, histogram_lines
from tests.loadtest_servers import Timing, start_grpc

# --- the form (pure) ------------------------------------------------------------------


def test_form_reads_each_mode() -> None:
    opened = config_from_form(LoadForm("127.0.0.1:5000", "open", "50/s", "30s", "16"))
    assert (opened.rate, opened.arrival, opened.duration_s, opened.max_tokens) == (
        50.0,
        "constant",
        30.0,
        16,
    )
    assert config_from_form(LoadForm("h:1", "poisson", "5", "2m")).arrival == "poisson"
    closed = config_from_form(LoadForm("h:1", "closed", "8", "500ms"))
    assert (closed.concurrency, closed.rate, closed.duration_s) == (8, None, 0.5)
    scheduled = config_from_form(LoadForm("h:1", "schedule", "10:5s,ramp:20:5s", "ignored"))
    assert scheduled.schedule == "10:5s,ramp:20:5s" and scheduled.duration_s is None


@pytest.mark.parametrize(
    ("form", "message"),
    [
        (LoadForm("h:1", "open", "fast", "10s"), "load 'fast': not a rate"),
        (LoadForm("h:1", "closed", "2.5", "10s"), "load '2.5': not a whole number"),
        (LoadForm("h:1", "closed", "4", "soon"), "duration 'soon': not a duration"),
        (LoadForm("h:1", "closed", "", "10s"), "load: give the requests in flight"),
        (LoadForm("h:1", "schedule", "10:xs", ""), "--schedule '10:xs'"),
        (LoadForm("", "closed", "4", "10s"), "give the endpoint"),
        (LoadForm("nohost", "closed", "4", "10s"), "expected HOST:PORT"),
        (LoadForm("h:1", "closed", "4", "10s", "many"), "max tokens 'many'"),
    ],
)
def test_form_errors_are_one_line_naming_the_field(form: LoadForm, message: str) -> None:
    with pytest.raises(LoadTestError) as caught:
        config_from_form(form)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_histogram_lines_merge_buckets_to_the_rows_shown() -> None:
    buckets = [(float(i), 1) for i in range(1, 17)] + [(100.0, 0)]
    lines = histogram_lines(buckets, rows=4)
    assert len(lines) == 4
    assert lines[0].startswith("≤      4.0 ms") and lines[0].endswith(" 4")
    assert lines[-1].startswith("≤     16.0 ms")
    assert histogram_lines([]) == ["no answers yet"]


# --- live -----------------------------------------------------------------------------


class Host(App[None]):
    # As the console's app: `q` quits, `?` opens help.
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit", "Quit")]

    def __init__(self, screen: LoadTestScreen) -> None:
        super().__init__()
        self.lt = screen

    def on_mount(self) -> None:
        self.push_screen(self.lt)


def text_of(screen: LoadTestScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def wait_for(pilot: Any, check: Callable[[], bool], timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if check():
            return
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def fill(screen: LoadTestScreen, mode: str, load: str, duration: str) -> None:
    screen.query_one("#lt-mode", Select).value = mode
    screen.query_one("#lt-load", Input).value = load
    screen.query_one("#lt-duration", Input).value = duration
    screen.query_one("#lt-max-tokens", Input).value = "4"


async def test_run_stop_and_compare_against_a_live_endpoint(tmp_path: Path) -> None:
    server, address, _ = await start_grpc(Timing(first_s=0.005, gap_s=0.002, tokens=4))
    screen = LoadTestScreen([address], reports_dir=tmp_path)
    try:
        async with Host(screen).run_test(size=(120, 44)) as pilot:
            await pilot.pause()
            assert screen.query_one("#lt-target", Input).value == address
            fill(screen, "closed", "2", "1s")
            await pilot.press("ctrl+r")
            done: Callable[[], bool] = lambda: "done: saved" in text_of(screen, "#lt-status")  # noqa: E731
            await wait_for(pilot, done, 60, "the first run")
            first = load_report(list_reports(tmp_path)[0])
            assert first.mode == "closed" and first.ok > 0 and not first.partial
            assert first.ttft_ms is not None and first.ttft_ms.count == first.ok
            assert "latency" in text_of(screen, "#lt-detail-text")
            final = text_of(screen, "#lt-progress")
            assert "[done]" in final and f"done {first.completed}" in final
            # The live figures end on the report's own.
            lat = first.latency_ms
            assert f"p50 {lat.p50:.1f} p99 {lat.p99:.1f} ms" in final
            assert (screen.p50s[-1], screen.p99s[-1]) == (lat.p50, lat.p99)
            assert screen.rates[-1] == first.achieved_rps
            assert "warning: closed loop hides stalls" in text_of(screen, "#lt-notes")

            fill(screen, "open", "20", "30s")  # stopped long before its end
            await pilot.press("ctrl+r")
            running: Callable[[], bool] = lambda: "sent" in text_of(screen, "#lt-progress")  # noqa: E731
            await wait_for(pilot, lambda: running() and len(screen.rates) > 0, 60, "progress")
            await pilot.press("ctrl+x")
            stopped: Callable[[], bool] = lambda: "partial" in text_of(screen, "#lt-status")  # noqa: E731
            await wait_for(pilot, stopped, 60, "the stopped run")
            paths = list_reports(tmp_path)
            assert len(paths) == 2
            second = load_report(paths[1])
            assert second.partial and second.mode == "open" and second.target_rps == 20.0
            table = screen.query_one("#lt-runs", DataTable)
            assert table.row_count == 2

            table.focus()
            await pilot.press("c")  # the selected (latest) run against the one before
            compared = text_of(screen, "#lt-detail-text")
            assert f"A: {paths[0].stem}" in compared and f"B: {paths[1].stem}" in compared
            assert "achieved req/s" in compared
            assert "warning: not comparable: A is closed loop and B is open loop" in compared
    finally:
        await server.stop(None)


async def test_bad_form_and_unreachable_target_say_why_in_one_line(tmp_path: Path) -> None:
    screen = LoadTestScreen(reports_dir=tmp_path)
    async with Host(screen).run_test(size=(120, 44)) as pilot:
        await pilot.pause()
        screen.query_one("#lt-target", Input).value = "127.0.0.1:1"  # nothing listens there
        fill(screen, "open", "lots", "5s")
        await pilot.press("ctrl+r")
        assert (
            text_of(screen, "#lt-status")
            == "load 'lots': not a rate in requests per second (e.g. 100 or 100/s)"
        )
        fill(screen, "closed", "2", "1s")
        await pilot.press("ctrl+r")
        status: Callable[[], str] = lambda: text_of(screen, "#lt-status")  # noqa: E731
        await wait_for(
            pilot, lambda: "127.0.0.1:1" in status() and "reaching" not in status(), 30, "preflight"
        )
        assert "\n" not in status() and not screen.running
        assert list_reports(tmp_path) == []


async def test_keys_typed_into_a_field_go_to_the_field(tmp_path: Path) -> None:
    """`q` (the app's quit) and the screen's `m` and `c` typed into a focused field are
    text: the endpoint is added to, not replaced, and nothing else happens."""
    screen = LoadTestScreen(["127.0.0.1:43031"], reports_dir=tmp_path)
    write_report(fixed_report("100/s for 10s", 100.0, 20.0, 80.0, 0), tmp_path / "run-a.json")
    async with Host(screen).run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        target = screen.query_one("#lt-target", Input)
        assert target.has_focus
        await pilot.press("q")
        assert target.value == "127.0.0.1:43031q" and pilot.app.is_running
        await pilot.press("backspace", "tab", "tab")  # past the mode, into the load
        load = screen.query_one("#lt-load", Input)
        assert load.has_focus
        await pilot.press("m", "c", "q")
        assert load.value == "4mcq" and pilot.app.is_running
        assert screen.marked == [] and text_of(screen, "#lt-status") == ""
        await pilot.press("shift+tab", "shift+tab", "q")  # back into the endpoint
        assert target.value == "127.0.0.1:43031q"


async def test_short_completions_are_warned_of_live_and_ignore_eos_is_an_option(
    tmp_path: Path,
) -> None:
    server, address, _ = await start_grpc(Timing(first_s=0.002, tokens=1))
    screen = LoadTestScreen([address], reports_dir=tmp_path)
    try:
        async with Host(screen).run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert screen.query_one("#lt-eos", Select).value == "no"
            fill(screen, "open", "20", "1s")
            await pilot.press("ctrl+r")
            done: Callable[[], bool] = lambda: "done: saved" in text_of(screen, "#lt-status")  # noqa: E731
            await wait_for(pilot, done, 60, "the run")
            notes = text_of(screen, "#lt-notes")
            assert "warning: completions are short: median 1 token, max_tokens 4" in notes
            assert "closed loop" not in notes
            report = load_report(list_reports(tmp_path)[0])
            assert report.max_tokens == 4 and not report.ignore_eos
            assert any(n.startswith("completions are short") for n in report.notes)
            assert "completions are short" in text_of(screen, "#lt-detail-text")
            screen.query_one("#lt-eos", Select).value = "yes"
            assert config_from_form(screen.form()).ignore_eos
    finally:
        await server.stop(None)


# --- snapshot -------------------------------------------------------------------------


def fixed_report(load: str, rps: float, p50: float, p99: float, errors: int) -> Report:
    latency = Dist(
        count=1000, mean=p50 * 1.1, p50=p50, p90=p50 * 1.5, p99=p99, p999=p99 * 1.2, max=p99 * 1.5
    )
    return Report(
        target="127.0.0.1:50051",
        method="gantry.v1.InferenceService/Generate",
        kind="gantry",
        streaming=True,
        mode="open",
        load=load,
        arrival="constant",
        concurrency=None,
        workers=1,
        started_at="2026-11-28T12:00:00Z",
        warmup_s=0.0,
        duration_s=10.0,
        partial=False,
        target_rps=rps,
        achieved_rps=rps,
        throughput_rps=rps,
        sent=1000,
        completed=1000,
        ok=1000 - errors,
        errors={"UNAVAILABLE": errors} if errors else {},
        unfinished=0,
        warmup_requests=0,
        latency_ms=latency,
        service_ms=latency,
        send_lag_ms=Dist(1000, 0.1, 0.1, 0.2, 0.5, 0.9, 1.0),
        ttft_ms=Dist(1000, 10.0, 9.0, 12.0, 20.0, 25.0, 30.0),
        itl_ms=Dist(4000, 2.0, 2.0, 2.5, 4.0, 5.0, 6.0),
        tokens_per_s_request=Dist(1000, 300.0, 310.0, 350.0, 380.0, 390.0, 400.0),
        tokens=4000,
        tokens_per_s=rps * 4,
        slo_ttft_ms=None,
        slo_latency_ms=None,
        good=1000 - errors,
        goodput_rps=rps,
    )


def test_compare_two_runs_snapshot(snap_compare: Any, tmp_path: Path) -> None:
    write_report(fixed_report("100/s for 10s", 100.0, 20.0, 80.0, 0), tmp_path / "run-a.json")
    write_report(fixed_report("200/s for 10s", 199.0, 35.0, 240.0, 7), tmp_path / "run-b.json")
    assert json.loads((tmp_path / "run-a.json").read_text())["achieved_rps"] == 100.0

    async def setup(pilot: Any) -> None:
        await pilot.pause()
        pilot.app.lt.query_one("#lt-runs", DataTable).focus()
        await pilot.press("up", "m", "down", "m", "c")

    screen = LoadTestScreen(["127.0.0.1:50051"], reports_dir=tmp_path)
    assert snap_compare(Host(screen), run_before=setup, terminal_size=(110, 48))
