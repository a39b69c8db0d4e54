"""The advisor's failure rules: out-of-memory errors (GPU or host) and interruptions more
frequent than the target."""

from __future__ import annotations

import re
from collections import Counter

from console.model.advisor_series import ago, clip
from console.model.advisor_types import (
    WEEK_S,
    AdvisorInput,
    Finding,
    Remedy,
    Thresholds,
)

# NCCL's own: "Cuda failure 2 'out of memory'" (NVIDIA/nccl#1410's form) is the GPU's.
CUDA_OOM_RE = re.compile(
    r"CUDA out of memory|OutOfMemoryError|Cuda failure (?:\d+ )?'out of memory'", re.IGNORECASE
)
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
        seen.append((hit.time, what, f"rank {hit.rank} ({hit.node}): {clip(hit.line)!r}"))
    for failure in inp.failures:
        if "out of memory" in failure.reason.lower():
            what = "CUDA out of memory" if CUDA_OOM_RE.search(failure.reason) else "host OOM"
            seen.append((failure.time, what, f"attempt failed: {clip(failure.reason)!r}"))
    if not seen:
        return []
    when, what, where = max(seen)
    evidence = f"{what} {ago(inp.now - when)} ago, {where}"
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
        f"{len(recent)} failures in the last {ago(observed)}, {rate:.1f} a week "
        f"(target under {th.interruptions_per_week_max:g} a week); latest "
        f"{ago(inp.now - latest.time)} ago: {clip(latest.reason, 80)!r}"
    )
    if count > 1:
        evidence += f"; {count}x {clip(reason, 60)!r}"
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
