"""Expert parallelism for the built-in Mixtral-style model: each sparse MoE block becomes
DeepSpeed's MoE layer (deepspeed.moe.layer.MoE) with `ep_size` ranks sharing the experts.

The experts are Mixtral's (SwiGLU: w1 gate, w3 up, w2 down, no bias) and the router keeps
Mixtral's top-k softmax. Each expert is initialised from a generator seeded by the run's seed
and its global index, and the router from the seed alone, so a run is the same model at any
expert-parallel size: expert parallel 2 starts from the weights expert parallel 1 does.

Routing is made deterministic (no random token selection, no sampled second expert, no
dropped tokens), so only the placement of the experts differs between sizes. DeepSpeed's MoE
does not run under ZeRO stage 3 (agent.rank.ds_config lowers it to 2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EXPERT_GROUP_PREFIX = "ep_size_"


class SwiGluExpert(nn.Module):
    """One Mixtral expert: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w3 = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))  # type: ignore[no-any-return]


def _expert_groups(name: str, ep_size: int) -> None:
    """DeepSpeed's expert-parallel groups of `ep_size`, made now rather than in
    deepspeed.initialize (which then finds them made)."""
    from deepspeed.utils import groups

    if name not in groups._get_expert_parallel_group_dict():
        groups._create_expert_and_data_parallel(ep_size)


class DeepSpeedMoeBlock(nn.Module):
    """A drop-in for MixtralSparseMoeBlock: hidden states in, hidden states out; the gate's
    auxiliary (load-balancing) loss of the last forward is kept in `l_aux`."""

    def __init__(self, config: Any, ep_size: int, seed: int) -> None:
        super().__init__()
        from deepspeed.moe.layer import MoE

        num_experts = int(config.num_local_experts)
        if num_experts % ep_size:
            raise ValueError(
                f"expert parallel {ep_size} does not divide the model's {num_experts} experts"
            )
        self.num_experts = num_experts
        self.moe = MoE(
            hidden_size=int(config.hidden_size),
            expert=SwiGluExpert(int(config.hidden_size), int(config.intermediate_size)),
            num_experts=num_experts,
            ep_size=ep_size,
            k=int(config.num_experts_per_tok),
            capacity_factor=1.0,
            eval_capacity_factor=1.0,
            min_capacity=0,
            drop_tokens=False,
            use_rts=False,
            top2_2nd_expert_sampling=False,
        )
        _expert_groups(self.moe.expert_group_name, ep_size)  # which experts this rank holds
        self._init_weights(float(getattr(config, "initializer_range", 0.02)), seed)
        self.l_aux: torch.Tensor | None = None

    def _init_weights(self, std: float, seed: int) -> None:
        from deepspeed.utils import groups

        ep_rank = groups._get_expert_parallel_rank(self.moe.expert_group_name)
        experts = self.moe.deepspeed_moe.experts.deepspeed_experts
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed)
            gate = self.moe.deepspeed_moe.gate.wg.weight
            gate.copy_(torch.randn(gate.shape, generator=gen) * std)
            for local, expert in enumerate(experts):
                gen = torch.Generator().manual_seed(seed * 100_003 + ep_rank * len(experts) + local)
                for param in expert.parameters():
                    param.copy_(torch.randn(param.shape, generator=gen) * std)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out, l_aux, _ = self.moe(hidden_states)
        self.l_aux = l_aux
        return out  # type: ignore[no-any-return]


def use_deepspeed_moe(model: nn.Module, ep_size: int, seed: int) -> int:
    """Replaces every Mixtral sparse MoE block of `model` with DeepSpeed's MoE layer at
    `ep_size`; the number replaced. A model without such blocks is a ValueError."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_local_experts"):
        raise ValueError(
            "expert parallelism needs a Mixtral-style MoE model (tiny-moe or a Mixtral "
            "directory); this model has no num_local_experts"
        )
    replaced = 0
    for layer in getattr(getattr(model, "model", None), "layers", []):
        if type(layer.mlp).__name__ == "MixtralSparseMoeBlock":
            layer.mlp = DeepSpeedMoeBlock(config, ep_size, seed)
            replaced += 1
    if not replaced:
        raise ValueError("expert parallelism: the model has no Mixtral sparse MoE block")
    return replaced


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The model's parameters as optimizer groups, the experts' apart (one group per expert
    group), as DeepSpeed's engine requires of a client optimizer with MoE layers."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    base = {"params": list(model.parameters()), "weight_decay": weight_decay, "name": "params"}
    return list(split_params_into_different_moe_groups_for_optimizer(base))


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the MoE blocks' gate losses of the last forward, None without any."""
    losses = [m.l_aux for m in model.modules() if isinstance(m, DeepSpeedMoeBlock)]
    present = [loss for loss in losses if loss is not None]
    return torch.stack([loss.float() for loss in present]).sum() if present else None


def has_deepspeed_moe(model: nn.Module) -> bool:
    return any(isinstance(m, DeepSpeedMoeBlock) for m in model.modules())


def gather_experts(model: nn.Module) -> dict[str, torch.Tensor]:
    """The MoE blocks in Mixtral's layout, every expert of each block gathered from its
    expert-parallel group: "<block>.gate.weight", "<block>.experts.gate_up_proj" and
    "<block>.experts.down_proj" (fp32, on the CPU). A collective: every rank calls it."""
    import torch.distributed as dist
    from deepspeed.utils import groups

    out: dict[str, torch.Tensor] = {}
    for name, block in model.named_modules():
        if not isinstance(block, DeepSpeedMoeBlock):
            continue
        group = groups._get_expert_parallel_group(block.moe.expert_group_name)
        experts = block.moe.deepspeed_moe.experts.deepspeed_experts
        local = {
            "gate_up_proj": torch.stack([torch.cat([e.w1.weight, e.w3.weight]) for e in experts]),
            "down_proj": torch.stack([e.w2.weight for e in experts]),
        }
        for key, tensor in local.items():
            tensor = tensor.detach().contiguous()
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
            dist.all_gather(parts, tensor, group=group)  # in expert-parallel rank order
            out[f"{name}.experts.{key}"] = torch.cat(parts).to("cpu", torch.float32)
        gate = block.moe.deepspeed_moe.gate.wg.weight
        out[f"{name}.gate.weight"] = gate.detach().to("cpu", torch.float32).clone()
    return out


def mixtral_state_dict(
    state: dict[str, torch.Tensor], experts: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A state dict of the model with DeepSpeed's MoE layer as Mixtral's: the layer's own
    keys replaced by `gather_experts`' output."""
    kept = {k: v for k, v in state.items() if ".moe.deepspeed_moe." not in k}
    return {**kept, **experts}
