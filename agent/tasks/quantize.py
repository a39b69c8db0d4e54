"""Int8 export of a trained model, run by the agent as a task.

    python -m agent.tasks.quantize --model DIR --out OUT_DIR [--weight-only]
        [--eval HELDOUT.jsonl [--max-samples N]] [--include-lm-head]
        [--gen-tokens N] [--latency-prompts N] [--max-new-tokens N]

Loads the Hugging Face directory DIR in fp32 and quantizes

- every `nn.Linear` with torchao (`Int8DynamicActivationInt8WeightConfig`: int8 weights
  per output channel and int8 activations per token, computed at run time; with
  `--weight-only`, `Int8WeightOnlyConfig`), except the output head (`lm_head`) unless
  `--include-lm-head`: the logits are where int8 error shows first;
- the fused MoE experts (3-D weights, which torchao skips) with
  `agent.ml.int8_experts.Int8Experts`, in the same mode.

Not quantized, each listed with its reason in the report: the input embeddings (a table
lookup, not a matmul), the MoE routers (not Linears, tiny, and expert selection is
sensitive to small logit errors), the norms (elementwise), and any fused experts whose
layout Int8Experts does not know.

OUT_DIR receives the artifact that `agent.ml.loading.load_model` reads (its
docstring has the format) and `quantize_report.json`: sizes before/after (bytes of
parameters and buffers in memory, and of the weight files on disk), the modules
quantized and not, the mean time of a greedy generation of --gen-tokens tokens over
--latency-prompts prompts before/after, with --eval BLEU-4 and ROUGE-L of the replies to
the held-out prompts before/after (both 0..1), and whether the saved artifact, loaded
back, generates exactly what the quantized model did.

Speed: int8 pays where int8 matmuls are fast (GPUs, CPUs with VNNI or AMX). On a CPU
with AVX2 only, `torch._int_mm` is slower than MKL's fp32 GEMM and the quantized model
generates more slowly than the fp32 one; `--weight-only` loses less there (its matmuls
run in float on weights converted on the fly). The report has the measured figures.

stdout: JSON progress lines `{"progress": 0.4, "message": "..."}`, a table, then
`{"done": true, "results": {...numbers}, "report": {...}}`. Bad input:
exit 2 with one line on stderr naming what to fix.

This module is the command (inputs, the artifact, the run); what is quantized and how is
`quantize_plan`, the latency and quality measures `quantize_check`, the figures and the
table `quantize_report`.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from agent.ml.loading import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    STATE_FILE,
    ModelLoadError,
    is_quantized_dir,
    quiet_torchao,
)
from agent.tasks.quantize_check import (
    DEFAULT_PROMPTS,
    Latency,
    bleu_rouge,
    evaluate,
    greedy_ids,
    measure_latency,
    render,
)
from agent.tasks.quantize_plan import (
    LINEAR_CONFIGS,
    WEIGHT_SUFFIXES,
    Plan,
    disk_bytes,
    float_3d_left,
    linear_config,
    module_bytes,
    plan_model,
    quantize_model,
    skip_reason,
    tensor_bytes,
)
from agent.tasks.quantize_report import ModelFigures, results_of, table

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_PROMPTS",
    "LINEAR_CONFIGS",
    "REPORT",
    "WEIGHT_SUFFIXES",
    "Latency",
    "Plan",
    "UsageError",
    "artifact_manifest",
    "bleu_rouge",
    "check_args",
    "disk_bytes",
    "emit",
    "float_3d_left",
    "greedy_ids",
    "has_tokenizer",
    "linear_config",
    "main",
    "measure",
    "measure_latency",
    "module_bytes",
    "parse_args",
    "plan_model",
    "progress",
    "quantize_model",
    "read_heldout",
    "render",
    "run",
    "save_artifact",
    "skip_reason",
    "table",
    "tensor_bytes",
    "versions",
]

REPORT = "quantize_report.json"


class UsageError(ValueError):
    """Bad input: one line naming what to fix (exit 2)."""


# --- progress -------------------------------------------------------------------------


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


def progress(fraction: float, message: str, **figures: float) -> None:
    doc: dict[str, Any] = {"progress": round(fraction, 3), "message": message}
    if figures:
        doc["figures"] = figures
    emit(doc)


# --- the artifact ---------------------------------------------------------------------


def save_artifact(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    manifest: dict[str, Any],
) -> None:
    """OUT written whole or not at all (built beside it, then moved in place)."""
    import torch

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.config.save_pretrained(str(tmp))
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    torch.save(model.state_dict(), tmp / STATE_FILE)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "torchao", "transformers")}


# --- the command ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"agent.tasks.quantize: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="python -m agent.tasks.quantize", description="Int8 export of a trained model."
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory (fp32)")
    p.add_argument("--out", required=True, help="output directory of the int8 artifact")
    p.add_argument("--weight-only", action="store_true", help="int8 weights, float activations")
    p.add_argument("--include-lm-head", action="store_true", help="quantize the output head too")
    p.add_argument("--eval", help="held-out conversations (JSONL) for BLEU-4/ROUGE-L")
    p.add_argument("--max-samples", type=int, help="at most this many held-out prompts")
    p.add_argument("--max-new-tokens", type=int, default=64, help="reply length cap in --eval")
    p.add_argument("--gen-tokens", type=int, default=32, help="tokens per latency generation")
    p.add_argument("--latency-prompts", type=int, default=4, help="prompts timed per model")
    return p.parse_args(argv)


def has_tokenizer(path: Path) -> bool:
    # agent.ml.models's test, without importing transformers before the input is checked.
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def check_args(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    model_dir = Path(args.model)
    out = Path(args.out)
    if not model_dir.is_dir():
        raise UsageError(f"--model {model_dir}: no such directory")
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"--model {model_dir}: no config.json (not a Hugging Face model)")
    if is_quantized_dir(model_dir):
        raise UsageError(f"--model {model_dir}: already quantized; give the fp32 model")
    if not has_tokenizer(model_dir):
        raise UsageError(f"--model {model_dir}: no tokenizer files (tokenizer.json)")
    if out.resolve() == model_dir.resolve():
        raise UsageError("--out must be another directory than --model")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_quantized_dir(out))):
        raise UsageError(
            f"--out {out}: exists and is not a quantized artifact; remove it or choose another"
        )
    for flag in ("max_samples", "max_new_tokens", "gen_tokens", "latency_prompts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1 (got {value})")
    if args.max_samples is not None and not args.eval:
        raise UsageError("--max-samples needs --eval HELDOUT.jsonl")
    heldout = Path(args.eval) if args.eval else None
    if heldout is not None and not heldout.is_file():
        raise UsageError(f"--eval {heldout}: no such file")
    return model_dir, out, heldout


def read_heldout(path: Path, max_samples: int | None) -> list[tuple[str, str]]:
    """(prompt, reference reply) pairs of the conversations in a JSONL file, in order;
    malformed lines and empty references are skipped."""
    from agent.ml.data import MalformedConversation, eval_prompts, parse_conversation

    pairs: list[tuple[str, str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--eval {path}: cannot read it ({e})") from e
    for line in lines:
        if max_samples is not None and len(pairs) >= max_samples:
            break
        if not line.strip():
            continue
        try:
            turns = parse_conversation(json.loads(line))
        except (ValueError, MalformedConversation):
            continue
        pairs += [(p, ref) for p, ref in eval_prompts(turns) if ref]
    if not pairs:
        raise UsageError(
            f'--eval {path}: no conversation with a reply (JSON lines {{"text": [system, '
            f'user, ...]}}, the reply after "<end>")'
        )
    return pairs[:max_samples] if max_samples is not None else pairs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole task; returns the report (also written to OUT/quantize_report.json)."""
    model_dir, out, heldout = check_args(args)
    pairs = read_heldout(heldout, args.max_samples) if heldout is not None else []
    progress(0.0, f"loading {model_dir}")
    quiet_torchao()
    import torch
    from transformers.utils import logging as hf_logging

    from agent.ml.loading import load_hf, load_model, load_tokenizer

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = load_hf(model_dir)
    model.eval()  # type: ignore[no-untyped-call]
    tokenizer = load_tokenizer(model_dir)
    if pairs:
        prompts = [p for p, _ in pairs[: args.latency_prompts]]
    else:
        prompts = [render(s, u) for s, u in DEFAULT_PROMPTS[: args.latency_prompts]]
    size_before = module_bytes(model)
    progress(0.1, "timing the fp32 model", size_before=size_before)
    lat_before, quality_before = measure(model, tokenizer, prompts, pairs, args, 0.15, "fp32")
    before = ModelFigures(size_before, disk_bytes(model_dir), lat_before, quality_before)

    progress(0.45, "quantizing")
    with torch.no_grad():
        plan, done = quantize_model(model, args.weight_only, args.include_lm_head)
    size_after = module_bytes(model)
    left = float_3d_left(model)
    progress(0.5, "timing the int8 model", size_after=size_after)
    lat_after, quality_after = measure(model, tokenizer, prompts, pairs, args, 0.55, "int8")

    progress(0.85, f"saving {out}")
    manifest = artifact_manifest(args, model_dir, plan, done)
    save_artifact(model, tokenizer, out, manifest)
    after = ModelFigures(size_after, disk_bytes(out), lat_after, quality_after)
    del model
    gc.collect()

    progress(0.95, "loading the artifact back")
    reloaded, _ = load_model(out)
    reload_identical = greedy_ids(reloaded, tokenizer, prompts[0], args.gen_tokens) == (
        lat_after.first_ids
    )
    del reloaded

    report: dict[str, Any] = {
        "model": str(model_dir),
        "out": str(out),
        "mode": manifest["scheme"],
        "results": results_of(before, after, plan, done, left),
        "latency": {
            "gen_tokens": args.gen_tokens,
            "threads": torch.get_num_threads(),
            "prompts": len(prompts),
            "before": {"mean_s": lat_before.mean_s, "tokens_per_s": lat_before.tokens_per_s},
            "after": {"mean_s": lat_after.mean_s, "tokens_per_s": lat_after.tokens_per_s},
        },
        "eval": {"file": str(heldout), "samples": len(pairs)} if heldout else None,
        "reload_identical": reload_identical,
        "fp32_3d_tensors_left": left,
        "quantized": done,
        "not_quantized": plan.skipped,
        "versions": manifest["versions"],
    }
    from agent.ml.int8_experts import cpu_int_mm_exact

    if not args.weight_only and not cpu_int_mm_exact():
        # torchao's Linears multiply int8 x int8 with the CPU's kernel; Int8Experts does not.
        report["warning"] = (
            "this CPU's int8 matmul saturates (no VNNI): the Linears' int8 products lose "
            "precision; --weight-only avoids it"
        )
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def measure(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    start: float,
    label: str,
) -> tuple[Latency, dict[str, float]]:
    """The latency of `prompts` and, with held-out `pairs`, the quality of the replies."""
    latency = measure_latency(model, tokenizer, prompts, args.gen_tokens)
    quality: dict[str, float] = {}
    if pairs:
        quality = evaluate(
            model, tokenizer, pairs, args.max_new_tokens, start, 0.3, label, progress
        )
    return latency, quality


def artifact_manifest(
    args: argparse.Namespace, model_dir: Path, plan: Plan, done: list[dict[str, Any]]
) -> dict[str, Any]:
    """The artifact's manifest (agent.ml.loading reads it back)."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "state_dict": STATE_FILE,
        "weight_only": bool(args.weight_only),
        "scheme": "int8-weight-only" if args.weight_only else "int8-dynamic-activation",
        "linear_config": LINEAR_CONFIGS[bool(args.weight_only)],
        "experts": plan.experts,
        "quantized": [d["module"] for d in done],
        "not_quantized": [{"module": s["module"], "reason": s["reason"]} for s in plan.skipped],
        "source": str(model_dir.resolve()),
        "versions": versions(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    quiet_torchao()
    try:
        args = parse_args(argv)
    except SystemExit as e:  # usage errors (one line) and --help
        return int(e.code or 0)
    try:
        report = run(args)
    except (UsageError, ModelLoadError) as e:
        print(f"agent.tasks.quantize: {e}", file=sys.stderr, flush=True)
        return 2
    print(table(report), flush=True)
    emit({"done": True, "results": report["results"], "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
