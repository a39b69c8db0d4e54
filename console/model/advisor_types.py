"""The advisor's vocabulary: what it reads (metric points, GPU samples, log hits, failures,
the job's diagnosis events), what it says (findings with remedies) and the thresholds its
rules judge by.

An `attempt` of None is unknown: such an item is placed by its time against the current
attempt's start instead (see `console.model.advisor.current`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["warning", "critical"]

WEEK_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class MetricPoint:
    rank: int
    node: str
    step: int
    time: float
    loss: float | None
    grad_norm: float | None
    loss_scale: float | None
    step_time_s: float | None
    collective_time_s: float | None
    tokens_per_s: float | None
    attempt: int | None = None
    collective_by_group_s: Mapping[str, float] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GpuPoint:
    node: str
    gpu: int
    time: float
    util_percent: float


@dataclass(frozen=True)
class LogHit:
    rank: int
    node: str
    time: float
    line: str
    attempt: int | None = None


@dataclass(frozen=True)
class Failure:
    time: float
    reason: str
    attempt: int | None = None  # the attempt that failed


NoteKind = Literal["alert", "nccl", "rank_failed"]


@dataclass(frozen=True)
class EventNote:
    """A job event a rule reads: an ALERT (details["alert"]: the signature), an NCCL finding
    (details["finding"]) or a failed rank (details["cause"], ["signature"], ["last_lines"])."""

    kind: NoteKind
    rank: int
    node: str
    time: float
    message: str
    details: Mapping[str, str] = field(default_factory=dict)
    attempt: int | None = None


@dataclass(frozen=True)
class AdvisorInput:
    metrics: Sequence[MetricPoint]
    gpus: Sequence[GpuPoint]
    log_hits: Sequence[LogHit]
    failures: Sequence[Failure]
    now: float
    running: bool
    micro_batch: int | None
    grad_accum: int | None
    fp16: bool
    started: float | None = None  # the job's creation time; None: the earliest time given
    notes: Sequence[EventNote] = ()
    attempt: int | None = None  # the current attempt; None: every item counts as current
    attempt_started: float | None = None
    world_size: int | None = None  # the current attempt's ranks
    nodes: frozenset[str] | None = None  # the current attempt's nodes
    gradient_checkpointing: bool = False  # already on in the spec's args


@dataclass(frozen=True)
class Remedy:
    kind: str  # "advice" (no spec change) or a kind console.model.remedies.apply_remedy knows
    summary: str
    details: str
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    title: str
    evidence: str  # one line: the numbers, the window and the threshold
    remedy: Remedy | None = None


@dataclass(frozen=True)
class Thresholds:
    gpu_util_min_percent: float = 85.0
    gpu_util_window_s: float = 60.0
    gpu_util_min_coverage: float = 0.8  # a node's samples must span this much of the window
    collective_fraction_max: float = 0.20
    collective_window_steps: int = 20
    collective_min_steps: int = 5
    grad_accum_max: int = 64  # raise-grad-accum is offered up to this many steps
    grad_norm_z_max: float = 6.0
    grad_norm_window_steps: int = 50
    grad_norm_min_steps: int = 10
    recent_steps: int = 20  # grad spikes and NaN losses older than this are not reported
    loss_scale_collapse_factor: float = 64.0
    loss_scale_window_steps: int = 50
    loss_scale_floor: float = 1.0  # a collapse down to this is critical
    interruptions_per_week_max: float = 1.0
    interruptions_window_s: float = WEEK_S
    interruptions_min_failures: int = 2  # one failure in a young job is no rate yet
    interruptions_min_span_s: float = 6 * 3600.0  # a shorter history gets no weekly rate
    interruptions_frequent_s: float = 3600.0  # ...but failures closer than this on average
    straggler_factor: float = 1.5
    straggler_window_steps: int = 20
    straggler_min_steps: int = 5
    straggler_min_delta_s: float = 0.01  # ignore differences smaller than this

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_threshold(f.name, getattr(self, f.name), f.type == "int")
        if self.grad_norm_min_steps > self.grad_norm_window_steps:
            raise ValueError(
                f"advisor threshold 'grad_norm_min_steps' ({self.grad_norm_min_steps}) must not "
                f"exceed 'grad_norm_window_steps' ({self.grad_norm_window_steps})"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> Thresholds:
        """Thresholds with `values` over the defaults; ValueError (one line) names a bad key."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                longer = [name for name in names if name.startswith(str(key))]
                close = longer or difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else "see console.model.advisor.Thresholds"
                )
                raise ValueError(f"unknown advisor threshold {key!r}: {hint}")
        return cls(**values)  # type: ignore[arg-type]  # checked in __post_init__


# name: (lowest, highest, whether the lowest itself is allowed)
_LIMITS: Mapping[str, tuple[float, float, bool]] = {
    "gpu_util_min_percent": (0.0, 100.0, False),
    "gpu_util_min_coverage": (0.0, 1.0, True),
    "collective_fraction_max": (0.0, 1.0, False),
    "loss_scale_collapse_factor": (1.0, math.inf, False),
    "loss_scale_floor": (0.0, math.inf, True),
    "interruptions_per_week_max": (0.0, math.inf, True),
    "interruptions_min_span_s": (0.0, math.inf, True),  # 0: always a weekly rate
    "straggler_factor": (1.0, math.inf, False),
    "straggler_min_delta_s": (0.0, math.inf, True),
}


def _check_threshold(name: str, value: object, integral: bool) -> None:
    lo, hi, lo_ok = _LIMITS.get(name, (0.0, math.inf, False))
    wanted = "a whole number" if integral else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"advisor threshold {name!r}: expected {wanted}, got {value!r}")
    if integral and not isinstance(value, int):
        raise ValueError(f"advisor threshold {name!r}: expected {wanted}, got {value!r}")
    if math.isnan(value) or value > hi or value < lo or (value == lo and not lo_ok):
        bound = f"{'at least' if lo_ok else 'above'} {lo:g}"
        if hi < math.inf:
            bound += f" and at most {hi:g}"
        raise ValueError(f"advisor threshold {name!r}: must be {bound}, got {value!r}")


DEFAULT_THRESHOLDS = Thresholds()
