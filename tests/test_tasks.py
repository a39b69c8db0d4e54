"""The agent's task runner: supervised task programs (a stand-in speaking the task
protocol), their progress, results, failure, stop and re-adoption after a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, task_pb2

from agent.tasks import programs
from agent.tasks.runner import TaskError, TaskRunner, check_spec, task_argv

TS = task_pb2.TaskState


@pytest.fixture(autouse=True)
def fake_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = "tests.fixtures.fake_task"
    monkeypatch.setattr(programs, "PROGRAMS", dict.fromkeys(programs.PROGRAMS, fake))


def model(tmp_path: Path, behaviour: str) -> Path:
    path = tmp_path / f"model-{behaviour}"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "behaviour").write_text(behaviour)
    return path


def eval_request(model_dir: Path, data: Path) -> agent_service_pb2.StartTaskRequest:
    request = agent_service_pb2.StartTaskRequest()
    request.eval.model_dir = str(model_dir)
    request.eval.data_path = str(data)
    request.eval.targets.bleu4_min = 0.3
    request.eval.job_name = "demo"
    return request


async def wait_state(runner: TaskRunner, task_id: str, states: set[int]) -> task_pb2.Task:
    for _ in range(200):
        task = runner.get(task_id)
        if task.state in states:
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {runner.get(task_id).state}")


async def test_eval_task_reports_progress_and_results(tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    data.write_text("{}\n")
    runner = TaskRunner(tmp_path / "agent", "node-a")
    task = await runner.start(eval_request(model(tmp_path, "eval"), data))
    assert task.id.startswith("eval-") and task.node == "node-a"
    seen = []
    async for progress, final in runner.watch(task.id):
        if progress is not None:
            seen.append((round(progress.fraction, 2), progress.message))
        else:
            assert final is not None
            task = final
    assert seen[-1] == (1.0, "done") and (0.25, "1/4") in seen
    assert task.state == TS.TASK_STATE_SUCCEEDED
    assert dict(task.results) == {"bleu4": 0.4, "passed": 1.0}
    assert json.loads(task.report_json)["targets"]["bleu4"]["pass"] is True
    # The record survives the agent: a new runner on the same data dir knows it.
    again = TaskRunner(tmp_path / "agent", "node-a")
    again.recover()
    assert again.get(task.id).results["bleu4"] == 0.4


async def test_failed_task_says_why_and_bad_specs_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "heldout.jsonl"
    data.write_text("{}\n")
    runner = TaskRunner(tmp_path / "agent", "node-a")
    task = await runner.start(eval_request(model(tmp_path, "fail"), data))
    task = await wait_state(runner, task.id, {TS.TASK_STATE_FAILED})
    assert task.error == "gantry: the model is broken on purpose (exit code 2)"
    with pytest.raises(TaskError, match=r"no config\.json"):
        await runner.start(eval_request(tmp_path / "nope", data))
    with pytest.raises(TaskError, match="does not exist"):
        await runner.start(eval_request(model(tmp_path, "x"), tmp_path / "missing.jsonl"))
    with pytest.raises(TaskError, match="no spec"):
        await runner.start(agent_service_pb2.StartTaskRequest())


async def test_serve_task_runs_until_stopped_and_is_readopted(tmp_path: Path) -> None:
    runner = TaskRunner(tmp_path / "agent", "node-a")
    request = agent_service_pb2.StartTaskRequest()
    request.serve.model_dir = str(model(tmp_path, "serve"))
    task = await runner.start(request)
    task = await wait_state(runner, task.id, {TS.TASK_STATE_RUNNING})
    assert task.endpoint == "127.0.0.1:4242"
    # The agent restarts: the server goes on, and the new agent adopts it.
    await runner.close()
    again = TaskRunner(tmp_path / "agent", "node-a")
    again.recover()
    assert again.get(task.id).state == TS.TASK_STATE_RUNNING
    stopped = await again.stop(task.id, grace_s=5)
    assert stopped.state == TS.TASK_STATE_STOPPED


def test_argv_of_each_kind(tmp_path: Path) -> None:
    t = task_pb2.Task(kind=task_pb2.TaskKind.TASK_KIND_SERVE)
    t.serve.model_dir, t.serve.port, t.serve.max_batch_size = "/m", 9000, 4
    argv = task_argv(t, tmp_path)
    assert argv[1:] == [
        "-m",
        "tests.fixtures.fake_task",
        "--model",
        "/m",
        "--listen",
        "127.0.0.1:9000",
        "--ready-file",
        str(tmp_path / "ready.json"),
        "--drain-s",
        "8",
        "--max-batch-size",
        "4",
    ]
    q = task_pb2.Task(kind=task_pb2.TaskKind.TASK_KIND_QUANTIZE)
    q.quantize.model_dir = str(model(tmp_path, "q"))
    q.quantize.output_dir, q.quantize.weight_only = "/o", True
    assert task_argv(q, tmp_path)[-3:] == ["--out", "/o", "--weight-only"]
    with pytest.raises(TaskError, match="only --int8"):
        check_spec(q)
    q.quantize.int8 = True
    q.quantize.eval_data_path, q.quantize.eval_max_samples = str(tmp_path / "h.jsonl"), 5
    with pytest.raises(TaskError, match=r"eval data .* does not exist"):
        check_spec(q)
    (tmp_path / "h.jsonl").write_text("{}\n")
    check_spec(q)
    assert task_argv(q, tmp_path)[-6:] == [
        "/o",
        "--eval",
        str(tmp_path / "h.jsonl"),
        "--max-samples",
        "5",
        "--weight-only",
    ]
