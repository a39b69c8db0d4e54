"""Timed greedy generation for `agent.tasks.eval`: one reply at batch 1 with its time to
first token, and the batched throughput of many prompts at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """One greedy reply: its text, tokens generated, time to first token and in all."""

    text: str
    tokens: int
    ttft_s: float
    total_s: float


class _FirstTokenClock:
    """A generate() streamer: the time the first generated token reached the host.

    generate() hands the prompt to put() first, then each step's tokens after copying
    them to the host, so the copy has waited for the device when put() sees them."""

    def __init__(self) -> None:
        self.first: float | None = None
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
        elif self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def generate_timed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_input: str,
    max_new_tokens: int,
    device: torch.device,
) -> Generation:
    """Greedy reply at batch 1, as agent.ml.models.generate_reply, with its timings."""
    import torch

    clock = _FirstTokenClock()
    start = time.perf_counter()
    with torch.no_grad():
        ids = tokenizer(model_input, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(device)
        out = model.generate(  # type: ignore[operator]
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            streamer=clock,
        )
    new = out[0, ids.shape[1] :].cpu()
    end = time.perf_counter()
    text = str(tokenizer.decode(new, skip_special_tokens=True)).strip()
    first = clock.first if clock.first is not None else end
    return Generation(text, int(new.numel()), first - start, end - start)


def batched_tokens_per_s(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    inputs: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
) -> float:
    """Generated tokens (up to and including each row's end-of-text) per second of
    generation, `batch_size` left-padded prompts at a time."""
    import torch

    eos = tokenizer.eos_token_id
    tokens = 0
    elapsed = 0.0
    n_batches = -(-len(inputs) // batch_size)
    for b in range(n_batches):
        chunk = list(inputs[b * batch_size : (b + 1) * batch_size])
        start = time.perf_counter()
        with torch.no_grad():
            enc = tokenizer(
                chunk,
                add_special_tokens=False,
                return_tensors="pt",
                padding=True,
                padding_side="left",
            ).to(device)
            out = model.generate(  # type: ignore[operator]
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :].cpu()
        elapsed += time.perf_counter() - start
        for row in new.tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
        if on_batch is not None:
            on_batch(b + 1, n_batches)
    return tokens / elapsed if elapsed > 0 else 0.0
