"""`gantry eval` / `gantry tasks` against a gRPC agent stand-in on 127.0.0.1 (issue 16):
an evaluation that missed a target says so in its text and its JSON, and the verb exits
non-zero; figures print for people, the JSON keeps them whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, task_pb2

from console.net.cluster_file import NodeTarget, dump_cluster_file
from tests.task_samples import RAW_BLEU, met_eval, missed_eval, quantize_task, running_eval
from tests.test_cli import run_cli
from tests.test_task_view import RAW_FLOAT


class TaskAgent(agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """Answers the task RPCs: a started evaluation reports progress, then ends as
    `final`; the listing holds `listed`."""

    def __init__(self, final: task_pb2.Task, listed: list[task_pb2.Task]) -> None:
        self.final = final
        self.listed = listed

    def StartTask(self, request: Any, context: Any) -> agent_service_pb2.StartTaskResponse:
        started = task_pb2.Task(id=self.final.id, kind=self.final.kind, node="node-a")
        started.state = task_pb2.TaskState.TASK_STATE_RUNNING
        return agent_service_pb2.StartTaskResponse(task=started)

    def WatchTask(
        self, request: Any, context: Any
    ) -> Iterator[agent_service_pb2.WatchTaskResponse]:
        yield agent_service_pb2.WatchTaskResponse(progress=running_eval().progress)
        yield agent_service_pb2.WatchTaskResponse(task=self.final)

    def ListTasks(self, request: Any, context: Any) -> agent_service_pb2.ListTasksResponse:
        return agent_service_pb2.ListTasksResponse(tasks=self.listed)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, TaskAgent]]:
    agent = TaskAgent(missed_eval(), [met_eval(), missed_eval(), quantize_task(), running_eval()])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    token = tmp_path / "token"
    token.write_text("secret\n")
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [NodeTarget("node-a", f"127.0.0.1:{port}", token)])
    try:
        yield path, agent
    finally:
        server.stop(0)


def test_an_eval_that_missed_a_target_says_so_and_exits_non_zero(
    cluster: tuple[Path, TaskAgent], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = cluster
    c = ["--cluster", str(path)]
    verb = ["eval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "h.jsonl")]
    code, out, err = run_cli([*verb, *c], capsys)
    assert code == 1, err
    assert "25% 12/48 samples bleu4 0.3123" in out  # progress while it ran
    assert "missed: bleu4 0.21 < 0.25; rouge_l 0.3012 < 0.45" in out
    assert "succeeded" not in out and not RAW_FLOAT.search(out)

    code, out, err = run_cli([*verb, "--json", *c], capsys)
    assert code == 1, err
    doc = json.loads(out)
    assert doc["targets_met"] is False and doc["outcome"] == "missed target"
    assert [m["name"] for m in doc["misses"]] == ["bleu4", "rouge_l"]
    assert doc["misses"][1]["value"] == 0.3012345


def test_an_eval_that_met_its_targets_exits_zero(
    cluster: tuple[Path, TaskAgent], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, agent = cluster
    agent.final = met_eval()
    verb = ["eval", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "h.jsonl")]
    code, out, err = run_cli([*verb, "--cluster", str(path)], capsys)
    assert code == 0, err
    assert "succeeded: targets met: bleu4 0.9282" in out


def test_tasks_lists_verdicts_progress_and_sizes_for_people(
    cluster: tuple[Path, TaskAgent], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = cluster
    code, out, err = run_cli(["tasks", "--cluster", str(path)], capsys)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "missed: bleu4 0.21 < 0.25" in lines["eval-0000miss"]
    assert "2.15 MiB → 619 KiB (3.55x)" in lines["quantize-0000q8"]
    assert "running: 25% 12/48 samples" in lines["eval-00000run"]
    assert not RAW_FLOAT.search(out) and "e+06" not in out
    code, out, err = run_cli(["tasks", "--json", "--cluster", str(path)], capsys)
    tasks = {t["task"]["id"]: t for t in json.loads(out)["tasks"]}
    assert tasks["eval-00000met"]["task"]["results"]["bleu4"] == RAW_BLEU
    assert tasks["eval-00000met"]["targets_met"] is True
    assert tasks["eval-0000miss"]["targets_met"] is False
    assert tasks["eval-00000run"]["task"]["progress"]["message"] == "12/48 samples"
