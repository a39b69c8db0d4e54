"""The advisor: rules that read a job's recent metrics, GPU utilization, matched log lines and
attempt failures, and say what slows or breaks the job, each with a concrete remedy.

Pure: no I/O, no UI. The console's job store builds an `AdvisorInput`; `evaluate` returns
`Finding`s, critical ones first. Every rule is one plain function over the input and the
`Thresholds`, and stays quiet when it lacks the data to judge. Windows counted in steps are
each rank's latest metric points (one point per reported step), so a restart that resumes
from an earlier step does not mix attempts in a window.

Remedies with a kind other than "advice" can be applied to the job spec by
`console.model.remedies.apply_remedy`.

The vocabulary (inputs, findings, thresholds) is `advisor_types`; the rules are in
`advisor_rules_failures`, `advisor_rules_training` and `advisor_rules_speed`; this module
orders them and evaluates them all.
"""

from __future__ import annotations

from collections.abc import Callable

from console.model.advisor_rules_failures import CUDA_OOM_RE, HOST_OOM_RE, interruptions, oom
from console.model.advisor_rules_speed import input_bound, network_bound, straggler
from console.model.advisor_rules_training import grad_spike, loss_scale_collapse, nan_loss
from console.model.advisor_series import shared_grouping
from console.model.advisor_types import (
    DEFAULT_THRESHOLDS,
    WEEK_S,
    AdvisorInput,
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
    "HOST_OOM_RE",
    "RULES",
    "WEEK_S",
    "AdvisorInput",
    "Failure",
    "Finding",
    "GpuPoint",
    "LogHit",
    "MetricPoint",
    "Remedy",
    "Rule",
    "Severity",
    "Thresholds",
    "evaluate",
    "grad_spike",
    "input_bound",
    "interruptions",
    "loss_scale_collapse",
    "nan_loss",
    "network_bound",
    "oom",
    "straggler",
]

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
    with shared_grouping():
        findings = [finding for rule in RULES for finding in rule(inp, th)]
    return sorted(findings, key=lambda f: f.severity != "critical")
