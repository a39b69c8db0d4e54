"""--engine-cpus (agent.serve.cpu_binding): the plan (pure), the flag's one-line errors,
a real server whose engine process and front end run on the CPUs planned, and `gantry
serve --engine-cpus` through the agent's serve task."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest
from gantry.v1 import task_pb2

from agent.serve.cpu_binding import (
    Binding,
    BindingError,
    format_cpus,
    parse_cpus,
    plan_binding,
)
from agent.serve.flags import parse_args
from agent.tasks.runner import TaskRunner, task_argv
from console.model.serve_form import ServeSettings
from console.net.tasks_client import serve_request
from tests.test_serve import launch, model_dir, stop_server
from tests.test_serve_engine_process import engine_of

__all__ = ["model_dir"]

TWO = frozenset({0, 1})


def test_cpu_lists_read_and_write_as_the_kernel_writes_them() -> None:
    assert parse_cpus("3") == {3}
    assert parse_cpus("0,2-3, 6") == {0, 2, 3, 6}
    assert format_cpus(frozenset({0, 2, 3, 6, 7, 8})) == "0,2-3,6-8"
    for bad in ("", "a", "1-", "3-1", "1;2"):
        with pytest.raises(BindingError, match="--engine-cpus"):
            parse_cpus(bad)


def test_none_auto_and_lists_plan_the_engine_and_front_end_cpus() -> None:
    assert plan_binding("none", TWO, 1) is None
    assert plan_binding("auto", TWO, 1) == Binding(frozenset({1}), frozenset({0}))
    assert plan_binding("AUTO", frozenset(range(8)), 2) == Binding(
        frozenset({6, 7}), frozenset(range(6))
    )
    # auto where the front end would have nothing: no binding, not an error
    assert plan_binding("auto", frozenset({0}), 1) is None
    assert plan_binding("auto", TWO, 2) is None
    assert plan_binding("0", TWO, 1) == Binding(frozenset({0}), frozenset({1}))
    assert plan_binding("4-5", frozenset({2, 4, 5, 9}), 2) == Binding(
        frozenset({4, 5}), frozenset({2, 9})
    )


def test_a_list_it_cannot_apply_is_one_line_naming_the_fix() -> None:
    with pytest.raises(BindingError) as missing:
        plan_binding("5", TWO, 1)
    assert str(missing.value) == ("--engine-cpus 5: CPU 5 is not one this server may use (0-1)")
    with pytest.raises(BindingError) as everything:
        plan_binding("0-1", TWO, 1)
    assert "leaves no CPU for the front end" in str(everything.value)


def test_the_server_refuses_a_cpu_it_may_not_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beyond = max(os.sched_getaffinity(0)) + 1
    (tmp_path / "token").write_text("t" * 32)
    with pytest.raises(SystemExit) as exited:
        token = str(tmp_path / "token")
        parse_args(["--model", str(tmp_path), "--token-file", token, "--engine-cpus", str(beyond)])
    assert exited.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    allowed = format_cpus(frozenset(os.sched_getaffinity(0)))
    assert line.endswith(
        f"error: --engine-cpus {beyond}: CPU {beyond} is not one this server may use ({allowed})"
    )


def affinity(process: psutil.Process) -> set[frozenset[int]]:
    """The CPU sets of every thread of `process`."""
    return {frozenset(os.sched_getaffinity(t.id)) for t in process.threads()}


def test_a_bound_server_runs_its_engine_and_front_end_apart(
    model_dir: Path, tmp_path: Path
) -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    engine_cpu = max(allowed)
    flag = str(engine_cpu) if len(allowed) > 1 else "auto"
    served = launch(model_dir, tmp_path / "server", ["--engine-cpus", flag])
    try:
        engine = engine_of(served)
        front = psutil.Process(served.proc.pid)
        if len(allowed) > 1:
            assert affinity(engine) == {frozenset({engine_cpu})}
            assert affinity(front) == {allowed - {engine_cpu}}
            assert f"engine on CPUs {engine_cpu}, front end on CPUs" in served.logs()
        else:  # one CPU: auto leaves both where they were, and says so
            assert affinity(engine) == affinity(front) == {allowed}
            assert "--engine-cpus auto: not bound (1 CPUs, 1 engine threads)" in served.logs()
    finally:
        stop_server(served)


def test_gantry_serve_passes_engine_cpus_to_the_agents_server(tmp_path: Path) -> None:
    request = serve_request(ServeSettings(str(tmp_path), engine_cpus="auto"))
    assert request.serve.engine_cpus == "auto"
    serve = task_pb2.TaskKind.TASK_KIND_SERVE
    argv = task_argv(task_pb2.Task(kind=serve, serve=request.serve), tmp_path)
    assert argv[argv.index("--engine-cpus") + 1] == "auto"
    plain = serve_request(ServeSettings(str(tmp_path))).serve
    unbound = task_argv(task_pb2.Task(kind=serve, serve=plain), tmp_path)
    assert "--engine-cpus" not in unbound


async def test_a_serve_task_with_cpus_the_node_lacks_fails_with_the_servers_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    beyond = max(os.sched_getaffinity(0)) + 1
    runner = TaskRunner(tmp_path / "agent", "node-a")
    try:
        task = await runner.start(
            serve_request(ServeSettings(str(tmp_path / "model"), engine_cpus=str(beyond)))
        )
        for _ in range(1200):  # the server's imports, on a busy machine
            task = runner.get(task.id)
            if task.state == task_pb2.TaskState.TASK_STATE_FAILED:
                break
            await asyncio.sleep(0.05)
        assert task.state == task_pb2.TaskState.TASK_STATE_FAILED, task
        assert f"--engine-cpus {beyond}: CPU {beyond} is not one this server may use" in task.error
    finally:
        await runner.close()
