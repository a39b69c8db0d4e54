"""Prompt prefixes kept for reuse: the keys and values of token blocks the model already
ran, so that a prompt starting with them runs only the rest.

Chat traffic repeats itself: every request of an application carries its system prompt,
and each turn of a conversation is the last prompt plus its reply plus a new message.
vLLM caches prefixes the same way (automatic prefix caching, on by default in its V1
engine), as SGLang does (RadixAttention). A prompt's last token is always run, since its
logits give the first generated token, so at most all but one of its tokens come from
here.

The cache holds blocks of BLOCK_TOKENS tokens, each keyed by its parent block and its
own tokens: a block matches only after the same tokens, and the key is exact (no hash
that two prompts could share). Each block owns its keys and values as one tensor
[layers, 2, kv heads, BLOCK_TOKENS, head dim]. The least recently used blocks go when
the cache is over its bytes; a chain is touched leaf first, so a block is never older
than a block under it and eviction takes leaves first.

Pure apart from the tensors it holds (no model, no threads): the decoder
(agent/serve/decode.py) matches prompts before a step and stores what a step ran.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# vLLM's blocks are 16 tokens, the size of its paged KV cache's pages. Here blocks are
# copied into a sequence's row, so a block size is only a bookkeeping step: 8 keeps
# 82 % of the demo's prompt tokens on a repeat (16: 51 %) at one dictionary look-up
# per 8 tokens.
BLOCK_TOKENS = 8

Key = tuple[int, tuple[int, ...]]  # (parent block's id, 0 at the start; the block's tokens)
# (start, end) -> keys and values of those positions: [layers, 2, kv heads, end - start, dim]
KV = Callable[[int, int], torch.Tensor]


def stacked_kv(
    keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], row: int, start: int, end: int
) -> torch.Tensor:
    """Row `row` of per-layer [rows, kv heads, length, dim] keys and values, positions
    [start, end), in the layout a block keeps."""
    pairs = zip(keys, values, strict=True)
    return torch.stack(
        [torch.stack((k[row, :, start:end], v[row, :, start:end])) for k, v in pairs]
    )


@dataclass
class _Block:
    id: int
    kv: torch.Tensor


@dataclass(frozen=True)
class Match:
    tokens: int  # how many of the prompt's first tokens were found
    kv: torch.Tensor | None  # [layers, 2, kv heads, tokens, dim]; None when none


NO_MATCH = Match(0, None)


class PrefixCache:
    def __init__(self, capacity_bytes: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.capacity_bytes = max(0, capacity_bytes)
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[Key, _Block] = OrderedDict()  # least recently used first
        self._ids = itertools.count(1)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def _chain(self, tokens: Sequence[int], blocks: int) -> list[tuple[Key, _Block]]:
        """The blocks here that start `tokens`, at most `blocks` of them."""
        size, parent = self.block_tokens, 0
        found: list[tuple[Key, _Block]] = []
        for i in range(blocks):
            key = (parent, tuple(tokens[i * size : (i + 1) * size]))
            block = self._blocks.get(key)
            if block is None:
                break
            found.append((key, block))
            parent = block.id
        return found

    def _touch(self, chain: list[tuple[Key, _Block]]) -> None:
        for key, _ in reversed(chain):  # leaf first: the start of the chain ends newest
            self._blocks.move_to_end(key)

    def _prompt_chain(self, prompt: Sequence[int]) -> list[tuple[Key, _Block]]:
        """The blocks here that start `prompt`, leaving its last token to run."""
        if not self._blocks:
            return []
        return self._chain(prompt, (len(prompt) - 1) // self.block_tokens)

    def peek(self, prompt: Sequence[int]) -> int:
        """How many tokens `match` would find now (nothing touched)."""
        return len(self._prompt_chain(prompt)) * self.block_tokens

    def match(self, prompt: Sequence[int]) -> Match:
        """The longest run of blocks here that starts `prompt`, leaving its last token."""
        chain = self._prompt_chain(prompt)
        if not chain:
            return NO_MATCH
        self._touch(chain)
        kvs = [block.kv for _, block in chain]
        kv = kvs[0] if len(kvs) == 1 else torch.cat(kvs, dim=3)
        return Match(len(chain) * self.block_tokens, kv)

    def insert(self, tokens: Sequence[int], kv_of: KV) -> None:
        """Keeps the full blocks of `tokens` not here yet; `kv_of(start, end)` gives the
        keys and values of positions [start, end) (read once, for the new blocks)."""
        size = self.block_tokens
        blocks = len(tokens) // size
        if not blocks or self.capacity_bytes == 0:
            return
        chain = self._chain(tokens, blocks)
        first_new = len(chain)
        if first_new < blocks:
            kv = kv_of(first_new * size, blocks * size)
            parent = chain[-1][1].id if chain else 0
            for i in range(first_new, blocks):
                part = kv[:, :, :, (i - first_new) * size : (i - first_new + 1) * size]
                block = _Block(next(self._ids), part.contiguous())  # its own storage
                key = (parent, tuple(tokens[i * size : (i + 1) * size]))
                self._blocks[key] = block
                self.bytes += block.kv.nbytes
                chain.append((key, block))
                parent = block.id
        self._touch(chain)
        self._evict()

    def _evict(self) -> None:
        while self.bytes > self.capacity_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.kv.nbytes
