"""Pure helpers of `agent.tasks.eval`: BLEU-4, ROUGE-L, percentiles and the targets check.

BLEU-4 is sacrebleu's corpus BLEU (default 13a tokenization), scaled to 0..1; ROUGE-L is
rouge-score's F-measure per sample, averaged. rouge-score's tokenizer keeps only
[a-z0-9] runs (lower-cased), so text in other scripts scores 0; no stemmer is used and
nothing (nltk data) is downloaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypedDict


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of the hypotheses against one reference each, 0..1."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score) / 100.0


class RougeL:
    """ROUGE-L F-measure of one (hypothesis, reference) pair at a time."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer  # type: ignore[import-untyped]

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, hypothesis: str, reference: str) -> float:
        return float(self._scorer.score(reference, hypothesis)["rougeL"].fmeasure)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over the pairs, 0..1."""
    _check_pairs(hypotheses, references)
    score = RougeL()
    return sum(score(h, r) for h, r in zip(hypotheses, references, strict=True)) / len(hypotheses)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypotheses to score")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# --- targets --------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTargets:
    """Pass marks, named as gantry.v1.EvalTargets. A value equal to its mark passes."""

    bleu4_min: float = 0.35
    rouge_l_min: float = 0.45
    ttft_ms_max: float = 500.0
    tokens_per_s_min: float = 12_000.0

    @classmethod
    def from_json(cls, text: str) -> EvalTargets:
        """Defaults overridden by a JSON object of some of the four names; ValueError
        naming what is wrong otherwise."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return cls.from_mapping(data)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EvalTargets:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown target {unknown[0]!r} (expected {', '.join(sorted(names))})")
        values: dict[str, float] = {}
        for name, value in data.items():
            if value is None:  # an unset proto field: keep the default
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite")
            values[name] = float(value)
        return cls(**values)


# "pass" is a keyword, hence the functional form.
TargetResult = TypedDict("TargetResult", {"value": float, "target": float, "op": str, "pass": bool})

# figure name in the results -> (field of EvalTargets, comparison)
CHECKS: dict[str, tuple[str, str]] = {
    "bleu4": ("bleu4_min", ">="),
    "rouge_l": ("rouge_l_min", ">="),
    "ttft_ms_p90": ("ttft_ms_max", "<="),  # the slow tail, not the median, must fit
    "tokens_per_s": ("tokens_per_s_min", ">="),
}


def check_targets(results: Mapping[str, float], targets: EvalTargets) -> dict[str, TargetResult]:
    """Each checked figure with its mark and whether it passes (a NaN never does)."""
    marks = asdict(targets)
    out: dict[str, TargetResult] = {}
    for figure, (field, op) in CHECKS.items():
        value, mark = float(results[figure]), float(marks[field])
        batched = results.get("tokens_per_s_batched")
        if figure == "tokens_per_s" and batched is not None:
            # Throughput is a serving figure: many sequences at once, not batch 1.
            value = float(batched)
        ok = value >= mark if op == ">=" else value <= mark
        out[figure] = {"value": value, "target": mark, "op": op, "pass": ok}
    return out


def all_passed(checks: Mapping[str, TargetResult]) -> bool:
    return all(c["pass"] for c in checks.values())
