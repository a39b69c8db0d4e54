"""The advisor's speed rules: GPUs starved for input, collectives eating the step, and a rank
slower than the others."""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from console.model.advisor_series import by_rank, is_finite, nodes_text
from console.model.advisor_types import (
    AdvisorInput,
    Finding,
    GpuPoint,
    MetricPoint,
    Remedy,
    Thresholds,
)
from console.model.transport import fold_findings, transport_summary


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

    The window starts no earlier than the first step of the current attempt, nor than the
    first step after the latest failure, so the idle time of a restart is not counted; it
    must still span most of the window (min coverage).
    """
    if not inp.running:
        return []
    start = inp.now - th.gpu_util_window_s
    if inp.attempt_started is not None and inp.attempt_started > start:
        # The GPUs idle while a new attempt sets up: from its first step on.
        first = [m.time for m in inp.metrics if m.time >= inp.attempt_started]
        start = max(start, min(first, default=inp.now))
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
    windows: list[MetricPoint] = []
    for points in by_rank(inp.metrics).values():
        windows += points[-th.collective_window_steps :]
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
    evidence += "; " + _transport(inp)
    dominant = dominant_group(windows)
    details = (
        "NCCL may have fallen back from InfiniBand/RoCE to TCP sockets: with "
        "NCCL_DEBUG=INFO look for 'NET/Socket' instead of 'NET/IB', make sure "
        "NCCL_IB_DISABLE is not 1, set NCCL_SOCKET_IFNAME to the fast interface, and "
        "check the topology (nvidia-smi topo -m: GPUs and NICs on the same PCIe "
        "switch and NUMA node)."
    )
    summary = "Check the NCCL transport and the network path"
    if dominant is not None:
        group, fraction = dominant
        evidence += f"; the {group} group's collectives ({_GROUP_OPS[group]}) took {fraction:.0%}"
        if group != "data":
            summary = f"Keep the {group}-parallel groups within a node; check the network path"
            details = f"{_GROUP_ADVICE[group]} {details}"
    findings = [
        Finding(
            "network-bound",
            "warning",
            "Training is network-bound",
            evidence,
            Remedy(kind="advice", summary=summary, details=details),
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


_GROUP_OPS = {
    "data": "gradient all-reduce / reduce-scatter / all-gather",
    "tensor": "the tensor-parallel layers' all-reduce",
    "expert": "the experts' all-to-all",
}
_GROUP_ADVICE = {
    "tensor": (
        "Tensor parallelism reduces activations in every layer, forward and backward: a "
        "tensor-parallel group belongs on one node's NVLink, so keep parallelism.tensor at "
        "most the GPUs per node (or lower it)."
    ),
    "expert": (
        "Expert parallelism sends every token to its experts and back (all-to-all) in each MoE "
        "layer: keep an expert-parallel group within a node where it fits (parallelism.expert "
        "at most the GPUs per node), or lower parallelism.expert so that fewer tokens cross "
        "nodes."
    ),
}


def dominant_group(points: Sequence[MetricPoint]) -> tuple[str, float] | None:
    """The process group ("data", "tensor", "expert") with the most collective time over
    `points`, and its share of it; None when no point has per-group times."""
    totals: dict[str, float] = defaultdict(float)
    for p in points:
        by_group: Mapping[str, float] = p.collective_by_group_s or {}
        for group, seconds in by_group.items():
            if group in _GROUP_OPS and is_finite(seconds) and seconds > 0:
                totals[group] += seconds
    total = sum(totals.values())
    if not total:
        return None
    group = max(sorted(totals), key=lambda g: totals[g])
    return group, totals[group] / total


def _medians(
    windows: Mapping[int, Sequence[MetricPoint]],
    measure: Callable[[MetricPoint], float | None],
    min_steps: int,
) -> dict[int, float]:
    """Each rank's median of `measure` over its window, where it has `min_steps` values."""
    out: dict[int, float] = {}
    for rank, points in windows.items():
        values = [v for p in points if (v := measure(p)) is not None and math.isfinite(v)]
        if len(values) >= min_steps:
            out[rank] = statistics.median(values)
    return out


