"""The parallel layout of a job: tensor and expert parallelism within the world, data
parallelism from what is left. Pure: no I/O.

The world (every slot of every node) is split into tensor-parallel groups of `tensor`
consecutive ranks; what remains, world / tensor ranks, is the data-parallel dimension, split in
turn into expert-parallel groups of `expert` consecutive data-parallel ranks (DeepSpeed's
default layout). A rank's coordinates are (data, tensor, expert), with
data in 0..world/(tensor*expert)-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.v1 import job_pb2

# The experts of Gantry's built-in MoE models, for the check that expert parallelism divides
# them (agent.ml.models: tiny-moe is Mixtral style with 32 experts).
BUILTIN_EXPERTS = {"tiny-moe": 32}
MODEL_FLAG = "--model_name_or_path"


@dataclass(frozen=True)
class Coordinates:
    """Where a rank sits in the layout."""

    data: int
    tensor: int
    expert: int


def layout_problem(
    world: int, tensor: int, expert: int, num_experts: int | None = None
) -> str | None:
    """Why (tensor, expert) does not fit `world` ranks (and `num_experts`), naming the
    numbers; None when it does. 0 means 1 (unset)."""
    tensor, expert = tensor or 1, expert or 1
    if world % tensor:
        return f"tensor parallel {tensor} does not divide the world of {world} ranks"
    data_ranks = world // tensor
    if data_ranks % expert:
        return (
            f"expert parallel {expert} does not divide the {data_ranks} data-parallel ranks "
            f"(world {world} / tensor {tensor})"
        )
    if num_experts is not None and num_experts % expert:
        return f"expert parallel {expert} does not divide the model's {num_experts} experts"
    return None


def coordinates(rank: int, tensor: int, expert: int) -> Coordinates:
    """`rank`'s (data, tensor, expert) coordinates; 0 means 1 for either size."""
    tensor, expert = tensor or 1, expert or 1
    data_rank, tensor_rank = divmod(rank, tensor)
    data, expert_rank = divmod(data_rank, expert)
    return Coordinates(data, tensor_rank, expert_rank)


def spec_world_size(spec: job_pb2.JobSpec) -> int:
    return sum(max(entry.slots, 1) for entry in spec.nodes)


def spec_num_experts(spec: job_pb2.JobSpec) -> int | None:
    """The experts of the built-in model the spec's args name, when known."""
    words = [*spec.command, *spec.args]
    model = None
    for i, word in enumerate(words):
        if word == MODEL_FLAG and i + 1 < len(words):
            model = words[i + 1]
        elif word.startswith(MODEL_FLAG + "="):
            model = word.split("=", 1)[1]
    return BUILTIN_EXPERTS.get(model or "")


def spec_layout_problem(spec: job_pb2.JobSpec) -> str | None:
    """`layout_problem` for a job spec's parallelism; None when it has none or it fits."""
    if not spec.HasField("parallelism"):
        return None
    p = spec.parallelism
    return layout_problem(spec_world_size(spec), p.tensor, p.expert, spec_num_experts(spec))
