"""Issue 17, REST beside gRPC, on the tasks screen and in the CLI: a server's HTTP endpoint
is shown beside its gRPC one, the load test offers either, and `gantry serve --http-port`
asks the agent for it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, task_pb2
from textual.widgets import Input

from console.model.serve_form import ServeSettings
from console.net.cluster_file import NodeTarget, TlsPaths, dump_cluster_file
from console.net.tasks_client import NodeTask, completions_url, serve_request
from console.ui.screens.loadtest import LoadTestScreen
from console.verbs.tasks import add_task_verbs
from tests.test_cli import run_cli
from tests.test_tasks_screen import FakeTasksClient, TasksApp, screen_text, shown

TS = task_pb2.TaskState
TK = task_pb2.TaskKind


def running_server(task_id: str, port: int, http_port: int) -> task_pb2.Task:
    t = task_pb2.Task(id=task_id, kind=TK.TASK_KIND_SERVE, state=TS.TASK_STATE_RUNNING)
    t.node = "node-a"
    t.serve.model_dir = "/data/runs/demo/out/final"
    t.endpoint = f"127.0.0.1:{port}"  # nothing listens there: the probe says so
    if http_port:
        t.http_endpoint = f"127.0.0.1:{http_port}"
    return t


async def test_the_detail_shows_both_endpoints_and_the_load_test_offers_either() -> None:
    client = FakeTasksClient(
        [running_server("serve-other", 10, 0), running_server("serve-1", 9, 7)]
    )
    client.tasks[0].node = NodeTarget("node-b", "127.0.0.1:2", token_file=Path("/b/token"))
    app = TasksApp(client)
    async with app.run_test(size=(120, 30)) as pilot:
        await shown(pilot, app)
        await pilot.press("down")  # the server with HTTP
        await pilot.pause()
        text = screen_text(app)
        assert "endpoint 127.0.0.1:9" in text
        assert "HTTP (OpenAI-compatible) http://127.0.0.1:7/v1/completions" in text
        await pilot.press("L")
        for _ in range(20):
            if isinstance(app.screen, LoadTestScreen):
                break
            await pilot.pause()
        screen: Any = app.screen
        assert isinstance(screen, LoadTestScreen)
        assert screen.endpoints == [
            "127.0.0.1:10",
            "http://127.0.0.1:7/v1/completions",
            "127.0.0.1:9",
        ]
        assert screen.query_one("#lt-target", Input).value == "127.0.0.1:9"
        assert screen.token_file is None  # node-a's, not node-b's


def test_the_completions_url_follows_the_agents_tls() -> None:
    task = running_server("serve-1", 9, 7)
    plain = NodeTask(NodeTarget("node-a", "127.0.0.1:1"), task)
    tls = TlsPaths(Path("ca.pem"), Path("c.pem"), Path("c.key"))
    secured = NodeTask(NodeTarget("node-a", "127.0.0.1:1", tls=tls), task)
    assert completions_url(plain) == "http://127.0.0.1:7/v1/completions"
    assert completions_url(secured) == "https://127.0.0.1:7/v1/completions"
    assert completions_url(NodeTask(plain.node, running_server("s", 9, 0))) == ""


def test_gantry_serve_takes_the_http_port() -> None:
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    add_task_verbs(verbs)
    args = parser.parse_args(["serve", "/m", "--port", "9000", "--http-port", "9001"])
    request = serve_request(ServeSettings(args.model, port=args.port, http_port=args.http_port))
    assert (request.serve.port, request.serve.http_port) == (9000, 9001)
    assert parser.parse_args(["serve", "/m"]).http_port == 0  # gRPC only


class ServeAgent(agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """Starts a server that serves at once, on both endpoints; the request is kept."""

    def __init__(self) -> None:
        self.requests: list[agent_service_pb2.StartTaskRequest] = []
        self.task = running_server("serve-1", 9, 9001)

    def StartTask(self, request: Any, context: Any) -> agent_service_pb2.StartTaskResponse:
        self.requests.append(request)
        started = task_pb2.Task(id="serve-1", kind=TK.TASK_KIND_SERVE, node="node-a")
        started.state = TS.TASK_STATE_PENDING
        return agent_service_pb2.StartTaskResponse(task=started)

    def WatchTask(
        self, request: Any, context: Any
    ) -> Iterator[agent_service_pb2.WatchTaskResponse]:
        progress = task_pb2.TaskProgress(task_id="serve-1", state=TS.TASK_STATE_RUNNING)
        yield agent_service_pb2.WatchTaskResponse(progress=progress)

    def ListTasks(self, request: Any, context: Any) -> agent_service_pb2.ListTasksResponse:
        return agent_service_pb2.ListTasksResponse(tasks=[self.task])


def test_gantry_serve_and_task_print_the_http_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = ServeAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    token = tmp_path / "token"
    token.write_text("secret\n")
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [NodeTarget("node-a", f"127.0.0.1:{port}", token)])
    c = ["--cluster", str(cluster)]
    try:
        code, out, err = run_cli(["serve", str(tmp_path / "m"), "--http-port", "9001", *c], capsys)
        assert code == 0, err
        assert agent.requests[0].serve.http_port == 9001
        assert "HTTP (OpenAI-compatible): http://127.0.0.1:9001/v1/completions" in out
        code, out, err = run_cli(
            ["serve", str(tmp_path / "m"), "--http-port", "9001", "--json", *c], capsys
        )
        assert code == 0, err
        assert json.loads(out)["task"]["httpEndpoint"] == "127.0.0.1:9001"
        code, out, err = run_cli(["task", "serve-1", *c], capsys)
        assert code == 0, err
        assert "HTTP (OpenAI-compatible): http://127.0.0.1:9001/v1/completions" in out
        code, out, err = run_cli(["serve", str(tmp_path / "m"), "--http-port", "70000", *c], capsys)
        assert code == 2 and "gantry: --http-port 70000: not a port (1 to 65535, or 0)" in err
    finally:
        server.stop(0)
