"""Task records as agents report them (figures as the eval and quantize programs write
them): an evaluation that missed its targets, one that met them, one still running, a
quantization with its full report, and a server."""

from __future__ import annotations

import json

from gantry.v1 import task_pb2

TS = task_pb2.TaskState
TK = task_pb2.TaskKind
RAW_BLEU = 0.9281685750203702
LONG_WARNING = (
    "this CPU's int8 matmul saturates (no VNNI): the Linears' int8 products lose "
    "precision; --weight-only avoids it (the last words of a long warning)"
)


def _targets(bleu4: float, rouge_l: float) -> dict[str, dict[str, object]]:
    return {
        "bleu4": {"value": bleu4, "target": 0.25, "op": ">=", "pass": bleu4 >= 0.25},
        "rouge_l": {"value": rouge_l, "target": 0.45, "op": ">=", "pass": rouge_l >= 0.45},
        "ttft_ms_p90": {"value": 41.73, "target": 500.0, "op": "<=", "pass": True},
        "tokens_per_s": {"value": 13456.7, "target": 12000.0, "op": ">=", "pass": True},
    }


def eval_task(task_id: str, bleu4: float, rouge_l: float, job: str = "demo") -> task_pb2.Task:
    """A finished evaluation; it passes only if both quality targets are met."""
    t = task_pb2.Task(id=task_id, kind=TK.TASK_KIND_EVAL, state=TS.TASK_STATE_SUCCEEDED)
    t.node = "node-a"
    t.created.FromSeconds(1_700_000_000)
    t.eval.job_name = job
    t.eval.model_dir = f"/data/runs/{job}/out/final"
    t.eval.data_path = f"/data/runs/{job}/heldout.jsonl"
    targets = _targets(bleu4, rouge_l)
    passed = all(bool(c["pass"]) for c in targets.values())
    t.results.update(
        {
            "samples": 48.0,
            "bleu4": bleu4,
            "rouge_l": rouge_l,
            "ttft_ms_p50": 30.123456,
            "ttft_ms_p90": 41.73,
            "tokens_per_s": 812.3456789,
            "tokens_per_s_batched": 13456.7,
            "generated_tokens": 2980.0,
            "passed": 1.0 if passed else 0.0,
        }
    )
    report = {"checkpoint": f"{job}:final", "targets": targets, "passed": passed}
    t.report_json = json.dumps(report)
    return t


def missed_eval() -> task_pb2.Task:
    return eval_task("eval-0000miss", 0.21, 0.3012345)


def met_eval() -> task_pb2.Task:
    return eval_task("eval-00000met", RAW_BLEU, 0.8812345)


def running_eval() -> task_pb2.Task:
    t = task_pb2.Task(id="eval-00000run", kind=TK.TASK_KIND_EVAL, state=TS.TASK_STATE_RUNNING)
    t.node = "node-a"
    t.created.FromSeconds(1_700_000_100)
    t.eval.job_name = "demo"
    t.eval.model_dir = "/data/runs/demo/out/final"
    t.eval.data_path = "/data/runs/demo/heldout.jsonl"
    t.progress.task_id = t.id
    t.progress.state = TS.TASK_STATE_RUNNING
    t.progress.fraction = 0.25
    t.progress.message = "12/48 samples"
    t.progress.figures["bleu4"] = 0.3123456789
    return t


def quantize_task() -> task_pb2.Task:
    t = task_pb2.Task(id="quantize-0000q8", kind=TK.TASK_KIND_QUANTIZE)
    t.state = TS.TASK_STATE_SUCCEEDED
    t.node = "node-a"
    t.created.FromSeconds(1_700_000_200)
    t.quantize.model_dir = "/data/runs/demo/out/final"
    t.quantize.output_dir = "/data/runs/demo/out/final-int8"
    t.quantize.int8 = True
    results = {
        "size_before": 2251530.0,
        "size_after": 634120.0,
        "size_ratio": 3.5506,
        "quantized_bytes_before": 1804400.0,
        "quantized_bytes_after": 451100.0,
        "quantized_ratio": 4.0,
        "disk_before": 2262016.0,
        "disk_after": 700416.0,
        "latency_before_s": 0.0123456,
        "latency_after_s": 0.0098765,
        "tokens_per_s_before": 1296.12345,
        "tokens_per_s_after": 1620.98765,
        "modules_quantized": 14.0,
        "modules_not_quantized": 3.0,
        "experts_quantized": 2.0,
        "fp32_3d_tensors_left": 0.0,
        "bleu4_before": 0.3123456,
        "bleu4_after": 0.3098765,
        "rouge_l_before": 0.5123456,
        "rouge_l_after": 0.5098765,
    }
    t.results.update(results)
    report = {
        "mode": "int8-dynamic-activation",
        "results": results,
        "reload_identical": True,
        "not_quantized": [
            {"module": "lm_head", "reason": "the output head stays fp32 (--include-lm-head)"},
            {"module": "layers.0.router", "reason": "too small to gain"},
            {"module": "layers.1.router", "reason": "too small to gain"},
            {"module": "layers.2.router", "reason": "too small to gain"},
        ],
        "warning": LONG_WARNING,
    }
    t.report_json = json.dumps(report)
    return t


def serve_task() -> task_pb2.Task:
    t = task_pb2.Task(id="serve-0000srv", kind=TK.TASK_KIND_SERVE, state=TS.TASK_STATE_STOPPED)
    t.node = "node-a"
    t.created.FromSeconds(1_700_000_300)
    t.serve.model_dir = "/data/runs/demo/out/final-int8"
    return t
