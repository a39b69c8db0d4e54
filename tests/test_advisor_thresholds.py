"""The advisor's thresholds (defaults, a mapping, one-line errors) and grad_spike over many
ranks: numpy and pure Python agree bit for bit."""

from __future__ import annotations

import math
import random

import pytest

from console.model import advisor_rules_training as training_rules
from console.model.advisor import (
    DEFAULT_THRESHOLDS,
    AdvisorInput,
    Finding,
    MetricPoint,
    Thresholds,
    evaluate,
    grad_spike,
)
from tests.test_advisor import given, point

# --- thresholds ---------------------------------------------------------------------------


def test_threshold_defaults() -> None:
    th = Thresholds()
    assert th == DEFAULT_THRESHOLDS
    assert (th.gpu_util_min_percent, th.gpu_util_window_s) == (85, 60)
    assert (th.collective_fraction_max, th.collective_window_steps) == (0.20, 20)
    assert (th.grad_norm_z_max, th.grad_norm_window_steps, th.grad_norm_min_steps) == (6, 50, 10)
    assert th.loss_scale_collapse_factor == 64
    assert (th.interruptions_per_week_max, th.straggler_factor) == (1.0, 1.5)


def test_thresholds_from_mapping() -> None:
    th = Thresholds.from_mapping({"gpu_util_min_percent": 70, "straggler_window_steps": 30})
    assert th.gpu_util_min_percent == 70 and th.straggler_window_steps == 30
    assert th.grad_norm_z_max == 6.0
    assert Thresholds.from_mapping({}) == DEFAULT_THRESHOLDS


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gpu_util_min": 70},
            "unknown advisor threshold 'gpu_util_min': did you mean 'gpu_util_min_percent'?",
        ),
        ({"zzz": 1}, "unknown advisor threshold 'zzz': see console.model.advisor.Thresholds"),
        (
            {"gpu_util_window_s": "60"},
            "advisor threshold 'gpu_util_window_s': expected a number, got '60'",
        ),
        (
            {"straggler_factor": True},
            "advisor threshold 'straggler_factor': expected a number, got True",
        ),
        (
            {"grad_norm_window_steps": 50.5},
            "advisor threshold 'grad_norm_window_steps': expected a whole number, got 50.5",
        ),
        (
            {"gpu_util_min_percent": 120},
            "advisor threshold 'gpu_util_min_percent': must be above 0 and at most 100, got 120",
        ),
        (
            {"straggler_factor": 1.0},
            "advisor threshold 'straggler_factor': must be above 1, got 1.0",
        ),
        (
            {"collective_fraction_max": math.nan},
            "advisor threshold 'collective_fraction_max': must be above 0 and at most 1, got nan",
        ),
        ({"recent_steps": 0}, "advisor threshold 'recent_steps': must be above 0, got 0"),
        (
            {"grad_norm_min_steps": 60},
            "advisor threshold 'grad_norm_min_steps' (60) must not exceed "
            "'grad_norm_window_steps' (50)",
        ),
    ],
)
def test_bad_thresholds_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Thresholds.from_mapping(values)
    assert str(caught.value) == message


def test_thresholds_accept_zero_where_it_means_something() -> None:
    th = Thresholds.from_mapping({"interruptions_per_week_max": 0, "straggler_min_delta_s": 0})
    assert th.interruptions_per_week_max == 0
    assert Thresholds.from_mapping({"interruptions_min_span_s": 0}).interruptions_min_span_s == 0
    assert (DEFAULT_THRESHOLDS.interruptions_min_span_s, th.interruptions_frequent_s) == (
        6 * 3600,
        3600,
    )


# --- grad_spike over many ranks: numpy and pure Python agree ------------------------------


def _reference_grad_spike(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """grad_spike as it was in pure Python, one window at a time."""
    worst: tuple[float, float, float, int, MetricPoint] | None = None
    ranks: dict[int, list[MetricPoint]] = {}
    for p in inp.metrics:
        ranks.setdefault(p.rank, []).append(p)
    for points in ranks.values():
        points.sort(key=lambda p: (p.time, p.step))
        series = [p for p in points if p.grad_norm is not None and math.isfinite(p.grad_norm)]
        for i in range(max(0, len(series) - th.recent_steps), len(series)):
            baseline = [
                p.grad_norm
                for p in series[max(0, i - th.grad_norm_window_steps) : i]
                if p.grad_norm is not None
            ]
            value = series[i].grad_norm
            if len(baseline) < th.grad_norm_min_steps or value is None:
                continue
            scored = training_rules._robust_z(value, baseline)
            if scored is not None and (worst is None or scored[0] > worst[0]):
                worst = (scored[0], value, scored[1], len(baseline), series[i])
    if worst is None or worst[0] <= th.grad_norm_z_max:
        return []
    z, value, median, count, p = worst
    evidence = (
        f"grad norm {value:.3g} at step {p.step} on rank {p.rank} ({p.node}) is "
        f"{z:.1f} robust z above the median {median:.3g} of the previous {count} steps "
        f"(threshold {th.grad_norm_z_max:g})"
    )
    return [
        Finding(
            "grad-spike",
            "warning",
            "Gradient norm spike",
            evidence,
            training_rules.lower_lr_remedy(inp),
        )
    ]


def _many_ranks(seed: int) -> list[MetricPoint]:
    rng = random.Random(seed)
    metrics = []
    for rank in range(rng.choice([3, 40, 80])):
        steps = rng.choice([5, 30, 60, 70, 71, 120])
        kind = rng.random()
        for step in range(steps):
            if kind < 0.15:
                norm: float | None = 1.0  # no spread at all
            elif kind < 0.3:
                norm = rng.choice([1.0, 1.0, 1.0, 1.5])  # MAD 0, mean deviation not
            else:
                norm = round(rng.lognormvariate(0, 0.3), rng.choice([1, 2, 6]))
            roll = rng.random()
            if roll < 0.03:
                norm = rng.choice([None, math.nan, math.inf])
            elif roll < 0.05:
                norm = 50.0 * rng.random()
            metrics.append(point(rank, step, time=step + rank / 100, grad_norm=norm))
    rng.shuffle(metrics)
    return metrics


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("z_max", [0.01, 3.0, 6.0])
def test_grad_spike_numpy_agrees_with_pure_python(
    seed: int, z_max: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    inp = given(_many_ranks(seed))
    th = Thresholds(grad_norm_z_max=z_max)
    expected = _reference_grad_spike(inp, th)
    for vector_min in (0, 10**9):
        monkeypatch.setattr(training_rules, "GRAD_VECTOR_MIN", vector_min)
        assert grad_spike(inp, th) == expected
        assert [f for f in evaluate(inp, th) if f.rule == "grad-spike"] == expected


@pytest.mark.parametrize("seed", range(6))
def test_robust_z_many_is_robust_z_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    series = [
        [rng.choice([1.0, rng.lognormvariate(0, 1)]) for _ in range(rng.randint(40, 90))]
        for _ in range(30)
    ]
    candidates = [
        (r, i, min(i, 50))
        for r, values in enumerate(series)
        for i in range(max(len(values) - 20, 0), len(values))
        if min(i, 50) >= 10
    ]
    expected = [
        training_rules._robust_z(series[r][i], series[r][i - c : i]) for r, i, c in candidates
    ]
    assert training_rules._robust_z_many(series, candidates) == expected
