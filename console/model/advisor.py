"""The advisor: rules that read a job's recent metrics, GPU utilization, matched log lines and
attempt failures, and say what slows or breaks the job, each with a concrete remedy.

Pure: no I/O, no UI. The console's job store builds an `AdvisorInput`; `evaluate` returns
`Finding`s, critical ones first. Every rule is one plain function over the input and the
`Thresholds`, and stays quiet when it lacks the data to judge. Windows counted in steps are
each rank's latest metric points (one point per reported step), so a restart that resumes
from an earlier step does not mix attempts in a window.

Remedies with a kind other than "advice" can be applied to the job spec by
`console.model.remedies.apply_remedy`.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import math
import re
import statistics
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Literal

__all__ = [
    "DEFAULT_THRESHOLDS",
    "RULES",
    "AdvisorInput",
    "Failure",
    "Finding",
    "GpuPoint",
    "LogHit",
    "MetricPoint",
    "Remedy",
    "Severity",
    "Thresholds",
    "evaluate",
]

Severity = Literal["warning", "critical"]

WEEK_S = 7 * 24 * 3600.0
MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data
MEAN_AD_TO_SIGMA = 1.2533  # the same for the mean absolute deviation (fallback when MAD is 0)


@dataclass(frozen=True)
class MetricPoint:
    rank: int
    node: str
    step: int
    time: float
    loss: float | None
    grad_norm: float | None
    loss_scale: float | None
    step_time_s: float | None
    collective_time_s: float | None
    tokens_per_s: float | None


@dataclass(frozen=True)
class GpuPoint:
    node: str
    gpu: int
    time: float
    util_percent: float


@dataclass(frozen=True)
class LogHit:
    rank: int
    node: str
    time: float
    line: str


@dataclass(frozen=True)
class Failure:
    time: float
    reason: str


@dataclass(frozen=True)
class AdvisorInput:
    metrics: Sequence[MetricPoint]
    gpus: Sequence[GpuPoint]
    log_hits: Sequence[LogHit]
    failures: Sequence[Failure]
    now: float
    running: bool
    micro_batch: int | None
    grad_accum: int | None
    fp16: bool
    started: float | None = None  # the job's creation time; None: the earliest time given


@dataclass(frozen=True)
class Remedy:
    kind: str  # "advice" (no spec change) or a kind console.model.remedies.apply_remedy knows
    summary: str
    details: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    title: str
    evidence: str  # one line: the numbers, the window and the threshold
    remedy: Remedy | None = None


@dataclass(frozen=True)
class Thresholds:
    gpu_util_min_percent: float = 85.0
    gpu_util_window_s: float = 60.0
    gpu_util_min_coverage: float = 0.8  # a node's samples must span this much of the window
    collective_fraction_max: float = 0.20
    collective_window_steps: int = 20
    collective_min_steps: int = 5
    grad_accum_max: int = 64  # raise-grad-accum is offered up to this many steps
    grad_norm_z_max: float = 6.0
    grad_norm_window_steps: int = 50
    grad_norm_min_steps: int = 10
    recent_steps: int = 20  # grad spikes and NaN losses older than this are not reported
    loss_scale_collapse_factor: float = 64.0
    loss_scale_window_steps: int = 50
    loss_scale_floor: float = 1.0  # a collapse down to this is critical
    interruptions_per_week_max: float = 1.0
    interruptions_window_s: float = WEEK_S
    interruptions_min_failures: int = 2  # one failure in a young job is no rate yet
    straggler_factor: float = 1.5
    straggler_window_steps: int = 20
    straggler_min_steps: int = 5
    straggler_min_delta_s: float = 0.01  # ignore differences smaller than this

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_threshold(f.name, getattr(self, f.name), f.type == "int")
        if self.grad_norm_min_steps > self.grad_norm_window_steps:
            raise ValueError(
                f"advisor threshold 'grad_norm_min_steps' ({self.grad_norm_min_steps}) must not "
                f"exceed 'grad_norm_window_steps' ({self.grad_norm_window_steps})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Thresholds:
        """Thresholds with `values` over the defaults; ValueError (one line) names a bad key."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                longer = [name for name in names if name.startswith(str(key))]
                close = longer or difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else "see console.model.advisor.Thresholds"
                )
                raise ValueError(f"unknown advisor threshold {key!r}: {hint}")
        return cls(**values)  # type: ignore[arg-type]  # checked in __post_init__


