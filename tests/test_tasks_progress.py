"""A running task's progress rides on its record (issue 16): the agent's listing shows
how far an evaluation has got, without a watch stream; an ended task's last progress
carries its final state."""

from __future__ import annotations

from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, task_pb2

from agent.tasks import programs
from agent.tasks.runner import TaskRunner

TS = task_pb2.TaskState


@pytest.fixture(autouse=True)
def fake_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = "tests.fixtures.fake_task"
    monkeypatch.setattr(programs, "PROGRAMS", dict.fromkeys(programs.PROGRAMS, fake))


async def test_the_listing_carries_each_running_tasks_latest_progress(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "behaviour").write_text("eval")
    data = tmp_path / "heldout.jsonl"
    data.write_text("{}\n")
    request = agent_service_pb2.StartTaskRequest()
    request.eval.model_dir, request.eval.data_path = str(model), str(data)
    runner = TaskRunner(tmp_path / "agent", "node-a")
    task = await runner.start(request)
    listed_while_running = []
    async for progress, _ in runner.watch(task.id):
        if progress is not None and progress.message != "done":
            # The listing, not the stream: what `ListTasks` (and the tasks screen) shows.
            listed = next(t for t in runner.all() if t.id == task.id)
            figures = dict(listed.progress.figures)
            listed_while_running.append((listed.state, listed.progress.message, figures))
    assert listed_while_running
    for state, message, figures in listed_while_running:
        assert state == TS.TASK_STATE_RUNNING
        assert message in {"1/4", "2/4", "3/4"} and "bleu4" in figures
    ended = runner.get(task.id)
    assert ended.state == TS.TASK_STATE_SUCCEEDED
    assert ended.progress.state == TS.TASK_STATE_SUCCEEDED and ended.progress.fraction == 1.0
