"""Issue 16, "state is readable by every local user": the agent's journal, job files, rank
logs and metrics files are 0600 in 0700 folders, whatever umask it was started with, and
what an older agent left readable is made private on start."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, job_pb2

from agent.rank.report import Reporter
from agent.security.file_modes import tighten_tree
from console.model.job_spec import parse_job_spec
from console.net.agent_link import AgentLinks
from tests.conftest import StartAgent

A = agent_service_pb2
JS = job_pb2.JobState
FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Files created meanwhile get the modes asked for, unmasked."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def opened(root: Path) -> list[str]:
    """Everything under `root` (itself included) that group or others may use."""
    found = [] if mode(root) & 0o077 == 0 else [f"{root} {mode(root):o}"]
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(folder, name)
            if not path.is_symlink() and mode(path) & 0o077:
                found.append(f"{path} {mode(path):o}")
    return found


def test_tighten_tree_takes_group_and_other_access_off(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "jobs" / "a").mkdir(parents=True)
    for folder in (root, root / "jobs", root / "jobs" / "a"):
        folder.chmod(0o755)
    journal = root / "journal.db"
    journal.write_text("x")
    journal.chmod(0o644)
    script = root / "jobs" / "a" / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o775)
    outside = tmp_path / "shared.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    assert tighten_tree(root) == 5
    assert (mode(root), mode(root / "jobs"), mode(root / "jobs" / "a")) == (0o700,) * 3
    assert (mode(journal), mode(script)) == (0o600, 0o700)  # the owner's bits stay
    assert mode(outside) == 0o644  # a link is not followed
    assert tighten_tree(root) == 0


def test_a_ranks_metrics_file_is_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "metrics" / "rank-0.jsonl"
    reporter = Reporter(path, rank=0, heartbeat_s=60)
    reporter.write("start")
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_an_agents_state_is_private_to_its_user(
    local_agents: StartAgent, tmp_path: Path, open_umask: None
) -> None:
    """A real agent started with umask 0 over a data dir an older agent left open: the
    leftovers are made private, and all it and its ranks write is."""
    data_dir = tmp_path / "agents" / "node-a"
    leftover = data_dir / "jobs" / "old-job" / "attempt-1"
    leftover.mkdir(parents=True, mode=0o755)
    (leftover / "rank-0.stdout.log").write_text("env SECRET=1\n")
    agent = local_agents("node-a")
    doc = {
        "name": "private-job",
        "nodes": ["node-a slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "2", "--step-s", "0.01"],
        "working_dir": str(tmp_path),
        "env": {"WANDB_API_KEY": "not-for-others"},
        "restart": {"max_restarts": 0, "backoff_s": 0},
    }
    spec = parse_job_spec(json.dumps(doc), tmp_path, {"node-a"})

    async def run() -> int:
        async with AgentLinks() as links:
            link = links.link(agent.target)
            stub, metadata = await link.stub(), link.metadata()
            peers = [A.PeerAgent(name="node-a", address=agent.address)]
            await stub.SubmitJob(A.SubmitJobRequest(spec=spec, peers=peers), metadata=metadata)
            deadline = time.monotonic() + 60
            while True:
                reply = await stub.DescribeJob(
                    A.DescribeJobRequest(name="private-job"), metadata=metadata, timeout=10
                )
                if reply.job.state in (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED):
                    return int(reply.job.state)
                assert time.monotonic() < deadline, reply.job
                await asyncio.sleep(0.2)

    assert asyncio.run(run()) == JS.JOB_STATE_SUCCEEDED
    written = [p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file()]
    job_files = [p for p in written if p.parts[:2] == ("jobs", "private-job")]
    assert len(job_files) >= 3, written  # the ranks' logs and metrics, the job's own files
    assert any(p.name.startswith("journal") for p in written), written
    assert opened(data_dir) == []