# name: (lowest, highest, whether the lowest itself is allowed)
_LIMITS: Mapping[str, tuple[float, float, bool]] = {
    "gpu_util_min_percent": (0.0, 100.0, False),
    "gpu_util_min_coverage": (0.0, 1.0, True),
    "collective_fraction_max": (0.0, 1.0, False),
    "loss_scale_collapse_factor": (1.0, math.inf, False),
    "loss_scale_floor": (0.0, math.inf, True),
    "interruptions_per_week_max": (0.0, math.inf, True),
    "straggler_factor": (1.0, math.inf, False),
    "straggler_min_delta_s": (0.0, math.inf, True),
}


def _check_threshold(name: str, value: object, integral: bool) -> None:
    lo, hi, lo_ok = _LIMITS.get(name, (0.0, math.inf, False))
    wanted = "a whole number" if integral else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"advisor threshold {name!r}: expected {wanted}, got {value!r}")
    if integral and not isinstance(value, int):
        raise ValueError(f"advisor threshold {name!r}: expected {wanted}, got {value!r}")
    if math.isnan(value) or value > hi or value < lo or (value == lo and not lo_ok):
        bound = f"{'at least' if lo_ok else 'above'} {lo:g}"
        if hi < math.inf:
            bound += f" and at most {hi:g}"
        raise ValueError(f"advisor threshold {name!r}: must be {bound}, got {value!r}")


DEFAULT_THRESHOLDS = Thresholds()


# --- helpers ------------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


_memo = threading.local()  # evaluate's: the rules share one grouping of the input


def _by_rank(metrics: Sequence[MetricPoint]) -> dict[int, list[MetricPoint]]:
    """Each rank's points in time order (read-only: within `evaluate` the rules share it)."""
    cached = getattr(_memo, "by_rank", None)
    if cached is not None and cached[0] is metrics:
        return cached[1]  # type: ignore[no-any-return]
    ranks: dict[int, list[MetricPoint]] = defaultdict(list)
    for point in metrics:
        ranks[point.rank].append(point)
    by_time = attrgetter("time", "step")
    out = {rank: sorted(pts, key=by_time) for rank, pts in ranks.items()}
    if getattr(_memo, "active", False):
        _memo.by_rank = (metrics, out)
    return out


