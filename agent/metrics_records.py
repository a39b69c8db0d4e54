"""What ranks report, as records: their own JSON lines, or DeepSpeed's stdout progress lines.

A rank using Gantry's reporter appends JSON lines to ``$GANTRY_METRICS_FILE``::

    {"kind": "metrics", "time": 1.7e9, "rank": 0, "step": 12, "loss": 2.31, "lr": 1e-4,
     "collective_s": {"all_reduce": 0.012}, "collective_total_s": 0.012, ...}
    {"kind": "heartbeat", "time": ..., "rank": 0, "step": 12}
    {"kind": "checkpoint", "time": ..., "rank": 0, "step": 100, "tag": "global_step100",
     "path": "/ckpt/global_step100"}
    {"kind": "start", ...}  {"kind": "end", ...}

Unknown and missing fields are tolerated; a line that is not a JSON object is skipped and
counted, never raised. A script that does not report still gets rank 0's figures from what
DeepSpeed prints every ``steps_per_print`` steps (see ``DeepSpeedStdoutParser``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gantry.v1 import job_pb2

__all__ = [
    "DeepSpeedStdoutParser",
    "Record",
    "RecordKind",
    "RecordParser",
    "merge_metrics",
    "metrics_from_fields",
]

GIB = 1024**3


class RecordKind(StrEnum):
    METRICS = "metrics"
    HEARTBEAT = "heartbeat"
    CHECKPOINT = "checkpoint"
    START = "start"
    END = "end"


@dataclass(frozen=True)
class Record:
    kind: RecordKind
    time: float | None = None  # wall-clock seconds, as the rank stamped it
    step: int | None = None
    metrics: job_pb2.RankMetrics | None = None  # METRICS only
    tag: str = ""  # CHECKPOINT only
    path: str = ""  # CHECKPOINT only
    source: str = "file"  # "file" (the rank's metrics file) or "stdout" (DeepSpeed's lines)


def _num(value: object) -> float | None:
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


def _int(value: object) -> int | None:
    number = _num(value)
    if number is None or not math.isfinite(number) or number != int(number):
        return None
    return int(number)


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
}


def metrics_from_fields(fields: Mapping[str, object]) -> job_pb2.RankMetrics:
    """A ``RankMetrics`` from a metrics record's fields; wrong-typed fields are left out."""
    m = job_pb2.RankMetrics()
    step = _int(fields.get("step"))
    if step is not None:
        m.step = step
    epoch = _num(fields.get("epoch"))
    if epoch is not None:
        m.epoch = epoch
    for key, attr in _FLOAT_FIELDS.items():
        value = _num(fields.get(key))
        if value is not None:
            setattr(m, attr, value)
    by_op = fields.get("collective_s")
    if isinstance(by_op, dict):
        for op, seconds in by_op.items():
            value = _num(seconds)
            if isinstance(op, str) and value is not None:
                m.collective_time_by_op_s[op] = value
        if not m.HasField("collective_time_s") and m.collective_time_by_op_s:
            m.collective_time_s = sum(m.collective_time_by_op_s.values())
    memory = _int(fields.get("memory_bytes"))
    if memory is not None and memory >= 0:
        m.memory_bytes = memory
    when = _num(fields.get("time"))
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
        when = _num(fields.get("time"))
        step = _int(fields.get("step"))
        if kind == RecordKind.METRICS:
            metrics = metrics_from_fields(fields)
            return Record(kind, when, step, metrics=metrics)
        if kind == RecordKind.CHECKPOINT:
            tag, path = fields.get("tag"), fields.get("path")
            return Record(
                kind,
                when,
                step,
                tag=tag if isinstance(tag, str) else "",
                path=path if isinstance(path, str) else "",
            )
        return Record(kind, when, step)


