"""The measures the int8 export takes of a model before and after: latency of greedy
generation and, on held-out conversations, BLEU-4 and ROUGE-L of the replies."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Prompts for the latency measurement when no held-out data is given.
DEFAULT_PROMPTS = (
    ("You reverse the words.", "apple river stone"),
    ("You answer briefly.", "what is the capital of France"),
    ("You are a helpful assistant.", "write one line about the sea"),
    ("You reverse the words.", "one two three four five"),
)


def render(system: str, prompt: str) -> str:
    from agent.ml.data import Turn, prompt_segment

    return prompt_segment(Turn(system, prompt, ""))


@dataclass
class Latency:
    mean_s: float
    tokens_per_s: float
    first_ids: list[int]


def greedy_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, tokens: int
) -> list[int]:
    """Exactly `tokens` greedy tokens after `prompt` (end of text does not stop it)."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return [int(i) for i in out[0, ids.shape[1] :]]


def measure_latency(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], tokens: int
) -> Latency:
    greedy_ids(model, tokenizer, prompts[0], tokens)  # warm-up, not counted
    times = []
    first: list[int] = []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        ids = greedy_ids(model, tokenizer, prompt, tokens)
        times.append(time.perf_counter() - start)
        if i == 0:
            first = ids
    mean = sum(times) / len(times)
    return Latency(mean_s=mean, tokens_per_s=tokens / mean if mean else 0.0, first_ids=first)


def bleu_rouge(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """(corpus BLEU-4, mean ROUGE-L F1), both 0..1: sacrebleu's corpus BLEU with its
    default 13a tokenization, rouge-score without stemming; the definitions of
    agent.tasks.eval_metrics, computed here so the two tasks stay independent."""
    import sacrebleu
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    bleu = float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score) / 100.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [
        float(scorer.score(ref, hyp)["rougeL"].fmeasure)
        for hyp, ref in zip(hypotheses, references, strict=True)
    ]
    return bleu, sum(scores) / len(scores)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    max_new_tokens: int,
    start: float,
    span: float,
    label: str,
    progress: Callable[[float, str], None],
) -> dict[str, float]:
    """BLEU-4 and ROUGE-L of greedy replies to `pairs`, reporting progress from `start` over
    `span` of the whole task."""
    from agent.ml.models import generate_reply

    replies = []
    step = max(1, len(pairs) // 10)
    for i, (prompt, _) in enumerate(pairs):
        replies.append(generate_reply(model, tokenizer, prompt, max_new_tokens))
        if (i + 1) % step == 0:
            progress(start + span * (i + 1) / len(pairs), f"eval {label}: {i + 1}/{len(pairs)}")
    bleu, rouge = bleu_rouge(replies, [ref for _, ref in pairs])
    return {"bleu4": bleu, "rouge_l": rouge}
