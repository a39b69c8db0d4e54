"""A prompt's keys and values before it takes a row of the decode batch (agent/serve/
decode.py): prefilled whole, or a chunk at a time, from transformers' DynamicCache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agent.serve.prefix_cache import Match, stacked_kv


class UnsupportedModel(RuntimeError):
    pass


@dataclass
class Prefilled:
    """A request's cache after its prompt, not yet in the batch."""

    keys: list[torch.Tensor]  # per layer [1, heads, length, dim]
    values: list[torch.Tensor]
    length: int
    cached: int = 0  # of its first tokens, found in the prefix cache

    def kv(self, start: int, end: int) -> torch.Tensor:
        """Positions [start, end) as the prefix cache keeps them."""
        return stacked_kv(self.keys, self.values, 0, start, end)


def vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    return int(getattr(config or model.config, "vocab_size", 0) or 1)


def layers_of(cache: DynamicCache) -> list[DynamicLayer]:
    layers: list[DynamicLayer] = []
    for layer in cache.layers:
        # Sliding-window and other layer kinds keep a different layout; padding them
        # into one batch would be wrong, so refuse rather than decode garbage.
        if type(layer) is not DynamicLayer:
            raise UnsupportedModel(
                f"cache layer {type(layer).__name__} is not supported by the batched decoder "
                "(sliding-window or hybrid attention)"
            )
        layers.append(layer)
    return layers


def kv_of(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise UnsupportedModel("the model left a cache layer empty")
    return layer.keys, layer.values


@dataclass
class Prefilling:
    """A long prompt being prefilled a chunk at a time."""

    prompt: tuple[int, ...]
    cache: DynamicCache
    done: int = 0  # tokens prefilled so far
    cached: int | None = None  # of them, found in the prefix cache (None: not asked yet)

    def start_after(self, match: Match) -> None:
        """The cache starts with the blocks found of the prompt: chunks run the rest."""
        self.cached = match.tokens
        if match.kv is None:
            return
        for layer in range(match.kv.shape[0]):
            self.cache.update(match.kv[layer, 0][None], match.kv[layer, 1][None], layer)
        self.done = match.tokens
