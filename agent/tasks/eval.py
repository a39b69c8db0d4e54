"""Evaluate a trained model on held-out conversations: `python -m agent.tasks.eval`.

    python -m agent.tasks.eval --model DIR --data HELDOUT.jsonl --out REPORT.json \\
        [--max-samples N] [--max-new-tokens N] [--targets JSON] [--checkpoint LABEL] \\
        [--batch-size B] [--device auto|cpu|cuda]

DIR is a Hugging Face directory (the trainer's OUTPUT_DIR/final: config, weights,
tokenizer, gantry_train.json). Each held-out conversation (agent.ml.data's format)
is one sample: its last turn, after the earlier turns with their reference replies, is
answered greedily (batch 1, up to --max-new-tokens, stopping at end-of-text) and
compared with that turn's reply.

Figures: BLEU-4 (sacrebleu corpus BLEU, 0..1), ROUGE-L (mean F-measure, 0..1), time
to first token (from the call, prompt tokenization included, to the first generated
token reaching the host: median and p90), and throughput (generated tokens / generation
time over all samples at batch 1). With --batch-size B > 1 (default 32) the samples are
generated again, B at a time (left-padded), for `tokens_per_s_batched`: reported, not
checked against a target. Each pass starts with an untimed warm-up generation.

Targets (agent.tasks.eval_metrics.EvalTargets; --targets overrides some of them):
bleu4 >= bleu4_min, rouge_l >= rouge_l_min, ttft_ms_p90 <= ttft_ms_max, tokens_per_s >=
tokens_per_s_min.

stdout carries one JSON object a line, as agent.tasks.runner reads it: `{"progress": 0.25,
"message": "12/48 samples", "figures": {...}}`, then `{"done": true, "passed": ...,
"report_path": ..., "results": {...}}` once REPORT.json is written. Exit 0 once
evaluated (whether or not the targets are met: see "passed"), 2 on bad input with one
`gantry: ...` line on stderr, before torch is imported where it can be.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.tasks.eval_generate import batched_tokens_per_s, generate_timed
from agent.tasks.eval_metrics import (
    EvalTargets,
    RougeL,
    all_passed,
    bleu4,
    check_targets,
    percentile,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

TRAIN_INFO = "gantry_train.json"
N_EXAMPLES = 3
PROGRESS_LINES = 50  # at most this many progress lines for the batch-1 pass


class BadInput(Exception):
    """One line naming what to fix; exit code 2."""


@dataclass(frozen=True)
class Sample:
    line: int
    prompt: str  # the last turn's prompt, as written
    model_input: str  # rendered with agent.ml.data.eval_prompts
    reference: str


# --- inputs ---------------------------------------------------------------------------


def check_model_dir(model: Path) -> None:
    if not model.is_dir():
        raise BadInput(f"--model {model}: no such directory")
    if not (model / "config.json").is_file():
        raise BadInput(f"--model {model}: no config.json")
    if not ((model / "tokenizer.json").is_file() or (model / "tokenizer_config.json").is_file()):
        raise BadInput(f"--model {model}: no tokenizer (tokenizer.json, tokenizer_config.json)")


def load_samples(data: Path, max_samples: int | None = None) -> list[Sample]:
    """The first `max_samples` conversations of `data` as samples; BadInput naming the
    file and line of the first malformed one."""
    from agent.ml.data import MalformedConversation, eval_prompts, parse_conversation

    if not data.is_file():
        raise BadInput(f"--data {data}: no such file")
    samples: list[Sample] = []
    with data.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if max_samples is not None and len(samples) >= max_samples:
                break
            if not line.strip():
                continue
            where = f"--data {data} line {line_no}"
            try:
                turns = parse_conversation(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadInput(f"{where}: not JSON ({e.msg})") from None
            except MalformedConversation as e:
                raise BadInput(f"{where}: {e}") from None
            if not turns[-1].response:
                raise BadInput(f"{where}: the last turn has no reply after <end>")
            model_input, reference = eval_prompts(turns)[-1]
            samples.append(Sample(line_no, turns[-1].prompt, model_input, reference))
    if not samples:
        raise BadInput(f"--data {data}: no conversations")
    return samples


def parse_targets(text: str | None) -> EvalTargets:
    if text is None:
        return EvalTargets()
    try:
        return EvalTargets.from_json(text)
    except ValueError as e:
        raise BadInput(f"--targets: {e}") from None


def checkpoint_label(model: Path, given: str | None) -> str:
    """--checkpoint, else the trained step from gantry_train.json, else the directory name."""
    if given:
        return given
    try:
        info = json.loads((model / TRAIN_INFO).read_text())
        return f"step {int(info['step'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return model.resolve().name


# --- the model ------------------------------------------------------------------------


def load_model(
    model_dir: Path, device: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, torch.device]:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from agent.ml.data import load_tokenizer

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda: no CUDA device here")
    try:
        tokenizer = load_tokenizer(model_dir)
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(f"--model {model_dir}: cannot load ({first})") from None
    dev = torch.device(device)
    model.to(dev)  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    return model, tokenizer, dev


# --- the run --------------------------------------------------------------------------


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def hardware(device: torch.device) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def score_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: torch.device,
    samples: Sequence[Sample],
    max_new_tokens: int,
    on_progress: Callable[[int, dict[str, float]], None],
) -> tuple[dict[str, float], list[str]]:
    """The batch-1 pass: (figures, hypotheses). on_progress(done, figures so far) is called
    after at most PROGRESS_LINES evenly spaced samples, the last one included."""
    every = max(1, len(samples) // PROGRESS_LINES)
    rouge = RougeL()
    hyps: list[str] = []
    refs: list[str] = []
    rouges: list[float] = []
    ttfts_ms: list[float] = []
    tokens = 0
    gen_s = 0.0

    def figures() -> dict[str, float]:
        return {
            "bleu4": bleu4(hyps, refs),
            "rouge_l": sum(rouges) / len(rouges),
            "ttft_ms_p50": percentile(ttfts_ms, 50),
            "tokens_per_s": tokens / gen_s if gen_s > 0 else 0.0,
        }

    for i, sample in enumerate(samples, 1):
        g = generate_timed(model, tokenizer, sample.model_input, max_new_tokens, device)
        hyps.append(g.text)
        refs.append(sample.reference)
        rouges.append(rouge(g.text, sample.reference))
        ttfts_ms.append(g.ttft_s * 1000.0)
        tokens += g.tokens
        gen_s += g.total_s
        if i % every == 0 or i == len(samples):
            on_progress(i, figures())
    results = {
        "samples": float(len(samples)),
        **figures(),
        "ttft_ms_p90": percentile(ttfts_ms, 90),
        "generated_tokens": float(tokens),
    }
    return results, hyps


def evaluate(args: argparse.Namespace, samples: list[Sample], targets: EvalTargets) -> int:
    started = time.perf_counter()
    emit({"progress": 0.0, "message": f"loading {args.model}", "figures": {}})
    model, tokenizer, device = load_model(args.model, args.device)
    generate_timed(model, tokenizer, samples[0].model_input, 2, device)  # warm-up, untimed

    n = len(samples)
    batch = min(args.batch_size, n)
    units = n + (-(-n // batch) if batch > 1 else 0)

    def on_sample(i: int, figures: dict[str, float]) -> None:
        emit({"progress": i / units, "message": f"{i}/{n} samples", "figures": figures})

    def on_batch(b: int, total: int) -> None:
        message = f"batch {b}/{total} at batch size {batch}"
        emit({"progress": (n + b) / units, "message": message, "figures": {}})

    results, hyps = score_samples(model, tokenizer, device, samples, args.max_new_tokens, on_sample)
    if batch > 1:
        inputs = [s.model_input for s in samples]
        batched_tokens_per_s(model, tokenizer, inputs[:batch], 2, batch, device)  # warm-up
        results["tokens_per_s_batched"] = batched_tokens_per_s(
            model, tokenizer, inputs, args.max_new_tokens, batch, device, on_batch
        )

    checks = check_targets(results, targets)
    passed = all_passed(checks)
    report = {
        "model": str(args.model.resolve()),
        "checkpoint": checkpoint_label(args.model, args.checkpoint),
        "data": str(args.data.resolve()),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": batch,
        **results,
        "tokens_per_s_batched": results.get("tokens_per_s_batched"),  # None at batch size 1
        "samples": n,  # counts are ints here, floats in the task's results map
        "generated_tokens": int(results["generated_tokens"]),
        "targets": checks,
        "passed": passed,
        "hardware": hardware(device),
        "examples": [
            {"prompt": s.prompt, "reference": s.reference, "hypothesis": h}
            for s, h in list(zip(samples, hyps, strict=True))[:N_EXAMPLES]
        ],
        "elapsed_s": time.perf_counter() - started,
    }
    write_report(args.out, report)
    done = {**results, "passed": 1.0 if passed else 0.0}
    emit({"done": True, "passed": passed, "report_path": str(args.out), "results": done})
    return 0


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m agent.tasks.eval", description="Evaluate a trained model on held-out data."
    )
    p.add_argument("--model", required=True, type=Path, help="Hugging Face model directory")
    p.add_argument("--data", required=True, type=Path, help="held-out conversations (JSONL)")
    p.add_argument("--out", required=True, type=Path, help="the report (JSON) to write")
    p.add_argument("--max-samples", type=int, help="the first N conversations only")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--targets", help="JSON object overriding some of the default targets")
    p.add_argument("--checkpoint", help="label for the report (default: the trained step)")
    p.add_argument("--batch-size", type=int, default=32, help="for the batched throughput (1: off)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> EvalTargets:
    for name in ("max_samples", "max_new_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BadInput(f"--{name.replace('_', '-')} {value}: must be at least 1")
    check_model_dir(args.model)
    if not args.data.is_file():
        raise BadInput(f"--data {args.data}: no such file")
    if args.out.is_dir():
        raise BadInput(f"--out {args.out}: is a directory; name a file")
    return parse_targets(args.targets)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        targets = check_args(args)
        samples = load_samples(args.data, args.max_samples)
        return evaluate(args, samples, targets)
    except BadInput as e:
        print(f"gantry: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
