"""What the int8 export quantizes and how: sizes of tensors, modules and weight files, the plan
(which modules get which scheme, and why the others get none) and the quantization itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.ml.loading import quiet_torchao

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
LINEAR_CONFIGS = {False: "Int8DynamicActivationInt8WeightConfig", True: "Int8WeightOnlyConfig"}


# --- sizes ----------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; for a wrapper subclass (torchao's Int8Tensor reports the
    dtype and shape of the float tensor it stands for) the sum of its inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module, recurse: bool = True) -> int:
    tensors = [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]
    return sum(tensor_bytes(t) for t in tensors)


def disk_bytes(directory: Path) -> int:
    """Bytes of the weight files directly in `directory`."""
    return sum(
        p.stat().st_size
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )


# --- what to quantize -----------------------------------------------------------------


@dataclass
class Plan:
    linears: list[str] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def skip_reason(name: str, module: nn.Module) -> str:
    kind = type(module).__name__
    if "norm" in kind.lower() or "norm" in name.rsplit(".", 1)[-1].lower():
        return "normalization: an elementwise scale, negligible in size"
    if "router" in kind.lower() or name.endswith(".gate"):
        return (
            "MoE router: not an nn.Linear; kept fp32 as it is tiny and expert selection "
            "is sensitive to small logit errors"
        )
    return f"{kind} is not an nn.Linear: no int8 scheme applies"


def plan_model(model: PreTrainedModel, include_lm_head: bool = False) -> Plan:
    """Which modules get which treatment, and why the others get none."""
    from torch import nn

    from agent.ml.int8_experts import has_fused_weights, unsupported_reason

    plan = Plan()
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    embeddings = model.get_input_embeddings()
    for name, module in model.named_modules():
        own = module_bytes(module, recurse=False)
        if isinstance(module, nn.Linear):
            if module is head and not include_lm_head:
                reason = (
                    "output head: excluded by default, the logits show int8 error first "
                    "(--include-lm-head quantizes it)"
                )
                plan.skipped.append(_skip(name, module, reason, own))
            else:
                plan.linears.append(name)
        elif has_fused_weights(module):
            why = unsupported_reason(module)
            if why is None:
                plan.experts.append(name)
            else:
                plan.skipped.append(_skip(name, module, f"fused experts left fp32: {why}", own))
        elif module is embeddings or isinstance(module, nn.Embedding):
            reason = "embedding: a table lookup, not a matmul (torchao's int8 is for Linears)"
            plan.skipped.append(_skip(name, module, reason, own))
        elif any(True for _ in module.parameters(recurse=False)):  # not rotary tables
            plan.skipped.append(_skip(name, module, skip_reason(name, module), own))
    return plan


def _skip(name: str, module: nn.Module, reason: str, size: int) -> dict[str, Any]:
    return {"module": name, "type": type(module).__name__, "reason": reason, "bytes": size}


def linear_config(weight_only: bool) -> Any:
    quiet_torchao()
    from torchao.quantization import (  # type: ignore[import-untyped]
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    return Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig()


def quantize_model(
    model: PreTrainedModel, weight_only: bool = False, include_lm_head: bool = False
) -> tuple[Plan, list[dict[str, Any]]]:
    """Quantize `model` in place: (the plan, one entry per quantized module with its
    scheme and bytes before and after)."""
    quiet_torchao()
    from torchao.quantization import quantize_

    from agent.ml.int8_experts import replace_experts

    plan = plan_model(model, include_lm_head)
    before = {name: module_bytes(model.get_submodule(name)) for name in plan.linears + plan.experts}
    targets = set(plan.linears)
    config = linear_config(weight_only)
    quantize_(model, config, filter_fn=lambda _module, fqn: fqn in targets)
    replace_experts(model, plan.experts, weight_only=weight_only)
    scheme = "int8 weight-only" if weight_only else "int8 weights, dynamic int8 activations"
    done = []
    for name in plan.linears + plan.experts:
        module = model.get_submodule(name)
        how = "torchao " + type(config).__name__ if name in targets else "agent Int8Experts"
        done.append(
            {
                "module": name,
                "type": type(module).__name__,
                "scheme": f"{scheme} ({how})",
                "bytes_before": before[name],
                "bytes_after": module_bytes(module),
            }
        )
    return plan, done


def float_3d_left(model: nn.Module) -> list[str]:
    """Names of 3-D floating-point tensors still in the model (unquantized experts)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [
        name
        for name, t in tensors
        if t.ndim == 3 and t.is_floating_point() and not is_traceable_wrapper_subclass(t)
    ]
