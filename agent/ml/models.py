"""Models for `agent.train`: a local Hugging Face directory or a built-in name.

Built-in names build a small model from a transformers config (no download), sized for
a CPU, with the vocabulary of the given tokenizer:

- `tiny-moe`: Mixtral style MoE: hidden 128, 2 layers, 8 heads, 32 experts with 2
  active per token (1.8 M parameters with the demo's vocabulary). The demo's model:
  of the variants measured it learned the reversal task in the fewest steps (8 heads
  fewer than 4) and its steps are cheap (~0.2 s for 2 x 16 conversations, ZeRO-3).
- `tiny-deepseek`: DeepSeek-V3 style (multi-head latent attention, one dense layer then
  an MoE layer of 32 routed experts, 2 active per token, plus a shared expert, grouped
  routing). Learns the demo task too, in more steps (300-500), at ~1.5x the step time.
- `tiny-dense`: Llama style (hidden 128, 2 layers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DeepseekV3Config,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

MAX_POSITIONS = 1024


def _ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "max_position_embeddings": MAX_POSITIONS,
    }


def tiny_deepseek_config(tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> PretrainedConfig:
    kwargs: dict[str, Any] = dict(
        hidden_size=128,
        intermediate_size=256,  # the dense layer's MLP
        moe_intermediate_size=64,  # each routed expert's (and the shared expert's) MLP
        num_hidden_layers=2,
        first_k_dense_replace=1,  # layer 0 dense, then MoE, as DeepSeek-V3 does
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=32,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.0,
        kv_lora_rank=64,
        q_lora_rank=None,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=32,
        num_mtp_layers=0,
        tie_word_embeddings=False,
        **_ids(tokenizer),
    )
    return DeepseekV3Config(**{**kwargs, **overrides})


def tiny_moe_config(tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> PretrainedConfig:
    kwargs: dict[str, Any] = dict(
        hidden_size=128,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        num_local_experts=32,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
        **_ids(tokenizer),
    )
    return MixtralConfig(**{**kwargs, **overrides})


def tiny_dense_config(tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> PretrainedConfig:
    kwargs: dict[str, Any] = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        **_ids(tokenizer),
    )
    return LlamaConfig(**{**kwargs, **overrides})


BUILTIN: dict[str, Callable[..., PretrainedConfig]] = {
    "tiny-moe": tiny_moe_config,
    "tiny-deepseek": tiny_deepseek_config,
    "tiny-dense": tiny_dense_config,
}


def is_builtin(name: str) -> bool:
    return name in BUILTIN


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def build_model(
    name_or_path: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> PreTrainedModel:
    """A built-in model from its config (seeded init), or the weights in a local HF
    directory, with the embeddings resized to the tokenizer when they differ."""
    if name_or_path in BUILTIN:
        config = BUILTIN[name_or_path](tokenizer)
        torch.manual_seed(seed)
        model: PreTrainedModel = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        return model
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--model_name_or_path {name_or_path}: not a built-in model "
            f"({', '.join(BUILTIN)}) nor a local Hugging Face directory with config.json"
        )
    AutoConfig.from_pretrained(str(path))  # a clear error for a bad config, before weights
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if getattr(model.get_input_embeddings(), "num_embeddings", None) != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(
        getattr(p, "ds_numel", 0) or p.numel()  # ZeRO-3 partitions leave numel() at 0
        for p in model.parameters()
    )


@torch.no_grad()
def generate_reply(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 32,
) -> str:
    """Greedy reply to a rendered prompt (see train_data.eval_prompts)."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(  # type: ignore[operator]
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return str(text).strip()
