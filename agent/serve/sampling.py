"""Choosing each row's next token from the decode step's logits: greedy (argmax, as
`generate` picks with do_sample=False) or sampling at a temperature, after a top-k and a
nucleus (top_p) cut, in that order (as `generate`'s warpers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    generator: torch.Generator | None = None
    top_k: int = 0  # 0: no cut


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
    if 0 < s.top_k < logits.shape[-1]:  # the k most likely, then top_p among them
        kth = torch.topk(logits, s.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if 0 < s.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs[before >= s.top_p] = 0  # keep the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=s.generator).item())
