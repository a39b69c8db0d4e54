"""The load tester's pure parts: schedules and arrivals, plans, exact histogram merging,
reports, comparison, the report store and config validation. No servers, no sleeping."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from console.loadtest.aggregate import Aggregate
from console.loadtest.compare import compare, format_compare
from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.loadtest.histogram import Dist, Histogram
from console.loadtest.plan import make_plan, share
from console.loadtest.recorder import Recorder, Snapshot
from console.loadtest.report import Report
from console.loadtest.schedule import (
    arrivals,
    constant,
    parse_duration,
    parse_rate,
    parse_schedule,
)
from console.loadtest.store import list_reports, load_report, save_report
from console.loadtest.targets import sse_tokens

# --- durations, rates, schedules ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5", 1.5), (" 10s ", 10)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "-1s", "s", "0s", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_zero_duration_only_where_allowed() -> None:
    assert parse_duration("0", allow_zero=True) == 0.0


@pytest.mark.parametrize(("text", "rate"), [("100", 100.0), ("2.5/s", 2.5), (" 7 /s", 7.0)])
def test_rates(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["abc", "0", "-5", "inf", "nan", "10/m"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_schedule_steps_and_ramps() -> None:
    s = parse_schedule("100:30s,200:30s,ramp:400:60s")
    assert s.total_s == 120
    assert [(p.start_rate, p.end_rate, p.duration_s) for p in s.phases] == [
        (100, 100, 30),
        (200, 200, 30),
        (200, 400, 60),
    ]
    assert s.rate_at(10) == 100 and s.rate_at(45) == 200 and s.rate_at(90) == 300
    assert s.rate_at(120) == 0
    assert s.count(30) == 3000 and s.count(60) == 9000
    assert s.count(120) == pytest.approx(9000 + 300 * 60)
    assert s.describe() == "100/s for 30s, 200/s for 30s, ramp 200->400/s for 60s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty schedule"),
        ("100", "step 1 '100': expected RATE:DURATION"),
        ("100:30s,x:5s", "step 2 'x:5s': 'x' is not a rate"),
        ("100:30s,ramp:400", "step 2"),
        ("100:5q", "step 1 '100:5q': '5q' is not a duration"),
        ("0:10s", "the rate must be above zero"),
        ("ramp:0:10s", "sends nothing"),
        ("100:30s,,200:1s", "step 2 ''"),
    ],
)
def test_bad_schedules_name_the_step(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_time_of_inverts_count_through_steps_and_ramps() -> None:
    s = parse_schedule("ramp:100:10s,50:4s,ramp:0:6s")
    for t in (0.0, 0.3, 5.0, 9.99, 10.0, 12.5, 15.0, 19.9):
        assert s.time_of(s.count(t)) == pytest.approx(t, abs=1e-9)
    assert s.time_of(s.count(20) + 1) == math.inf


def test_constant_arrivals_are_evenly_spaced() -> None:
    times = list(arrivals(constant(100, 2.0), "constant"))
    assert len(times) == 200
    assert times[:3] == pytest.approx([0.0, 0.01, 0.02])
    assert max(b - a for a, b in itertools.pairwise(times)) == pytest.approx(0.01)


def test_ramp_arrivals_follow_the_rate() -> None:
    times = list(arrivals(parse_schedule("ramp:200:10s"), "constant"))
    assert len(times) == 1000  # the area under the ramp
    first_half = sum(1 for t in times if t < 5)
    assert first_half == 250  # a quarter of the area lies under the first half


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    times = list(arrivals(constant(1000, 20.0), "poisson", seed=7))
    n = len(times)
    assert abs(n - 20_000) < 4 * math.sqrt(20_000)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.001, rel=0.03)
    # Exponential: the standard deviation equals the mean, and P(gap > mean) = 1/e.
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert sd == pytest.approx(mean, rel=0.05)
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(math.exp(-1), abs=0.02)
    # The same seed gives the same arrivals (every worker draws the same sequence).
    assert list(arrivals(constant(1000, 1.0), "poisson", seed=7)) == [t for t in times if t < 1]


def test_workers_split_one_sequence_exactly() -> None:
    whole = list(arrivals(constant(300, 1.0), "poisson", seed=3))
    parts = [whole[i::3] for i in range(3)]
    assert sorted(itertools.chain(*parts)) == whole
    assert [share(10, i, 3) for i in range(3)] == [4, 3, 3]
    assert sum(share(7, i, 4) for i in range(4)) == 7


# --- plans --------------------------------------------------------------------------------


def test_plan_open_loop_with_warmup_prefix() -> None:
    plan = make_plan(LoadTestConfig("h:1", rate=50, duration_s=4, warmup_s=2, seed=1))
    assert plan.open_loop and plan.end_s == 6 and plan.run_s == 4
    assert plan.timeline is not None and plan.timeline.total_s == 6
    assert plan.target_rate_at(1) == 50 and plan.target_rps(6.0) == pytest.approx(50)
    assert plan.describe() == "open loop (constant): 50/s for 4s"  # the warm-up apart


def test_plan_defaults() -> None:
    assert make_plan(LoadTestConfig("h:1", rate=5)).run_s == 10  # 10 s by default
    assert make_plan(LoadTestConfig("h:1", rate=5, requests=20)).run_s is None
    closed = make_plan(LoadTestConfig("h:1", concurrency=8, requests=20))
    assert not closed.open_loop and closed.end_s is None and closed.target_rate_at(1) is None
    ramped = make_plan(LoadTestConfig("h:1", schedule="ramp:100:10s,100:5s", warmup_s=2))
    assert ramped.timeline is not None and ramped.timeline.rate_at(1) == 50  # ramp's mean


# --- config validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"target": ""}, "give the endpoint"),
        ({"target": "nohost"}, "expected HOST:PORT"),
        ({"target": "h:99999"}, "expected HOST:PORT"),
        ({"rate": None}, "give the load"),
        ({"concurrency": 4}, "give one of --rate, --concurrency or --schedule"),
        ({"rate": -1.0}, "--rate must be a positive number"),
        ({"rate": None, "schedule": "5:xs"}, "--schedule '5:xs': step 1"),
        ({"rate": None, "schedule": "5:1s", "duration_s": 3.0}, "drop --duration"),
        ({"arrival": "burst"}, "--arrival 'burst'"),
        ({"rate": None, "concurrency": 0}, "--concurrency must be at least 1"),
        ({"rate": None, "concurrency": 2, "workers": 3}, "below --workers 3"),
        ({"rate": None, "concurrency": 2, "arrival": "poisson"}, "needs --rate or --schedule"),
        ({"workers": 0}, "--workers must be 1 to 64"),
        ({"requests": 0}, "--requests must be at least 1"),
        ({"duration_s": 0.0}, "--duration must be a positive number"),
        ({"warmup_s": -1.0}, "--warmup must be 0 or more"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
        ({"slo_ttft_ms": 0.0}, "--slo-ttft-ms must be a positive number"),
        ({"method": "NoSlash"}, "expected pkg.Service/Method"),
        ({"method": "a.B/C", "data": "{bad"}, "--data is not JSON"),
        ({"target": "http://h/v1/completions", "data": "[1]"}, "must be a JSON object"),
        ({"data": "{}"}, "--data goes with --method"),
        ({"target": "http://h/v1/completions", "method": "a.B/C"}, "--method is for gRPC"),
        ({"prompts": Path("/nonexistent.jsonl")}, "--prompts /nonexistent.jsonl: no such file"),
        ({"token_file": Path("/nonexistent")}, "--token-file /nonexistent: no such file"),
    ],
)
def test_validate_gives_one_line_naming_the_fix(changes: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"target": "127.0.0.1:5", "rate": 10.0}
    with pytest.raises(LoadTestError) as info:
        validate(LoadTestConfig(**{**base, **changes}))  # type: ignore[arg-type]
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_configs_pass() -> None:
    validate(LoadTestConfig("127.0.0.1:5", rate=10))
    validate(LoadTestConfig("127.0.0.1:5", schedule="10:1s,ramp:20:1s", arrival="poisson"))
    validate(LoadTestConfig("https://x/v1/completions", concurrency=4, workers=2, data="{}"))


# --- histograms: exact merging -----------------------------------------------------------


def test_merging_encoded_histograms_is_exact() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(3, 1) for _ in range(20_000)] + [0.0, 1e-4, 3_599_999.0]
    whole = Histogram()
    parts = [Histogram() for _ in range(4)]
    for v in values:
        whole.record(v)
        parts[rng.randrange(4)].record(v)
    merged = Histogram()
    for part in parts:
        merged.merge_encoded(part.encode())  # as the workers' snapshots travel
    assert merged.counts() == whole.counts()
    assert merged.summary() == whole.summary()
    assert merged.summary().count == len(values)


def test_histogram_percentiles_match_the_data() -> None:
    h = Histogram()
    for ms in range(1, 1001):  # 1..1000 ms, one each
        h.record(float(ms))
    d = h.summary()
    assert d.p50 == pytest.approx(500, rel=0.002)
    assert d.p90 == pytest.approx(900, rel=0.002)
    assert d.p99 == pytest.approx(990, rel=0.002)
    assert d.max == pytest.approx(1000, rel=0.002)
    assert d.mean == pytest.approx(500.5, rel=0.002)
    buckets = h.buckets(10)
    assert sum(c for _, c in buckets) == 1000 and buckets[-1][0] == pytest.approx(1000, 0.002)
    assert Histogram().summary() == Dist(0, 0, 0, 0, 0, 0, 0) and Histogram().buckets() == []


def test_aggregate_merges_worker_snapshots_exactly() -> None:
    """Intervals from several workers add up to what one recorder of everything holds."""
    plan = make_plan(LoadTestConfig("h:1", rate=100, duration_s=1, seed=1))
    one = Recorder(0, True, None, 50.0, streaming=False, warmup=False)
    recorders = [Recorder(i, True, None, 50.0, streaming=False) for i in range(3)]
    aggregate = Aggregate(plan, 0.0, 3)
    rng = random.Random(2)
    for i in range(3000):
        scheduled = i * 0.001
        actual = scheduled + rng.random() * 0.002
        end = actual + rng.expovariate(1 / 0.03)
        code = "OK" if i % 50 else "INTERNAL"
        for rec in (one, recorders[i % 3]):
            rec.sent(False, scheduled, actual)
            rec.done(False, scheduled, actual, end, code, None, 0)
        if i % 700 == 0:
            for rec in recorders:
                snap = rec.snapshot(float(i))
                aggregate.add(pickle.loads(pickle.dumps(snap)))  # as from a worker process
    for rec in recorders:
        snap = rec.snapshot(5.0)
        snap.final, snap.window_end = True, 1.0
        aggregate.add(snap)
    assert aggregate.all_finished
    expected = one.snapshot(5.0)
    for name in ("latency", "service", "send_lag"):
        assert aggregate.totals[name].counts() == expected.hists[name].counts()
    assert (aggregate.sent, aggregate.ok, aggregate.errors) == (3000, 2940, {"INTERNAL": 60})
    assert aggregate.good == expected.good


# --- reports, comparison, store ----------------------------------------------------------


def make_report(p99: float = 50.0, rps: float = 100.0, **changes: object) -> Report:
    dist = Dist(1000, 22.0, 20.0, 30.0, p99, p99 * 1.2, p99 * 1.5)
    values: dict[str, object] = dict(
        target="127.0.0.1:5", method="gantry.v1.InferenceService/Generate", kind="gantry",
        streaming=True, mode="open", load="open loop (constant): 100/s for 10s",
        arrival="constant", concurrency=None, workers=2, started_at="2030-01-01T00:00:00Z",
        warmup_s=1.0, duration_s=10.0, partial=False, target_rps=100.0, achieved_rps=rps,
        throughput_rps=rps, sent=1000, completed=1000, ok=990, errors={"INTERNAL": 10},
        unfinished=0, warmup_requests=100, latency_ms=dist, service_ms=dist,
        send_lag_ms=Dist(1000, 0.1, 0.1, 0.2, 0.5, 0.6, 0.9), ttft_ms=dist, itl_ms=dist,
        tokens_per_s_request=Dist(990, 40, 40, 45, 50, 50, 51), tokens=31_680,
        tokens_per_s=3168.0, slo_ttft_ms=200.0, slo_latency_ms=None, good=950,
        goodput_rps=95.0, histograms={"latency": Histogram().encode()}, notes=["a note"],
    )  # fmt: skip
    values.update(changes)
    return Report(**values)  # type: ignore[arg-type]


def test_report_json_round_trip_and_table() -> None:
    report = make_report()
    data = json.loads(json.dumps(report.to_json()))
    assert data["latency_ms"]["p99.9"] == 60.0 and data["errors"] == {"INTERNAL": 10}
    assert data["error_pct"] == 1.0 and data["goodput_pct"] == 95.0
    assert Report.from_json(data) == report
    table = report.to_table()
    for text in ("target 100.0/s", "achieved 100.0/s", "INTERNAL 10", "TTFT", "inter-token"):
        assert text in table
    assert "goodput    95.0/s, 95.0% of requests within TTFT <= 200 ms" in table
    with pytest.raises(ValueError, match="version"):
        Report.from_json({**data, "version": 99})


def test_closed_loop_report_omits_open_loop_rows() -> None:
    report = make_report(
        mode="closed", target_rps=None, send_lag_ms=None, streaming=False, ttft_ms=None,
        itl_ms=None, tokens_per_s_request=None, tokens=0, slo_ttft_ms=None,
    )  # fmt: skip
    table = report.to_table()
    assert "send lag" not in table and "service" not in table and "goodput" not in table
    assert Report.from_json(report.to_json()) == report


def test_compare_rows_and_verdicts() -> None:
    a, b = make_report(p99=50.0, rps=100.0), make_report(p99=40.0, rps=90.0)
    rows = {r.metric: r for r in compare(a, b)}
    assert rows["latency p99 ms"].diff == pytest.approx(-10.0)
    assert rows["latency p99 ms"].pct == pytest.approx(-20.0)
    assert rows["latency p99 ms"].verdict == "better"  # lower latency
    assert rows["achieved req/s"].verdict == "worse"  # lower rate
    assert rows["latency p50 ms"].verdict == "same"
    closed = make_report(ttft_ms=None, target_rps=None)
    rows = {r.metric: r for r in compare(a, closed)}
    assert rows["TTFT p50 ms"].b is None and rows["TTFT p50 ms"].verdict == ""
    text = format_compare(compare(a, b), "a.json", "b.json")
    assert "A: a.json" in text and "-20.0%" in text and "better" in text


def test_store_saves_lists_and_loads(tmp_path: Path) -> None:
    report = make_report()
    second_of = datetime(2026, 12, 6, 3, 0, 0, tzinfo=UTC)  # three reports in one second
    saved = [save_report(report, tmp_path / "lt", now=second_of) for _ in range(3)]
    first = saved[0]
    assert len(set(saved)) == 3 and first.parent == tmp_path / "lt"
    assert list_reports(tmp_path / "lt") == saved  # oldest first
    assert load_report(first) == report
    assert list_reports(tmp_path / "none") == []
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a load test report"):
        load_report(tmp_path / "bad.json")


def test_sse_lines() -> None:
    assert sse_tokens('data: {"choices": [{"text": " hi"}]}') == 1
    assert sse_tokens('data: {"choices": [{"text": ""}]}') == 0
    assert sse_tokens(": keep-alive") == 0 and sse_tokens("") == 0
    assert sse_tokens("data: [DONE]") is None


def test_snapshot_pickles() -> None:
    latency = Histogram()
    for ms in (1.0, 2.5, 300.0):
        latency.record(ms)
    snap = Snapshot(1, 2.0, {"latency": latency}, errors={"X": 1})
    copy = pickle.loads(pickle.dumps(snap))  # as it crosses from a worker process
    assert copy.hists["latency"].counts() == latency.counts()
    assert (copy.worker, copy.at, copy.errors) == (1, 2.0, {"X": 1})


def test_bucket_values_are_hdrs_own() -> None:
    from hdrh.histogram import HdrHistogram

    from console.loadtest.histogram import HIGHEST, SCALE, SIGNIFICANT_FIGURES, bucket_values

    h = HdrHistogram(1, HIGHEST, SIGNIFICANT_FIGURES)
    want = [
        h.get_highest_equivalent_value(h.get_value_from_index(i)) / SCALE
        for i in range(h.counts_len)
    ]
    assert bucket_values(h) == want
