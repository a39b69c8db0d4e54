"""What ranks report, as records: their own JSON lines (what log lines give is read into the
same records by ``agent.jobs.node.deepspeed_lines`` and ``agent.jobs.node.script_logs``).

A rank using Gantry's reporter appends JSON lines to ``$GANTRY_METRICS_FILE``::

    {"kind": "metrics", "time": 1.7e9, "rank": 0, "step": 12, "loss": 2.31, "lr": 1e-4,
     "collective_s": {"all_reduce": 0.012}, "collective_total_s": 0.012, ...}
    {"kind": "heartbeat", "time": ..., "rank": 0, "step": 12, "moved": true}
    {"kind": "checkpoint", "time": ..., "rank": 0, "step": 100, "tag": "global_step100",
     "path": "/ckpt/global_step100"}
    {"kind": "start", ...}  {"kind": "end", ...}
    {"kind": "phase", "time": ..., "rank": 0, "phase": "joining"}
    {"kind": "trainer", "time": ..., "rank": 0, "logging_steps": 10, "logging_first_step": false,
     "eval_steps": 40, "max_steps": 120}

Unknown and missing fields are tolerated; a line that is not a JSON object is skipped and
counted, never raised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from gantry.v1 import job_pb2

__all__ = [
    "Record",
    "RecordKind",
    "RecordParser",
    "as_number",
    "merge_metrics",
    "metrics_from_fields",
    "phase_from_name",
    "phase_name",
    "whole_number",
]

GIB = 1024**3
MAX_COUNT = 10**15  # steps and sizes above this are garbage (and would not fit the proto)


class RecordKind(StrEnum):
    METRICS = "metrics"
    HEARTBEAT = "heartbeat"
    CHECKPOINT = "checkpoint"
    START = "start"
    END = "end"
    PHASE = "phase"
    TRAINER = "trainer"  # a Hugging Face Trainer's settings, from the start-up hook


@dataclass(frozen=True)
class Record:
    kind: RecordKind
    time: float | None = None  # wall-clock seconds, as the rank stamped it
    step: int | None = None
    metrics: job_pb2.RankMetrics | None = None  # METRICS only
    tag: str = ""  # CHECKPOINT only
    path: str = ""  # CHECKPOINT only
    # "file" (the rank's metrics file); anything else was read from its logs ("stdout",
    # "stderr"), which the rank's own file overrides.
    source: str = "file"
    phase: int = 0  # PHASE only: a job_pb2.RankPhase value
    # HEARTBEAT only: whether the rank advanced since its last heartbeat (agent.rank.report);
    # None from a reporter that does not say, which counts as progress.
    moved: bool | None = None
    # TRAINER only: its logging_steps (a ratio of the run below 1), logging_first_step,
    # eval_steps (evaluating every so many steps) and max_steps (when set).
    logging_steps: float | None = None
    logging_first_step: bool = False
    eval_steps: float | None = None
    max_steps: int | None = None


_PHASE_PREFIX = "RANK_PHASE_"


def phase_from_name(name: str) -> int | None:
    """The ``RankPhase`` value named ``name`` ("joining" or "RANK_PHASE_JOINING"), else None."""
    key = name.strip().upper()
    if not key.startswith(_PHASE_PREFIX):
        key = _PHASE_PREFIX + key
    if key == _PHASE_PREFIX + "UNSPECIFIED":
        return None
    try:
        return int(job_pb2.RankPhase.Value(key))
    except ValueError:
        return None


def phase_name(value: int) -> str:
    """A ``RankPhase`` value's short name ("joining"); "unspecified" for unknown values."""
    try:
        return str(job_pb2.RankPhase.Name(value)).removeprefix(_PHASE_PREFIX).lower()
    except ValueError:
        return "unspecified"


def as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def whole_number(text: str) -> int | None:
    """``text`` as a step count (digits only, at most ``MAX_COUNT``), else None."""
    if not text.isdigit() or len(text) > 16:
        return None
    value = int(text)
    return value if value <= MAX_COUNT else None


def _int(value: object) -> int | None:
    number = as_number(value)
    if number is None or not math.isfinite(number) or number != int(number):
        return None
    return int(number) if abs(number) <= MAX_COUNT else None


_FLOAT_FIELDS: Mapping[str, str] = {
    # JSON key -> RankMetrics field
    "loss": "loss",
    "grad_norm": "grad_norm",
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "loss_scale": "loss_scale",
    "step_time_s": "step_time_s",
    "samples_per_s": "samples_per_s",
    "tokens_per_s": "tokens_per_s",
    "collective_total_s": "collective_time_s",
    "forward_s": "forward_s",
    "backward_s": "backward_s",
    "allreduce_s": "allreduce_s",
    "optimizer_step_s": "optimizer_step_s",
    "tflops": "tflops",
    "eval_loss": "eval_loss",
}


