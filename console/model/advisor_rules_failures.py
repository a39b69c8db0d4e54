"""The advisor's failure rules: out-of-memory errors (the GPU's or the host's) and
interruptions more frequent than the target."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

from console.model.advisor_series import ago, clip
from console.model.advisor_types import (
    WEEK_S,
    AdvisorInput,
    Finding,
    Remedy,
    Thresholds,
)

# The GPU's, in PyTorch 1.x and 2.x words, CUDA's own error and NCCL's "Cuda failure 2 'out
# of memory'" (NVIDIA/nccl#1410's form): never the host's, though they say "out of memory".
CUDA_OOM_RE = re.compile(
    r"CUDA out of memory|OutOfMemoryError|Cuda failure (?:\d+ )?'out of memory'"
    r"|CUDA error: out of memory|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
HOST_OOM_RE = re.compile(
    r"Killed process|oom-kill|oom_kill|out of memory|DefaultCPUAllocator: can't allocate",
    re.IGNORECASE,
)
GPU_OOM_ALERTS = frozenset({"cuda_oom", "nccl_cuda_oom", "zero_alloc"})
HOST_OOM_ALERTS = frozenset({"host_oom"})
LEGACY_OOM_ALERT = "oom"  # before issue 15: the line says which memory


def _alert_memory(alert: str, text: str) -> str | None:
    """ "gpu", "host" or None (no OOM) for an ALERT's signature and its line."""
    if alert in GPU_OOM_ALERTS:
        return "gpu"
    if alert in HOST_OOM_ALERTS:
        return "host"
    if alert == LEGACY_OOM_ALERT:
        return "gpu" if CUDA_OOM_RE.search(text) else "host"
    return None


def _line_memory(text: str) -> str | None:
    if CUDA_OOM_RE.search(text):
        return "gpu"
    return "host" if HOST_OOM_RE.search(text) else None


def _figures(details: Mapping[str, str]) -> str:
    """ "tried 2.00 GiB, 1.20 GiB free of 79.15 GiB on GPU 0" from an OOM alert's figures."""
    parts = []
    if details.get("tried"):
        parts.append(f"tried {details['tried']}")
    if details.get("free"):
        total = f" of {details['total']}" if details.get("total") else ""
        parts.append(f"{details['free']} free{total}")
    text = ", ".join(parts)
    if text and details.get("gpu"):
        text += f" on GPU {details['gpu']}"
    return text


