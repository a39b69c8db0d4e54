"""Capacity search, pure: the search against scripted "servers" (rate -> figures), the
pass/fail rule, and the sweep's JSON and table."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from console.loadtest.histogram import Dist
from console.loadtest.report import Report
from console.loadtest.sweep import (
    MAX_STEPS,
    CapacitySearch,
    Slo,
    StepFigures,
    SweepReport,
    judge,
)

Server = Callable[[float], StepFigures]


def figures(
    rate: float, goodput: float = 100.0, lag_ms: float = 0.5, achieved: float | None = None
) -> StepFigures:
    return StepFigures(
        rate_rps=rate,
        achieved_rps=rate if achieved is None else achieved,
        p50_ms=10.0,
        p99_ms=20.0 if goodput >= 99 else 900.0,
        ttft_p50_ms=5.0,
        ttft_p99_ms=8.0,
        goodput_pct=goodput,
        send_lag_p99_ms=lag_ms,
    )


def knee(capacity_rps: float) -> Server:
    """Every request within the SLOs up to `capacity_rps`; past it the queue grows."""
    return lambda rate: figures(rate, 100.0 if rate <= capacity_rps else 60.0)


def search_with(
    server: Server, ceiling_rps: float, slo: Slo | None = None
) -> tuple[CapacitySearch, list[float]]:
    search = CapacitySearch(slo or Slo(ttft_ms=500.0, latency_ms=None))
    while (concurrency := search.next_probe()) is not None:
        search.record_probe(concurrency, ceiling_rps)
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(server(rate))
    return search, rates


@pytest.mark.parametrize("capacity", [50.0, 333.0, 790.0, 1000.0, 1400.0])
def test_finds_the_knee_within_the_tolerance_in_bounded_steps(capacity: float) -> None:
    search, rates = search_with(knee(capacity), ceiling_rps=1000.0)
    found = search.max_rate_within_slo
    assert found is not None and found <= capacity
    assert (capacity - found) / capacity <= 0.05, (found, rates)
    assert len(rates) <= MAX_STEPS
    assert rates[0] == 1000.0  # the first step at the ceiling


def test_no_rate_holds_the_slo() -> None:
    search, rates = search_with(lambda r: figures(r, 10.0), ceiling_rps=640.0)
    assert search.max_rate_within_slo is None
    assert min(rates) >= 640.0 / 64 and len(rates) <= MAX_STEPS
    assert search.why_none().startswith("even 10.0/s fails: goodput 10.0% < 99%")


def test_no_answers_in_the_probe_means_no_steps() -> None:
    search, rates = search_with(knee(100.0), ceiling_rps=0.0)
    assert rates == [] and search.max_rate_within_slo is None
    assert "no request was answered OK" in search.why_none()


def test_probes_grow_while_the_answers_per_second_grow() -> None:
    search = CapacitySearch(Slo(None, 100.0), min_concurrency=2)
    seen = []
    while (c := search.next_probe()) is not None:
        seen.append(c)
        search.record_probe(c, min(c, 200) * 3.0)  # saturates at 200 in flight
    assert seen == [32, 128, 512]
    assert search.ceiling_rps == 600.0
    flat = CapacitySearch(Slo(None, 100.0), min_concurrency=40)
    assert flat.next_probe() == 40
    flat.record_probe(40, 100.0)
    flat.record_probe(160, 105.0)
    assert flat.next_probe() is None


def test_a_generator_that_falls_behind_fails_the_step_not_the_server() -> None:
    slo = Slo(ttft_ms=None, latency_ms=50.0)
    assert slo.lag_limit_ms == 10.0  # the report's late-send threshold
    assert Slo(ttft_ms=800.0, latency_ms=2000.0).lag_limit_ms == 80.0  # 10 % of the tightest
    lagging = judge(figures(900.0, lag_ms=25.0), slo)
    assert not lagging.ok and "load tester fell behind (send lag p99 25.0 ms" in lagging.why
    short = judge(figures(900.0, achieved=700.0), slo)
    assert not short.ok and "sent 700.0/s of 900.0/s" in short.why
    assert judge(figures(900.0, goodput=99.0), slo).ok
    # Overloaded, the server slows the load tester's loop too: the SLOs are the reason.
    both = judge(figures(900.0, goodput=20.0, lag_ms=25.0), slo)
    assert both.why == "goodput 20.0% < 99% (and the load tester sent late: send lag p99 25.0 ms)"
    assert not judge(figures(900.0, goodput=98.9), slo).ok

    # A generator that cannot send above 300/s caps what the search reports.
    def server(rate: float) -> StepFigures:
        return figures(rate, lag_ms=0.5 if rate <= 300 else 40.0)

    search, _ = search_with(server, ceiling_rps=1000.0, slo=slo)
    found = search.max_rate_within_slo
    assert found is not None and 285 <= found <= 300


def test_a_one_off_stall_is_run_again_and_a_real_limit_fails_twice() -> None:
    stalled: list[float] = []

    def server(rate: float) -> StepFigures:
        if 600 < rate <= 800 and not stalled:  # the first run above 600/s meets a stall
            stalled.append(rate)
            return figures(rate, 70.0)
        return figures(rate, 100.0 if rate <= 800 else 60.0)

    search, rates = search_with(server, ceiling_rps=1000.0)
    found = search.max_rate_within_slo
    assert stalled and rates.count(stalled[0]) == 2  # the stalled rate, run again
    assert found is not None and 0.95 * 800 <= found <= 800, rates
    # Every failure above a passing rate was confirmed by a second run, unless it answered
    # almost nothing in time.
    failed = [s.figures.rate_rps for s in search.steps if not s.ok]
    assert all(rates.count(r) == 2 for r in failed if r < 1000.0)
    gross = CapacitySearch(Slo(100.0, None))
    gross.record_probe(32, 100.0)
    gross.record(figures(50.0))
    gross.record(figures(100.0, goodput=5.0))
    assert gross.next_rate() == 75.0


def test_noise_above_a_failure_does_not_raise_the_result() -> None:
    search = CapacitySearch(Slo(100.0, None))
    search.record_probe(32, 100.0)
    search.record(figures(100.0, 50.0))
    search.record(figures(50.0))
    search.record(figures(120.0))  # passes above a failing rate: not trusted
    assert search.bracket == (50.0, 100.0)
    assert search.next_rate() == 75.0


# --- the sweep's JSON and table ----------------------------------------------------------


def step_report(rate: float, goodput_ok: bool) -> Report:
    lat = Dist(100, 12.0, 10.0, 15.0, 20.0, 25.0, 30.0)
    good = 100 if goodput_ok else 40
    return Report(
        target="127.0.0.1:50051",
        method="gantry.v1.InferenceService/Generate",
        kind="gantry",
        streaming=True,
        mode="open",
        load=f"open loop (constant): {rate:g}/s for 10s",
        arrival="constant",
        concurrency=None,
        workers=1,
        started_at="2026-12-01T12:00:00Z",
        warmup_s=0.0,
        duration_s=10.0,
        partial=False,
        target_rps=rate,
        achieved_rps=rate,
        throughput_rps=rate,
        sent=100,
        completed=100,
        ok=100,
        errors={},
        unfinished=0,
        warmup_requests=0,
        latency_ms=lat,
        service_ms=lat,
        send_lag_ms=Dist(100, 0.2, 0.1, 0.2, 0.4, 0.5, 0.6),
        ttft_ms=Dist(100, 5.0, 4.0, 6.0, 8.0, 9.0, 9.5),
        itl_ms=None,
        tokens_per_s_request=None,
        tokens=400,
        tokens_per_s=rate * 4,
        slo_ttft_ms=500.0,
        slo_latency_ms=None,
        good=good,
        goodput_rps=rate * good / 100,
    )


def sample_sweep() -> SweepReport:
    search = CapacitySearch(Slo(ttft_ms=500.0, latency_ms=None))
    search.record_probe(32, 400.0)
    reports = []
    for rate, ok in ((400.0, False), (200.0, True), (300.0, True)):
        report = step_report(rate, ok)
        search.record(StepFigures.from_report(rate, report))
        reports.append(report)
    return SweepReport.from_search(search, reports, target="127.0.0.1:50051")


def test_sweep_json_has_exactly_the_agreed_shape_and_reads_back() -> None:
    sweep = sample_sweep()
    data = json.loads(json.dumps(sweep.to_json()))
    assert set(data) == {"max_rate_within_slo", "ceiling_rps", "slo", "steps", "reports"}
    assert data["max_rate_within_slo"] == 300.0 and data["ceiling_rps"] == 400.0
    assert data["slo"] == {"ttft_ms": 500.0, "latency_ms": None, "goodput_pct": 99.0}
    assert [s["rate_rps"] for s in data["steps"]] == [200.0, 300.0, 400.0]  # the curve
    assert data["steps"][2] == {
        "rate_rps": 400.0,
        "p50_ms": 10.0,
        "p99_ms": 20.0,
        "ttft_p50_ms": 4.0,
        "ttft_p99_ms": 8.0,
        "goodput_pct": 40.0,
        "send_lag_p99_ms": 0.4,
        "ok": False,
    }
    assert [r["target_rps"] for r in data["reports"]] == [200.0, 300.0, 400.0]
    again = SweepReport.from_json(data)
    assert again.to_json() == data
    assert again.chosen_report() is again.reports[1]
    with pytest.raises(ValueError, match="not a capacity search"):
        SweepReport.from_json({"version": 1})


def test_sweep_table_fits_80_columns_and_names_the_result() -> None:
    table = sample_sweep().to_table()
    lines = table.splitlines()
    assert lines[0] == "capacity search  127.0.0.1:50051  gantry.v1.InferenceService/Generate"
    assert "SLO        TTFT <= 500 ms for >= 99% of requests" in lines
    assert lines[-1] == "max rate within SLO  300.0/s"
    assert "goodput 40.0% < 99%" in table
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    none = SweepReport.from_search(CapacitySearch(Slo(None, 50.0)), [], target="h:1")
    assert "max rate within SLO  none" in none.to_table()
    assert "no request was answered OK in the closed-loop probe" in none.to_table()
