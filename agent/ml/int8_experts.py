"""Int8 for the fused MoE experts of transformers 5, which torchao's `quantize_` skips.

In transformers 5 the routed experts of Mixtral, DeepSeek-V3, Qwen-MoE and friends are
one module per layer holding 3-D parameters, `gate_up_proj` (E, 2I, H) and `down_proj`
(E, H, I), not `nn.Linear`s. `Int8Experts` replaces such a module, keeping its forward
signature `(hidden_states, top_k_index, top_k_weights) -> hidden_states`, its routing
semantics (an expert index equal to E, expert parallelism's sentinel, is skipped) and
its activation.

Weights: per expert and per output channel, symmetric int8 (scale = max |w| / 127 over
the input dimension) with fp32 scales, 4x smaller than fp32 less the scales.

Activations, two modes:
- dynamic (default, as torchao's Int8DynamicActivationInt8WeightConfig does for the
  Linears, so the whole model runs one scheme): each token's input to each of the two
  matmuls is quantized to int8 (per token, symmetric), the product runs int8 x int8 ->
  int32 (`torch._int_mm`: on CPU it takes any shape in torch 2.13; where it refuses, on
  CUDA with small or unaligned shapes, or is not exact, on a CPU without VNNI, the int8
  values are multiplied in fp32, exact while in_features <= 1040) and is rescaled by
  x_scale * w_scale.
- weight-only: activations stay in float; each hit expert's int8 matrix is converted to
  the activation dtype on the fly and the per-channel scale applied to the output,
  `linear(x, q) * s == linear(x, q * s)`: exact dequantization, no int8 kernel needed,
  for accuracy-sensitive models or hardware without int8 matmuls.

Two forwards, the same products: a step that routes at least as many (token, expert)
pairs as there are experts (a decode batch) sorts the pairs by expert and runs each
projection as one grouped matmul over all experts (`torch.nn.functional.grouped_mm`),
the int8 weights converted to float for it (weight-only: exact dequantization again;
dynamic: the int8 x int8 products summed in fp32 are exact integers while
in_features <= 1040, the bound above, else the loop below); a smaller step (batch 1
touches 2 of 32 experts) loops over the experts it hits, as converting every expert's
weights would cost more than the few it needs. Where grouped_mm refuses (a device or
dtype without its kernel) the loop runs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INT8_MAX = 127
# Products of int8 values summed in fp32 are exact integers up to this many terms.
EXACT_FP32_TERMS = 1040
# Scales never reach 0: an all-zero row quantizes to zeros with a harmless tiny scale.
MIN_SCALE = torch.finfo(torch.float32).eps


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 over the last dimension: (q, scale) with x ~ q * scale, scale of
    shape x.shape[:-1] + (1,) in fp32."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / INT8_MAX).clamp(min=MIN_SCALE)
    q = torch.round(xf / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


_CPU_INT_MM_EXACT: bool | None = None


def cpu_int_mm_exact() -> bool:
    """Whether ``torch._int_mm`` gives exact int32 products on this CPU (probed once).

    oneDNN's int8 kernels without VNNI (an AVX2-only CPU) multiply u8 x s8 pairs into
    saturating int16 sums: products of large int8 values come out wrong by tens of
    thousands, and the fp32 matmul of the same int8 values is then the exact one."""
    global _CPU_INT_MM_EXACT
    if _CPU_INT_MM_EXACT is None:
        gen = torch.Generator().manual_seed(0)
        a = torch.randint(-INT8_MAX, INT8_MAX + 1, (32, 64), dtype=torch.int8, generator=gen)
        b = torch.randint(-INT8_MAX, INT8_MAX + 1, (64, 32), dtype=torch.int8, generator=gen)
        exact = torch.matmul(a.float(), b.float()).to(torch.int32)
        try:
            _CPU_INT_MM_EXACT = bool(torch.equal(torch._int_mm(a, b), exact))
        except RuntimeError:
            _CPU_INT_MM_EXACT = False
    return _CPU_INT_MM_EXACT


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (K, N) int8 -> int32 (M, N)."""
    on_cpu = a.device.type == "cpu"
    if (on_cpu and cpu_int_mm_exact()) or (
        not on_cpu and a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0
    ):
        try:
            return torch._int_mm(a, b)
        except RuntimeError:
            pass
    return torch.matmul(a.float(), b.float()).round().to(torch.int32)