def _compute_s(p: MetricPoint) -> float | None:
    if p.step_time_s is None or p.collective_time_s is None:
        return None
    return p.step_time_s - p.collective_time_s


def _slowest(medians: Mapping[int, float], th: Thresholds) -> tuple[int, float, float] | None:
    """(rank, its median, the others' median) for the rank far above the others, if one is."""
    rank = max(medians, key=lambda r: (medians[r], -r))
    value = medians[rank]
    others = _median_without(sorted(medians.values()), value)
    if others <= 0 or value - others < th.straggler_min_delta_s:
        return None
    return (rank, value, others) if value / others >= th.straggler_factor else None


def straggler(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """The rank the others wait for: the highest compute time (its step less its collective
    wait) far above the others' and, of all ranks, the lowest collective wait.

    A rank that only waits long (the highest collective wait) is the one waiting for the
    others, not their straggler. Without collective times, step times are compared only when
    the ranks step together (the same steps in their windows), over those steps.
    """
    ranks = by_rank(inp.metrics)
    windows = {rank: points[-th.straggler_window_steps :] for rank, points in ranks.items()}
    compute = _medians(windows, _compute_s, th.straggler_min_steps)
    if len(compute) >= 2:
        waits = _medians(windows, lambda p: p.collective_time_s, th.straggler_min_steps)
        found = _slowest(compute, th)
        if found is None:
            return []
        rank, value, others = found
        other_waits = sorted(w for r, w in waits.items() if r != rank and r in compute)
        if not other_waits or waits[rank] > other_waits[0] + th.straggler_min_delta_s:
            return []  # it waits for someone too: no rank the others all wait for
        detail = (
            f"compute time (step minus collectives) {value:.3g} s per step, "
            f"{value / others:.1f}x the other ranks' median {others:.3g} s; its collective "
            f"wait {waits[rank]:.3g} s is the lowest (the others' median "
            f"{statistics.median(other_waits):.3g} s): the others wait for it (last "
            f"{th.straggler_window_steps} steps, threshold {th.straggler_factor:g}x)"
        )
        return [_straggler_finding(rank, ranks[rank][-1].node, detail)]
    timed = {
        rank: {
            p.step: p.step_time_s
            for p in points
            if p.step_time_s is not None and math.isfinite(p.step_time_s)
        }
        for rank, points in windows.items()
    }
    timed = {rank: steps for rank, steps in timed.items() if steps}
    if len(timed) < 2:
        return []
    common = set.intersection(*(set(steps) for steps in timed.values()))
    if len(common) < th.straggler_min_steps:
        return []  # the ranks do not step together: their step times are not comparable
    medians = {rank: statistics.median(steps[s] for s in common) for rank, steps in timed.items()}
    found = _slowest(medians, th)
    if found is None:
        return []
    rank, value, others = found
    detail = (
        f"step time {value:.3g} s per step, {value / others:.1f}x the other ranks' median "
        f"{others:.3g} s over the same steps {min(common)}-{max(common)} (no collective time "
        f"reported; the ranks step together; threshold {th.straggler_factor:g}x)"
    )
    return [_straggler_finding(rank, ranks[rank][-1].node, detail)]


def _straggler_finding(rank: int, node: str, detail: str) -> Finding:
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
    evidence = f"rank {rank} on {node}: {detail}"
    return Finding("straggler", "warning", f"Rank {rank} is a straggler", evidence, remedy)


def _transport(inp: AdvisorInput) -> str:
    """What NCCL runs over, read as the job screen reads it: "NCCL transport: Socket ·
    P2P/IPC (node-a, node-b)"."""
    nodes = fold_findings((n.node, n.details, n.message) for n in inp.notes if n.kind == "nccl")
    if not nodes:
        return "NCCL transport not reported (NCCL_DEBUG=INFO)"
    summary = transport_summary(nodes).removeprefix("net ")
    return f"NCCL transport: {summary} ({nodes_text(nodes)})"
