"""Load from the cluster without servers: the task spec and the snapshots as the contract
carries them, what the agent accepts, keeps and audits, and the report's figures by node."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, task_pb2
from gantry.v1.rules import ValidationError
from google.protobuf import json_format

from agent.rpc.tasks import spec_details
from agent.rpc.validation import validate_request
from agent.tasks.loadtest_task import SPEC_FILE, keep_spec
from agent.tasks.programs import task_argv
from console.loadtest.aggregate import Aggregate
from console.loadtest.cluster_workers import ClusterWorkers, cluster_plan
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.histogram import Histogram
from console.loadtest.node_main import run_worker
from console.loadtest.node_wire import (
    CARRIED_TARGET_FIELDS,
    WorkerRun,
    snapshot_from_message,
    snapshot_json,
    snapshot_message,
    task_spec,
    worker_run,
)
from console.loadtest.plan import make_plan
from console.loadtest.recorder import Snapshot
from console.loadtest.report import Report
from console.loadtest.targets import TargetSpec
from console.loadtest.tls import TlsSettings

TARGET = TargetSpec(
    kind="gantry",
    address="10.0.0.9:50051",
    method="gantry.v1.InferenceService/Generate",
    streaming=True,
    bodies=(b"\x0a\x01a", b"\x0a\x01b"),
    token="s3cret-token",
    timeout_s=7.5,
    prompt_set="built-in: 2 prompts",
    metadata=(("x-tenant", "blue"),),
    tls=TlsSettings(ca_pem=b"CA", cert_pem=b"CERT", key_pem=b"KEY-PEM", server_name="inf"),
)
CONFIG = LoadTestConfig(
    target="10.0.0.9:50051",
    schedule="20:2s,ramp:40:3s",
    warmup_s=1.0,
    seed=11,
    slo_ttft_ms=250.0,
    from_nodes=("node-a", "node-b"),
    workers=2,
)


def a_run(worker: int = 3, config: LoadTestConfig = CONFIG) -> WorkerRun:
    plan = cluster_plan(make_plan(config), config)
    return WorkerRun(TARGET, plan, worker, config.slo_ttft_ms, None, 1_800_000_000.25)


def test_a_worker_run_crosses_the_contract_unchanged() -> None:
    run = a_run()
    assert run.plan.workers == 4  # two nodes, --workers 2 on each
    spec = task_spec(run)
    back = worker_run(task_pb2.LoadTestTaskSpec.FromString(spec.SerializeToString()))
    assert back == run
    closed = LoadTestConfig(target="h:1", concurrency=8, requests=100, from_nodes=("a", "b"))
    run = a_run(1, closed)
    assert worker_run(task_spec(run)) == run
    unbounded = LoadTestConfig(target="h:1", rate=5.0, requests=10, from_nodes=("a",))
    run = a_run(0, unbounded)
    assert run.plan.timeline is not None and run.plan.timeline.total_s == math.inf
    assert worker_run(task_spec(run)) == run


def test_every_field_of_a_target_is_carried() -> None:
    # A field added to TargetSpec must cross to the nodes too, or runs from them refuse it.
    assert {f.name for f in dataclasses.fields(TargetSpec)} <= CARRIED_TARGET_FIELDS


def test_a_snapshot_crosses_the_contract_exactly() -> None:
    snap = Snapshot(3, at=105.5, sent=7, completed=6, ok=5, good=4, tokens=20)
    snap.hists = {"latency": Histogram(), "send_lag": Histogram()}
    for value in (1.5, 2.25, 900.0):
        snap.hists["latency"].record(value)
    snap.hists["send_lag"].record(0.3)
    snap.errors, snap.finishes = {"UNAVAILABLE": 1}, {"length": 5}
    snap.last_send, snap.last_completion = 104.0, 105.25
    snap.final, snap.window_end, snap.unfinished = True, 104.5, 1
    # The node's clock starts the run at 100, this console's at 7000.
    message = snapshot_message(snap, 100.0, seq=4)
    line = json.loads(json.dumps(snapshot_json(message)))
    parsed = task_pb2.LoadTestSnapshot()
    json_format.ParseDict(line, parsed)  # as the agent's runner reads the task's line
    back = snapshot_from_message(parsed, 7000.0)
    assert parsed.seq == 4
    assert back.at == 7005.5 and back.last_send == 7004.0 and back.last_completion == 7005.25
    assert back.window_end == 7004.5 and back.final and back.unfinished == 1
    assert (back.sent, back.completed, back.ok, back.good, back.tokens) == (7, 6, 5, 4, 20)
    assert back.errors == {"UNAVAILABLE": 1} and back.finishes == {"length": 5}
    for name, hist in snap.hists.items():
        assert back.hists[name].counts() == hist.counts()
    empty = snapshot_from_message(snapshot_message(Snapshot(0, 100.0), 100.0, 1), 5.0)
    assert empty.last_send == 0.0 and empty.window_end == 0.0 and empty.hists == {}


def start_request(**changes: object) -> agent_service_pb2.StartTaskRequest:
    spec = task_spec(a_run())
    for name, value in changes.items():
        setattr(spec, name, value)
    return agent_service_pb2.StartTaskRequest(loadtest=spec)


def test_the_agent_accepts_a_load_test_spec_and_refuses_bad_ones() -> None:
    validate_request("StartTask", start_request())
    bad = {
        "target": ("", "loadtest.target"),
        "kind": ("ftp", "loadtest.kind"),
        "worker": (4, "loadtest.worker"),
        "workers": (0, "loadtest.workers"),
        "arrival": ("closed", "loadtest.arrival"),
        "timeout_s": (0.0, "loadtest.timeout_s"),
        "start_unix_s": (math.nan, "loadtest.start_unix_s"),
        "token": ("x" * 600, "loadtest.token"),
    }
    for name, (value, field) in bad.items():
        with pytest.raises(ValidationError) as refused:
            validate_request("StartTask", start_request(**{name: value}))
        assert str(refused.value).startswith(field) and "\n" not in str(refused.value)
    no_bodies = start_request()
    del no_bodies.loadtest.bodies[:]
    with pytest.raises(ValidationError, match=r"loadtest\.bodies"):
        validate_request("StartTask", no_bodies)
    http = start_request(kind="http", target="10.0.0.9:8000")
    with pytest.raises(ValidationError, match="not an http"):
        validate_request("StartTask", http)
    validate_request("StartTask", start_request(kind="http", target="http://h:8000/v1/x"))


def test_the_record_and_the_audit_keep_no_secret(tmp_path: Path) -> None:
    request = start_request()
    task = task_pb2.Task(id="loadtest-1", kind=task_pb2.TaskKind.TASK_KIND_LOADTEST)
    task.loadtest.CopyFrom(request.loadtest)
    path = keep_spec(task, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    whole = task_pb2.LoadTestTaskSpec.FromString(path.read_bytes())
    assert whole == request.loadtest  # the program gets everything...
    kept = task.SerializeToString()  # ...the record none of the secrets
    for raw in (b"s3cret-token", b"KEY-PEM", b"blue", b"\x0a\x01a"):
        assert raw not in kept
    assert task.loadtest.body_count == 2 and task.loadtest.tls.ca_pem == b"CA"
    argv = task_argv(task, tmp_path)
    assert argv[1:] == ["-m", "console.loadtest.node_main", "--spec", str(tmp_path / SPEC_FILE)]
    details = spec_details(request)
    assert details["kind"] == "loadtest" and "10.0.0.9:50051" in details["spec"]
    assert "token set" in details["spec"] and "x-tenant" in details["spec"]
    for secret in ("s3cret-token", "KEY-PEM", "blue"):
        assert secret not in json.dumps(details)


def snap(worker: int, sent: int, lags: list[float], latencies: list[float]) -> Snapshot:
    s = Snapshot(worker, at=1.0, sent=sent, completed=sent, ok=sent - 1, final=True)
    s.errors = {"INTERNAL": 1}
    s.hists = {"send_lag": Histogram(), "latency": Histogram()}
    for value in lags:
        s.hists["send_lag"].record(value)
    for value in latencies:
        s.hists["latency"].record(value)
    return s


def test_the_report_has_each_nodes_figures_and_names_a_late_one() -> None:
    config = LoadTestConfig(target="h:1", rate=10.0, from_nodes=("node-a", "node-b"))
    plan = cluster_plan(make_plan(config), config)
    aggregate = Aggregate(plan, 0.0, plan.workers, node_of={0: "node-a", 1: "node-b"})
    aggregate.add(snap(0, 10, [0.2] * 10, [5.0] * 9))
    aggregate.add(snap(1, 12, [0.3] * 6 + [80.0] * 6, [7.0] * 11))
    report = aggregate.to_report(
        config, method="m", kind="gantry", streaming=False, started_at="t", notes=[]
    )
    by_node = {n.node: n for n in report.nodes}
    assert report.sent == sum(n.sent for n in report.nodes) == 22
    assert report.error_count == sum(n.errors for n in report.nodes) == 2
    assert by_node["node-a"].send_lag_p99_ms == pytest.approx(0.2, abs=0.01)
    assert by_node["node-b"].send_lag_p99_ms == pytest.approx(80.0, rel=0.01)
    assert by_node["node-b"].latency_p99_ms == pytest.approx(7.0, rel=0.01)
    late = [n for n in report.notes if n.startswith("node-b's send lag p99")]
    assert len(late) == 1 and not [n for n in report.notes if n.startswith("node-a's")]
    table = report.to_table()
    assert "send lag p99" in table and "80.0" in table.split("node-b")[1].splitlines()[0]
    again = Report.from_json(json.loads(json.dumps(report.to_json())))
    assert again.nodes == report.nodes
    assert Report.from_json({**report.to_json(), "nodes": None}).nodes == []


def test_a_closed_loop_too_small_for_the_nodes_workers_is_refused() -> None:
    config = LoadTestConfig(target="h:1", concurrency=2, from_nodes=("a", "b"), workers=2)
    plan = cluster_plan(make_plan(config), config)

    class NoAgents:
        async def start(self, node: str, spec: task_pb2.LoadTestTaskSpec) -> str:
            raise AssertionError("nothing may start")

        def watch(
            self, node: str, task_id: str
        ) -> AsyncIterator[task_pb2.TaskProgress | task_pb2.Task]:
            raise AssertionError

        async def stop(self, node: str, task_id: str) -> None:
            raise AssertionError

    workers = ClusterWorkers(TARGET, plan, config, NoAgents())
    with pytest.raises(LoadTestError, match="--concurrency 2 is below the 4 workers"):
        asyncio.run(workers.start())


class FakeNodes:
    """Agents whose node-b worker cannot reach the target: its task fails before ready."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[tuple[str, str]] = []

    async def start(self, node: str, spec: task_pb2.LoadTestTaskSpec) -> str:
        self.started.append(node)
        return f"loadtest-{node}"

    async def watch(
        self, node: str, task_id: str
    ) -> AsyncIterator[task_pb2.TaskProgress | task_pb2.Task]:
        if node == "node-a":
            yield task_pb2.TaskProgress(task_id=task_id, message="ready")
            await asyncio.Event().wait()  # runs until stopped
        failed = task_pb2.Task(id=task_id, state=task_pb2.TaskState.TASK_STATE_FAILED)
        failed.error = "cannot connect to 10.0.0.9:50051: timed out (exit code 1)"
        yield failed

    async def stop(self, node: str, task_id: str) -> None:
        self.stopped.append((node, task_id))


async def test_a_worker_that_fails_before_the_start_fails_the_run_in_one_line() -> None:
    config = LoadTestConfig(target="h:1", rate=10.0, from_nodes=("node-a", "node-b"))
    nodes = FakeNodes()
    workers = ClusterWorkers(TARGET, cluster_plan(make_plan(config), config), config, nodes)
    with pytest.raises(LoadTestError) as failed:
        await workers.start()
    await workers.close()
    assert str(failed.value) == (
        "node-b: its task ended (failed): cannot connect to 10.0.0.9:50051: timed out (exit code 1)"
    )
    assert nodes.started == ["node-a", "node-b"]
    assert nodes.stopped == [("node-a", "loadtest-node-a")]  # the ready one stops


async def test_a_node_worker_that_cannot_reach_the_target_says_so_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    target = dataclasses.replace(TARGET, address=closed, tls=None, timeout_s=0.5)
    run = dataclasses.replace(a_run(0), target=target)
    out = io.StringIO()
    assert await run_worker(run, out) == 1
    assert out.getvalue() == ""  # no "ready": the console is told by the task's failure
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cannot connect to {closed}") and "\n" not in err