def unsupported_reason(module: nn.Module) -> str | None:
    """None when `module` is fused experts that Int8Experts replaces faithfully, else why
    not (the module stays as it is and the report says so)."""
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
        return "fused 3-D expert weights without gate_up_proj/down_proj: layout not supported"
    if gate_up.ndim != 3 or down.ndim != 3:
        return "gate_up_proj/down_proj are not 3-D: layout not supported"
    # The flags below are set by transformers' @use_experts_implementation, whose experts
    # interface defines what the weights mean; a module without them has its own forward.
    if not hasattr(module, "is_transposed"):
        return "not a transformers experts-interface module: its forward is unknown"
    if not getattr(module, "has_gate", True):
        return "experts without a gate projection: not supported"
    if getattr(module, "has_post_expert_norm", False):
        return "experts with a post-expert norm: not supported"
    if not getattr(module, "is_concatenated", True):
        return "interleaved gate/up weights: not supported"
    from transformers.integrations.moe import _default_apply_gate

    if getattr(type(module), "_apply_gate", _default_apply_gate) is not _default_apply_gate:
        return f"{type(module).__name__} has its own gating function: not supported"
    if not isinstance(getattr(module, "act_fn", None), nn.Module):
        return "experts without an act_fn module: not supported"
    return None


def _canonical(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """(E, out, in), the layout F.linear takes per expert."""
    return weight.detach().transpose(-1, -2) if transposed else weight.detach()


class Int8Experts(nn.Module):
    """Int8 fused experts with the forward of transformers' eager experts."""

    gate_up_qweight: torch.Tensor
    gate_up_scale: torch.Tensor
    down_qweight: torch.Tensor
    down_scale: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down_bias: torch.Tensor | None

    def __init__(
        self,
        num_experts: int,
        hidden_dim: int,
        intermediate_dim: int,
        act_fn: nn.Module,
        *,
        weight_only: bool,
        has_bias: bool,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.act_fn = act_fn
        self.weight_only = weight_only
        e, h, i = num_experts, hidden_dim, intermediate_dim
        self.register_buffer("gate_up_qweight", torch.zeros(e, 2 * i, h, dtype=torch.int8))
        self.register_buffer("gate_up_scale", torch.ones(e, 2 * i))
        self.register_buffer("down_qweight", torch.zeros(e, h, i, dtype=torch.int8))
        self.register_buffer("down_scale", torch.ones(e, h))
        self.register_buffer("gate_up_bias", torch.zeros(e, 2 * i) if has_bias else None)
        self.register_buffer("down_bias", torch.zeros(e, h) if has_bias else None)

    @classmethod
    def empty_like(cls, experts: nn.Module, *, weight_only: bool) -> Int8Experts:
        """The shape of `experts` quantized, zero-filled: to load a saved state into."""
        reason = unsupported_reason(experts)
        if reason is not None:
            raise ValueError(f"{type(experts).__name__}: {reason}")
        transposed = bool(getattr(experts, "is_transposed", False))
        gate_up = _canonical(experts.gate_up_proj, transposed)  # type: ignore[arg-type]
        num_experts, two_i, hidden = gate_up.shape
        act_fn = experts.get_submodule("act_fn")
        return cls(
            num_experts,
            hidden,
            two_i // 2,
            act_fn,
            weight_only=weight_only,
            has_bias=bool(getattr(experts, "has_bias", False)),
        )

    @classmethod
    @torch.no_grad()
    def from_float(cls, experts: nn.Module, *, weight_only: bool = False) -> Int8Experts:
        """`experts` quantized (ValueError naming why when its layout is not supported)."""
        new = cls.empty_like(experts, weight_only=weight_only)
        transposed = bool(getattr(experts, "is_transposed", False))
        device = next(experts.parameters()).device
        for prefix in ("gate_up", "down"):
            weight = _canonical(getattr(experts, f"{prefix}_proj"), transposed)
            q, scale = quantize_rows(weight)
            setattr(new, f"{prefix}_qweight", q.contiguous())
            setattr(new, f"{prefix}_scale", scale.squeeze(-1).contiguous())
            if getattr(new, f"{prefix}_bias") is not None:
                bias = getattr(experts, f"{prefix}_proj_bias").detach().float()
                setattr(new, f"{prefix}_bias", bias)
        return new.to(device)

    def _linear(
        self,
        x: torch.Tensor,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """x (T, in) float, qweight (out, in) int8, scale (out,) -> (T, out) in x's dtype."""
        if self.weight_only:
            y = nn.functional.linear(x, qweight.to(x.dtype)) * scale.to(x.dtype)
        else:
            xq, xscale = quantize_rows(x)
            y = (int8_matmul(xq, qweight.t()).float() * xscale * scale).to(x.dtype)
        if bias is not None:
            y = y + bias.to(x.dtype)
        return y

    def forward(
        self,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> torch.Tensor:
        if top_k_index.numel() >= self.num_experts and self._grouped_ok(hidden_states):
            try:
                return self.grouped_forward(hidden_states, top_k_index, top_k_weights)
            except (RuntimeError, NotImplementedError):  # no kernel for this device/dtype
                self._grouped_refused = True
        return self.loop_forward(hidden_states, top_k_index, top_k_weights)

    def _grouped_ok(self, x: torch.Tensor) -> bool:
        if getattr(self, "_grouped_refused", False) or not hasattr(F, "grouped_mm"):
            return False
        # Dynamic activations are exact through fp32 only below EXACT_FP32_TERMS.
        return self.weight_only or max(self.hidden_dim, self.intermediate_dim) <= EXACT_FP32_TERMS

    def _grouped_linear(
        self,
        x: torch.Tensor,
        qweight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        experts: torch.Tensor,
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        """x (S, in) sorted by expert, qweight (E, out, in) -> (S, out) in x's dtype;
        the products of `_linear`, each row through its expert `experts[row]`."""
        if self.weight_only:
            y = F.grouped_mm(x, qweight.to(x.dtype).transpose(-2, -1), offs=offsets)
            y = y * scale.to(x.dtype)[experts]
        else:
            xq, xscale = quantize_rows(x)
            products = F.grouped_mm(xq.float(), qweight.float().transpose(-2, -1), offs=offsets)
            y = (products.round() * xscale * scale[experts]).to(x.dtype)
        if bias is not None:
            y = y + bias.to(x.dtype)[experts]
        return y

    def grouped_forward(
        self,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> torch.Tensor:
        """Every expert in one grouped matmul per projection (see the module docstring)."""
        top_k = top_k_index.shape[-1]
        experts, order = torch.sort(top_k_index.reshape(-1), stable=True)
        token = order // top_k
        counts = torch.bincount(experts, minlength=self.num_experts + 1)[: self.num_experts]
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        # Pairs routed to the sentinel E sort last, past offsets[-1]: grouped_mm leaves
        # their rows unset and the mask below drops them.
        clamped = experts.clamp(max=self.num_experts - 1)
        gate_up = self._grouped_linear(
            hidden_states[token],
            self.gate_up_qweight,
            self.gate_up_scale,
            self.gate_up_bias,
            clamped,
            offsets,
        )
        gate, up = gate_up.chunk(2, dim=-1)
        out = self._grouped_linear(
            self.act_fn(gate) * up,
            self.down_qweight,
            self.down_scale,
            self.down_bias,
            clamped,
            offsets,
        )
        weights = top_k_weights.reshape(-1)[order, None]
        out = torch.where((experts < self.num_experts)[:, None], out * weights, 0.0)
        final = torch.zeros_like(hidden_states)
        return final.index_add_(0, token, out.to(final.dtype))

    def loop_forward(
        self,
        hidden_states: torch.Tensor,
        top_k_index: torch.Tensor,
        top_k_weights: torch.Tensor,
    ) -> torch.Tensor:
        """The experts the step hits, one after the other (transformers' eager loop)."""
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1)
            mask = mask.permute(2, 1, 0)  # (expert, top-k slot, token)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero().flatten().tolist()
        gate_up_bias, down_bias = self.gate_up_bias, self.down_bias
        for e in hit:
            if e == self.num_experts:  # expert parallelism's "not on this rank"
                continue
            slot, token = torch.where(mask[e])
            gate_up = self._linear(
                hidden_states[token],
                self.gate_up_qweight[e],
                self.gate_up_scale[e],
                None if gate_up_bias is None else gate_up_bias[e],
            )
            gate, up = gate_up.chunk(2, dim=-1)
            out = self._linear(
                self.act_fn(gate) * up,
                self.down_qweight[e],
                self.down_scale[e],
                None if down_bias is None else down_bias[e],
            )
            out = out * top_k_weights[token, slot, None]
            final.index_add_(0, token, out.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        mode = "weight-only" if self.weight_only else "dynamic int8 activations"
        return (
            f"experts={self.num_experts}, hidden={self.hidden_dim}, "
            f"intermediate={self.intermediate_dim}, {mode}"
        )


def has_fused_weights(module: nn.Module) -> bool:
    """Whether `module` itself holds a 3-D floating-point parameter (fused experts)."""
    return any(p.ndim == 3 and p.is_floating_point() for p in module.parameters(recurse=False))


def replace_experts(model: nn.Module, names: list[str], *, weight_only: bool) -> None:
    """Quantize the experts modules `names` of `model` in place."""
    for name in names:
        new = Int8Experts.from_float(model.get_submodule(name), weight_only=weight_only)
        model.set_submodule(name, new)


def empty_experts(model: nn.Module, names: list[str], *, weight_only: bool) -> None:
    """Put zero-filled Int8Experts at `names`, to load a saved quantized state into."""
    for name in names:
        new = Int8Experts.empty_like(model.get_submodule(name), weight_only=weight_only)
        model.set_submodule(name, new)
