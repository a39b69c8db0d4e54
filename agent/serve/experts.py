"""The experts implementation the server runs: transformers' grouped (else batched)
matmuls over every routed token at once, instead of its eager Python loop over the
experts a step hits.

At batch 32 on the demo model (32 experts, 2 active) the eager loop runs about 60
expert iterations of ~10 small ops per layer per step; `grouped_mm` sorts the tokens
by expert and runs one grouped matmul per projection. transformers selects it per
model (`set_experts_implementation`); a candidate is kept only if a probe forward
agrees with the eager loop, since kernels differ by device and dtype (`grouped_mm`
wants bf16 on some GPUs). Int8 experts (agent/ml/int8_experts.py) choose their own path.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("gantry.serve")

CANDIDATES = ("grouped_mm", "batched_mm")
PROBE_TOKENS = 8


def _has_interface_experts(model: Any) -> bool:
    # Modules wrapped by transformers' @use_experts_implementation carry `is_transposed`.
    return any(hasattr(m, "is_transposed") and hasattr(m, "gate_up_proj") for m in model.modules())


@torch.inference_mode()
def _probe(model: Any) -> torch.Tensor:
    vocab = int(model.get_input_embeddings().num_embeddings)
    ids = (torch.arange(PROBE_TOKENS, device=next(model.parameters()).device) * 7 + 3) % vocab
    logits: torch.Tensor = model(input_ids=ids[None], use_cache=False).logits.float()
    return logits


def select_experts(model: Any) -> str:
    """Sets the first of CANDIDATES that the model takes and that matches its eager
    experts on a probe; the name set ("eager" when none, or no fused experts)."""
    setter = getattr(model, "set_experts_implementation", None)
    if setter is None or not _has_interface_experts(model):
        return "eager"
    try:
        setter("eager")
        reference = _probe(model)
    except Exception:  # a model that cannot switch keeps what it has
        log.debug("experts implementation not switchable", exc_info=True)
        return "eager"
    for name in CANDIDATES:
        try:
            setter(name)
            if torch.allclose(_probe(model), reference, rtol=1e-3, atol=1e-4):
                return name
            log.info("experts %s disagree with eager on this model: not used", name)
        except Exception as exc:
            log.info("experts %s unavailable here: %s", name, exc)
    setter("eager")
    return "eager"
