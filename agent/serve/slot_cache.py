"""The decode batch's KV cache: preallocated slots that requests take and free.

One row per running sequence, each row its own length: a sequence's tokens sit at
positions [0, length) of its row, whatever the other rows hold. Rows are kept compact
(the running batch is rows [0, n)): a sequence that leaves has the last row moved into
its place, so that a decode step runs on a prefix of the buffers and never on holes.
The buffers grow (doubling) when a longer sequence or a larger batch needs it, so
memory follows what is served, not the model's whole context (`reserve` sizes them up
front, as CUDA graphs need: their buffers must never move).

Why not transformers' `StaticCache`: its layers share one `cumulative_length` across
the batch, every row writing at the same position, so rows of different lengths would
need left padding again and a request could not take a freed row at its own length.
This cache asks of the model only what `DynamicCache` does: that each attention layer
call `cache.update(key, value, layer_idx)` and attend over what it returns; the
decoder passes the per-row attention mask (4-D, which transformers uses as it is) and
per-row position ids.
"""

from __future__ import annotations

from typing import Any

import torch

from agent.serve.prefix_cache import stacked_kv

MIN_LENGTH = 64


def _grown(size: int, needed: int, floor: int) -> int:
    size = max(size, floor)
    while size < needed:
        size *= 2
    return size


class SlotCache:
    """Per layer, keys and values of shape [rows, heads, length, dim]. One thread uses it."""

    def __init__(self, rows: int, device: torch.device, length: int = MIN_LENGTH) -> None:
        self.rows = max(1, rows)
        self.length = max(1, length)
        self.device = device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.lengths = torch.zeros(self.rows, dtype=torch.long, device=device)  # per row
        # Set by the decoder before each decode forward: the rows the step runs on
        # ([0, step_rows)) and how many positions attention reads.
        self.step_rows = 0
        self.step_length = 0
        self._row_index = torch.arange(self.rows, device=device)
        self._position_index = torch.arange(self.length, device=device)

    @property
    def allocated(self) -> bool:
        return bool(self.keys)

    def reserve(self, rows: int, length: int) -> None:
        """At least `rows` rows of `length` positions (existing contents kept)."""
        rows = _grown(self.rows, rows, 1)
        length = _grown(self.length, length, MIN_LENGTH)
        if rows == self.rows and length == self.length:
            return
        self.keys = [self._resized(t, rows, length) for t in self.keys]
        self.values = [self._resized(t, rows, length) for t in self.values]
        lengths = self.lengths.new_zeros(rows)
        lengths[: self.rows] = self.lengths
        self.lengths = lengths
        self.rows, self.length = rows, length
        self._row_index = torch.arange(rows, device=self.device)
        self._position_index = torch.arange(length, device=self.device)

    @staticmethod
    def _resized(t: torch.Tensor, rows: int, length: int) -> torch.Tensor:
        new = t.new_zeros((rows, t.shape[1], length, t.shape[3]))
        new[: t.shape[0], :, : t.shape[2]] = t
        return new

    def _allocate(self, like_keys: torch.Tensor, like_values: torch.Tensor) -> None:
        for like, out in ((like_keys, self.keys), (like_values, self.values)):
            shape = (self.rows, like.shape[1], self.length, like.shape[-1])
            out.append(torch.zeros(shape, dtype=like.dtype, device=self.device))

    def write_prompt(self, row: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Row `row` takes a prefilled prompt: per layer [1, heads, length, dim]."""
        if not self.allocated:
            for k, v in zip(keys, values, strict=True):
                self._allocate(k, v)
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[layer][row, :, : k.shape[2]] = k[0]
            self.values[layer][row, :, : v.shape[2]] = v[0]

    def write_prefix(self, row: int, kv: torch.Tensor) -> None:
        """Row `row` takes keys and values from the prefix cache at its first positions:
        [layers, 2, heads, tokens, dim] (agent/serve/prefix_cache.py)."""
        tokens = kv.shape[3]
        for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            keys[row, :, :tokens] = kv[layer, 0]
            values[row, :, :tokens] = kv[layer, 1]

    def row_kv(self, row: int, start: int, end: int) -> torch.Tensor:
        """Row `row`'s keys and values at positions [start, end), as write_prefix takes them."""
        return stacked_kv(self.keys, self.values, row, start, end)

    def move_rows(self, sources: list[int], targets: list[int]) -> None:
        """Copies rows `sources` into rows `targets` (a leaving sequence's row is reused)."""
        if not sources:
            return
        src = torch.tensor(sources, device=self.device)
        dst = torch.tensor(targets, device=self.device)
        for t in (*self.keys, *self.values, self.lengths):
            t.index_copy_(0, dst, t.index_select(0, src))

    def row_index(self, rows: int) -> torch.Tensor:
        """[0, rows) as a tensor on the cache's device (kept, not made per step)."""
        return self._row_index[:rows]

    def decode_mask(self, rows: int, length: int) -> torch.Tensor:
        """[rows, 1, 1, length], True where a row's new token may attend: its own
        positions up to and including the one it is written at."""
        visible = self._position_index[:length] <= self.lengths[:rows, None]
        return visible[:, None, None, :]

    # -- the model's side ------------------------------------------------------------

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *_: Any,
        **__: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes each row's new token at its own position; the rows' keys and values
        over the step's length (positions past a row's length are masked out)."""
        n = self.step_rows
        if n == 0:
            raise RuntimeError("SlotCache.update outside a decode step")
        positions = self.lengths[:n]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        rows = self.row_index(n)
        keys[rows, :, positions] = key_states[:, :, 0]
        values[rows, :, positions] = value_states[:, :, 0]
        return keys[:n, :, : self.step_length], values[:n, :, : self.step_length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.step_length

    def __len__(self) -> int:
        return len(self.keys)
