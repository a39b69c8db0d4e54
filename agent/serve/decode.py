"""Model stepping for the inference server: prefill the joining requests, decode the batch.

The requests joining at one step are prefilled together in one forward (packed several
to a row, each prompt masked to itself, positions from its own start: the first token
`generate` picks for each), or, if short, inside the running batch's decode step
(`step_joining`); a prompt longer than a chunk is prefilled a chunk per call
(`Prefilling`), so the engine can run decode steps between its chunks. A prefilled
prompt then takes a row of the running batch's `SlotCache` (preallocated, one row per
sequence, each row its own length). A decode step feeds every row its last token in one
forward, with a per-row attention mask and per-row positions computed from the cache's
length tensor in place: no per-sequence tensor work and no copy of the cache per step. A
sequence that leaves frees its row (the last row moves into it). On CUDA the step is
replayed from CUDA graphs captured per batch-size bucket (agent/serve/cuda_graphs.py).

Why not transformers' continuous batching (`init_continuous_batching`)? It runs on
CPU, streams and cancels, but (1) its own scheduler admits as soon as a request
arrives (no queue-delay window) and no public hook says which requests each step
ran, which the server's batch-size histogram needs; (2) on CPU it sizes its paged KV
cache from the host's total memory unless told a block count; (3) it needs the
model's attention to run through its paged kernels, which custom or quantized
models may not; (4) it is young and its configuration has changed across the 5.x
releases this project allows. This loop asks only that the model's attention layers
call `cache.update` and take a 4-D attention mask and position ids, as `generate`'s
static cache path does (see slot_cache.py for why not `StaticCache` itself).
"""

from __future__ import annotations

import inspect
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agent.serve.cuda_graphs import context_length
from agent.serve.packing import pack
from agent.serve.slot_cache import SlotCache

K = TypeVar("K", bound=Hashable)

# A packed prefill's logits are [rows, columns where a prompt ends, vocabulary]: on a
# large vocabulary they can outgrow the prompts, so such a join is packed in halves.
PACKED_LOGITS_LIMIT = 1 << 24
# step_joining borrows a cache row per prompt token; the rows it adds may hold this
# much at the model's full context (the demo model: 2 MB a row). A model whose rows are
# larger joins by prefill, as its prefill's arithmetic outweighs a forward's fixed cost.
JOINING_CACHE_BYTES = 256 << 20
# A prompt token costs more as a row of the decode step than in a prefill of its own
# (per-row attention, more (token, expert) pairs), while a separate prefill costs a
# fixed forward: on the demo model on one CPU core (bench/serving.py) a 13-token prompt
# joins 0.75 ms cheaper in the step, a 46-token one no cheaper. When the prompts joining
# at one step are more than this many tokens in all, they are prefilled together, packed.
JOINING_TOKENS = 32


class UnsupportedModel(RuntimeError):
    pass


@dataclass
class Prefilled:
    """A request's cache after its prompt, not yet in the batch."""

    keys: list[torch.Tensor]  # per layer [1, heads, length, dim]
    values: list[torch.Tensor]
    length: int


def _vocab_size(model: Any) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    return int(getattr(config or model.config, "vocab_size", 0) or 1)


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


