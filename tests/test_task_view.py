"""Tasks for people (issue 16): figures with units and a few significant figures, an
evaluation that missed a target called so, progress while a task runs, the verdict
first, and JSON keeping full precision."""

from __future__ import annotations

import json
import re

from console.model.task_view import (
    format_figure,
    format_number,
    format_size,
    misses,
    outcome,
    result_summary,
    targets_met,
    verdict_json,
)
from console.net.cluster_file import NodeTarget
from console.net.tasks_client import NodeTask
from console.verbs.tasks import results_text, task_json, task_line
from tests.task_samples import (
    RAW_BLEU,
    met_eval,
    missed_eval,
    quantize_task,
    running_eval,
    serve_task,
)

NODE = NodeTarget("node-a", "127.0.0.1:1")
# A float printed raw: more than four significant digits after the point, or an exponent.
RAW_FLOAT = re.compile(r"\d\.\d{5,}|\de[+-]\d")


def test_figures_read_with_units_and_three_or_four_significant_figures() -> None:
    assert format_number(RAW_BLEU) == "0.9282"
    assert format_number(41.73456) == "41.73"
    assert format_number(13456.7) == "13,457"
    assert format_size(2251530) == "2.15 MiB"
    assert format_size(634120) == "619 KiB"
    assert format_size(512) == "512 B"
    assert format_figure("size_before", 2251530) == "2.15 MiB"
    assert format_figure("tokens_per_s_batched", 13456.7) == "13,457 tok/s"
    assert format_figure("ttft_ms_p90", 41.73456) == "41.73 ms"
    assert format_figure("latency_before_s", 0.0123456) == "12.35 ms"
    assert format_figure("samples", 48.0) == "48"
    assert format_figure("size_ratio", 3.5506) == "3.55x"


def test_cli_text_has_no_raw_floats_and_json_keeps_them() -> None:
    for task in (met_eval(), missed_eval(), quantize_task(), running_eval()):
        text = task_line(NodeTask(NODE, task)) + "\n" + results_text(task)
        assert not RAW_FLOAT.search(text), text
    text = results_text(met_eval())
    assert "bleu4" in text and "0.9282" in text and "13,457 tok/s" in text
    quantized = results_text(quantize_task())
    assert "2.15 MiB" in quantized and "619 KiB" in quantized and "3.55x" in quantized
    doc = task_json(NodeTask(NODE, met_eval()))
    assert doc["task"]["results"]["bleu4"] == RAW_BLEU
    assert json.loads(json.dumps(doc))["targets_met"] is True


def test_an_eval_that_missed_a_target_is_not_listed_as_succeeded() -> None:
    task = missed_eval()
    assert targets_met(task) is False and outcome(task) == "missed"
    assert [c.text() for c in misses(task)] == ["bleu4 0.21 < 0.25", "rouge_l 0.3012 < 0.45"]
    assert result_summary(task).startswith("bleu4 0.21 < 0.25")
    line = task_line(NodeTask(NODE, task))
    assert "missed: bleu4 0.21 < 0.25; rouge_l 0.3012 < 0.45" in line
    assert "succeeded" not in line
    assert results_text(task).splitlines()[0].startswith("missed: bleu4 0.21 < 0.25")
    doc = task_json(NodeTask(NODE, task))
    assert doc["outcome"] == "missed target" and doc["targets_met"] is False
    assert doc["misses"][1] == {
        "name": "rouge_l",
        "value": 0.3012345,
        "op": ">=",
        "target": 0.45,
        "pass": False,
    }
    assert doc["task"]["state"] == "TASK_STATE_SUCCEEDED"  # the run itself succeeded
    met = met_eval()
    assert outcome(met) == "succeeded" and verdict_json(met)["misses"] == []
    assert result_summary(met).startswith("targets met: bleu4 0.9282")
    # Not an evaluation, or not finished: no verdict.
    assert targets_met(quantize_task()) is None and targets_met(running_eval()) is None
    assert "targets_met" not in verdict_json(serve_task())


def test_a_running_task_shows_its_progress_first() -> None:
    task = running_eval()
    assert result_summary(task) == "25% 12/48 samples"
    line = task_line(NodeTask(NODE, task))
    assert "running: 25% 12/48 samples" in line
    assert "bleu4 0.3123" in results_text(task)


def test_a_failed_task_says_what_went_wrong_first() -> None:
    task = serve_task()
    task.state = task.state.__class__(4)  # TASK_STATE_FAILED
    task.error = "gantry: the model is broken (exit code 2)"
    assert result_summary(task) == "gantry: the model is broken (exit code 2)"
    assert "failed: gantry: the model is broken" in task_line(NodeTask(NODE, task))


def test_a_load_test_task_shows_its_target_where_others_show_a_model() -> None:
    from gantry.v1 import task_pb2

    from console.model.task_view import model_of

    spec = task_pb2.LoadTestTaskSpec(target="10.0.0.5:50051", kind="gantry")
    task = task_pb2.Task(id="lt-1", kind=task_pb2.TASK_KIND_LOADTEST, loadtest=spec)
    assert model_of(task) == "10.0.0.5:50051"
    node = NodeTask(NodeTarget("node-a", "127.0.0.1:1", None), task)
    assert "10.0.0.5:50051" in task_line(node)
    assert model_of(serve_task()) == serve_task().serve.model_dir
