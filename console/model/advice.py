"""The advisor on live data: builds the advisor's input from the console's stores and
says which findings the console can apply itself (those whose remedy edits the spec).

Pure (the time is passed in); `console.model.advisor` evaluates the rules (advisor_rules_*).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, TypeVar

import yaml
from gantry.v1 import job_pb2, telemetry_pb2

from console.model.advisor import (
    AdvisorInput,
    EventNote,
    Failure,
    Finding,
    GpuPoint,
    LogHit,
    MetricPoint,
    Remedy,
    Thresholds,
    evaluate,
)
from console.model.advisor_types import NoteKind
from console.model.cluster import ClusterStore
from console.model.cost import arg_value
from console.model.jobs import ACTIVE_JOB_STATES, EK, JobView, RankPoint, ts
from console.model.remedies import APPLICABLE_KINDS, gradient_checkpointing_on

APPLICABLE = APPLICABLE_KINDS  # spec edits, and restarts without a node
# The events the rules read as notes (see the diagnosis contract of issue 15).
NOTE_KINDS: dict[int, NoteKind] = {
    EK.JOB_EVENT_KIND_ALERT: "alert",
    EK.JOB_EVENT_KIND_NCCL: "nccl",
    EK.JOB_EVENT_KIND_RANK_FAILED: "rank_failed",
}
GPU_WINDOW_SAMPLES = 300
THRESHOLDS_ENV = "GANTRY_ADVISOR"
THRESHOLDS_FILE = Path(".gantry") / "advisor.yaml"
# Points sorted in one call (see _sorted_in_pieces): a few milliseconds' worth.
SORT_PIECE = 8192
T = TypeVar("T")


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
    return AdvisorInputs().take(view, cluster, now).build()


@dataclass(frozen=True, repr=False)  # the repr of a thousand ranks' histories: seconds
class Taken:
    """What the advisor reads of the stores, copied (cheap: no point is converted here),
    so that `build` can run on another thread while the stores move on."""

    inputs: AdvisorInputs
    view: JobView
    ranks: list[tuple[int, str, int, tuple[RankPoint, ...]]]  # rank, node, attempt, history
    samples: list[tuple[str, list[telemetry_pb2.NodeSample]]]
    events: list[job_pb2.JobEvent]
    now: float

    @property
    def size(self) -> int:
        """Metric points plus GPU samples: what building and evaluating cost grows with."""
        return sum(len(h) for _, _, _, h in self.ranks) + sum(len(s) for _, s in self.samples)

    def build(self) -> AdvisorInput:
        return self.inputs.build(self)


class AdvisorInputs:
    """Builds AdvisorInput again and again for one job: each rank's point and each GPU
    sample is converted once, then reused while the stores hold it (a thousand ranks keep
    ~120,000 points: converting them all on every run took about a second)."""

    def __init__(self) -> None:
        # rank -> (node, the history last converted, its points)
        self._ranks: dict[int, tuple[str, tuple[RankPoint, ...], list[MetricPoint]]] = {}
        # id() of a sample -> (the sample, so the id is not reused; its GPU points)
        self._gpus: dict[int, tuple[telemetry_pb2.NodeSample, list[GpuPoint]]] = {}

    def _rank_points(
        self, rank: int, node: str, history: tuple[RankPoint, ...]
    ) -> list[MetricPoint]:
        """`history`'s points, reusing those of the last call: a rank's history is a
        window that only moves forward (appended on the right, dropped on the left)."""
        kept: list[MetricPoint] = []
        prev = self._ranks.get(rank)
        if prev is not None and prev[0] == node and history and prev[1]:
            old, old_points = prev[1], prev[2]
            first = history[0]
            start = next((i for i, p in enumerate(old) if p is first), -1)
            overlap = len(old) - start
            if start >= 0 and overlap <= len(history) and history[overlap - 1] is old[-1]:
                kept = old_points[start:]
        points = kept + [
            MetricPoint(
                rank=rank,
                node=node,
                step=p.step,
                time=p.time,
                loss=p.loss,
                grad_norm=p.grad_norm,
                loss_scale=p.loss_scale,
                step_time_s=p.step_time_s,
                collective_time_s=p.collective_s,
                tokens_per_s=p.tokens_per_s,
                collective_by_group_s=p.collective_by_group_s or {},
            )
            for p in history[len(kept) :]
        ]
        self._ranks[rank] = (node, history, points)
        return points

    def take(self, view: JobView, cluster: ClusterStore, now: float) -> Taken:
        ranks = [(r.rank, r.node, r.attempt, tuple(r.history)) for r in view.ranks.values()]
        samples = [
            (node, list(cluster.node(node).history)[-GPU_WINDOW_SAMPLES:])
            for node in dict.fromkeys(view.nodes())
            if node in cluster
        ]
        return Taken(self, view, ranks, samples, list(view.events), now)

    def build(self, taken: Taken) -> AdvisorInput:
        view, now = taken.view, taken.now
        attempt = view.latest_attempt()
        number = int(attempt.number) if attempt is not None else None
        metrics = []
        for rank, node, rank_attempt, history in taken.ranks:
            if number is not None and rank_attempt < number:
                continue  # all it holds is an earlier attempt's
            metrics.extend(self._rank_points(rank, node, history))
        metrics = _by_time_and_rank(metrics)
        old_gpus = self._gpus
        gpu_cache: dict[int, tuple[telemetry_pb2.NodeSample, list[GpuPoint]]] = {}
        gpus: list[GpuPoint] = []
        for node, samples in taken.samples:
            for sample in samples:
                cached = old_gpus.get(id(sample))
                if cached is not None and cached[0] is sample:
                    converted = cached[1]
                else:
                    t = ts(sample.time)
                    converted = [
                        GpuPoint(node, gpu.index, t, gpu.gpu_util_percent)
                        for gpu in sample.gpus
                        if gpu.HasField("gpu_util_percent")
                    ]
                gpu_cache[id(sample)] = (sample, converted)
                gpus.extend(converted)
        self._gpus = gpu_cache
        hits, failures, notes = _read_events(taken.events)
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
            grad_accum=_int_arg(
                view, "--gradient_accumulation_steps", "gradient_accumulation_steps"
            ),
            fp16=config_fp16,
            started=ts(view.job.created) or None,
            notes=notes,
            attempt=number,
            attempt_started=(ts(attempt.started) or None) if attempt is not None else None,
            world_size=(len(attempt.ranks) or None) if attempt is not None else None,
            nodes=(frozenset(r.node for r in attempt.ranks) or None) if attempt else None,
            gradient_checkpointing=gradient_checkpointing_on(list(view.spec.args)),
        )


def _read_events(
    events: list[job_pb2.JobEvent],
) -> tuple[list[LogHit], list[Failure], list[EventNote]]:
    """The log hits (failed and hung ranks' last lines), attempt failures and notes (alerts,
    NCCL findings, failed ranks) the rules read from a job's events."""
    hits: list[LogHit] = []
    failures: list[Failure] = []
    notes: list[EventNote] = []
    for event in events:
        kind = event.kind
        attempt = int(event.attempt) or None
        when = ts(event.time)
        note_kind = NOTE_KINDS.get(kind)
        if note_kind is not None:
            details = dict(event.details)
            notes.append(
                EventNote(note_kind, event.rank, event.node, when, event.message, details, attempt)
            )
        if kind in (EK.JOB_EVENT_KIND_RANK_FAILED, EK.JOB_EVENT_KIND_RANK_HUNG):
            for line in (event.details.get("last_lines") or "").splitlines():
                hits.append(LogHit(event.rank, event.node, when, line, attempt))
        elif kind == EK.JOB_EVENT_KIND_ATTEMPT_FAILED:
            failures.append(Failure(when, event.message, attempt))
    return hits, failures, notes


