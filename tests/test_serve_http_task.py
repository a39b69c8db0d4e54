"""Issue 17, REST beside gRPC, in the agent's serve task: `ServeTaskSpec.http_port` becomes
the server's `--http-port`, and the task records the HTTP endpoint its server reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, task_pb2

from agent.tasks import programs
from agent.tasks.runner import TaskError, TaskRunner, check_spec, task_argv

TS = task_pb2.TaskState


@pytest.fixture(autouse=True)
def fake_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        programs, "PROGRAMS", dict.fromkeys(programs.PROGRAMS, "tests.fixtures.fake_http_serve")
    )


def model(tmp_path: Path) -> str:
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    return str(tmp_path / "model")


def serve_task(model_dir: str, port: int, http_port: int) -> task_pb2.Task:
    task = task_pb2.Task(kind=task_pb2.TaskKind.TASK_KIND_SERVE)
    task.serve.model_dir, task.serve.port, task.serve.http_port = model_dir, port, http_port
    return task


def test_the_http_port_reaches_the_servers_command_line(tmp_path: Path) -> None:
    argv = task_argv(serve_task("/m", 9000, 9001), tmp_path)
    assert argv[argv.index("--http-port") + 1] == "9001"
    assert "--http-port" not in task_argv(serve_task("/m", 9000, 0), tmp_path)  # gRPC only


def test_bad_http_ports_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="serve: --http-port 70000 is not a port"):
        check_spec(serve_task(model(tmp_path), 0, 70000))
    with pytest.raises(TaskError, match="--http-port 9000 is the gRPC --port too"):
        check_spec(serve_task(model(tmp_path), 9000, 9000))
    check_spec(serve_task(model(tmp_path), 0, 9000))


async def test_the_task_records_both_endpoints(tmp_path: Path) -> None:
    runner = TaskRunner(tmp_path / "agent", "node-a")
    request = agent_service_pb2.StartTaskRequest()
    request.serve.model_dir, request.serve.http_port = model(tmp_path), 8123
    task = await runner.start(request)
    try:
        for _ in range(200):
            task = runner.get(task.id)
            if task.state == TS.TASK_STATE_RUNNING:
                break
            await asyncio.sleep(0.05)
        assert task.state == TS.TASK_STATE_RUNNING
        assert (task.endpoint, task.http_endpoint) == ("127.0.0.1:4242", "127.0.0.1:8123")
        assert task.progress.message == "serving on 127.0.0.1:4242 (HTTP 127.0.0.1:8123)"
        again = TaskRunner(tmp_path / "agent", "node-a")
        again.recover()  # the record keeps it across an agent restart
        assert again.get(task.id).http_endpoint == "127.0.0.1:8123"
    finally:
        await runner.stop(task.id, grace_s=5)
