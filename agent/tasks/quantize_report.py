"""The int8 export's figures: the results map (the task's numbers, before and after) and the
table printed for a person."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.tasks.quantize_check import Latency
from agent.tasks.quantize_plan import Plan


@dataclass(frozen=True)
class ModelFigures:
    """One model's measures: the fp32 one before quantizing, or the int8 one after."""

    size_bytes: int  # parameters and buffers in memory
    disk_bytes: int  # weight files
    latency: Latency
    quality: dict[str, float]  # bleu4, rouge_l; empty without --eval


def results_of(
    before: ModelFigures,
    after: ModelFigures,
    plan: Plan,
    done: list[dict[str, Any]],
    left: list[str],
) -> dict[str, float]:
    """The task's numbers (the "results" of its done line and report)."""
    quantized_before = sum(d["bytes_before"] for d in done)
    quantized_after = sum(d["bytes_after"] for d in done)
    results: dict[str, float] = {
        "size_before": before.size_bytes,
        "size_after": after.size_bytes,
        "size_ratio": before.size_bytes / after.size_bytes,
        "quantized_bytes_before": quantized_before,
        "quantized_bytes_after": quantized_after,
        "quantized_ratio": quantized_before / quantized_after if quantized_after else 0.0,
        "disk_before": before.disk_bytes,
        "disk_after": after.disk_bytes,
        "latency_before_s": before.latency.mean_s,
        "latency_after_s": after.latency.mean_s,
        "tokens_per_s_before": before.latency.tokens_per_s,
        "tokens_per_s_after": after.latency.tokens_per_s,
        "modules_quantized": len(done),
        "modules_not_quantized": len(plan.skipped),
        "experts_quantized": len(plan.experts),
        "fp32_3d_tensors_left": len(left),
    }
    for key, value in before.quality.items():
        results[f"{key}_before"] = value
    for key, value in after.quality.items():
        results[f"{key}_after"] = value
    return results


def table(report: dict[str, Any]) -> str:
    """The report as a before/after table and the lists of what was left out, for a person."""
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
