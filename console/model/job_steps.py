"""One step's figures: a rank's point in its history and every rank's sums at a step.
Plain Python; the jobs store keeps them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gantry.v1 import job_pb2


def ts(stamp: object) -> float:
    """Seconds of a protobuf Timestamp (0.0 when unset)."""
    seconds = getattr(stamp, "seconds", 0)
    nanos = getattr(stamp, "nanos", 0)
    return float(seconds) + float(nanos) / 1e9


class RankPoint(NamedTuple):
    """One rank's figures at one step."""

    step: int
    time: float
    loss: float | None
    grad_norm: float | None
    loss_scale: float | None
    step_time_s: float | None
    collective_s: float | None
    tokens_per_s: float | None
    collective_by_group_s: Mapping[str, float] | None = None  # "data", "tensor", "expert"


@dataclass
class StepAgg:
    """Every rank's figures at one step, summed (mean = sum / n)."""

    step: int
    attempt: int = 0
    time: float = 0.0
    n: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            if value is not None:  # NaN / inf: counted, so the chart shows the hole
                self.counts[name + ":bad"] = self.counts.get(name + ":bad", 0) + 1
            return
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self, name: str) -> float | None:
        n = self.counts.get(name, 0)
        return self.sums[name] / n if n else None

    def total(self, name: str) -> float | None:
        return self.sums.get(name) if self.counts.get(name) else None


STEP_FIELDS = (
    "loss",
    "grad_norm",
    "learning_rate",
    "tokens_per_s",
    "step_time_s",
    "forward_s",
    "backward_s",
    "allreduce_s",
    "optimizer_step_s",
    "collective_time_s",
)
# A collective's time per step (all_gather, reduce_scatter, ...) is aggregated under
# this prefix and its op name, from the rank's collective_time_by_op_s.
OP_PREFIX = "op:"
# Every optional figure a metric record is read for (RankPoint's and STEP_FIELDS).
READ_FIELDS = tuple(
    dict.fromkeys(
        (
            "loss",
            "grad_norm",
            "loss_scale",
            "step_time_s",
            "collective_time_s",
            "tokens_per_s",
            *STEP_FIELDS,
        )
    )
)


def last_known_step(job: job_pb2.Job) -> int | None:
    """The furthest step the latest attempt that reported one reached (None: none did);
    ranks that stopped or restarted do not take it back to 0."""
    for attempt in reversed(job.attempts):
        step = max((int(r.metrics.step) for r in attempt.ranks), default=0)
        if step > 0:
            return step
    return None


def last_eval_loss(job: job_pb2.Job) -> tuple[int, float] | None:
    """(step, loss) of the newest evaluation any rank of the job reported, else None."""
    found = [
        (int(m.eval_step if m.HasField("eval_step") else m.step), m.eval_loss)
        for attempt in job.attempts
        for r in attempt.ranks
        if (m := r.metrics).HasField("eval_loss")
    ]
    return max(found, default=None, key=lambda pair: pair[0])
