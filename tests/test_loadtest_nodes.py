"""`gantry loadtest --from-nodes`: two real agents on 127.0.0.1 run the load workers, as
audited tasks, toward a real gRPC server on loopback; the console merges their figures."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sqlite3
import time
from pathlib import Path

import pytest
from gantry.v1 import task_pb2

from console.loadtest.config import LoadTestConfig, LoadTestError, validate
from console.loadtest.histogram import Histogram
from console.loadtest.progress import Progress
from console.loadtest.runner import run_loadtest
from console.net.cluster_file import NodeTarget, dump_cluster_file
from console.net.loadtest_nodes import open_node_tasks
from console.net.tasks_client import NodeTask, TasksClient
from tests.conftest import StartAgent
from tests.loadtest_servers import Timing, start_grpc

TOKEN = "target-token-123"
TK, TS = task_pb2.TaskKind, task_pb2.TaskState
TERMINAL = (TS.TASK_STATE_SUCCEEDED, TS.TASK_STATE_FAILED, TS.TASK_STATE_STOPPED)


async def load_tasks(targets: list[NodeTarget]) -> list[NodeTask]:
    """The agents' load test tasks, once they have ended (a worker exits just after it
    sent its last figures)."""
    deadline = time.monotonic() + 30
    async with TasksClient(targets) as client:
        while True:
            tasks, errors = await client.list()
            assert not errors
            tasks = [t for t in tasks if t.task.kind == TK.TASK_KIND_LOADTEST]
            if all(t.task.state in TERMINAL for t in tasks) or time.monotonic() > deadline:
                return tasks
            await asyncio.sleep(0.1)


def audit_trail(data_dir: Path) -> list[tuple[str, dict[str, str]]]:
    with sqlite3.connect(data_dir / "journal.sqlite3") as db:
        rows = db.execute("SELECT what, details FROM audit ORDER BY id").fetchall()
    return [(what, json.loads(details)) for what, details in rows]


async def test_two_nodes_load_one_server_and_the_figures_merge_exactly(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])
    token_file = tmp_path / "target.token"
    token_file.write_text(TOKEN)
    server, address, servicer = await start_grpc(
        Timing(first_s=0.002, gap_s=0.001, tokens=3), token=TOKEN
    )
    config = LoadTestConfig(
        target=address,
        rate=40.0,
        duration_s=2.0,
        max_tokens=3,
        token_file=token_file,
        from_nodes=("node-a", "node-b"),
        cluster=cluster,
    )
    validate(config)
    try:
        probes = servicer.streams
        async with open_node_tasks(config) as nodes:
            report = await run_loadtest(config, nodes=nodes)
        served = servicer.streams - probes
    finally:
        await server.stop(0)

    # 40/s for 2 s, shared by the two nodes' workers (k % 2): every request answered.
    assert report.sent == 80 and report.ok == 80 and report.error_count == 0, report.notes
    # The console's one preflight probe; the rest came from the nodes' workers, with the token.
    assert served == 1 + 80
    assert report.workers == 2 and not report.partial
    by_node = {n.node: n for n in report.nodes}
    assert set(by_node) == {"node-a", "node-b"}
    assert report.sent == sum(n.sent for n in report.nodes)
    assert all(n.sent == 40 and n.ok == 40 for n in report.nodes)
    assert all(n.send_lag_p99_ms is not None for n in report.nodes)  # per-node send lag
    table = report.to_table()
    assert "send lag p99" in table and "node-a" in table and "node-b" in table
    assert [n["node"] for n in report.to_json()["nodes"]] == ["node-a", "node-b"]

    # Each node's task reports its own totals: the console's merge is exactly their sum.
    tasks = await load_tasks([a.target for a in agents])
    assert sorted(t.task.node for t in tasks) == ["node-a", "node-b"]
    merged = Histogram()
    for found in tasks:
        task = found.task
        assert task.state == TS.TASK_STATE_SUCCEEDED, task.error
        own = json.loads(task.report_json)
        assert own["sent"] == by_node[task.node].sent
        merged.merge(Histogram.decode(own["histograms"]["latency"]))
        # The record keeps no token and no requests.
        assert task.loadtest.token == "" and not task.loadtest.bodies
        assert task.loadtest.body_count > 0 and task.loadtest.target == address
        assert TOKEN.encode() not in task.SerializeToString()
    assert merged.counts() == Histogram.decode(report.histograms["latency"]).counts()
    assert merged.count == 80

    for agent in agents:  # audited, without the token
        starts = [d for what, d in audit_trail(agent.data_dir) if what == "task-start"]
        assert [d["kind"] for d in starts] == ["loadtest"]
        assert starts[0]["outcome"] == "ok" and address in starts[0]["spec"]
        assert TOKEN not in json.dumps(starts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("problem", ["unreachable", "refuses"])
async def test_a_node_that_cannot_take_its_share_stops_the_run_before_it_starts(
    local_agents: StartAgent, tmp_path: Path, problem: str
) -> None:
    good = local_agents("node-a")
    if problem == "unreachable":
        other = NodeTarget("node-b", f"127.0.0.1:{free_port()}", good.target.token_file)
    else:
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-token")
        other = NodeTarget("node-b", local_agents("node-b").address, wrong)
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [good.target, other])
    server, address, servicer = await start_grpc(Timing())
    config = LoadTestConfig(
        target=address, rate=20.0, duration_s=1.0, from_nodes=("node-a", "node-b"), cluster=cluster
    )
    try:
        probes = servicer.calls + servicer.streams
        async with open_node_tasks(config) as nodes:
            with pytest.raises(LoadTestError) as failed:
                await run_loadtest(config, nodes=nodes)
        sent = servicer.calls + servicer.streams - probes
    finally:
        await server.stop(0)
    message = str(failed.value)
    assert message.startswith("node-b: ") and "\n" not in message
    expected = "unreachable" if problem == "unreachable" else "token refused"
    assert expected in message
    assert sent == 1  # the console's preflight probe; no load was sent
    # node-a's worker was stopped, not left to load the target.
    tasks = await load_tasks([good.target])
    assert tasks and all(t.task.state == TS.TASK_STATE_STOPPED for t in tasks)


async def test_a_node_the_cluster_file_does_not_name_is_one_line(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [NodeTarget("node-a", "127.0.0.1:1", tmp_path / "t")])
    config = LoadTestConfig(target="127.0.0.1:2", rate=1.0, from_nodes=("node-z",))
    with pytest.raises(LoadTestError, match=r"node-z not in .* \(it has node-a\)"):
        open_node_tasks(dataclasses.replace(config, cluster=cluster))
    with pytest.raises(LoadTestError, match="--from-nodes needs the cluster's agents"):
        await run_loadtest(config)


async def test_a_stopped_run_from_the_nodes_keeps_every_figure_sent(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])
    server, address, _ = await start_grpc(Timing(delay_s=0.001))
    config = LoadTestConfig(
        target=address,
        method="gantry.v1.InferenceService/Complete",
        data='{"prompt": "hi"}',
        rate=30.0,
        duration_s=60.0,
        from_nodes=("node-a", "node-b"),
        cluster=cluster,
    )
    validate(config)
    stop = asyncio.Event()
    shown: list[Progress] = []

    def on_progress(progress: Progress) -> None:
        shown.append(progress)
        if progress.sent >= 30:
            stop.set()  # as Ctrl-C does, once the nodes are well under way

    try:
        async with open_node_tasks(config) as nodes:
            report = await run_loadtest(config, on_progress, stop, nodes=nodes)
    finally:
        await server.stop(0)
    assert report.partial and 30 <= report.sent < 60 * 30
    assert report.sent == sum(n.sent for n in report.nodes)
    assert shown[-1].done and shown[-1].sent == report.sent
    tasks = await load_tasks([a.target for a in agents])
    assert all(t.task.state == TS.TASK_STATE_STOPPED for t in tasks)
    own = sum(json.loads(t.task.report_json)["sent"] for t in tasks)
    assert own == report.sent  # the last figures came back before the workers stopped
