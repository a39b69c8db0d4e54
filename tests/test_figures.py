"""A rank's latest figures (gantry.v1.figures), the rule the leader and the console share."""

from __future__ import annotations

from gantry.v1 import job_pb2
from gantry.v1.figures import latest_metrics


def m(step: int, **fields: float) -> job_pb2.RankMetrics:
    metrics = job_pb2.RankMetrics(step=step)
    for name, value in fields.items():
        setattr(metrics, name, value)
    return metrics


def test_a_later_step_keeps_what_it_does_not_say() -> None:
    logged = m(10, loss=2.5, learning_rate=1e-4)
    bar = m(11, step_time_s=0.2)
    latest = latest_metrics(logged, bar)
    assert (latest.step, latest.loss, latest.learning_rate, latest.step_time_s) == (
        11,
        2.5,
        1e-4,
        0.2,
    )
    assert latest_metrics(latest, m(12, loss=2.0)).loss == 2.0


def test_a_late_record_of_an_earlier_step_adds_without_going_back() -> None:
    bar = m(12, step_time_s=0.2)
    late = m(10, loss=2.4)
    late.time.FromSeconds(5)
    latest = latest_metrics(bar, late)
    assert (latest.step, latest.loss, latest.step_time_s) == (12, 2.4, 0.2)
    assert not latest.HasField("time")


def test_nothing_before() -> None:
    first = m(1, loss=3.0)
    assert latest_metrics(None, first) is first
