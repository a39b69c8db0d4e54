"""A node announces its preemption, with real agents on 127.0.0.1 and a rank program that
honours checkpoint requests: the ranks checkpoint within the grace, the attempt stops, the
job waits as preempted (no restart spent) until the node's agent is back, then resumes
from that checkpoint. Sources: a notice file, and SIGTERM to the agent. With three nodes,
the one that got no notice is asked by the leader (RequestCheckpoint) and saves too: the
stand-in rank program does no all-reduce that could carry the request instead."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2

from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import LocalAgent
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import job_events, wait_job, write_job

PREEMPT_RANK = Path(__file__).parent / "fixtures" / "preempt_rank.py"
EK = job_pb2.JobEventKind


def preempt_job(tmp_path: Path, name: str, nodes: int = 2) -> Path:
    ckpt = tmp_path / "ckpt"
    args = ["--steps", "100000", "--step-s", "0.1", "--checkpoint-dir", str(ckpt)]
    hosts = [f"node-{c} slots=1" for c in "abc"[:nodes]]
    command = [sys.executable, str(PREEMPT_RANK)]
    return write_job(tmp_path, name, args, command=command, nodes=hosts)


def two_nodes(
    local_agents: StartAgent, tmp_path: Path, notice: list[str], third: bool = False
) -> tuple[Path, LocalAgent, LocalAgent, list[LocalAgent]]:
    """node-a (the leader), node-b (the one with the notice source), and node-c if asked."""
    leader = local_agents("node-a")
    peer = local_agents("node-b", extra_args=notice)
    others = [local_agents("node-c")] if third else []
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [leader.target, peer.target, *(o.target for o in others)])
    return path, leader, peer, others


def saved_steps(events: list[dict[str, Any]], attempt: int) -> dict[int, int]:
    """rank -> the step its answer to the checkpoint request says it saved."""
    return {
        int(e.get("rank", 0)): int(e["details"]["step"])
        for e in events
        if e.get("kind") == "JOB_EVENT_KIND_PREEMPTION_NOTICE"
        and e.get("attempt") == attempt
        and e.get("details", {}).get("answered")
    }


def resumed_at(agents: dict[str, LocalAgent], attempt: int) -> dict[int, int]:
    """rank -> the step its program says it resumed at (its first line) in ``attempt``."""
    found: dict[int, int] = {}
    for rank, agent in enumerate(agents.values()):
        log = (
            agent.data_dir / "jobs" / "spot" / f"attempt-{attempt}" / f"rank-{rank}" / "stdout.log"
        )
        with contextlib.suppress(OSError, IndexError, ValueError):
            found[rank] = int(log.read_text().splitlines()[0].removeprefix("resumed at "))
    return found


def wait_preempted_then_resumed(
    cluster_file: Path,
    leader: LocalAgent,
    peer: LocalAgent,
    local_agents: StartAgent,
    capsys: pytest.CaptureFixture[str],
    before_restart: Any = None,
    others: tuple[LocalAgent, ...] = (),
) -> None:
    world = 2 + len(others)
    report = wait_job(cluster_file, "spot", {"JOB_STATE_PREEMPTED"}, capsys, timeout=40)
    job = report["job"]
    first = job["attempts"][0]
    assert first.get("preempted") is True, first
    assert first["reason"].startswith("preempted: node-b"), first["reason"]
    assert f"saved by {world}/{world} ranks" in first["reason"], first["reason"]
    assert job.get("restartsUsed", 0) == 0
    assert len(job["attempts"]) == 1  # it waits: node-b's agent still answers

    port = int(peer.address.rsplit(":", 1)[1])
    if peer.process.poll() is None:
        peer.process.kill()  # the instance goes
    peer.process.wait()
    if before_restart is not None:
        before_restart()
    time.sleep(5.0)  # longer than the leader's probes: it sees node-b gone
    assert wait_job(cluster_file, "spot", {"JOB_STATE_PREEMPTED"}, capsys)
    back = local_agents("node-b", port=port)  # the node is back (no notice source this time)

    report = wait_job(cluster_file, "spot", {"JOB_STATE_RUNNING"}, capsys, timeout=40)
    job = report["job"]
    assert len(job["attempts"]) == 2
    assert job.get("restartsUsed", 0) == 0  # a preemption spends no restart
    assert job["attempts"][1].get("resumedFrom"), job["attempts"][1]
    deadline = time.monotonic() + 30
    while True:
        events = job_events(cluster_file, "spot", capsys)
        agents = {"a": leader, "b": back, **{o.name: o for o in others}}
        saved, resumed = saved_steps(events, 1), resumed_at(agents, 2)
        if len(resumed) == world or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(saved) == list(range(world)), saved
    # Every rank goes on from the step it saved: no step lost.
    assert resumed == saved, (saved, resumed)
    assert cli(["stop", "spot", "--cluster", str(cluster_file)], capsys)[0] == 0


def test_a_notice_file_checkpoints_stops_waits_and_resumes(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notice = tmp_path / "preempted"
    cluster_file, leader, peer, others = two_nodes(
        local_agents, tmp_path, ["--preemption-notice", f"file:{notice}"], third=True
    )
    spec = preempt_job(tmp_path, "spot", nodes=3)
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "spot", {"JOB_STATE_RUNNING"}, capsys)
    time.sleep(1.5)  # some steps first
    notice.write_text(f"{time.time() + 25:.0f}\n")  # the instance goes in 25 s

    wait_preempted_then_resumed(
        cluster_file,
        leader,
        peer,
        local_agents,
        capsys,
        before_restart=lambda: notice.unlink(),
        others=tuple(others),
    )
    events = job_events(cluster_file, "spot", capsys)
    told = [e for e in events if e.get("kind") == "JOB_EVENT_KIND_PREEMPTION_NOTICE"]
    source = next(e for e in told if e.get("details", {}).get("source"))
    assert source["details"]["source"] == f"file:{notice}"
    assert float(source["details"]["deadline"]) > time.time() - 60


def test_sigterm_announces_then_stops_the_agent_once_its_ranks_are_stopped(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, leader, peer, _ = two_nodes(
        local_agents, tmp_path, ["--preemption-notice", "sigterm"]
    )
    spec = preempt_job(tmp_path, "spot")
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "spot", {"JOB_STATE_RUNNING"}, capsys)
    time.sleep(1.5)
    peer.process.send_signal(signal.SIGTERM)  # the instance's shutdown hook
    # The agent outlives the signal until its ranks have checkpointed and been stopped.
    wait_job(cluster_file, "spot", {"JOB_STATE_PREEMPTED"}, capsys, timeout=40)
    assert peer.process.wait(timeout=20) == 0
    log = (peer.data_dir / "agent.log").read_text()
    assert "announcing this node's preemption" in log
    wait_preempted_then_resumed(cluster_file, leader, peer, local_agents, capsys)
