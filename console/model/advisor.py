"""The advisor: rules that read a job's recent metrics, GPU utilization, matched log lines,
the agents' diagnosis events and attempt failures, and say what slows or breaks the job,
each with a concrete remedy.

Pure: no I/O, no UI. The console's job store builds an `AdvisorInput`; `evaluate` returns
`Finding`s, critical ones first. Every rule is one plain function over the input and the
`Thresholds`, and stays quiet when it lacks the data to judge. `evaluate` first drops what
an earlier attempt or another world size left (`current`): findings belong to the current
attempt. A finished job gets only the findings about why it ended. Windows counted in steps
are each rank's latest metric points (one point per reported step).

Remedies with a kind other than "advice" can be applied by `console.model.remedies`.

The vocabulary (inputs, findings, thresholds) is `advisor_types`; the rules are in
`advisor_rules_failures`, `advisor_rules_events`, `advisor_rules_runtime`,
`advisor_rules_training` and `advisor_rules_speed`; this module orders them and evaluates them all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from console.model.advisor_rules_events import (
    gpu_missing,
    ib_fallback,
    nccl_error,
    rank_failed,
    training_alerts,
    watchdog_timeout,
    xid,
)
from console.model.advisor_rules_failures import CUDA_OOM_RE, HOST_OOM_RE, interruptions, oom
from console.model.advisor_rules_runtime import runtime_failures
from console.model.advisor_rules_speed import input_bound, network_bound, straggler
from console.model.advisor_rules_training import grad_spike, loss_scale_collapse, nan_loss
from console.model.advisor_series import shared_grouping
from console.model.advisor_types import (
    DEFAULT_THRESHOLDS,
    WEEK_S,
    AdvisorInput,
    EventNote,
    Failure,
    Finding,
    GpuPoint,
    LogHit,
    MetricPoint,
    Remedy,
    Severity,
    Thresholds,
)

__all__ = [
    "CUDA_OOM_RE",
    "DEFAULT_THRESHOLDS",
    "ENDING_RULES",
    "HOST_OOM_RE",
    "RULES",
    "WEEK_S",
    "AdvisorInput",
    "EventNote",
    "Failure",
    "Finding",
    "GpuPoint",
    "LogHit",
    "MetricPoint",
    "Remedy",
    "Rule",
    "Severity",
    "Thresholds",
    "current",
    "evaluate",
    "gpu_missing",
    "grad_spike",
    "ib_fallback",
    "input_bound",
    "interruptions",
    "loss_scale_collapse",
    "nan_loss",
    "nccl_error",
    "network_bound",
    "oom",
    "rank_failed",
    "runtime_failures",
    "straggler",
    "training_alerts",
    "watchdog_timeout",
    "xid",
]

Rule = Callable[[AdvisorInput, Thresholds], list[Finding]]

RULES: tuple[Rule, ...] = (
    oom,
    xid,
    gpu_missing,
    watchdog_timeout,
    nccl_error,
    runtime_failures,
    nan_loss,
    loss_scale_collapse,
    training_alerts,  # after the metric rules: theirs are kept where both find the same
    grad_spike,
    straggler,
    network_bound,
    ib_fallback,
    input_bound,
    interruptions,
)
# What a finished job is judged by: why it ended, no speed advice.
ENDING_RULES: tuple[Rule, ...] = (
    oom,
    xid,
    gpu_missing,
    watchdog_timeout,
    nccl_error,
    runtime_failures,
    nan_loss,
    loss_scale_collapse,
    training_alerts,
    interruptions,
)
# Said only when no other rule found anything critical: the first failed rank's own cause.
FALLBACK_RULES: tuple[Rule, ...] = (rank_failed,)


def _is_current(inp: AdvisorInput, attempt: int | None, time: float, rank: int) -> bool:
    """Whether an item of this attempt (None: unknown), time and rank belongs to the
    current attempt and world."""
    if inp.world_size is not None and rank >= inp.world_size:
        return False
    if attempt is not None and inp.attempt is not None:
        return attempt == inp.attempt
    return inp.attempt_started is None or time >= inp.attempt_started


def current(inp: AdvisorInput) -> AdvisorInput:
    """The input less the metric points, log hits, notes and GPU samples an earlier attempt
    or another world size left; failures stay (interruptions counts them all)."""
    unknown = inp.attempt is None and inp.attempt_started is None and inp.world_size is None
    if unknown and inp.nodes is None:
        return inp
    started = inp.attempt_started if inp.attempt_started is not None else -math.inf
    world = inp.world_size if inp.world_size is not None else math.inf
    if inp.attempt is None or all(m.attempt is None for m in inp.metrics):
        # The common case, inlined: a thousand ranks' points are ~120,000.
        metrics = [m for m in inp.metrics if m.time >= started and m.rank < world]
    else:
        metrics = [m for m in inp.metrics if _is_current(inp, m.attempt, m.time, m.rank)]
    hits = [h for h in inp.log_hits if _is_current(inp, h.attempt, h.time, h.rank)]
    notes = [n for n in inp.notes if _is_current(inp, n.attempt, n.time, n.rank)]
    gpus = inp.gpus if inp.nodes is None else [g for g in inp.gpus if g.node in inp.nodes]
    kept = (len(metrics), len(hits), len(notes), len(gpus))
    if kept == (len(inp.metrics), len(inp.log_hits), len(inp.notes), len(inp.gpus)):
        return inp
    return dataclasses.replace(inp, metrics=metrics, log_hits=hits, notes=notes, gpus=gpus)


def evaluate(inp: AdvisorInput, th: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Every rule's findings on the current attempt, critical ones first, otherwise in the
    order of `RULES`; one finding per rule name (the first)."""
    inp = current(inp)
    rules = RULES if inp.running else ENDING_RULES
    with shared_grouping():
        findings = [finding for rule in rules for finding in rule(inp, th)]
        if not inp.running:  # why it ended: the critical findings, and how often it does
            findings = [
                f for f in findings if f.severity == "critical" or f.rule == "interruptions"
            ]
        if not any(f.severity == "critical" for f in findings):
            findings += [finding for rule in FALLBACK_RULES for finding in rule(inp, th)]
    seen: set[str] = set()
    unique = []
    for finding in findings:
        if finding.rule not in seen:
            seen.add(finding.rule)
            unique.append(finding)
    return sorted(unique, key=lambda f: f.severity != "critical")
