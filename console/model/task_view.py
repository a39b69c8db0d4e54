"""Tasks for people: figures with units and 3-4 significant figures, an evaluation's
verdict against its targets, the one-line result (most important words first) and the
full detail, shared by the tasks screen and the `gantry task(s)` text output.

Pure functions of `gantry.v1.Task`; JSON output keeps the raw numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gantry.v1 import task_pb2

TS = task_pb2.TaskState
TK = task_pb2.TaskKind
ACTIVE = (TS.TASK_STATE_PENDING, TS.TASK_STATE_RUNNING)
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_COUNT_KEYS = frozenset(
    {
        "samples",
        "generated_tokens",
        "modules_quantized",
        "modules_not_quantized",
        "experts_quantized",
        "fp32_3d_tensors_left",
    }
)
MISSED = "missed"


def kind_name(kind: int) -> str:
    return task_pb2.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()


def state_name(state: int) -> str:
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_").lower()


def model_of(task: task_pb2.Task) -> str:
    """The model a task works on; a load test's: the endpoint it loads."""
    which = task.WhichOneof("spec")
    if not which:
        return ""
    spec = getattr(task, which)
    return str(getattr(spec, "model_dir", "") or getattr(spec, "target", ""))


# --- figures --------------------------------------------------------------------------


def format_number(value: float) -> str:
    """`0.9282`, `41.7`, `12,345`: four significant figures below 1,000, whole above."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) < 0.001:
        return f"{value:.2e}"
    return f"{value:.4g}"


def format_size(n_bytes: float) -> str:
    """`2.15 MiB`, `620 KiB`, `512 B`: three significant figures, binary units."""
    value, unit = float(n_bytes), _SIZE_UNITS[0]
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{value:.0f} B"
    return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"


def format_seconds(seconds: float) -> str:
    """`12.3 ms` under a second, `1.23 s` above."""
    if math.isfinite(seconds) and abs(seconds) < 1:
        return f"{format_number(seconds * 1000)} ms"
    return f"{format_number(seconds)} s"


def format_figure(key: str, value: float) -> str:
    """One result or progress figure, with its unit where its name gives one."""
    if key == "passed":
        return "yes" if value >= 1 else "no"
    if key in _COUNT_KEYS:
        return f"{round(value):,}"
    if key.endswith("ratio"):
        return f"{value:.3g}x"
    if key.startswith(("size_", "disk_")) or "bytes" in key:
        return format_size(value)
    if key.startswith("tokens_per_s"):
        return f"{format_number(value)} tok/s"
    if "_ms" in key:
        return f"{format_number(value)} ms"
    if key.startswith("latency") or key.endswith("_s"):
        return format_seconds(value)
    return format_number(value)


def figures_text(figures: dict[str, float]) -> str:
    """`bleu4 0.2812 · tokens_per_s 1,234 tok/s`, sorted by name."""
    return " · ".join(f"{k} {format_figure(k, v)}" for k, v in sorted(figures.items()))


# --- an evaluation's verdict ----------------------------------------------------------


@dataclass(frozen=True)
class TargetCheck:
    """One figure against its mark, as the eval report writes it."""

    name: str
    value: float
    op: str  # ">=" or "<="
    target: float
    passed: bool

    def text(self) -> str:
        """`bleu4 0.21 < 0.25` for a miss, `bleu4 0.41 ≥ 0.35` for a pass."""
        sign = {(True, ">="): "≥", (True, "<="): "≤", (False, ">="): "<"}.get(
            (self.passed, self.op), ">"
        )
        value, target = format_figure(self.name, self.value), format_figure(self.name, self.target)
        return f"{self.name} {value} {sign} {target}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "target": self.target,
            "pass": self.passed,
        }


def report_of(task: task_pb2.Task) -> dict[str, Any]:
    if not task.report_json:
        return {}
    try:
        report = json.loads(task.report_json)
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def target_checks(task: task_pb2.Task) -> list[TargetCheck]:
    """The report's targets, in its order; none where the report has none."""
    checks = []
    targets = report_of(task).get("targets")
    for name, doc in (targets if isinstance(targets, dict) else {}).items():
        try:
            checks.append(
                TargetCheck(
                    str(name),
                    float(doc["value"]),
                    str(doc.get("op", ">=")),
                    float(doc["target"]),
                    bool(doc["pass"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return checks


def targets_met(task: task_pb2.Task) -> bool | None:
    """Whether an evaluation that ran met every target; None for anything else."""
    if task.kind != TK.TASK_KIND_EVAL or task.state != TS.TASK_STATE_SUCCEEDED:
        return None
    if "passed" in task.results:
        return task.results["passed"] >= 1
    checks = target_checks(task)
    return all(c.passed for c in checks) if checks else None


def misses(task: task_pb2.Task) -> list[TargetCheck]:
    return [c for c in target_checks(task) if not c.passed]


def outcome(task: task_pb2.Task) -> str:
    """The state, except that an evaluation which missed a target is `missed`."""
    return MISSED if targets_met(task) is False else state_name(task.state)


def verdict_json(task: task_pb2.Task) -> dict[str, Any]:
    """For `--json`: the outcome and, for an evaluation that ran, its verdict."""
    out: dict[str, Any] = {"outcome": "missed target" if outcome(task) == MISSED else outcome(task)}
    met = targets_met(task)
    if met is not None:
        out["targets_met"] = met
        out["misses"] = [c.as_json() for c in misses(task)]
    return out


# --- one line, and the detail ---------------------------------------------------------


def progress_text(task: task_pb2.Task) -> str:
    """`37% 12/48 samples` while a task works; "" without a progress line."""
    if task.state not in ACTIVE or not task.HasField("progress"):
        return ""
    p = task.progress
    return f"{100 * p.fraction:.0f}% {p.message}".strip()


def result_summary(task: task_pb2.Task) -> str:
    """The result in one line, its most important words first."""
    if task.state in ACTIVE:
        if task.kind == TK.TASK_KIND_SERVE and task.endpoint:
            return f"serving on {task.endpoint}"
        return progress_text(task) or ("starting" if task.state == TS.TASK_STATE_PENDING else "")
    if task.state == TS.TASK_STATE_FAILED:
        return task.error.splitlines()[0] if task.error else "failed"
    r = task.results
    if task.kind == TK.TASK_KIND_EVAL:
        missed = misses(task)
        if targets_met(task) is False:
            return "; ".join(c.text() for c in missed) or "a target was missed"
        if "bleu4" in r:
            rouge = format_number(r.get("rouge_l", 0))
            return f"targets met: bleu4 {format_number(r['bleu4'])} rouge_l {rouge}"
    if task.kind == TK.TASK_KIND_QUANTIZE and "size_after" in r:
        text = f"{format_size(r.get('size_before', 0))} → {format_size(r['size_after'])}"
        if "size_ratio" in r:
            text += f" ({format_figure('size_ratio', r['size_ratio'])})"
        if "bleu4_after" in r:
            before = format_number(r.get("bleu4_before", 0))
            text += f" bleu4 {before}→{format_number(r['bleu4_after'])}"
        return text
    return task.error


def results_lines(task: task_pb2.Task, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every result, one `name  value` line each, sorted by name."""
    keys = sorted(k for k in task.results if k not in skip)
    width = max((len(k) for k in keys), default=0)
    return [f"{k:<{width}}  {format_figure(k, task.results[k])}" for k in keys]


def verdict_lines(task: task_pb2.Task) -> list[str]:
    """An evaluation's verdict, then each target: `missed: bleu4 0.21 < 0.25`."""
    lines = []
    met = targets_met(task)
    if met is not None:
        missed = "; ".join(c.text() for c in misses(task)) or "a target"
        lines.append("targets met" if met else f"{MISSED}: {missed}")
    for c in target_checks(task):
        lines.append(f"  {'pass' if c.passed else 'MISS'}  {c.text()}")
    return lines


def eval_lines(task: task_pb2.Task) -> list[str]:
    report = report_of(task)
    lines = [f"checkpoint {report['checkpoint']}"] if report.get("checkpoint") else []
    return [*lines, *results_lines(task, frozenset({"passed"}))]


_QUANT_ROWS = (
    ("params+buffers", "size_before", "size_after"),
    ("weights on disk", "disk_before", "disk_after"),
    ("quantized modules", "quantized_bytes_before", "quantized_bytes_after"),
    ("generate latency", "latency_before_s", "latency_after_s"),
    ("tokens/s", "tokens_per_s_before", "tokens_per_s_after"),
    ("BLEU-4", "bleu4_before", "bleu4_after"),
    ("ROUGE-L", "rouge_l_before", "rouge_l_after"),
)


def quantize_lines(task: task_pb2.Task) -> list[str]:
    r = task.results
    rows = [
        (label, format_figure(b, r[b]), format_figure(a, r[a]))
        for label, b, a in _QUANT_ROWS
        if b in r and a in r
    ]
    lines = []
    if rows:
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        header = f"{'':<{widths[0]}}  {'before':>{widths[1]}}  {'after':>{widths[2]}}"
        lines.append(header.rstrip())
        lines += [
            f"{lab:<{widths[0]}}  {bef:>{widths[1]}}  {aft:>{widths[2]}}" for lab, bef, aft in rows
        ]
    shown = {k for _, b, a in _QUANT_ROWS for k in (b, a)}
    lines += results_lines(task, frozenset(shown))
    report = report_of(task)
    if report.get("mode"):
        lines.append(
            f"mode {report['mode']} · reloaded artifact identical: {report.get('reload_identical')}"
        )
    if task.quantize.output_dir:
        lines.append(f"artifact {task.quantize.output_dir}")
    by_reason: dict[str, list[str]] = {}
    for skipped in report.get("not_quantized") or []:
        if isinstance(skipped, dict):
            by_reason.setdefault(str(skipped.get("reason")), []).append(str(skipped.get("module")))
    for reason, names in by_reason.items():
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        lines.append(f"not quantized: {', '.join(names[:2])}{more}: {reason}")
    if report.get("warning"):
        lines.append(f"warning: {report['warning']}")
    return lines


def detail_lines(task: task_pb2.Task, node: str = "") -> list[str]:
    """Everything about a task for a person, the verdict first."""
    where = f" on {node or task.node}" if (node or task.node) else ""
    lines = [f"{task.id} · {kind_name(task.kind)} · {outcome(task)}{where}"]
    if task.error:
        lines.append(f"error: {task.error}")
    if task.kind == TK.TASK_KIND_EVAL:
        lines += verdict_lines(task)
    progress = progress_text(task)
    if progress:
        lines.append(progress)
        if task.progress.figures:
            lines.append(figures_text(dict(task.progress.figures)))
    if task.endpoint:
        lines.append(f"endpoint {task.endpoint}")
    if model_of(task):
        lines.append(f"model {model_of(task)}")
    if task.kind == TK.TASK_KIND_EVAL:
        if task.eval.data_path:
            lines.append(f"data {task.eval.data_path}")
        return lines + eval_lines(task)
    if task.kind == TK.TASK_KIND_QUANTIZE:
        return lines + quantize_lines(task)
    return lines + results_lines(task)
