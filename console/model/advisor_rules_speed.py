"""The advisor's speed rules: GPUs starved for input, collectives eating the step, and a rank
slower than the others."""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from console.model.advisor_series import by_rank, is_finite
from console.model.advisor_types import (
    AdvisorInput,
    Finding,
    GpuPoint,
    MetricPoint,
    Remedy,
    Thresholds,
)


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
    for points in by_rank(inp.metrics).values():
        timed = [
            p
            for p in points[-th.collective_window_steps :]
            if is_finite(p.collective_time_s) and is_finite(p.step_time_s) and p.step_time_s
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
    ranks = by_rank(inp.metrics)
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
