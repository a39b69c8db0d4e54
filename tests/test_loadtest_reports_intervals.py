"""The run second by second (console.loadtest.intervals): the workers' real Recorder
snapshots binned by their time, merged exactly, warm-up left out."""

from __future__ import annotations

import json

import pytest

from console.loadtest.histogram import Histogram
from console.loadtest.intervals import Interval, IntervalLog, report_intervals
from console.loadtest.recorder import Recorder, Snapshot

T0 = 1000.0  # when the measured window began, on the snapshots' clock


def answered(rec: Recorder, at: float, latency_ms: float, code: str = "OK") -> None:
    rec.sent(False, at, at)
    rec.done(False, at, at, at + latency_ms / 1000, code, None, 0)


def snap(rec: Recorder, at: float) -> Snapshot:
    return rec.snapshot(at)


def test_snapshots_fall_into_the_interval_of_their_time_and_merge_exactly() -> None:
    a = Recorder(0, open_loop=True, slo_ttft_ms=None, slo_latency_ms=15.0, streaming=False)
    b = Recorder(1, open_loop=True, slo_ttft_ms=None, slo_latency_ms=15.0, streaming=False)
    log = IntervalLog(T0)
    # The warm-up: a warm request before the window, not measured.
    a.sent(True, T0 - 0.5, T0 - 0.5)
    a.done(True, T0 - 0.5, T0 - 0.5, T0 - 0.49, "OK", None, 0)
    log.add(snap(a, T0 - 0.2))
    answered(a, T0 + 0.1, 10.0)
    answered(a, T0 + 0.2, 20.0)
    log.add(snap(a, T0 + 0.5))
    answered(b, T0 + 0.3, 40.0)
    answered(b, T0 + 0.6, 5.0, code="UNAVAILABLE")
    log.add(snap(b, T0 + 0.9))
    answered(a, T0 + 1.2, 30.0)
    log.add(snap(a, T0 + 1.5))
    # Nothing at all in the third second: a stall shows as an empty interval.
    answered(b, T0 + 3.1, 50.0)
    log.add(snap(b, T0 + 3.6))

    got = log.intervals()
    assert [(iv.start_s, iv.end_s) for iv in got] == [
        (0.0, 1.0),
        (1.0, 2.0),
        (2.0, 3.0),
        (3.0, pytest.approx(3.6)),
    ]
    assert [iv.sent for iv in got] == [4, 1, 0, 1]
    assert [iv.ok for iv in got] == [3, 1, 0, 1]
    assert [iv.errors for iv in got] == [1, 0, 0, 0]
    assert [iv.good for iv in got] == [1, 0, 0, 0]  # only the 10 ms answer is within 15 ms
    first = got[0].latency_ms
    assert first is not None and first.count == 3
    # Exactly the histogram of the three values, merged across the two workers.
    direct = Histogram()
    for at, latency_ms in ((T0 + 0.1, 10.0), (T0 + 0.2, 20.0), (T0 + 0.3, 40.0)):
        direct.record((at + latency_ms / 1000 - at) * 1000)  # as the recorder computes it
    assert first == direct.summary()
    assert got[2].latency_ms is None and got[2].per_s(got[2].ok) == 0.0
    assert got[3].per_s(got[3].sent) == pytest.approx(1 / 0.6)
    assert got[0].send_lag_ms is not None and got[0].send_lag_ms.count == 4


def test_a_last_snapshot_just_past_an_interval_joins_the_one_before() -> None:
    rec = Recorder(0, open_loop=True, slo_ttft_ms=None, slo_latency_ms=None, streaming=False)
    log = IntervalLog(T0)
    answered(rec, T0 + 0.2, 10.0)
    log.add(snap(rec, T0 + 0.5))
    answered(rec, T0 + 1.2, 10.0)
    log.add(snap(rec, T0 + 1.5))
    answered(rec, T0 + 1.7, 90.0)
    log.add(snap(rec, T0 + 2.01))  # the drain's final snapshot
    got = log.intervals()
    assert [(iv.start_s, iv.end_s) for iv in got] == [(0.0, 1.0), (1.0, pytest.approx(2.01))]
    assert [iv.sent for iv in got] == [1, 2]
    last = got[1].latency_ms
    assert last is not None and last.count == 2 and last.max == pytest.approx(90, rel=0.01)


def test_intervals_travel_as_json_and_old_reports_have_none() -> None:
    rec = Recorder(0, open_loop=False, slo_ttft_ms=None, slo_latency_ms=None)
    rec.sent(False, T0, T0)
    rec.done(False, T0, T0, T0 + 0.2, "OK", T0 + 0.05, 3, "length")
    log = IntervalLog(T0)
    log.add(rec.snapshot(T0 + 0.5))
    raw = json.loads(json.dumps(log.to_json()))
    back = [Interval.from_json(item) for item in raw]
    assert back == log.intervals()
    assert back[0].ttft_ms is not None and back[0].ttft_ms.p50 == pytest.approx(50, rel=0.01)
    assert back[0].tokens == 3 and back[0].send_lag_ms is None

    class Saved:
        intervals = raw

    class Older:
        pass

    assert report_intervals(Saved()) == back
    assert report_intervals(Older()) == []


def test_a_log_with_no_measured_snapshot_has_no_intervals() -> None:
    rec = Recorder(0, open_loop=True, slo_ttft_ms=None, slo_latency_ms=None)
    log = IntervalLog(T0)
    log.add(rec.snapshot(T0 - 1.0))
    assert log.intervals() == [] and log.to_json() == []
    with pytest.raises(ValueError, match="longer than 0 s"):
        IntervalLog(T0, interval_s=0)
