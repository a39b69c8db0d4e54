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
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

REPORT = "quantize_report.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Prompts for the latency measurement when no held-out data is given.
DEFAULT_PROMPTS = (
    ("You reverse the words.", "apple river stone"),
    ("You answer briefly.", "what is the capital of France"),
    ("You are a helpful assistant.", "write one line about the sea"),
    ("You reverse the words.", "one two three four five"),
)


LINEAR_CONFIGS = {False: "Int8DynamicActivationInt8WeightConfig", True: "Int8WeightOnlyConfig"}


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


# --- sizes ----------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; for a wrapper subclass (torchao's Int8Tensor reports the
    dtype and shape of the float tensor it stands for) the sum of its inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def module_bytes(module: nn.Module, recurse: bool = True) -> int:
    tensors = [*module.parameters(recurse=recurse), *module.buffers(recurse=recurse)]
    return sum(tensor_bytes(t) for t in tensors)


def disk_bytes(directory: Path) -> int:
    """Bytes of the weight files directly in `directory`."""
    return sum(
        p.stat().st_size
        for p in directory.iterdir()
        if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )


# --- what to quantize -----------------------------------------------------------------


@dataclass
class Plan:
    linears: list[str] = field(default_factory=list)
    experts: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def skip_reason(name: str, module: nn.Module) -> str:
    kind = type(module).__name__
    if "norm" in kind.lower() or "norm" in name.rsplit(".", 1)[-1].lower():
        return "normalization: an elementwise scale, negligible in size"
    if "router" in kind.lower() or name.endswith(".gate"):
        return (
            "MoE router: not an nn.Linear; kept fp32 as it is tiny and expert selection "
            "is sensitive to small logit errors"
        )
    return f"{kind} is not an nn.Linear: no int8 scheme applies"


def plan_model(model: PreTrainedModel, include_lm_head: bool = False) -> Plan:
    """Which modules get which treatment, and why the others get none."""
    from torch import nn

    from agent.ml.int8_experts import has_fused_weights, unsupported_reason

    plan = Plan()
    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    embeddings = model.get_input_embeddings()
    for name, module in model.named_modules():
        own = module_bytes(module, recurse=False)
        if isinstance(module, nn.Linear):
            if module is head and not include_lm_head:
                reason = (
                    "output head: excluded by default, the logits show int8 error first "
                    "(--include-lm-head quantizes it)"
                )
                plan.skipped.append(_skip(name, module, reason, own))
            else:
                plan.linears.append(name)
        elif has_fused_weights(module):
            why = unsupported_reason(module)
            if why is None:
                plan.experts.append(name)
            else:
                plan.skipped.append(_skip(name, module, f"fused experts left fp32: {why}", own))
        elif module is embeddings or isinstance(module, nn.Embedding):
            reason = "embedding: a table lookup, not a matmul (torchao's int8 is for Linears)"
            plan.skipped.append(_skip(name, module, reason, own))
        elif any(True for _ in module.parameters(recurse=False)):  # not rotary tables
            plan.skipped.append(_skip(name, module, skip_reason(name, module), own))
    return plan


def _skip(name: str, module: nn.Module, reason: str, size: int) -> dict[str, Any]:
    return {"module": name, "type": type(module).__name__, "reason": reason, "bytes": size}


def linear_config(weight_only: bool) -> Any:
    quiet_torchao()
    from torchao.quantization import (  # type: ignore[import-untyped]
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
    )

    return Int8WeightOnlyConfig() if weight_only else Int8DynamicActivationInt8WeightConfig()


def quantize_model(
    model: PreTrainedModel, weight_only: bool = False, include_lm_head: bool = False
) -> tuple[Plan, list[dict[str, Any]]]:
    """Quantize `model` in place: (the plan, one entry per quantized module with its
    scheme and bytes before and after)."""
    quiet_torchao()
    from torchao.quantization import quantize_

    from agent.ml.int8_experts import replace_experts

    plan = plan_model(model, include_lm_head)
    before = {name: module_bytes(model.get_submodule(name)) for name in plan.linears + plan.experts}
    targets = set(plan.linears)
    config = linear_config(weight_only)
    quantize_(model, config, filter_fn=lambda _module, fqn: fqn in targets)
    replace_experts(model, plan.experts, weight_only=weight_only)
    scheme = "int8 weight-only" if weight_only else "int8 weights, dynamic int8 activations"
    done = []
    for name in plan.linears + plan.experts:
        module = model.get_submodule(name)
        how = "torchao " + type(config).__name__ if name in targets else "agent Int8Experts"
        done.append(
            {
                "module": name,
                "type": type(module).__name__,
                "scheme": f"{scheme} ({how})",
                "bytes_before": before[name],
                "bytes_after": module_bytes(module),
            }
        )
    return plan, done


