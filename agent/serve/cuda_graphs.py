"""CUDA graphs of the decode step, one per batch-size bucket, and the GPU's max batch.

A decode step of a small model launches a few hundred kernels of microseconds each;
from Python that is the whole step's time. A graph replays them in one launch. Graphs
need fixed shapes and addresses, so at capture the slot cache is reserved at its full
size (rows: the largest bucket; length: the model's context), a step of n sequences
runs the smallest bucket >= n (rows past n are free rows, whose lengths are kept at
0), and attention reads the whole length under the per-row mask. Everything the step
reads is in buffers updated in place: the token ids (copied in before the replay) and
the cache's per-row lengths. A model that cannot be captured (a host sync in its
forward) runs eagerly, as on CPU; a cache that must grow past the reservation drops
the graphs.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("gantry.serve")

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_BATCH_RANGE = (64, 256)  # sized from free memory when the operator gives none
MEMORY_SHARE = 0.5  # of the free GPU memory, for the KV cache
DEFAULT_CONTEXT = 2048


def buckets_for(rows: int) -> list[int]:
    """The batch sizes to capture for at most `rows` sequences, largest first."""
    return sorted({b for b in BUCKETS if b < rows} | {rows}, reverse=True)


def bucket_for(n: int, buckets: list[int]) -> int | None:
    fitting = [b for b in buckets if b >= n]
    return min(fitting) if fitting else None


def max_batch_for_memory(free_bytes: int, bytes_per_sequence: int) -> int:
    """How many sequences of full context fit in MEMORY_SHARE of free memory, within
    MAX_BATCH_RANGE (below 64 the GPU idles; above 256 a step's latency grows)."""
    low, high = MAX_BATCH_RANGE
    fit = int(free_bytes * MEMORY_SHARE) // max(1, bytes_per_sequence)
    return max(low, min(high, fit))


def context_length(model: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    value = getattr(config or model.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and 0 < value <= 1 << 20 else DEFAULT_CONTEXT


def kv_bytes_per_token(model: Any) -> int:
    """The KV cache's bytes per token over all layers, from a one-token prefill."""
    import inspect

    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{arg: cache})
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t[0, :, 0].numel() * t.element_size()
    return total


class DecodeGraphs:
    """The decode step of a BatchDecoder, captured per bucket on first use."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._ids: torch.Tensor | None = None
        self._buckets: list[int] = []
        self.disabled = False

    def invalidate(self) -> None:
        self._graphs.clear()
        self._buckets = []

    def capture(self) -> None:
        """Reserves the cache at full size and captures every bucket (largest first,
        sharing one memory pool). On failure the decoder stays eager."""
        decoder = self._decoder
        cache = decoder.cache
        if self.disabled or not cache.allocated:
            return
        cache.reserve(cache.rows, context_length(decoder.model))
        rows = cache.rows
        self._ids = torch.zeros((rows, 1), dtype=torch.long, device=decoder.device)
        pool = torch.cuda.graph_pool_handle()
        try:
            for bucket in buckets_for(rows):
                self._graphs[bucket] = self._capture(bucket, pool)
        except Exception as exc:  # e.g. a host sync inside the model's forward
            log.warning("CUDA graphs not used (the decode step runs eagerly): %s", exc)
            self.invalidate()
            self.disabled = True
            return
        finally:
            cache.lengths.zero_()
        self._buckets = sorted(self._graphs)
        log.info("CUDA graphs captured for decode batches %s", self._buckets)

    def _forward(self, bucket: int) -> torch.Tensor:
        decoder, cache = self._decoder, self._decoder.cache
        assert self._ids is not None
        cache.step_rows, cache.step_length = bucket, cache.length
        try:
            logits: torch.Tensor = decoder._forward(
                cache,
                input_ids=self._ids[:bucket],
                attention_mask=cache.decode_mask(bucket, cache.length),
                position_ids=cache.lengths[:bucket, None],
            )
        finally:
            cache.step_rows = 0
        return logits

    def _capture(self, bucket: int, pool: Any) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):  # warm-up runs outside the graph, as capture requires
                self._forward(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
            logits = self._forward(bucket)
        return graph, logits

    def run(self, ids: torch.Tensor, n: int) -> torch.Tensor | None:
        """The step's logits for rows [0, n) by replay; None when no graph fits."""
        bucket = bucket_for(n, self._buckets)
        if bucket is None or self._ids is None:
            return None
        graph, logits = self._graphs[bucket]
        self._ids[:n, 0].copy_(ids, non_blocking=True)
        graph.replay()
        return logits[:n].clone()
