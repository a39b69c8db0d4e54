"""Issue 16's job operations through two real agents on 127.0.0.1 with the fake rank
script: restart --from a tag of checkpoint_dir, and a bad one refused before anything
changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import agent_service_pb2 as A
from gantry.v1 import agent_service_pb2_grpc

from agent.jobs.journal import Journal
from console.net.local_agents import LocalAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import cluster, wait_job, write_job

__all__ = ["cluster"]


def ds_save(root: Path, tag: str) -> Path:
    folder = root / tag
    folder.mkdir(parents=True)
    for rank in range(2):
        (folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"m")
    (root / "latest").write_text(tag)
    return folder


def test_restart_from_a_tag_of_checkpoint_dir_and_a_missing_one_refused(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    ds_save(tmp_path / "ckpt", "step100")
    spec = write_job(tmp_path, "done", ["--steps", "2"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "done", {"JOB_STATE_SUCCEEDED"}, capsys)
    args = ["--cluster", str(cluster_file)]
    code, out, err = cli(["restart", "done", "--from", "step200", *args], capsys)
    assert code == 2 and "step200" in err and str(tmp_path / "ckpt") in err, (out, err)
    assert err.count("\n") == 1
    report = wait_job(cluster_file, "done", {"JOB_STATE_SUCCEEDED"}, capsys)
    assert len(report["job"]["attempts"]) == 1
    code, out, err = cli(["restart", "done", "--from", "step100", *args], capsys)
    assert code == 0, err
    report = wait_job(cluster_file, "done", {"JOB_STATE_SUCCEEDED"}, capsys)
    attempts = report["job"]["attempts"]
    assert len(attempts) == 2 and attempts[1]["resumedFrom"] == str(tmp_path / "ckpt" / "step100")


def call(agent: LocalAgent, method: str, request: Any) -> Any:
    """One AgentService call to ``agent`` with its token."""

    async def go() -> Any:
        token = (agent.data_dir / "token").read_text().strip()
        async with grpc.aio.insecure_channel(agent.address) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"), ("x-gantry-operator", "carol"))
            return await getattr(stub, method)(request, metadata=metadata, timeout=20)

    return asyncio.run(go())


def test_forget_a_finished_job_and_the_disk_its_checkpoints_use(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, (leader, _) = cluster
    ckpt = tmp_path / "ckpt"
    ds_save(ckpt, "step100")
    (ckpt / "tokenizer").mkdir()
    (ckpt / "tokenizer" / "tokenizer.json").write_text("{}" * 100)
    spec = write_job(tmp_path, "old", ["--steps", "100000", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "old", {"JOB_STATE_RUNNING"}, capsys)
    described = call(leader, "DescribeJob", A.DescribeJobRequest(name="old"))
    assert [c.tag for c in described.checkpoints] == ["step100"]
    assert described.checkpoint_bytes == 2 == described.checkpoints[0].size_bytes
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        call(leader, "ForgetJob", A.ForgetJobRequest(name="old"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == "job old is running; stop it before forgetting it"
    assert cli(["stop", "old", "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "old", {"JOB_STATE_STOPPED"}, capsys)
    reply = call(leader, "ForgetJob", A.ForgetJobRequest(name="old"))
    assert reply.name == "old"
    assert [j.spec.name for j in call(leader, "ListJobs", A.ListJobsRequest()).jobs] == []
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        call(leader, "ForgetJob", A.ForgetJobRequest(name="old"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (ckpt / "step100").is_dir()  # the checkpoints stay on disk
    journal = Journal.open(leader.data_dir)
    try:
        audit = [(e.who, e.what, e.details["outcome"]) for e in journal.audit_entries()]
    finally:
        journal.close()
    forgets = [a for a in audit if a[1] == "forget"]
    assert forgets[0] == ("carol", "forget", "refused: no job named old on node-a")
    assert ("carol", "forget", "ok") in forgets
