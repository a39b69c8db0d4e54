"""Prompts joining the decode step as a ragged batch: one forward runs the running rows'
next tokens and the joining prompts whole, all flattened into one sequence of tokens.

The model sees input ids [1, tokens]: the batch's n rows first (one token each, at its
row's own position), then each joining prompt's tokens (positions from 0). Everything
but attention works token by token, so only attention needs to know the layout: a
`RaggedStep` passed down as a keyword argument (transformers hands a forward's extra
keyword arguments to the attention function) and an attention function registered with
transformers' `AttentionInterface`, which runs the decode rows as one SDPA call over
their cache rows (each row masked to its own length) and each prompt as a causal SDPA
call over its own new row. `RaggedCache` is the cache the model calls `update` on in
such a step: it writes the decode tokens at their rows' positions and each prompt into
the row it takes in the batch, so the prompt needs no copy afterwards. A prompt whose
first tokens were found in the prefix cache (agent/serve/prefix_cache.py) has them in its
row already and runs only the rest, each token seeing the cached ones and those before it.

vLLM and SGLang run mixed prefill and decode batches the same way (flattened tokens,
variable-length attention). Against what it replaces, on the demo model and one CPU
core (batch of 28 running): a 13-token prompt added 0.27 ms to the step, where a row
per prompt token (each row a copy of its prompt so far) added 0.83 ms and a prefill
forward of its own 1.15 ms; a 30-token one 0.42 ms, against 1.16 ms and 1.33 ms.

transformers has no ragged attention on CPU (its continuous batching needs its own
paged cache and kernels: see decode.py), so this is written here. It holds only where
the model's attention layers call the attention interface and nothing else: the
decoder checks a model against its own separate prefills before using it
(BatchDecoder.joining_budget).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from transformers import AttentionInterface

from agent.serve.slot_cache import SlotCache

NAME = "gantry_ragged"
KWARG = "gantry_ragged"
# Attention features this function does not implement: a model passing any of them
# (not None) is refused, and then joins by prefill instead.
UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "sinks")


class RaggedUnsupported(RuntimeError):
    pass


@dataclass
class RaggedStep:
    """The layout of one ragged forward."""

    rows: int  # the running rows, tokens [0, rows) of the sequence, cache rows [0, rows)
    mask: torch.Tensor  # [rows, 1, 1, length]: what each running row's token may see
    length: int  # positions attention reads
    # Per joining prompt: (its cache row, its first token in the sequence, the tokens it
    # runs, the tokens before them already in its row from the prefix cache).
    prompts: list[tuple[int, int, int, int]] = field(default_factory=list)
    calls: int = 0  # attention layers that ran ragged (0 after a forward: not taken)

    @cached_property
    def prompt_masks(self) -> list[torch.Tensor | None]:
        """Per prompt, what its tokens see of its row (made once a step, for every layer):
        None for a causal prompt from position 0 (SDPA's is_causal); after cached tokens,
        token i sees positions up to cached + i, aligned bottom right, where is_causal on a
        non-square mask aligns top left."""
        return [
            None
            if cached == 0
            else torch.ones(
                tokens, cached + tokens, dtype=torch.bool, device=self.mask.device
            ).tril(cached)
            for _, _, tokens, cached in self.prompts
        ]


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, tokens, dim]; key and value as `RaggedCache.update` returns them
    ([rows, kv heads, length, dim]). Returns [1, tokens, heads, dim], as transformers'
    attention functions do."""
    step = kwargs.get(KWARG)
    if not isinstance(step, RaggedStep):
        raise RaggedUnsupported("ragged attention called outside a ragged step")
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise RaggedUnsupported(f"ragged attention does not implement {name}")
    step.calls += 1
    heads = query.shape[1]
    gqa = key.shape[1] != heads
    out = query.new_empty(1, query.shape[2], heads, query.shape[3])
    n = step.rows
    if n:
        decode = query[0, :, :n].transpose(0, 1).unsqueeze(2)  # [n, heads, 1, dim]
        out[0, :n] = torch.nn.functional.scaled_dot_product_attention(
            decode, key[:n], value[:n], attn_mask=step.mask, scale=scaling, enable_gqa=gqa
        )[:, :, 0]
    for (row, start, tokens, cached), causal in zip(step.prompts, step.prompt_masks, strict=True):
        end, seen = start + tokens, cached + tokens
        prompt = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end],
            key[row : row + 1, :, :seen],
            value[row : row + 1, :, :seen],
            attn_mask=causal,
            is_causal=causal is None,
            scale=scaling,
            enable_gqa=gqa,
        )
        out[0, start:end] = prompt[0].transpose(0, 1)
    return out, None


AttentionInterface.register(NAME, ragged_attention)


class RaggedCache:
    """The cache a ragged forward sees: the decoder's SlotCache buffers (per layer
    [rows, heads, length, dim]) written in the step's layout."""

    def __init__(self, slots: SlotCache, step: RaggedStep) -> None:
        self._slots, self._step = slots, step

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self._step
        n = step.rows
        slots = self._slots
        keys, values = slots.keys[layer_idx], slots.values[layer_idx]
        rows, positions = slots.row_index(n), slots.lengths[:n]
        # [1, heads, tokens, dim]: token i of the running rows is row i's next token
        keys[rows, :, positions] = key_states[0, :, :n].transpose(0, 1)
        values[rows, :, positions] = value_states[0, :, :n].transpose(0, 1)
        for row, start, tokens, cached in step.prompts:
            keys[row, :, cached : cached + tokens] = key_states[0, :, start : start + tokens]
            values[row, :, cached : cached + tokens] = value_states[0, :, start : start + tokens]
        used = n + len(step.prompts)
        return keys[:used, :, : step.length], values[:used, :, : step.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._step.length

    def __len__(self) -> int:
        return len(self._slots.keys)


def configs(model: Any) -> list[Any]:
    """The model's config and its sub-configs, parents first: what `attention_set` sets."""
    found: list[Any] = []
    pending = [model.config]
    while pending:
        config = pending.pop(0)
        if any(config is seen for seen in found):
            continue
        found.append(config)
        for name in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, name, None)
            if sub is not None and hasattr(sub, "_attn_implementation"):
                pending.append(sub)
    return found


@contextmanager
def attention_set(model_configs: list[Any]) -> Iterator[None]:
    """Within it, the model's attention layers use the ragged function; after it each
    config (`configs`) has its own implementation back."""
    saved = [(config, config._attn_implementation) for config in model_configs]
    model_configs[0]._attn_implementation = NAME  # sets the sub-configs too
    try:
        yield
    finally:
        for config, implementation in saved:  # parents first, so children last
            config._attn_implementation = implementation
