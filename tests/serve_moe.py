"""The tiny MoE model the serving-loop tests decode with (random weights, a tokenizer
trained on four lines), its greedy reference (`generate`), and a decode loop in which
requests join and leave (tests/test_serve_slots.py, tests/test_serve_joining.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agent.serve.decode import BatchDecoder
from agent.serve.prefix_cache import PrefixCache
from agent.serve.sampling import GREEDY, choose_tokens

LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]
PROMPTS = ["apple river", "stone", "the quick brown fox jumps", "river fox apple stone"]


@dataclass
class Moe:
    model: Any
    tokenizer: Any

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        x = torch.tensor([list(ids)])
        with torch.inference_mode():
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False
            )
        return [int(t) for t in out[0, x.shape[1] :]]


def make_moe() -> Moe:
    """tiny-moe, decoding n tokens whatever they are (no end-of-text)."""
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    tok = train_tokenizer(LINES * 10, vocab_size=300)
    model: Any = build_model("tiny-moe", tok, seed=0)
    model.eval()
    model.generation_config.eos_token_id = None
    return Moe(model, tok)


def assert_decodes_as_generate(
    moe: Moe,
    prompts: list[list[int]],
    n: int,
    in_step: bool = True,
    prefix_cache: PrefixCache | None = None,
) -> None:
    """`decode_joining_and_leaving` gives each request `generate`'s greedy tokens (request
    1, which leaves early, its first 5)."""
    want = {i: moe.greedy(p, n) for i, p in enumerate(prompts)}
    got = decode_joining_and_leaving(moe, prompts, n, in_step, prefix_cache)
    assert got[1] == want[1][:5]
    assert all(got[i] == want[i] for i in want if i != 1)


def decode_joining_and_leaving(
    moe: Moe,
    prompts: list[list[int]],
    n: int,
    in_step: bool = False,
    prefix_cache: PrefixCache | None = None,
) -> dict[int, list[int]]:
    """Six requests join per step (prefilled together; `in_step`: in the decode step,
    once a batch runs, from `prefix_cache`'s blocks where it has them); request 1 leaves
    after 5 tokens, so rows are freed and taken again while the others run."""
    decoder: BatchDecoder[int] = BatchDecoder(moe.model, rows=2, prefix_cache=prefix_cache)
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    waiting = list(got)
    while waiting or len(decoder):
        joining, waiting = waiting[:6], waiting[6:]
        keys = decoder.keys
        feed = {i: got[i][-1] for i in keys}
        if in_step and keys and joining:
            logits = decoder.step_joining(feed, [(i, prompts[i]) for i in joining])
            keys += joining
        else:
            prefills = decoder.prefill_many([prompts[i] for i in joining]) if joining else []
            for i, (first, prefilled) in zip(joining, prefills, strict=True):
                got[i] += choose_tokens(first, [GREEDY])
                decoder.join(i, prefilled)
            keys = decoder.keys
            logits = decoder.step({i: got[i][-1] for i in keys})
        for i, token in zip(keys, choose_tokens(logits, [GREEDY] * len(keys)), strict=True):
            got[i].append(token)
        decoder.drop([i for i in decoder.keys if len(got[i]) >= (5 if i == 1 else n)])
    return got