def _sorted_in_pieces(points: list[T], key: Callable[[T], Any]) -> list[T]:
    """`sorted(points, key=key)` (stable alike), without one long call that holds the GIL:
    on the advisor's thread, sorting a thousand ranks' ~120,000 points in one call froze
    the UI loop for a quarter of a second. Pieces are sorted, then merged in Python."""
    if len(points) <= SORT_PIECE:
        return sorted(points, key=key)
    pieces = [
        sorted(points[i : i + SORT_PIECE], key=key) for i in range(0, len(points), SORT_PIECE)
    ]
    return list(heapq.merge(*pieces, key=key))


def _by_time_and_rank(metrics: list[MetricPoint]) -> list[MetricPoint]:
    """`sorted(metrics, key=attrgetter("time", "rank"))`. A thousand ranks' ~120,000
    points are ordered by numpy's stable sort, which does not hold the GIL (sorting them in
    Python, even in pieces, took the advisor's thread a fifth of a second)."""
    if len(metrics) <= SORT_PIECE:
        return sorted(metrics, key=attrgetter("time", "rank"))
    import numpy as np

    times = np.fromiter(map(attrgetter("time"), metrics), dtype=np.float64, count=len(metrics))
    if np.isnan(times).any():  # numpy puts NaN last, sorted leaves it where it stands
        return _sorted_in_pieces(metrics, attrgetter("time", "rank"))
    ranks = np.fromiter(map(attrgetter("rank"), metrics), dtype=np.int64, count=len(metrics))
    order = np.lexsort((ranks, times))  # stable: equal keys keep their order
    return [metrics[i] for i in order.tolist()]


def _advice(f: Finding) -> Advice:
    return Advice(f.rule, f.severity, f.title, f.evidence, f.remedy)


def findings_for(
    view: JobView, cluster: ClusterStore, now: float, thresholds: Thresholds | None = None
) -> list[Advice]:
    return advise(advisor_input(view, cluster, now), thresholds)


def advise(inp: AdvisorInput, thresholds: Thresholds | None = None) -> list[Advice]:
    return [_advice(f) for f in evaluate(inp, thresholds or Thresholds())]