# DeepSpeed 0.19 (deepspeed/runtime/engine.py, utils/timer.py, utils/logging.py) prints, on
# rank 0 only, with its logger at INFO:
#   [2026-11-28 09:46:23,018] [INFO] [logging.py:123:log_dist] [Rank 0] step=2, skipped=0,
#       lr=[0.001], mom=[(0.9, 0.999)]                      (_report_progress, every N steps)
#   [...] [INFO] [timer.py:264:stop] epoch=0/micro_step=8/global_step=4,
#       RunningAvgSamplesPerSec=1299.4, CurrSamplesPerSec=889.3, MemAllocated=0.33GB,
#       MaxMemAllocated=0.33GB                              (ThroughputTimer, every N steps)
# and with wall_clock_breakdown, via print (no logger prefix), every optimizer step:
#   [Rank 0] time (ms) | fwd: 0.56 | bwd: 1.16 | bwd_inner: 0.44 | bwd_allreduce: 0.68 | step: 6.07
_PREFIX = re.compile(
    r"^(?:\[(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\w+\] \[[^\]]*\] )?"
    r"(?:\[Rank -?\d+\] )?(?P<msg>.*)$"
)
_STEP = re.compile(r"^step=(?P<step>\d+), skipped=(?P<skipped>\d+), lr=\[(?P<lr>[^\]]*)\]")
_THROUGHPUT = re.compile(
    r"^epoch=(?P<epoch>\d+)/micro_step=\d+/global_step=(?P<gstep>\d+), "
    r"RunningAvgSamplesPerSec=[^,]*, CurrSamplesPerSec=(?P<curr>[^,]*), "
    r"MemAllocated=(?P<mem>[\d.]+)GB"
)
_TIMERS = re.compile(r"^time \(ms\)((?: \| [\w.]+: [-\d.]+)+)\s*$")
_TIMER_FIELDS: Mapping[str, str] = {
    "fwd": "forward_s",
    "bwd": "backward_s",
    "bwd_allreduce": "allreduce_s",
    "step": "optimizer_step_s",
}


class DeepSpeedStdoutParser:
    """Turns DeepSpeed's progress lines into METRICS records, one parser per rank's stdout.

    The timer line carries no step number: it belongs to the step of a ``step=N`` line just
    before it, else to the step after the last one seen (it is printed every step).
    """

    def __init__(self) -> None:
        self.step: int | None = None
        self._pending = False

    def parse(self, line: str) -> Record | None:
        if "] " not in line and not line.startswith("time (ms)"):
            return None
        match = _PREFIX.match(line.rstrip())
        if match is None:
            return None
        msg = match["msg"]
        when = _log_time(match["when"])
        if msg.startswith("step="):
            return self._step_line(msg, when)
        if msg.startswith("epoch="):
            return self._throughput_line(msg, when)
        if msg.startswith("time (ms)"):
            return self._timer_line(msg, when)
        return None

    def _record(self, m: job_pb2.RankMetrics, when: float | None) -> Record:
        if when is not None:
            m.time.FromNanoseconds(int(when * 1e9))
        return Record(RecordKind.METRICS, when, m.step, metrics=m, source="stdout")

    def _step_line(self, msg: str, when: float | None) -> Record | None:
        match = _STEP.match(msg)
        if match is None:
            return None
        step = int(match["step"])
        # step=0 is printed by deepspeed.initialize, before any training step.
        self.step, self._pending = step, step > 0
        m = job_pb2.RankMetrics(step=step)
        lrs = [_num(x) for x in match["lr"].split(",")]
        if lrs and lrs[0] is not None:
            m.learning_rate = lrs[0]
        return self._record(m, when)

    def _throughput_line(self, msg: str, when: float | None) -> Record | None:
        match = _THROUGHPUT.match(msg)
        if match is None:
            return None
        # global_step here is the timer's own count, which restarts at 0 on resume.
        step = self.step if self.step is not None else int(match["gstep"])
        m = job_pb2.RankMetrics(step=step, epoch=float(match["epoch"]))
        curr = _num(match["curr"])
        if curr is not None and math.isfinite(curr):
            m.samples_per_s = curr
        m.memory_bytes = int(float(match["mem"]) * GIB)
        return self._record(m, when)

    def _timer_line(self, msg: str, when: float | None) -> Record | None:
        match = _TIMERS.match(msg)
        if match is None:
            return None
        timers: dict[str, float] = {}
        for part in match[1].split(" | ")[1:]:
            name, _, value = part.partition(": ")
            number = _num(value)
            if number is not None:
                timers[name] = number / 1000.0
        if "fwd" not in timers:
            return None  # the per-micro-step line (fwd_microstep, ...)
        step = self.step if self._pending and self.step is not None else (self.step or 0) + 1
        self.step, self._pending = step, False
        m = job_pb2.RankMetrics(step=step)
        for name, attr in _TIMER_FIELDS.items():
            if name in timers:
                setattr(m, attr, timers[name])
        m.step_time_s = sum(timers.get(name, 0.0) for name in ("fwd", "bwd", "step"))
        return self._record(m, when)


def _log_time(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return None