def oom(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """Out of memory, the GPU's or the host's: from the job's alerts and failed ranks, log
    lines, and the failure of the current attempt."""
    seen: list[tuple[float, str, str]] = []  # time, "gpu" / "host", where
    for note in inp.notes:
        details = note.details
        text = details.get("line") or note.message
        if note.kind == "alert":
            memory = _alert_memory(details.get("alert", ""), text)
        elif note.kind == "rank_failed":
            signature = details.get("signature", "")
            cause = details.get("cause", "")
            memory = _alert_memory(signature, text) if signature else _line_memory(cause)
        else:
            memory = None
        if memory is None:
            continue
        said = _figures(details) or clip(details.get("cause") or text)
        seen.append((note.time, memory, f"rank {note.rank} ({note.node}): {said}"))
    for hit in inp.log_hits:
        memory = _line_memory(hit.line)
        if memory is not None:
            seen.append((hit.time, memory, f"rank {hit.rank} ({hit.node}): {clip(hit.line)!r}"))
    for failure in inp.failures:
        if inp.attempt is not None and failure.attempt not in (None, inp.attempt):
            continue  # an earlier attempt's failure: interruptions counts it
        if "out of memory" in failure.reason.lower() or CUDA_OOM_RE.search(failure.reason):
            memory = "gpu" if CUDA_OOM_RE.search(failure.reason) else "host"
            seen.append((failure.time, memory, f"attempt failed: {clip(failure.reason)!r}"))
    if not seen:
        return []
    when, memory, where = max(seen)
    what = "CUDA out of memory" if memory == "gpu" else "host OOM"
    evidence = f"{what} {ago(inp.now - when)} ago, {where}"
    if len(seen) > 1:
        evidence += f" ({len(seen)} OOM reports in all)"
    if memory == "host":
        return [Finding("oom", "critical", "Host out of memory", evidence, _host_remedy())]
    return [Finding("oom", "critical", "GPU out of memory", evidence, _gpu_remedy(inp))]


_GPU_TAIL = (
    "If memory is still short, offload optimizer states and parameters to the CPU (ZeRO-3 "
    "offload_optimizer / offload_param), or shorten the sequences."
)


def _gpu_remedy(inp: AdvisorInput) -> Remedy:
    mb, ga = inp.micro_batch, inp.grad_accum
    if mb == 1 and not inp.gradient_checkpointing:
        return Remedy(
            kind="enable-gradient-checkpointing",
            summary="Turn on gradient checkpointing (the micro batch is already 1)",
            details=(
                "Adds --gradient_checkpointing to the trainer's arguments: activations are "
                "recomputed in the backward pass instead of kept, for about a third more compute "
                f"per step. {_GPU_TAIL}"
            ),
            params={"--gradient_checkpointing": "true"},
        )
    if mb == 1:
        return Remedy(
            kind="advice",
            summary="Offload to the CPU or shorten the sequences (micro batch 1, checkpointing on)",
            details=("The micro batch is 1 and gradient checkpointing is on already. " + _GPU_TAIL),
        )
    params: dict[str, str] = {}
    if mb is not None:
        params["train_micro_batch_size_per_gpu"] = str(max(mb // 2, 1))
    if ga is not None:
        params["gradient_accumulation_steps"] = str(2 * ga)
    return Remedy(
        kind="halve-micro-batch",
        summary="Halve the micro batch, double gradient accumulation",
        details=(
            "Halve train_micro_batch_size_per_gpu (--per_device_train_batch_size) and double "
            "gradient_accumulation_steps, so the global batch stays the same. Once the micro "
            "batch is 1, turn on activation checkpointing (--gradient_checkpointing). " + _GPU_TAIL
        ),
        params=params,
    )


def _host_remedy() -> Remedy:
    return Remedy(
        kind="advice",
        summary="Use less host RAM: fewer dataloader workers, NVMe rather than CPU offload",
        details=(
            "The host ran out of RAM (the kernel's OOM killer): lower --dataloader_num_workers, "
            "mind that CPU offload keeps optimizer states (and ZeRO-3 offload_param the "
            "parameters) in host memory, so offload to NVMe instead (offload_optimizer.device "
            "nvme), run fewer ranks per node, or use nodes with more RAM. A micro batch smaller "
            "on the GPU saves no host memory."
        ),
    )


def interruptions(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """Failures more frequent than the target. A week's rate is judged only on a history of
    at least `interruptions_min_span_s`; a shorter one gives the mean time between failures,
    reported only when it is under `interruptions_frequent_s`."""
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
    latest = recent[-1]
    count = len(recent)
    if observed >= th.interruptions_min_span_s:
        rate = count / observed * WEEK_S
        if rate <= th.interruptions_per_week_max:
            return []
        evidence = (
            f"{count} failures in the last {ago(observed)}, {rate:.1f} a week "
            f"(target under {th.interruptions_per_week_max:g} a week)"
        )
        params = {"failures": str(count), "per_week": f"{rate:.1f}"}
    else:
        between = observed / count
        if between >= th.interruptions_frequent_s:
            return []
        evidence = (
            f"{count} failures in {ago(observed)}: one every {ago(between)} (a weekly rate "
            f"needs {ago(th.interruptions_min_span_s)} of history; frequent under "
            f"one every {ago(th.interruptions_frequent_s)})"
        )
        params = {"failures": str(count), "every_s": f"{between:.0f}"}
    evidence += f"; latest {ago(inp.now - latest.time)} ago: {clip(latest.reason, 80)!r}"
    reason, repeats = Counter(f.reason for f in recent).most_common(1)[0]
    if repeats > 1:
        evidence += f"; {repeats}x {clip(reason, 60)!r}"
    remedy = Remedy(
        kind="advice",
        summary="Find what keeps interrupting the job",
        details=(
            "Group the failures by reason (gantry events JOB). XID or ECC errors, or one node "
            "in most failures, point to hardware: go on without it with gantry restart JOB "
            "--exclude NODE. Preemptions and transient faults call for checkpointing more often "
            "(--save_steps), so that a restart loses less work."
        ),
        params=params,
    )
    return [Finding("interruptions", "warning", "Too many interruptions", evidence, remedy)]
