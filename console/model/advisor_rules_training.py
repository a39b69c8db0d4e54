"""The advisor's training-health rules: gradient norm spikes, a collapsing fp16 loss scale and
non-finite losses; each remedy lowers the learning rate."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from console.model.advisor_series import by_rank, is_finite, step_range
from console.model.advisor_types import (
    AdvisorInput,
    Finding,
    MetricPoint,
    Remedy,
    Severity,
    Thresholds,
)

MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data
MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (fallback when MAD is 0)


def lower_lr_remedy(inp: AdvisorInput) -> Remedy:
    """Halve the learning rate (the training-health rules' remedy)."""
    precision = (
        "Prefer bf16 to fp16 where the GPUs support it (A100, H100 and later): its range needs "
        "no loss scaling. "
        if inp.fp16
        else ""
    )
    return Remedy(
        kind="lower-lr",
        summary="Halve the learning rate",
        details=(
            "Halve --learning_rate (and optimizer.params.lr in the DeepSpeed config), then "
            f"resume from a checkpoint before the trouble. {precision}Keep gradient clipping on "
            "(gradient_clipping 1.0)."
        ),
        params={"factor": "0.5"},
    )


def _robust_z(value: float, baseline: Sequence[float]) -> tuple[float, float] | None:
    """(z, median) of `value` against `baseline`, or None when the baseline has no spread."""
    median = statistics.median(baseline)
    deviations = [abs(x - median) for x in baseline]
    scale = MAD_TO_SIGMA * statistics.median(deviations)
    if scale == 0:
        scale = MEAN_AD_TO_SIGMA * statistics.fmean(deviations)
    if scale == 0:
        return None
    return (value - median) / scale, median


def grad_spike(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A recent gradient norm far above the robust spread of the steps before it."""
    window, recent = th.grad_norm_window_steps, th.recent_steps
    # Each rank's last recent + window points with a finite grad norm: all that is scored
    # (a longer series' recent points have full windows within them) and their norms.
    ranks: list[tuple[list[MetricPoint], list[float]]] = []
    # (rank's index in `ranks`, the point's index in its series, its baseline's length)
    candidates: list[tuple[int, int, int]] = []
    for points in by_rank(inp.metrics).values():
        series = _finite_grads(points[-(recent + window) :])
        if len(series) < recent + window < len(points):  # non-finite ones in the tail
            series = _finite_grads(points)[-(recent + window) :]
        values: list[float] = [p.grad_norm for p in series]  # type: ignore[misc]
        for i in range(max(0, len(series) - recent), len(series)):
            count = min(i, window)
            if count >= th.grad_norm_min_steps:
                candidates.append((len(ranks), i, count))
        ranks.append((series, values))
    if len(candidates) >= GRAD_VECTOR_MIN:
        scores = _robust_z_many([values for _, values in ranks], candidates)
    else:
        scores = [_robust_z(ranks[r][1][i], ranks[r][1][i - c : i]) for r, i, c in candidates]
    worst: tuple[float, float, float, int, MetricPoint] | None = None  # z, value, median, n
    for (r, i, count), scored in zip(candidates, scores, strict=True):
        if scored is not None and (worst is None or scored[0] > worst[0]):
            series, values = ranks[r]
            worst = (scored[0], values[i], scored[1], count, series[i])
    if worst is None or worst[0] <= th.grad_norm_z_max:
        return []
    z, value, median, count, point = worst
    evidence = (
        f"grad norm {value:.3g} at step {point.step} on rank {point.rank} ({point.node}) is "
        f"{z:.1f} robust z above the median {median:.3g} of the previous {count} steps "
        f"(threshold {th.grad_norm_z_max:g})"
    )
    return [Finding("grad-spike", "warning", "Gradient norm spike", evidence, lower_lr_remedy(inp))]


def _finite_grads(points: Sequence[MetricPoint]) -> list[MetricPoint]:
    isfinite = math.isfinite
    return [p for p in points if (g := p.grad_norm) is not None and isfinite(g)]


# From this many scored points on, grad_spike scores them with numpy (a thousand ranks x
# 20 recent steps x 50-step baselines: half a second of pure Python, holding the GIL
# against the console's UI loop). Both ways give the same floats: the same medians ((a +
# b) / 2 of the middle two), deviations and quotients, in IEEE double precision.
GRAD_VECTOR_MIN = 256


def _robust_z_many(
    series: Sequence[Sequence[float]], candidates: Sequence[tuple[int, int, int]]
) -> list[tuple[float, float] | None]:
    """`_robust_z(series[r][i], series[r][i - count : i])` for each (r, i, count), with
    the windows of one length scored together."""
    import numpy as np

    flat: list[float] = []
    offsets: list[int] = []
    for values in series:
        offsets.append(len(flat))
        flat.extend(values)
    data = np.asarray(flat, dtype=np.float64)
    by_count: dict[int, list[int]] = {}  # baseline length -> candidate numbers
    ends: list[int] = []  # where each candidate's value is in `flat`
    for n, (r, i, count) in enumerate(candidates):
        by_count.setdefault(count, []).append(n)
        ends.append(offsets[r] + i)
    out: list[tuple[float, float] | None] = [None] * len(candidates)
    for count, numbers in by_count.items():
        end = np.asarray([ends[n] for n in numbers], dtype=np.intp)
        windows = data[end[:, None] - count + np.arange(count)]
        median = np.median(windows, axis=1)
        scale = MAD_TO_SIGMA * np.median(np.abs(windows - median[:, None]), axis=1)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = (data[end] - median) / scale
        zero = scale == 0
        for n, z_n, median_n, zero_n in zip(
            numbers, z.tolist(), median.tolist(), zero.tolist(), strict=True
        ):
            if zero_n:  # the mean-deviation fallback
                e = ends[n]
                out[n] = _robust_z(flat[e], flat[e - count : e])
            else:
                out[n] = (z_n, median_n)
    return out


def loss_scale_collapse(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """The fp16 loss scale fell by the collapse factor within the window: repeated overflows."""
    worst: tuple[float, float, float, MetricPoint, list[MetricPoint]] | None = None
    for points in by_rank(inp.metrics).values():
        window = [
            p for p in points if is_finite(p.loss_scale) and p.loss_scale and p.loss_scale > 0
        ]
        window = window[-th.loss_scale_window_steps :]
        peak = 0.0
        for p in window:
            assert p.loss_scale is not None
            peak = max(peak, p.loss_scale)
            ratio = peak / p.loss_scale
            if worst is None or ratio > worst[0]:
                worst = (ratio, peak, p.loss_scale, p, window)
    if worst is None or worst[0] < th.loss_scale_collapse_factor:
        return []
    ratio, peak, low, point, window = worst
    evidence = (
        f"loss scale fell {ratio:.0f}x, from {peak:g} to {low:g} at step {point.step}, within "
        f"the last {len(window)} steps ({step_range(window)}) on rank {point.rank} "
        f"(threshold {th.loss_scale_collapse_factor:g}x)"
    )
    severity: Severity = "critical" if low <= th.loss_scale_floor else "warning"
    return [
        Finding(
            "loss-scale-collapse", severity, "Loss scale collapsed", evidence, lower_lr_remedy(inp)
        )
    ]


def nan_loss(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A non-finite loss in the recent steps; critical while it lasts to the latest step."""
    bad: list[MetricPoint] = []
    lasting = False
    ranks = by_rank(inp.metrics)
    for points in ranks.values():
        recent = [p for p in points if p.loss is not None][-th.recent_steps :]
        hits = [p for p in recent if not is_finite(p.loss)]
        bad += hits
        lasting = lasting or (bool(hits) and hits[-1] is recent[-1])
    if not bad:
        return []
    first = min(bad, key=lambda p: (p.step, p.time))
    latest = max(p.step for p in inp.metrics)
    finite = [p for p in inp.metrics if is_finite(p.loss) and p.time < first.time]
    evidence = (
        f"loss is {first.loss} on {len({p.rank for p in bad})} of {len(ranks)} ranks since "
        f"step {first.step} (rank {first.rank}, {first.node}; latest step {latest})"
    )
    if finite:
        last = max(finite, key=lambda p: p.time)
        evidence += f"; last finite loss {last.loss:.4g} at step {last.step}"
    severity: Severity = "critical" if lasting else "warning"
    return [
        Finding("nan-loss", severity, "Loss is NaN or infinite", evidence, lower_lr_remedy(inp))
    ]
