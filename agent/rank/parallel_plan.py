"""A rank's place in the job's parallel layout and how its collectives split by group. Pure.

Sizes come from --tensor_parallel_size / --expert_parallel_size, which default to
$GANTRY_TENSOR_PARALLEL / $GANTRY_EXPERT_PARALLEL (set by the agent from the spec's
`parallelism`), else 1. The layout is `gantry.v1.parallelism`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gantry.v1.parallelism import coordinates, layout_problem

TENSOR_ENV = "GANTRY_TENSOR_PARALLEL"
EXPERT_ENV = "GANTRY_EXPERT_PARALLEL"
# Collectives by the group they serve: experts exchange tokens all-to-all; the tensor-parallel
# layers of DeepSpeed's AutoTP reduce their outputs with these; everything else is data parallel.
EXPERT_OPS = ("all_to_all", "all_to_all_single")
TENSOR_OPS = ("inference_all_reduce",)


def env_size(name: str, environ: Mapping[str, str] | None = None) -> int:
    """A parallel size from the environment: 1 when unset; a ValueError naming the variable
    for anything but a whole number >= 1."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: give a whole number >= 1")
    return int(raw)


@dataclass(frozen=True)
class ParallelPlan:
    """The sizes of the job's tensor and expert parallelism, and this rank's coordinates."""

    rank: int
    world_size: int
    tensor: int = 1
    expert: int = 1

    @property
    def data(self) -> int:
        """Data-parallel replicas of each expert: world / (tensor x expert)."""
        return self.world_size // (self.tensor * self.expert)

    def problem(self, num_experts: int | None = None) -> str | None:
        return layout_problem(self.world_size, self.tensor, self.expert, num_experts)

    def coordinates(self) -> dict[str, int]:
        c = coordinates(self.rank, self.tensor, self.expert)
        return {"data": c.data, "tensor": c.tensor, "expert": c.expert}

    @property
    def parallel(self) -> bool:
        return self.tensor > 1 or self.expert > 1


def group_times(
    by_op: Mapping[str, float] | None, tensor: int = 1, data: int = 0
) -> dict[str, float] | None:
    """Seconds of the step's collectives per group ("data", "tensor", "expert") from the
    seconds per op; None when there were no figures. Groups without time are left out.

    all-to-all is the experts' token exchange. DeepSpeed's comms logger names ops, not their
    groups: AutoTP's layers reduce with all_reduce, as data parallelism does, so all_reduce
    counts as "tensor" only where there is no other data-parallel rank (`data` 1), and as
    "data" otherwise."""
    if by_op is None:
        return None
    out: dict[str, float] = {}
    for op, seconds in by_op.items():
        if op in EXPERT_OPS:
            group = "expert"
        elif tensor > 1 and (op in TENSOR_OPS or (op == "all_reduce" and data == 1)):
            group = "tensor"
        else:
            group = "data"
        out[group] = round(out.get(group, 0.0) + seconds, 6)
    return out
