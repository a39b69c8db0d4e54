"""Whether any rank of the job was asked for a checkpoint (agent.rank.checkpoint_request):
one all-reduce of a flag at each step's end, so every rank saves the same step although the
request reached only some nodes' ranks. Runs inside ranks."""

from __future__ import annotations

import torch

__all__ = ["any_rank_asked"]


def any_rank_asked(asked: bool) -> bool:
    """``asked`` of any rank under torch.distributed (every rank must call it at the same
    point of each step), else this rank's own ``asked``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return asked
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
    flag = torch.tensor([1 if asked else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