def metrics_from_fields(fields: Mapping[str, object]) -> job_pb2.RankMetrics:
    """A ``RankMetrics`` from a metrics record's fields; wrong-typed fields are left out."""
    m = job_pb2.RankMetrics()
    step = _int(fields.get("step"))
    if step is not None:
        m.step = step
    epoch = as_number(fields.get("epoch"))
    if epoch is not None:
        m.epoch = epoch
    total = _int(fields.get("total_steps"))
    if total is not None and 0 < total <= MAX_COUNT:
        m.total_steps = total
    for key, attr in _FLOAT_FIELDS.items():
        value = as_number(fields.get(key))
        if value is not None:
            setattr(m, attr, value)
    by_op = fields.get("collective_s")
    if isinstance(by_op, dict):
        for op, seconds in by_op.items():
            value = as_number(seconds)
            if isinstance(op, str) and value is not None:
                m.collective_time_by_op_s[op] = value
        if not m.HasField("collective_time_s") and m.collective_time_by_op_s:
            m.collective_time_s = sum(m.collective_time_by_op_s.values())
    memory = _int(fields.get("memory_bytes"))
    if memory is not None and memory >= 0:
        m.memory_bytes = memory
    peak = _int(fields.get("peak_memory_bytes"))
    if peak is not None and peak >= 0:
        m.peak_memory_bytes = peak
    by_group = fields.get("collective_by_group_s")
    if isinstance(by_group, dict):
        for group, seconds in list(by_group.items())[:8]:
            value = as_number(seconds)
            if isinstance(group, str) and len(group) <= 32 and value is not None:
                m.collective_time_by_group_s[group] = value
    if m.HasField("eval_loss") and step is not None:
        m.eval_step = step  # an evaluation's loss is reported at the step it ran at
    when = as_number(fields.get("time"))
    if when is not None and math.isfinite(when):
        m.time.FromNanoseconds(int(when * 1e9))
    return m


def merge_metrics(
    previous: job_pb2.RankMetrics | None, new: job_pb2.RankMetrics
) -> job_pb2.RankMetrics:
    """The rank's latest figures: ``new`` completes ``previous`` for the same step, else wins."""
    if previous is None or previous.step != new.step:
        return new
    merged = job_pb2.RankMetrics()
    merged.CopyFrom(previous)
    merged.MergeFrom(new)
    return merged


class RecordParser:
    """Parses a metrics file's lines; counts what it had to skip."""

    def __init__(self) -> None:
        self.garbage = 0  # not a JSON object
        self.unknown = 0  # a JSON object of a kind we do not know

    def parse(self, line: str) -> Record | None:
        line = line.strip()
        if not line:
            return None
        try:
            fields = json.loads(line)
        except ValueError:
            self.garbage += 1
            return None
        if not isinstance(fields, dict):
            self.garbage += 1
            return None
        try:
            kind = RecordKind(fields.get("kind", RecordKind.METRICS))
        except ValueError:
            self.unknown += 1
            return None
        when = as_number(fields.get("time"))
        step = _int(fields.get("step"))
        if kind == RecordKind.METRICS:
            metrics = metrics_from_fields(fields)
            return Record(kind, when, step, metrics=metrics)
        if kind == RecordKind.PHASE:
            name = fields.get("phase")
            phase = phase_from_name(name) if isinstance(name, str) else None
            if phase is None:
                self.unknown += 1
                return None
            return Record(kind, when, step, phase=phase)
        if kind == RecordKind.CHECKPOINT:
            tag, path = fields.get("tag"), fields.get("path")
            return Record(
                kind,
                when,
                step,
                tag=tag if isinstance(tag, str) else "",
                path=path if isinstance(path, str) else "",
            )
        if kind == RecordKind.TRAINER:
            every = as_number(fields.get("logging_steps"))
            first = fields.get("logging_first_step") is True
            evals, last = as_number(fields.get("eval_steps")), _int(fields.get("max_steps"))
            return Record(
                kind,
                when,
                step,
                logging_steps=every,
                logging_first_step=first,
                eval_steps=evals,
                max_steps=last,
            )
        if kind == RecordKind.HEARTBEAT:
            moved = fields.get("moved")
            return Record(kind, when, step, moved=moved if isinstance(moved, bool) else None)
        return Record(kind, when, step)
