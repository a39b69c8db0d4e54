"""Operator actions through two real agents on 127.0.0.1 with the fake rank script: who did
what (events and the leader's audit trail), restarts with an edited spec, and the job's own
DeepSpeed config handed to the ranks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import AuditEntry, Journal
from agent.rpc.jobs import sanitize_operator
from console.net.cluster_file import dump_cluster_file, load_cluster_file
from console.net.jobs_client import JobCommandError, JobsClient
from console.net.local_agents import LocalAgent
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import job_events, wait_job, write_job

LONG_RUN = ["--steps", "100000", "--step-s", "0.1"]
ACTION = "JOB_EVENT_KIND_OPERATOR_ACTION"
T = TypeVar("T")


@pytest.fixture
def cluster(local_agents: StartAgent, tmp_path: Path) -> tuple[Path, list[LocalAgent]]:
    agents = [local_agents("node-a"), local_agents("node-b")]
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [a.target for a in agents])
    return path, agents


def wait_attempt(
    cluster_file: Path,
    name: str,
    number: int,
    capsys: pytest.CaptureFixture[str],
    timeout: float = 60,
) -> dict[str, Any]:
    """The job once its attempt ``number`` runs (every rank started)."""
    deadline = time.monotonic() + timeout
    while True:
        report = wait_job(cluster_file, name, {"JOB_STATE_RUNNING"}, capsys, timeout)
        attempts = report["job"]["attempts"]
        if len(attempts) >= number and attempts[number - 1].get("state") == "JOB_STATE_RUNNING":
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"attempt {number} of {name} is not running: {report}")
        time.sleep(0.2)


def audit_of(agent: LocalAgent) -> list[AuditEntry]:
    journal = Journal.open(agent.data_dir)
    try:
        return list(reversed(journal.audit_entries()))  # oldest first
    finally:
        journal.close()


def rank_log(
    cluster_file: Path, name: str, rank: int, attempt: int, capsys: pytest.CaptureFixture[str]
) -> str:
    """The rank's stdout once it printed its argv."""
    deadline = time.monotonic() + 30
    while True:
        args = ["logs", name, "--rank", str(rank), "--attempt", str(attempt)]
        code, out, err = cli([*args, "--cluster", str(cluster_file)], capsys)
        assert code == 0, err
        if "argv " in out or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def run_client(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_operator_sanitized() -> None:
    assert sanitize_operator("alice") == "alice"
    assert sanitize_operator("a.b_c-d@example.com") == "a.b_c-d@example.com"
    assert sanitize_operator("bob <ops>; rm") == "bob??ops???rm"
    assert sanitize_operator(b"carol") == "carol"
    assert sanitize_operator("") == sanitize_operator(None) == "unknown"
    assert sanitize_operator("x" * 100) == "x" * 64


def test_submit_restart_and_stop_name_the_operator(
    cluster: tuple[Path, list[LocalAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster_file, agents = cluster
    monkeypatch.setenv("GANTRY_OPERATOR", "alice")
    spec = write_job(tmp_path, "who-job", LONG_RUN)
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_attempt(cluster_file, "who-job", 1, capsys)
    code, _, err = cli(["restart", "who-job", "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    wait_attempt(cluster_file, "who-job", 2, capsys)
    monkeypatch.setenv("GANTRY_OPERATOR", "bob <ops>")
    code, _, err = cli(["stop", "who-job", "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    wait_job(cluster_file, "who-job", {"JOB_STATE_STOPPED"}, capsys, timeout=30)

    events = job_events(cluster_file, "who-job", capsys)
    submitted = [e for e in events if e["kind"] == "JOB_EVENT_KIND_SUBMITTED"]
    assert submitted[0]["details"]["operator"] == "alice"
    assert submitted[0]["message"] == "submitted to node-a by alice"
    actions = [e for e in events if e["kind"] == ACTION]
    assert [(e["details"]["operator"], e["details"]["action"]) for e in actions] == [
        ("alice", "restart"),
        ("bob??ops?", "stop"),
    ]
    assert actions[0]["message"] == "operator restart by alice"
    assert "by bob??ops?" in actions[1]["message"]

    audit = audit_of(agents[0])
    assert [(a.who, a.what) for a in audit] == [
        ("alice", "submit"),
        ("alice", "restart"),
        ("bob??ops?", "stop"),
    ]
    assert all(a.details["job"] == "who-job" and a.details["outcome"] == "ok" for a in audit)
    assert audit[0].details["nodes"] == "node-a,node-b"
    # A peer records what the leader asked of it: starting and stopping its ranks.
    peer = audit_of(agents[1])
    assert {(a.who, a.what) for a in peer} == {
        ("leader@node-a", "start-ranks"),
        ("leader@node-a", "stop-ranks"),
    }
    assert all(a.details["job"] == "who-job" for a in peer)


def test_restart_with_an_edited_spec(
    cluster: tuple[Path, list[LocalAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster_file, agents = cluster
    monkeypatch.setenv("GANTRY_OPERATOR", "advisor")
    path = write_job(tmp_path, "edit-job", LONG_RUN)
    assert cli(["launch", str(path), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_attempt(cluster_file, "edit-job", 1, capsys)
    assert "argv --steps 100000 --step-s 0.1" in rank_log(cluster_file, "edit-job", 1, 1, capsys)

    client = JobsClient(load_cluster_file(cluster_file))
    led, _ = run_client(client.describe("edit-job"))
    spec = job_pb2.JobSpec()
    spec.CopyFrom(led.job.spec)
    del spec.args[:]
    spec.args.extend(["--steps", "100000", "--step-s", "0.05", "--tag", "v2"])
    spec.env["NCCL_IB_DISABLE"] = "1"

    refusals: list[tuple[job_pb2.JobSpec, str]] = []
    other_nodes = job_pb2.JobSpec()
    other_nodes.CopyFrom(spec)
    del other_nodes.nodes[1:]
    refusals.append((other_nodes, "a restart keeps the job's nodes"))
    other_name = job_pb2.JobSpec()
    other_name.CopyFrom(spec)
    other_name.name = "another-job"
    refusals.append((other_name, "the new spec is for job another-job, not edit-job"))
    no_dir = job_pb2.JobSpec()
    no_dir.CopyFrom(spec)
    no_dir.working_dir = str(tmp_path / "missing")
    refusals.append((no_dir, "does not exist on this node"))
    for bad, message in refusals:
        with pytest.raises(JobCommandError) as info:
            run_client(client.restart("edit-job", "", [], "", spec=bad))
        assert message in str(info.value) and "\n" not in str(info.value)
    # Nothing was disturbed by the refusals.
    report = wait_attempt(cluster_file, "edit-job", 1, capsys)
    assert len(report["job"]["attempts"]) == 1

    run_client(client.restart("edit-job", "", [], "", spec=spec))
    report = wait_attempt(cluster_file, "edit-job", 2, capsys)
    assert report["job"]["spec"]["args"] == ["--steps", "100000", "--step-s", "0.05", "--tag", "v2"]
    assert report["job"]["spec"]["env"]["NCCL_IB_DISABLE"] == "1"
    for rank in (0, 1):
        log = rank_log(cluster_file, "edit-job", rank, 2, capsys)
        assert "argv --steps 100000 --step-s 0.05 --tag v2" in log
    # Persisted: a restarted leader goes on with the edited spec.
    with Journal.open(agents[0].data_dir) as journal:
        saved = journal.get_job("edit-job")
    assert saved is not None and list(saved.spec.args) == list(spec.args)

    changes = "args --step-s 0.1 -> 0.05; args --tag unset -> v2; env NCCL_IB_DISABLE unset -> 1"
    actions = [e for e in job_events(cluster_file, "edit-job", capsys) if e["kind"] == ACTION]
    assert len(actions) == 1  # refused restarts leave no event
    assert actions[0]["details"] == {
        "operator": "advisor",
        "action": "restart",
        "changes": changes,
    }
    assert actions[0]["message"] == f"operator restart by advisor; {changes}"
    audit = audit_of(agents[0])
    assert [(a.what, a.details["outcome"].split(":")[0]) for a in audit] == [
        ("submit", "ok"),
        ("restart", "refused"),
        ("restart", "refused"),
        ("restart", "refused"),
        ("restart", "ok"),
    ]
    assert audit[-1].details["spec"] == changes
    assert cli(["stop", "edit-job", "--cluster", str(cluster_file)], capsys)[0] == 0


def test_the_jobs_deepspeed_config_reaches_every_rank(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, agents = cluster
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}
    path = write_job(
        tmp_path,
        "ds-job",
        ["--steps", "2", "--deepspeed_config", "examples/not-this-one.json"],
        deepspeed_config=config,
    )
    assert cli(["launch", str(path), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "ds-job", {"JOB_STATE_SUCCEEDED"}, capsys)
    for rank, agent in enumerate(agents):
        written = agent.data_dir / "jobs" / "ds-job" / "attempt-1" / "ds_config.json"
        assert json.loads(written.read_text()) == config
        log = rank_log(cluster_file, "ds-job", rank, 1, capsys)
        assert f"argv --steps 2 --deepspeed_config {written}\n" in log
    started = [
        e
        for e in job_events(cluster_file, "ds-job", capsys)
        if e["kind"] == "JOB_EVENT_KIND_RANK_STARTED"
    ]
    assert started and all("ds_config.json" in e["details"]["argv"] for e in started)
