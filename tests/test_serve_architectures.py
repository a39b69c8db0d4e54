"""The serving decoder on transformers' common causal-LM architectures, built tiny from
their configs (random weights, nothing fetched): each takes prompts joining the decode
step as a ragged sequence (its probe passes) and every reply equals `generate`'s, with
rows freed and taken again; a sliding-window model is refused in one line."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers

from agent.serve.decode import JOINING_TOKENS, BatchDecoder
from agent.serve.prefilled import UnsupportedModel
from tests.serve_moe import PROMPTS, Moe, assert_decodes_as_generate

VOCAB = 300  # the tests' tokenizer (tests/serve_moe.py)
SMALL: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention
    "max_position_embeddings": 512,
}
# model_type -> what its config needs beyond (or instead of) SMALL
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2": SMALL,
    "phi3": {**SMALL, "pad_token_id": 0},
    "gpt2": {"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "opt": {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "ffn_dim": 128,
        "max_position_embeddings": 512,
        "word_embed_proj_dim": 64,
    },
    "qwen3_moe": {
        **SMALL,
        "head_dim": 16,
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
    },
    "gemma2": {**SMALL, "head_dim": 16},
}


def _model(name: str) -> Any:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(name, **CONFIGS[name])
    model: Any = transformers.AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@pytest.mark.parametrize("name", ["qwen2", "phi3", "gpt2", "opt", "qwen3_moe"])
def test_prompts_join_ragged_and_decode_as_generate(moe: Moe, name: str) -> None:
    case = Moe(_model(name), moe.tokenizer)
    decoder: BatchDecoder[str] = BatchDecoder(case.model, rows=2)
    decoder.join("x", decoder.prefill(case.encode(PROMPTS[0]))[1])
    assert decoder.joining_budget() == JOINING_TOKENS
    prompts = [case.encode(p) for p in PROMPTS * 3]
    assert_decodes_as_generate(case, prompts, 6)


def test_a_sliding_window_model_is_refused_in_one_line(moe: Moe) -> None:
    decoder: BatchDecoder[str] = BatchDecoder(_model("gemma2"), rows=2)
    with pytest.raises(UnsupportedModel, match="sliding-window") as caught:
        decoder.prefill(moe.encode(PROMPTS[0]))
    assert "\n" not in str(caught.value)
