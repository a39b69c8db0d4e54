"""Model stepping for the inference server: prefill the joining requests, decode the batch.

The requests joining at one step are prefilled together in one forward (left-padded,
masked, positions from each prompt's own start: the first token `generate` picks for
each). Each one's KV cache then joins the running batch: one
`DynamicCache` whose tensors hold every running sequence left-padded to the longest,
with an attention mask marking the padding. A decode step feeds every sequence its
last token in one forward and returns one row of logits per sequence; position ids
come from each sequence's own length, so padding never shifts a sequence. Sequences
that leave are dropped from the batch and leading columns that became padding for
every row are trimmed.

Why not transformers' continuous batching (`init_continuous_batching`)? It runs on
CPU, streams and cancels, but (1) its own scheduler admits as soon as a request
arrives (no queue-delay window) and no public hook says which requests each step
ran, which the server's batch-size histogram needs; (2) on CPU it sizes its paged KV
cache from the host's total memory unless told a block count; (3) it needs the
model's attention to run through its paged kernels, which custom or quantized
models may not; (4) it is young and its configuration has changed across the 5.x
releases this project allows. This loop asks only that the model take a
`DynamicCache`, an attention mask and position ids, as `generate` does.
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

K = TypeVar("K", bound=Hashable)


class UnsupportedModel(RuntimeError):
    pass


@dataclass
class Prefilled:
    """A request's cache after its prompt, not yet in the batch."""

    keys: list[torch.Tensor]  # per layer [1, heads, length, dim]
    values: list[torch.Tensor]
    length: int


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
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


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise UnsupportedModel("the model left a cache layer empty")
    return layer.keys, layer.values


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[-2]
    if missing == 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)


class BatchDecoder(Generic[K]):
    """The running batch's KV cache and the model calls on it. One thread uses it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keys: list[K] = []
        self._lengths: list[int] = []  # real tokens in each row's cache
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width]: 1 real, 0 padding

    @property
    def keys(self) -> list[K]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def _forward(self, cache: DynamicCache, **kwargs: Any) -> torch.Tensor:
        kwargs[self._cache_arg] = cache
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(use_cache=True, **kwargs)
        logits: torch.Tensor = out.logits[:, -1, :].float()
        return logits

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, Prefilled]:
        """Runs the prompt alone: the logits of its next token ([1, vocab]) and its cache."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(cache, input_ids=ids, attention_mask=torch.ones_like(ids))
        kvs = [_kv(layer) for layer in _layers(cache)]
        prefilled = Prefilled(
            keys=[k for k, _ in kvs], values=[v for _, v in kvs], length=ids.shape[1]
        )
        return logits, prefilled

    @torch.inference_mode()
    def prefill_many(
        self, prompts: Sequence[Sequence[int]]
    ) -> list[tuple[torch.Tensor, Prefilled]]:
        """Runs several prompts in one forward, left-padded to the longest with the
        padding masked out and positions counted from each prompt's own start: what
        `prefill` gives each one, at the cost of about one. Requests admitted together
        would otherwise wait for each other's prefills in turn, the last of 32 for 32."""
        if len(prompts) == 1:
            return [self.prefill(prompts[0])]
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(cache, input_ids=ids, attention_mask=mask, position_ids=positions)
        kvs = [_kv(layer) for layer in _layers(cache)]
        out = []
        for row, prompt in enumerate(prompts):
            start = width - len(prompt)
            prefilled = Prefilled(
                keys=[k[row : row + 1, :, start:].contiguous() for k, _ in kvs],
                values=[v[row : row + 1, :, start:].contiguous() for _, v in kvs],
                length=len(prompt),
            )
            out.append((logits[row : row + 1], prefilled))
        return out

    @torch.inference_mode()
    def join(self, key: K, prefilled: Prefilled) -> None:
        if key in self._keys:
            raise KeyError(f"{key!r} is already in the batch")
        if self._cache is None or self._mask is None or not self._keys:
            self._cache = DynamicCache()
            for layer_idx, (k, v) in enumerate(zip(prefilled.keys, prefilled.values, strict=True)):
                self._cache.update(k, v, layer_idx)
            self._mask = torch.ones((1, prefilled.length), dtype=torch.long, device=self.device)
        else:
            width = max(self._mask.shape[1], prefilled.length)
            layers = _layers(self._cache)
            for layer, k, v in zip(layers, prefilled.keys, prefilled.values, strict=True):
                keys, values = _kv(layer)
                layer.keys = torch.cat([_left_pad(keys, width), _left_pad(k, width)])
                layer.values = torch.cat([_left_pad(values, width), _left_pad(v, width)])
            row = torch.zeros((1, width), dtype=torch.long, device=self.device)
            row[:, width - prefilled.length :] = 1
            self._mask = torch.cat([_left_pad_mask(self._mask, width), row])
        self._keys.append(key)
        self._lengths.append(prefilled.length)

    @torch.inference_mode()
    def drop(self, keys: Sequence[K]) -> None:
        gone = set(keys)
        keep = [i for i, key in enumerate(self._keys) if key not in gone]
        if len(keep) == len(self._keys):
            return
        self._keys = [self._keys[i] for i in keep]
        self._lengths = [self._lengths[i] for i in keep]
        if not keep or self._cache is None or self._mask is None:
            self._cache = None
            self._mask = None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        start = self._mask.shape[1] - max(self._lengths)  # columns now padding in every row
        mask = self._mask[index, start:]
        for layer in _layers(self._cache):
            k, v = _kv(layer)
            layer.keys = k[index, :, start:]
            layer.values = v[index, :, start:]
        self._mask = mask

    @torch.inference_mode()
    def step(self, tokens: Mapping[K, int]) -> torch.Tensor:
        """One forward for the whole batch, feeding each row `tokens[key]`: the next-token
        logits, one row per sequence in the order of `keys`."""
        if self._cache is None or self._mask is None or not self._keys:
            raise RuntimeError("step on an empty batch")
        ids = torch.tensor(
            [[tokens[key]] for key in self._keys], dtype=torch.long, device=self.device
        )
        positions = torch.tensor(
            [[length] for length in self._lengths], dtype=torch.long, device=self.device
        )
        mask = torch.cat([self._mask, torch.ones_like(ids)], dim=1)
        logits = self._forward(
            self._cache, input_ids=ids, attention_mask=mask, position_ids=positions
        )
        self._mask = mask
        self._lengths = [length + 1 for length in self._lengths]
        return logits


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    generator: torch.Generator | None = None


GREEDY = Sampling()


def choose_tokens(logits: torch.Tensor, sampling: Sequence[Sampling]) -> list[int]:
    """One token per row of `logits`: argmax at temperature 0 (as `generate` picks
    greedily), else nucleus sampling. Greedy rows cost one argmax for the batch."""
    greedy: list[int] = logits.argmax(dim=-1).tolist()
    return [
        greedy[row] if s.temperature <= 0 else _sample(logits[row], s)
        for row, s in enumerate(sampling)
    ]


def _sample(logits: torch.Tensor, s: Sampling) -> int:
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if 0 < s.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= s.top_p] = 0  # keep the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=s.generator).item())
