"""Model stepping for the inference server: prefill the joining requests, decode the batch.

The requests joining at one step are prefilled together in one forward (packed several
to a row, each prompt masked to itself, positions from its own start: the first token
`generate` picks for each), or, beside a running batch, inside its decode step as a
ragged batch (`step_joining`, agent/serve/ragged.py); a prompt longer than a chunk is
prefilled a chunk per call (`Prefilling`, after the start the prefix cache has of it),
so the engine can run decode steps between its chunks. A prefilled prompt then takes a
row of the running batch's `SlotCache` (preallocated, one row per sequence, each row its
own length). A decode step feeds every row its last token in one forward, with a per-row
attention mask and per-row positions computed from the cache's length tensor in place:
no per-sequence tensor work and no copy of the cache per step. A sequence that leaves
frees its row (the last row moves into it). On CUDA the step is replayed from CUDA
graphs captured per batch-size bucket (agent/serve/cuda_graphs.py).

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
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import torch
from transformers import DynamicCache

from agent.serve.packing import pack
from agent.serve.prefilled import (
    Prefilled,
    Prefilling,
    UnsupportedModel,
    kv_of,
    layers_of,
    vocab_size,
)
from agent.serve.prefix_cache import NO_MATCH, Match, PrefixCache
from agent.serve.ragged import KWARG as RAGGED_KWARG
from agent.serve.ragged import RaggedCache, RaggedStep, attention_set, configs
from agent.serve.slot_cache import SlotCache

K = TypeVar("K", bound=Hashable)

log = logging.getLogger("gantry.serve")

# A packed prefill's logits are [rows, columns where a prompt ends, vocabulary]: on a
# large vocabulary they can outgrow the prompts, so such a join is packed in halves.
PACKED_LOGITS_LIMIT = 1 << 24
# The most prompt tokens one decode step takes in (`step_joining`); admitted prompts past
# it are prefilled apart, packed. A joining token costs about what a prefilled one does
# (on the demo model on one CPU core, about 10 us), so this bounds the step's extra time
# as the prefill chunk bounds a chunk's (engine.PREFILL_CHUNK_TOKENS, the same size).
JOINING_TOKENS = 512


class BatchDecoder(Generic[K]):
    """The running batch's KV cache and the model calls on it. One thread uses it.

    `rows`: the batch size to preallocate for (the cache grows past it if needed)."""

    def __init__(
        self,
        model: Any,
        rows: int = 8,
        *,
        graphs: bool = True,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns).
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        # sdpa takes a boolean mask; eager attention adds the mask to the scores.
        impl = getattr(model.config, "_attn_implementation", "sdpa")
        self._additive_mask = impl == "eager"
        self._vocab = vocab_size(model)
        self._keys: list[K] = []
        self._longest = 0  # the longest row's length
        self._rows = max(1, rows)
        self._cache = SlotCache(rows, self.device)
        self._configs = configs(model)
        self._ragged: bool | None = None  # prompts join ragged steps: probed when first asked
        # Prompts joining a step start from the blocks found here (ragged steps only).
        self._prefix = prefix_cache
        self.joined_cached: list[int] = []  # the last step_joining's, per prompt: tokens found
        self._graphs: Any = None
        if graphs and self.device.type == "cuda":
            from agent.serve.cuda_graphs import DecodeGraphs

            self._graphs = DecodeGraphs(self)
            self._prefix = None  # prompts join by prefill beside the graphs: no cache to read

    @property
    def keys(self) -> list[K]:
        return list(self._keys)

    @property
    def cache(self) -> SlotCache:
        return self._cache

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def assume_ragged(self) -> None:
        """Prompts join steps without the probe (the probe's own decoder)."""
        self._ragged = True

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

    def _prefilled(self, cache: DynamicCache, length: int, cached: int = 0) -> Prefilled:
        kvs = [kv_of(layer) for layer in layers_of(cache)]
        keys, values = [k for k, _ in kvs], [v for _, v in kvs]
        return Prefilled(keys=keys, values=values, length=length, cached=cached)

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
        if state.cached is None:  # at the first chunk: what a prompt admitted with it left
            state.start_after(self._match(state.prompt))
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
        return logits, self._prefilled(state.cache, end, state.cached or 0)

    @torch.inference_mode()
    def prefill_many(
        self, prompts: Sequence[Sequence[int]]
    ) -> list[tuple[torch.Tensor, Prefilled]]:
        """Runs several prompts in one forward, packed several to a row (agent/serve/
        packing.py), each attending only to itself with positions from its own start:
        what `prefill` gives each one, at the cost of about one. Requests admitted
        together would otherwise wait for each other's prefills in turn, the last of 32
        for 32. One prompt alone (an idle engine's) starts after the blocks the prefix
        cache has of it."""
        if len(prompts) == 1:
            state = self.start_prefill(prompts[0])
            alone = self.prefill_chunk(state, len(state.prompt))
            assert alone is not None  # one chunk of the whole prompt: its last
            return [alone]
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
        kvs = [kv_of(layer) for layer in layers_of(cache)]
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

    def _eager_step(self, ids: torch.Tensor, n: int, length: int) -> torch.Tensor:
        cache = self._cache
        mask = self._model_mask(cache.decode_mask(n, length))
        cache.step_rows, cache.step_length = n, length
        try:
            return self._forward(
                cache, input_ids=ids, attention_mask=mask, position_ids=cache.lengths[:n, None]
            )
        finally:
            cache.step_rows = 0

    def joining_budget(self) -> int:
        """How many prompt tokens in all `step_joining` can take now: JOINING_TOKENS
        beside a running batch; 0 with no batch, with CUDA graphs (their buffers must not
        grow), or for a model whose attention does not take a ragged step (its probe)."""
        if self._graphs is not None or not self._keys:
            return 0
        if self._ragged is None:
            from agent.serve.ragged_probe import probe

            self._ragged, prefix_agrees = probe(self)
            if not prefix_agrees and self._prefix is not None:
                log.info("prefix cache off (a cached prefix disagrees with prefill on this model)")
                self._prefix = None
        return JOINING_TOKENS if self._ragged else 0

    def tokens_to_run(self, prompt: Sequence[int]) -> int:
        """How many of `prompt`'s tokens a joining step would run: those past the blocks
        the prefix cache has of it."""
        return len(prompt) - (self._prefix.peek(prompt) if self._prefix is not None else 0)

    def _match(self, prompt: Sequence[int]) -> Match:
        return self._prefix.match(prompt) if self._prefix is not None else NO_MATCH

    def keep_prefix(self, key: K, tokens: Sequence[int]) -> None:
        """Keeps the blocks of `key`'s row in the prefix cache: `tokens` are the sequence's
        tokens, of which the row holds the first (a leaving sequence's, before `drop`)."""
        if self._prefix is None or self._ragged is False:  # None: steps joined unprobed
            return
        row = self._keys.index(key)
        length = min(len(tokens), int(self._cache.lengths[row]))

        def kv(start: int, end: int) -> torch.Tensor:
            return self._cache.row_kv(row, start, end)

        self._prefix.insert(tokens[:length], kv)

    def keep_prefilled(self, tokens: Sequence[int], prefilled: Prefilled) -> None:
        """Keeps the blocks of a prompt prefilled apart (as it joins, or ends at once)."""
        if self._prefix is not None and self._ragged is not False:
            self._prefix.insert(tokens[: prefilled.length], prefilled.kv)

    @torch.inference_mode()
    def step_joining(
        self, tokens: Mapping[K, int], joining: Sequence[tuple[K, Sequence[int]]]
    ) -> torch.Tensor:
        """`step` for the batch and the prefill of `joining`'s prompts in the same forward,
        as one ragged sequence (agent/serve/ragged.py): each prompt is written into the
        row it then keeps. The logits: the batch's rows in the order of `keys`, then one
        per joining prompt (its first token); the joining sequences are then in the
        batch, at their prompts' lengths. One forward instead of a decode step and a
        prefill: on a small model each costs mostly a fixed time, whatever it holds."""
        n = len(self._keys)
        if not n or not joining:
            raise RuntimeError("step_joining needs a running batch and prompts")
        if any(key in self._keys for key, _ in joining) or len({k for k, _ in joining}) < len(
            joining
        ):
            raise KeyError("a joining key is already in the batch")
        if not all(prompt for _, prompt in joining):
            raise ValueError("a joining prompt has no tokens")
        length = max(self._longest + 1, *(len(p) for _, p in joining))
        self._reserve(n + len(joining), length)
        cache = self._cache
        found = [self._match(prompt) for _, prompt in joining]
        self.joined_cached = [match.tokens for match in found]
        prompts: list[tuple[int, int, int, int]] = []
        start = n
        for row, ((_, prompt), match) in enumerate(zip(joining, found, strict=True), start=n):
            if match.kv is not None:
                cache.write_prefix(row, match.kv)
            prompts.append((row, start, len(prompt) - match.tokens, match.tokens))
            start += len(prompt) - match.tokens
        step = RaggedStep(n, cache.decode_mask(n, length), length, prompts)
        device = self.device
        ids = [tokens[key] for key in self._keys]
        positions = [cache.lengths[:n]]
        for (_, prompt), match in zip(joining, found, strict=True):
            ids += prompt[match.tokens :]
            positions.append(torch.arange(match.tokens, len(prompt), device=device))
        keep = list(range(n)) + [first + count - 1 for _, first, count, _ in prompts]
        view = RaggedCache(cache, step)
        with attention_set(self._configs):
            logits = self._logits(
                view,
                torch.tensor(keep, device=device),
                input_ids=torch.tensor([ids], dtype=torch.long, device=device),
                attention_mask=step.mask,
                position_ids=torch.cat(positions)[None],
                **{RAGGED_KWARG: step},
            )[0]
        if step.calls == 0:
            raise UnsupportedModel("the model's attention did not take the ragged step")
        if not self._logits_to_keep:
            logits = logits[keep]
        cache.lengths[:n] += 1
        cache.lengths[n : n + len(joining)] = torch.tensor(
            [len(p) for _, p in joining], device=device
        )
        self._keys += [key for key, _ in joining]
        self._longest = length
        for key, prompt in joining:
            self.keep_prefix(key, prompt)
        return logits.float()