class BatchDecoder(Generic[K]):
    """The running batch's KV cache and the model calls on it. One thread uses it.

    `rows`: the batch size to preallocate for (the cache grows past it if needed)."""

    def __init__(self, model: Any, rows: int = 8, *, graphs: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # sdpa takes a boolean mask; eager attention adds the mask to the scores.
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        self._additive_mask = impl == "eager"
        self._vocab = _vocab_size(model)
        self._keys: list[K] = []
        self._longest = 0  # the longest row's length
        self._rows = max(1, rows)
        self._context = context_length(model)
        self._cache = SlotCache(rows, self.device)
        self._graphs: Any = None
        if graphs and self.device.type == "cuda":
            from agent.serve.cuda_graphs import DecodeGraphs

            self._graphs = DecodeGraphs(self)

    @property
    def keys(self) -> list[K]:
        return list(self._keys)

    @property
    def cache(self) -> SlotCache:
        return self._cache

    def __len__(self) -> int:
        return len(self._keys)

    def _logits(self, cache: Any, keep: int | torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The model's logits [rows, positions, vocab] over `cache`: at the positions `keep`
        names (transformers' `logits_to_keep`) where the model takes it, else at all."""
        kwargs[self._cache_arg] = cache
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = keep
        logits: torch.Tensor = self.model(use_cache=True, **kwargs).logits
        return logits

    def _forward(self, cache: Any, **kwargs: Any) -> torch.Tensor:
        """The next-token logits, one row per sequence."""
        return self._logits(cache, 1, **kwargs)[:, -1, :].float()

    def _model_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A boolean 4-D mask as the model's attention takes it (eager: additive)."""
        if not self._additive_mask:
            return mask
        dtype = next(self.model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=self.device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )

    def _prefilled(self, cache: DynamicCache, length: int) -> Prefilled:
        kvs = [_kv(layer) for layer in _layers(cache)]
        return Prefilled(keys=[k for k, _ in kvs], values=[v for _, v in kvs], length=length)

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, Prefilled]:
        """Runs the prompt alone: the logits of its next token ([1, vocab]) and its cache."""
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(cache, input_ids=ids, attention_mask=torch.ones_like(ids))
        return logits, self._prefilled(cache, ids.shape[1])

    def start_prefill(self, prompt_ids: Sequence[int]) -> Prefilling:
        """A prompt to prefill a chunk at a time (`prefill_chunk`)."""
        return Prefilling(tuple(prompt_ids), DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def prefill_chunk(
        self, state: Prefilling, tokens: int
    ) -> tuple[torch.Tensor, Prefilled] | None:
        """Runs the prompt's next `tokens` tokens over the cache of those before them:
        None until the last chunk, then what `prefill` gives for the whole prompt."""
        end = min(len(state.prompt), state.done + max(1, tokens))
        chunk = list(state.prompt[state.done : end])
        ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
        positions = torch.arange(state.done, end, device=self.device)[None]
        mask = torch.ones((1, end), dtype=torch.long, device=self.device)
        logits = self._forward(
            state.cache, input_ids=ids, attention_mask=mask, position_ids=positions
        )
        state.done = end
        if end < len(state.prompt):
            return None
        return logits, self._prefilled(state.cache, end)

    @torch.inference_mode()
    def prefill_many(
        self, prompts: Sequence[Sequence[int]]
    ) -> list[tuple[torch.Tensor, Prefilled]]:
        """Runs several prompts in one forward, packed several to a row (agent/serve/
        packing.py), each attending only to itself with positions from its own start:
        what `prefill` gives each one, at the cost of about one. Requests admitted
        together would otherwise wait for each other's prefills in turn, the last of 32
        for 32."""
        if len(prompts) == 1:
            return [self.prefill(prompts[0])]
        packed = pack(prompts)
        columns = packed.last_columns()
        kept = len(columns) if self._logits_to_keep else packed.ids.shape[1]
        if packed.rows * kept * self._vocab > PACKED_LOGITS_LIMIT:
            half = len(prompts) // 2
            return self.prefill_many(prompts[:half]) + self.prefill_many(prompts[half:])
        cache = DynamicCache(config=self.model.config)
        logits = self._logits(
            cache,
            torch.tensor(columns, device=self.device),
            input_ids=packed.ids.to(self.device),
            attention_mask=self._model_mask(packed.mask.to(self.device)),
            position_ids=packed.positions.to(self.device),
        ).float()
        where = {c: j for j, c in enumerate(columns)} if self._logits_to_keep else None
        kvs = [_kv(layer) for layer in _layers(cache)]
        results = []
        for row, start, end in packed.spans:
            column = where[end - 1] if where is not None else end - 1
            prefilled = Prefilled(
                keys=[k[row : row + 1, :, start:end] for k, _ in kvs],
                values=[v[row : row + 1, :, start:end] for _, v in kvs],
                length=end - start,
            )
            results.append((logits[row, column][None], prefilled))
        return results

    @torch.inference_mode()
    def join(self, key: K, prefilled: Prefilled) -> None:
        """The sequence takes the next free row, at its prompt's length."""
        if key in self._keys:
            raise KeyError(f"{key!r} is already in the batch")
        row = len(self._keys)
        self._reserve(row + 1, prefilled.length + 1)
        self._cache.write_prompt(row, prefilled.keys, prefilled.values)
        self._cache.lengths[row] = prefilled.length
        self._keys.append(key)
        self._longest = max(self._longest, prefilled.length)

    def capture_graphs(self) -> None:
        """On CUDA, captures the decode step per batch-size bucket (elsewhere a no-op)."""
        if self._graphs is not None:
            self._graphs.capture()

    def _reserve(self, rows: int, length: int) -> None:
        if rows > self._cache.rows or length > self._cache.length:
            if self._graphs is not None:
                self._graphs.invalidate()  # their buffers are about to move
            self._cache.reserve(rows, length)

    @torch.inference_mode()
    def drop(self, keys: Sequence[K]) -> None:
        """The sequences leave; the last rows move into the rows they free."""
        gone = set(keys)
        rows = len(self._keys)
        left = [key for key in self._keys if key not in gone]
        if len(left) == rows:
            return
        n = len(left)
        holes = [i for i, key in enumerate(self._keys) if key in gone and i < n]
        movers = [i for i in range(n, rows) if self._keys[i] not in gone]
        self._cache.move_rows(movers, holes)
        for hole, mover in zip(holes, movers, strict=True):
            self._keys[hole] = self._keys[mover]
        del self._keys[n:]
        self._cache.lengths[n:rows] = 0  # free rows: CUDA graphs still write at them
        self._longest = int(self._cache.lengths[:n].max()) if n else 0

    @torch.inference_mode()
    def step(self, tokens: Mapping[K, int]) -> torch.Tensor:
        """One forward for the whole batch, feeding each row `tokens[key]`: the next-token
        logits, one row per sequence in the order of `keys`."""
        n = len(self._keys)
        if not n:
            raise RuntimeError("step on an empty batch")
        length = self._longest + 1
        self._reserve(n, length)
        ids = torch.tensor([tokens[key] for key in self._keys], dtype=torch.long)
        logits = None
        if self._graphs is not None:
            logits = self._graphs.run(ids, n)
        if logits is None:
            logits = self._eager_step(ids.to(self.device)[:, None], n, length)
        self._cache.lengths[:n] += 1
        self._longest = length
        return logits

    def _eager_step(
        self, ids: torch.Tensor, n: int, length: int, prompts: list[tuple[int, int]] | None = None
    ) -> torch.Tensor:
        cache = self._cache
        mask = self._model_mask(cache.decode_mask(n, length))
        cache.step_rows, cache.step_length = n, length
        cache.step_prompts = prompts or []
        try:
            return self._forward(
                cache, input_ids=ids, attention_mask=mask, position_ids=cache.lengths[:n, None]
            )
        finally:
            cache.step_rows = 0
            cache.step_prompts = []

    def can_join_in_step(self, prompt_tokens: int) -> bool:
        """Whether `step_joining` can take prompts of this many tokens in all: up to
        JOINING_TOKENS; not with CUDA graphs (their buffers must not grow); and only while
        the rows the cache holds beyond the batch's own (one per prompt token, kept once
        grown) would stay within JOINING_CACHE_BYTES at the model's full context."""
        cache = self._cache
        if self._graphs is not None or not self._keys or prompt_tokens > JOINING_TOKENS:
            return False
        borrowed = cache.rows_for(len(self._keys) + prompt_tokens) - self._rows
        return borrowed * cache.bytes_per_position() * self._context <= JOINING_CACHE_BYTES

    @torch.inference_mode()
    def step_joining(
        self, tokens: Mapping[K, int], joining: Sequence[tuple[K, Sequence[int]]]
    ) -> torch.Tensor:
        """`step` for the batch and the prefill of `joining`'s prompts in the same forward:
        each prompt token takes a row of its own, as a decoding row would, and sees the
        prompt up to itself (SlotCache.update). The logits: the batch's rows in the order
        of `keys`, then one per joining prompt (its first token); the joining sequences
        are then in the batch, at their prompts' lengths. One forward instead of a decode
        step and a prefill: on a small model on a CPU each costs about the same fixed
        time, whatever its tokens (bench/serving.py, closed loop)."""
        n = len(self._keys)
        if not n or not joining:
            raise RuntimeError("step_joining needs a running batch and prompts")
        if any(key in self._keys for key, _ in joining):
            raise KeyError("a joining key is already in the batch")
        spans: list[tuple[int, int]] = []  # (first row, tokens) per prompt
        rows = n
        for _, prompt in joining:
            spans.append((rows, len(prompt)))
            rows += len(prompt)
        length = max(self._longest + 1, *(len(p) for _, p in joining))
        self._reserve(rows, length)
        cache = self._cache
        positions = [i for _, p in joining for i in range(len(p))]
        cache.lengths[n:rows] = torch.tensor(positions, device=self.device)
        ids = [tokens[key] for key in self._keys] + [t for _, p in joining for t in p]
        logits = self._eager_step(
            torch.tensor(ids, dtype=torch.long, device=self.device)[:, None], rows, length, spans
        )
        cache.lengths[:n] += 1
        lasts = [start + count - 1 for start, count in spans]
        cache.lengths[lasts] += 1  # each prompt's last row: the whole prompt's length
        cache.move_rows(lasts, list(range(n, n + len(spans))))
        cache.lengths[n + len(spans) : rows] = 0
        self._keys += [key for key, _ in joining]
        self._longest = length
        picked = torch.tensor(list(range(n)) + lasts, device=logits.device)
        return logits.index_select(0, picked)


@dataclass
class Prefilling:
    """A long prompt being prefilled a chunk at a time."""

    prompt: tuple[int, ...]
    cache: DynamicCache
    done: int = 0  # tokens prefilled so far


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