def _median_without(ordered: Sequence[float], value: float) -> float:
    """The median of sorted `ordered` less one occurrence of `value` (which it holds): what
    statistics.median of the others gives, in O(log n) rather than O(n log n) a rank."""
    gone = bisect.bisect_left(ordered, value)
    n = len(ordered) - 1

    def at(i: int) -> float:
        return ordered[i if i < gone else i + 1]

    if n % 2:
        return at(n // 2)
    return (at(n // 2 - 1) + at(n // 2)) / 2


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _clip(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _steps(points: Sequence[MetricPoint]) -> str:
    steps = [p.step for p in points]
    return f"steps {min(steps)}-{max(steps)}"


# --- rules --------------------------------------------------------------------------------


def input_bound(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """GPUs under-used over the window while steps ran: the input pipeline starves them.

    The window starts no earlier than the first step after the latest failure, so the idle time
    of a restart is not counted; it must still span most of the window (min coverage).
    """
    if not inp.running:
        return []
    start = inp.now - th.gpu_util_window_s
    if inp.failures:
        failed = max(f.time for f in inp.failures)
        resumed = [m.time for m in inp.metrics if m.time > failed]
        start = max(start, min(resumed, default=inp.now))
    span = th.gpu_util_min_coverage * th.gpu_util_window_s
    steps = [m.step for m in inp.metrics if start <= m.time <= inp.now]
    if inp.now - start < span or not steps or max(steps) <= min(steps):
        return []
    samples: dict[str, list[GpuPoint]] = defaultdict(list)
    for gpu in inp.gpus:
        if start <= gpu.time <= inp.now:
            samples[gpu.node].append(gpu)
    low: list[tuple[float, str]] = []
    for node, points in samples.items():
        times = [p.time for p in points]
        if max(times) - min(times) < span:
            continue
        mean = statistics.fmean(p.util_percent for p in points)
        if mean < th.gpu_util_min_percent:
            low.append((mean, node))
    if not low:
        return []
    low.sort()
    mean, node = low[0]
    evidence = (
        f"GPU util {mean:.0f}% mean on {node} over the last {inp.now - start:.0f} s "
        f"(threshold {th.gpu_util_min_percent:g}%) while steps {min(steps)} to {max(steps)} ran"
    )
    if len(low) > 1:
        evidence += "; also " + ", ".join(f"{n} {m:.0f}%" for m, n in low[1:])
    remedy = Remedy(
        kind="advice",
        summary="Feed the GPUs faster: more dataloader workers, prefetching, faster storage",
        details=(
            "The GPUs wait for input. Raise the DataLoader's num_workers "
            "(--dataloader_num_workers) and prefetch_factor, pin memory, tokenize the data "
            "ahead of time, and check the storage's read throughput (local NVMe rather than a "
            "network share) and the host's CPU load on the node screen."
        ),
        params={"node": node},
    )
    return [Finding("input-bound", "warning", "GPUs starved for input", evidence, remedy)]


def network_bound(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """Collectives take too large a share of the step.

    Per step the least wait of any rank counts: that rank arrived last at the collective, so its
    wait is the transfer itself, not time spent waiting for a slower rank (see straggler).
    """
    per_step: dict[int, float] = {}
    ranks = 0
    for points in _by_rank(inp.metrics).values():
        timed = [
            p
            for p in points[-th.collective_window_steps :]
            if _finite(p.collective_time_s) and _finite(p.step_time_s) and p.step_time_s
        ]
        ranks += bool(timed)
        for p in timed:
            assert p.collective_time_s is not None and p.step_time_s is not None
            share = min(max(p.collective_time_s / p.step_time_s, 0.0), 1.0)
            per_step[p.step] = min(per_step.get(p.step, share), share)
    if len(per_step) < th.collective_min_steps:
        return []
    share = statistics.fmean(per_step.values())
    if share <= th.collective_fraction_max:
        return []
    evidence = (
        f"collectives took {share:.0%} of step time over steps {min(per_step)}-{max(per_step)} "
        f"({len(per_step)} steps, {ranks} ranks; threshold {th.collective_fraction_max:.0%})"
    )
    findings = [
        Finding(
            "network-bound",
            "warning",
            "Training is network-bound",
            evidence,
            Remedy(
                kind="advice",
                summary="Check the NCCL transport and the network path",
                details=(
                    "NCCL may have fallen back from InfiniBand/RoCE to TCP sockets: with "
                    "NCCL_DEBUG=INFO look for 'NET/Socket' instead of 'NET/IB', make sure "
                    "NCCL_IB_DISABLE is not 1, set NCCL_SOCKET_IFNAME to the fast interface, and "
                    "check the topology (nvidia-smi topo -m: GPUs and NICs on the same PCIe "
                    "switch and NUMA node)."
                ),
            ),
        )
    ]
    ga = inp.grad_accum
    if ga is not None and ga >= 1 and 2 * ga <= th.grad_accum_max:
        findings.append(
            Finding(
                "raise-grad-accum",
                "warning",
                "Raise gradient accumulation to reduce gradients less often",
                f"{evidence}; gradient_accumulation_steps is {ga}",
                Remedy(
                    kind="set-grad-accum",
                    summary=f"Double gradient_accumulation_steps ({ga} -> {2 * ga})",
                    details=(
                        "Fewer gradient all-reduces per sample. The global batch doubles too: "
                        "retune the learning rate if needed. This helps where gradients are "
                        "reduced once per optimizer step (DDP, ZeRO stage 0-1); ZeRO-2/3 reduce "
                        "on every micro batch."
                    ),
                    params={"gradient_accumulation_steps": str(2 * ga)},
                ),
            )
        )
    return findings


def _lower_lr(inp: AdvisorInput) -> Remedy:
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
    for points in _by_rank(inp.metrics).values():
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
    return [Finding("grad-spike", "warning", "Gradient norm spike", evidence, _lower_lr(inp))]


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
    for points in _by_rank(inp.metrics).values():
        window = [p for p in points if _finite(p.loss_scale) and p.loss_scale and p.loss_scale > 0]
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
        f"the last {len(window)} steps ({_steps(window)}) on rank {point.rank} "
        f"(threshold {th.loss_scale_collapse_factor:g}x)"
    )
    severity: Severity = "critical" if low <= th.loss_scale_floor else "warning"
    return [
        Finding("loss-scale-collapse", severity, "Loss scale collapsed", evidence, _lower_lr(inp))
    ]


def nan_loss(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A non-finite loss in the recent steps; critical while it lasts to the latest step."""
    bad: list[MetricPoint] = []
    lasting = False
    ranks = _by_rank(inp.metrics)
    for points in ranks.values():
        recent = [p for p in points if p.loss is not None][-th.recent_steps :]
        hits = [p for p in recent if not _finite(p.loss)]
        bad += hits
        lasting = lasting or (bool(hits) and hits[-1] is recent[-1])
    if not bad:
        return []
    first = min(bad, key=lambda p: (p.step, p.time))
    latest = max(p.step for p in inp.metrics)
    finite = [p for p in inp.metrics if _finite(p.loss) and p.time < first.time]
    evidence = (
        f"loss is {first.loss} on {len({p.rank for p in bad})} of {len(ranks)} ranks since "
        f"step {first.step} (rank {first.rank}, {first.node}; latest step {latest})"
    )
    if finite:
        last = max(finite, key=lambda p: p.time)
        evidence += f"; last finite loss {last.loss:.4g} at step {last.step}"
    severity: Severity = "critical" if lasting else "warning"
    return [Finding("nan-loss", severity, "Loss is NaN or infinite", evidence, _lower_lr(inp))]


CUDA_OOM_RE = re.compile(r"CUDA out of memory|OutOfMemoryError", re.IGNORECASE)
HOST_OOM_RE = re.compile(r"Killed process|oom-kill|oom_kill|out of memory", re.IGNORECASE)


def oom(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A CUDA out-of-memory error or the host's OOM killer, in a log line or a failure reason."""
    seen: list[tuple[float, str, str]] = []  # time, what, where
    for hit in inp.log_hits:
        if CUDA_OOM_RE.search(hit.line):
            what = "CUDA out of memory"
        elif HOST_OOM_RE.search(hit.line):
            what = "host OOM killer"
        else:
            continue
        seen.append((hit.time, what, f"rank {hit.rank} ({hit.node}): {_clip(hit.line)!r}"))
    for failure in inp.failures:
        if "out of memory" in failure.reason.lower():
            what = "CUDA out of memory" if CUDA_OOM_RE.search(failure.reason) else "host OOM"
            seen.append((failure.time, what, f"attempt failed: {_clip(failure.reason)!r}"))
    if not seen:
        return []
    when, what, where = max(seen)
    evidence = f"{what} {_ago(inp.now - when)} ago, {where}"
    if len(seen) > 1:
        evidence += f" ({len(seen)} OOM lines and failures in all)"
    host = what.startswith("host")
    host_note = (
        "The host ran out of RAM: use fewer dataloader workers, and mind that CPU offload keeps "
        "optimizer states in host memory (NVMe offload does not). "
        if host
        else ""
    )
    tail = (
        "If memory is still short, turn on activation checkpointing (--gradient_checkpointing) "
        "or offload optimizer states and parameters to the CPU (ZeRO-3 offload_optimizer / "
        "offload_param), or shorten the sequences."
    )
    mb, ga = inp.micro_batch, inp.grad_accum
    if mb == 1:
        remedy = Remedy(
            kind="advice",
            summary="Cut activation and optimizer memory (the micro batch is already 1)",
            details=host_note + tail,
        )
    else:
        params: dict[str, str] = {}
        if mb is not None:
            params["train_micro_batch_size_per_gpu"] = str(max(mb // 2, 1))
        if ga is not None:
            params["gradient_accumulation_steps"] = str(2 * ga)
        remedy = Remedy(
            kind="halve-micro-batch",
            summary="Halve the micro batch, double gradient accumulation",
            details=(
                "Halve train_micro_batch_size_per_gpu (--per_device_train_batch_size) and double "
                "gradient_accumulation_steps, so the global batch stays the same. "
                f"{host_note}{tail}"
            ),
            params=params,
        )
    title = "Host out of memory" if host else "GPU out of memory"
    return [Finding("oom", "critical", title, evidence, remedy)]


def interruptions(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """Failures per week over the target; a job younger than the window is scaled to a week."""
    start = inp.now - th.interruptions_window_s
    recent = sorted((f for f in inp.failures if start <= f.time <= inp.now), key=lambda f: f.time)
    if len(recent) < th.interruptions_min_failures:
        return []
    began = inp.started
    if began is None:
        times = [m.time for m in inp.metrics] + [g.time for g in inp.gpus]
        times += [h.time for h in inp.log_hits] + [f.time for f in inp.failures]
        began = min(times)
    observed = min(inp.now - began, th.interruptions_window_s)
    if observed <= 0:
        return []
    rate = len(recent) / observed * WEEK_S
    if rate <= th.interruptions_per_week_max:
        return []
    latest = recent[-1]
    reason, count = Counter(f.reason for f in recent).most_common(1)[0]
    evidence = (
        f"{len(recent)} failures in the last {_ago(observed)}, {rate:.1f} a week "
        f"(target under {th.interruptions_per_week_max:g} a week); latest "
        f"{_ago(inp.now - latest.time)} ago: {_clip(latest.reason, 80)!r}"
    )
    if count > 1:
        evidence += f"; {count}x {_clip(reason, 60)!r}"
    remedy = Remedy(
        kind="advice",
        summary="Find what keeps interrupting the job",
        details=(
            "Group the failures by reason (gantry events JOB). XID or ECC errors, or one node "
            "in most failures, point to hardware: go on without it with gantry restart JOB "
            "--exclude NODE. Preemptions and transient faults call for checkpointing more often "
            "(--save_steps), so that a restart loses less work."
        ),
        params={"failures": str(len(recent)), "per_week": f"{rate:.1f}"},
    )
    return [Finding("interruptions", "warning", "Too many interruptions", evidence, remedy)]


_STRAGGLER_MEASURES: Mapping[str, Callable[[MetricPoint], float | None]] = {
    "step time": lambda p: p.step_time_s,
    "compute time (step minus collectives)": lambda p: (
        p.step_time_s - p.collective_time_s
        if p.step_time_s is not None and p.collective_time_s is not None
        else None
    ),
    "collective wait": lambda p: p.collective_time_s,
}


def straggler(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """One rank's median step time, compute time or collective wait far above the others'.

    In synchronous training every rank's step takes as long as the slowest one's, so the
    straggler shows in compute time (its step minus its collective wait) while the others wait.
    """
    ranks = _by_rank(inp.metrics)
    worst: tuple[float, float, float, str, int] | None = None  # ratio, value, others, what, rank
    for what, measure in _STRAGGLER_MEASURES.items():
        medians: dict[int, float] = {}
        for rank, points in ranks.items():
            values = [measure(p) for p in points[-th.straggler_window_steps :]]
            finite = [v for v in values if v is not None and math.isfinite(v)]
            if len(finite) >= th.straggler_min_steps:
                medians[rank] = statistics.median(finite)
        if len(medians) < 2:
            continue
        ordered = sorted(medians.values())
        for rank, value in medians.items():
            others = _median_without(ordered, value)
            if value - others < th.straggler_min_delta_s or others <= 0:
                continue
            ratio = value / others
            if ratio >= th.straggler_factor and (worst is None or ratio > worst[0]):
                worst = (ratio, value, others, what, rank)
    if worst is None:
        return []
    ratio, value, others, what, rank = worst
    node = ranks[rank][-1].node
    evidence = (
        f"rank {rank} on {node}: {what} {value:.3g} s per step, {ratio:.1f}x the other ranks' "
        f"median {others:.3g} s (last {th.straggler_window_steps} steps, threshold "
        f"{th.straggler_factor:g}x)"
    )
    remedy = Remedy(
        kind="advice",
        summary=f"Check rank {rank} on {node}",
        details=(
            f"Look at {node}'s GPUs on the node screen (clocks throttled for power or heat, XID or "
            "ECC errors, another process on the GPU), its CPU load and its data loading; if the "
            f"node is at fault, go on without it: gantry restart JOB --exclude {node}."
        ),
        params={"rank": str(rank), "node": node},
    )
    return [Finding("straggler", "warning", f"Rank {rank} is a straggler", evidence, remedy)]


Rule = Callable[[AdvisorInput, Thresholds], list[Finding]]

RULES: tuple[Rule, ...] = (
    oom,
    nan_loss,
    loss_scale_collapse,
    grad_spike,
    straggler,
    network_bound,
    input_bound,
    interruptions,
)


def evaluate(inp: AdvisorInput, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Every rule's findings, critical ones first, otherwise in the order of `RULES`."""
    _memo.active = True
    try:
        findings = [finding for rule in RULES for finding in rule(inp, th)]
    finally:
        _memo.active, _memo.by_rank = False, None
    return sorted(findings, key=lambda f: f.severity != "critical")
