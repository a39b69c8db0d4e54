"""The advisor on live data: builds the advisor's input from the console's stores and
says which findings the console can apply itself (those whose remedy edits the spec).

Pure (the time is passed in); `console.advisor` holds the rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from console.advisor import (
    AdvisorInput,
    Failure,
    Finding,
    GpuPoint,
    LogHit,
    MetricPoint,
    Remedy,
    Thresholds,
    evaluate,
)
from console.cost import arg_value
from console.job_store import ACTIVE_JOB_STATES, EK, JobView, ts
from console.store import ClusterStore

APPLICABLE = frozenset({"halve-micro-batch", "set-grad-accum", "lower-lr"})
GPU_WINDOW_SAMPLES = 300
THRESHOLDS_ENV = "GANTRY_ADVISOR"
THRESHOLDS_FILE = Path(".gantry") / "advisor.yaml"


@dataclass(frozen=True)
class Advice:
    rule: str
    severity: str
    title: str
    evidence: str
    remedy: Remedy | None

    @property
    def applicable(self) -> bool:
        return self.remedy is not None and self.remedy.kind in APPLICABLE


def load_thresholds(path: Path | None = None) -> Thresholds:
    """From `path`, else $GANTRY_ADVISOR, else .gantry/advisor.yaml when present; else the
    defaults. A bad file raises ValueError with one line."""
    chosen = path or (Path(os.environ[THRESHOLDS_ENV]) if os.environ.get(THRESHOLDS_ENV) else None)
    if chosen is None:
        if not THRESHOLDS_FILE.is_file():
            return Thresholds()
        chosen = THRESHOLDS_FILE
    try:
        doc = yaml.safe_load(chosen.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{chosen}: cannot read advisor thresholds: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{chosen}: advisor thresholds must be a mapping of name: number")
    return Thresholds.from_mapping(doc)


def _int_arg(view: JobView, flag: str, config_key: str) -> int | None:
    raw = arg_value(list(view.spec.args), flag)
    if raw is None and view.spec.deepspeed_config_json:
        import json

        try:
            value = json.loads(view.spec.deepspeed_config_json).get(config_key)
        except (ValueError, AttributeError):
            value = None
        raw = str(value) if isinstance(value, int) else None
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def advisor_input(view: JobView, cluster: ClusterStore, now: float) -> AdvisorInput:
    metrics = [
        MetricPoint(
            rank=r.rank,
            node=r.node,
            step=p.step,
            time=p.time,
            loss=p.loss,
            grad_norm=p.grad_norm,
            loss_scale=p.loss_scale,
            step_time_s=p.step_time_s,
            collective_time_s=p.collective_s,
            tokens_per_s=p.tokens_per_s,
        )
        for r in view.ranks.values()
        for p in r.history
    ]
    metrics.sort(key=lambda m: (m.time, m.rank))
    gpus = []
    for node in dict.fromkeys(view.nodes()):
        if node not in cluster:
            continue
        for sample in list(cluster.node(node).history)[-GPU_WINDOW_SAMPLES:]:
            t = ts(sample.time)
            for gpu in sample.gpus:
                if gpu.HasField("gpu_util_percent"):
                    gpus.append(GpuPoint(node, gpu.index, t, gpu.gpu_util_percent))
    hits = []
    failures = []
    for event in view.events:
        if event.kind == EK.JOB_EVENT_KIND_ALERT and event.details.get("line"):
            hits.append(LogHit(event.rank, event.node, ts(event.time), event.details["line"]))
        elif event.kind in (EK.JOB_EVENT_KIND_RANK_FAILED, EK.JOB_EVENT_KIND_RANK_HUNG):
            for line in (event.details.get("last_lines") or "").splitlines():
                hits.append(LogHit(event.rank, event.node, ts(event.time), line))
        if event.kind == EK.JOB_EVENT_KIND_ATTEMPT_FAILED:
            failures.append(Failure(ts(event.time), event.message))
    config_fp16 = False
    if view.spec.deepspeed_config_json:
        config_fp16 = '"fp16"' in view.spec.deepspeed_config_json and (
            '"enabled": true' in view.spec.deepspeed_config_json
        )
    return AdvisorInput(
        metrics=metrics,
        gpus=gpus,
        log_hits=hits,
        failures=failures,
        now=now,
        running=view.state in ACTIVE_JOB_STATES,
        micro_batch=_int_arg(
            view, "--per_device_train_batch_size", "train_micro_batch_size_per_gpu"
        ),
        grad_accum=_int_arg(view, "--gradient_accumulation_steps", "gradient_accumulation_steps"),
        fp16=config_fp16,
        started=ts(view.job.created) or None,
    )


def _advice(f: Finding) -> Advice:
    return Advice(f.rule, f.severity, f.title, f.evidence, f.remedy)


def findings_for(
    view: JobView, cluster: ClusterStore, now: float, thresholds: Thresholds | None = None
) -> list[Advice]:
    return [
        _advice(f) for f in evaluate(advisor_input(view, cluster, now), thresholds or Thresholds())
    ]