def float_3d_left(model: nn.Module) -> list[str]:
    """Names of 3-D floating-point tensors still in the model (unquantized experts)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [
        name
        for name, t in tensors
        if t.ndim == 3 and t.is_floating_point() and not is_traceable_wrapper_subclass(t)
    ]


# --- generation, latency, quality -----------------------------------------------------


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
) -> dict[str, float]:
    from agent.ml.models import generate_reply

    replies = []
    step = max(1, len(pairs) // 10)
    for i, (prompt, _) in enumerate(pairs):
        replies.append(generate_reply(model, tokenizer, prompt, max_new_tokens))
        if (i + 1) % step == 0:
            progress(start + span * (i + 1) / len(pairs), f"eval {label}: {i + 1}/{len(pairs)}")
    bleu, rouge = bleu_rouge(replies, [ref for _, ref in pairs])
    return {"bleu4": bleu, "rouge_l": rouge}


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
    disk_before = disk_bytes(model_dir)
    progress(0.1, "timing the fp32 model", size_before=size_before)
    lat_before = measure_latency(model, tokenizer, prompts, args.gen_tokens)
    quality_before: dict[str, float] = {}
    if pairs:
        quality_before = evaluate(model, tokenizer, pairs, args.max_new_tokens, 0.15, 0.3, "fp32")

    progress(0.45, "quantizing")
    with torch.no_grad():
        plan, done = quantize_model(model, args.weight_only, args.include_lm_head)
    size_after = module_bytes(model)
    left = float_3d_left(model)
    progress(0.5, "timing the int8 model", size_after=size_after)
    lat_after = measure_latency(model, tokenizer, prompts, args.gen_tokens)
    quality_after: dict[str, float] = {}
    if pairs:
        quality_after = evaluate(model, tokenizer, pairs, args.max_new_tokens, 0.55, 0.3, "int8")

    progress(0.85, f"saving {out}")
    manifest = {
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
    save_artifact(model, tokenizer, out, manifest)
    disk_after = disk_bytes(out)
    del model
    gc.collect()

    progress(0.95, "loading the artifact back")
    reloaded, _ = load_model(out)
    reload_identical = greedy_ids(reloaded, tokenizer, prompts[0], args.gen_tokens) == (
        lat_after.first_ids
    )
    del reloaded

    quantized_before = sum(d["bytes_before"] for d in done)
    quantized_after = sum(d["bytes_after"] for d in done)
    results: dict[str, float] = {
        "size_before": size_before,
        "size_after": size_after,
        "size_ratio": size_before / size_after,
        "quantized_bytes_before": quantized_before,
        "quantized_bytes_after": quantized_after,
        "quantized_ratio": quantized_before / quantized_after if quantized_after else 0.0,
        "disk_before": disk_before,
        "disk_after": disk_after,
        "latency_before_s": lat_before.mean_s,
        "latency_after_s": lat_after.mean_s,
        "tokens_per_s_before": lat_before.tokens_per_s,
        "tokens_per_s_after": lat_after.tokens_per_s,
        "modules_quantized": len(done),
        "modules_not_quantized": len(plan.skipped),
        "experts_quantized": len(plan.experts),
        "fp32_3d_tensors_left": len(left),
    }
    for key, value in quality_before.items():
        results[f"{key}_before"] = value
    for key, value in quality_after.items():
        results[f"{key}_after"] = value
    report: dict[str, Any] = {
        "model": str(model_dir),
        "out": str(out),
        "mode": manifest["scheme"],
        "results": results,
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


def table(report: dict[str, Any]) -> str:
    r = report["results"]
    rows = [
        ("", "before", "after", "ratio"),
        ("params+buffers (MB)", _mb(r["size_before"]), _mb(r["size_after"]), _x(r["size_ratio"])),
        (
            "quantized modules (MB)",
            _mb(r["quantized_bytes_before"]),
            _mb(r["quantized_bytes_after"]),
            _x(r["quantized_ratio"]),
        ),
        (
            "weights on disk (MB)",
            _mb(r["disk_before"]),
            _mb(r["disk_after"]),
            _x(r["disk_before"] / r["disk_after"] if r["disk_after"] else 0.0),
        ),
        (
            f"generate {report['latency']['gen_tokens']} tokens (ms)",
            f"{r['latency_before_s'] * 1000:.1f}",
            f"{r['latency_after_s'] * 1000:.1f}",
            _x(r["latency_before_s"] / r["latency_after_s"] if r["latency_after_s"] else 0.0),
        ),
    ]
    for key, label in (("bleu4", "BLEU-4"), ("rouge_l", "ROUGE-L")):
        if f"{key}_before" in r:
            rows.append((label, f"{r[f'{key}_before']:.3f}", f"{r[f'{key}_after']:.3f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in rows
    ]
    lines.append(
        f"quantized: {r['modules_quantized']} modules ({r['experts_quantized']} fused experts); "
        f"not quantized: {r['modules_not_quantized']}; mode {report['mode']}; "
        f"reloaded artifact identical: {report['reload_identical']}"
    )
    by_reason: dict[str, list[str]] = {}
    for s in report["not_quantized"]:
        by_reason.setdefault(s["reason"], []).append(s["module"])
    for reason, names in by_reason.items():
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        lines.append(f"  not quantized: {', '.join(names[:2])}{more}: {reason}")
    if report.get("warning"):
        lines.append(f"warning: {report['warning']}")
    return "\n".join(lines)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


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
