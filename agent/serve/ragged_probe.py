"""Whether a model's prompts may join the decode step (agent/serve/ragged.py) and start from
the prefix cache (agent/serve/prefix_cache.py): both are checked once, on the model, against
its own separate prefills, since they hold only where its attention layers call
transformers' attention interface and nothing else."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from agent.serve.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from agent.serve.decode import BatchDecoder

log = logging.getLogger("gantry.serve")


def probe(decoder: BatchDecoder[Any]) -> tuple[bool, bool]:
    """(ragged steps agree, a prompt joining from cached blocks agrees): a row decoding
    beside a joining prompt, then the step after (both rows' caches) with a third prompt
    joining from the blocks the second one left in a prefix cache."""
    from agent.serve.decode import BatchDecoder

    vocab = decoder.vocab_size
    tokens = [(7 * i + 3) % vocab for i in range(7)]
    trial: BatchDecoder[str] = BatchDecoder(
        decoder.model, rows=3, graphs=False, prefix_cache=PrefixCache(1 << 24, block_tokens=2)
    )
    trial.assume_ragged()
    try:
        trial.join("a", trial.prefill(tokens[:4])[1])
        first = trial.step_joining({"a": tokens[4]}, [("b", tokens[:6])])
        # c's first 4 tokens come from the blocks of b's prompt, kept by the step above
        second = trial.step_joining({"a": tokens[5], "b": tokens[6]}, [("c", tokens[:5])])
        want = [decoder.prefill(tokens[:k])[0][0] for k in (5, 6, 6, 7, 5)]
    except Exception as exc:  # any failure: the model joins by prefill
        log.info("prompts join by prefill (no ragged step on this model: %s)", exc)
        return False, False
    got = [first[0], first[1], second[0], second[1], second[2]]
    agree = [torch.allclose(g, w, rtol=1e-3, atol=1e-4) for g, w in zip(got, want, strict=True)]
    if not all(agree[:4]):
        log.info("prompts join by prefill (a ragged step disagrees with prefill on this model)")
        return False, False
    return True, agree[4]
