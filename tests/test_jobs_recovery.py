"""A job's agents killed and restarted under it, with real agents on 127.0.0.1 and the
fake training script: the leader copies every peer event exactly once across its own
restart, notices a peer that comes back at once, and says what it cannot know."""

from __future__ import annotations

import calendar
import json
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from console.net.local_agents import LocalAgent
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import (
    cluster,  # noqa: F401  (a fixture)
    job_events,
    wait_job,
    write_job,
)

EK = job_pb2.JobEventKind


def journal_events(agent: LocalAgent, job: str) -> list[job_pb2.JobEvent]:
    journal = Journal.open(agent.data_dir)
    try:
        return journal.events_after(0, job)
    finally:
        journal.close()


def kill_agent(agent: LocalAgent) -> int:
    """SIGKILL, no chance to clean up; returns its port, to start it again there."""
    port = int(agent.address.rsplit(":", 1)[1])
    agent.process.kill()
    agent.process.wait()
    return port


def test_a_restarted_leader_copies_every_peer_event_once(
    cluster: tuple[Path, list[LocalAgent]],  # noqa: F811
    local_agents: StartAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, (leader, peer) = cluster
    spec = write_job(tmp_path, "steady", ["--steps", "60", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "steady", {"JOB_STATE_RUNNING"}, capsys)
    time.sleep(1.5)  # some of node-b's events copied before the kill, more after
    port = kill_agent(leader)

    # While the leader is down, `gantry job` says so: one line, exit 1 (not "no job").
    code, out, err = cli(["job", "steady", "--cluster", str(cluster_file)], capsys)
    assert code == 1, (out, err)
    assert err.count("\n") == 1 and "node-a" in err and "unreachable" in err, err
    assert "no job named" not in err

    time.sleep(1.0)
    local_agents("node-a", port=port)
    report = wait_job(cluster_file, "steady", {"JOB_STATE_SUCCEEDED"}, capsys, timeout=90)
    assert len(report["job"]["attempts"]) == 1

    mine = [e for e in journal_events(leader, "steady") if e.details.get("origin") == "node-b"]
    copied = [int(e.details["origin_seq"]) for e in mine]
    assert len(copied) == len(set(copied)), "an event of node-b copied twice"
    theirs = [e.seq for e in journal_events(peer, "steady") if e.attempt == 1]
    # Every one of node-b's events up to the last the leader needed, none missing.
    assert copied == [s for s in theirs if s <= max(copied)]
    assert any(e.kind == EK.JOB_EVENT_KIND_RANK_EXITED for e in mine)
    steps = [e.metrics.step for e in mine if e.kind == EK.JOB_EVENT_KIND_METRICS]
    assert steps == list(range(1, 61))


def test_a_restarted_peer_is_seen_at_once(
    cluster: tuple[Path, list[LocalAgent]],  # noqa: F811
    local_agents: StartAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, (_, peer) = cluster
    spec = write_job(tmp_path, "endless", ["--steps", "100000", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "endless", {"JOB_STATE_RUNNING"}, capsys)
    wrapper = next(r["pid"] for r in report["job"]["attempts"][0]["ranks"] if r.get("rank") == 1)
    time.sleep(1.0)
    lost_at = time.time()
    port = kill_agent(peer)

    # During the outage the leader does not pretend: node-b's rank is unknown since then.
    time.sleep(1.0)
    ranks = _ranks(cluster_file, "endless", capsys)
    assert "unknownSince" not in ranks[0]
    since = ranks[1]["unknownSince"]
    assert abs(_seconds(since) - lost_at) < 3, since
    code, out, _ = cli(["job", "endless", "--cluster", str(cluster_file)], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("1 ") and "node-b" in line)
    assert " unknown " in row and "no word from node-b since" in row, row

    # gRPC's default reconnect backoff tries again 1, 1.6, 2.6, 4.1, 6.6, 10.5 s apart
    # (+-20 %): back after ~17 s, the peer would be tried only at ~26 s (10-12 s late,
    # measured with the former channels).
    time.sleep(16.5)
    local_agents("node-b", port=port)
    # At once: the time the leader takes to notice node-b is back counts too.
    rank = psutil.Process(wrapper).children()[0]
    killed_at = time.time()
    rank.send_signal(signal.SIGKILL)
    report = wait_job(cluster_file, "endless", {"JOB_STATE_FAILED"}, capsys, timeout=60)
    assert "rank 1 on node-b failed" in report["job"]["reason"]
    failed = [
        e
        for e in job_events(cluster_file, "endless", capsys)
        if e.get("kind") == "JOB_EVENT_KIND_ATTEMPT_FAILED"
    ]
    stopped_at = _seconds(failed[0]["time"])
    assert stopped_at - killed_at < 5.0, stopped_at - killed_at
    ranks = {r.get("rank", 0): r for r in report["job"]["attempts"][0]["ranks"]}
    assert all("unknownSince" not in r for r in ranks.values())


def _ranks(
    cluster_file: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> dict[int, dict[str, Any]]:
    """The ranks of the job's last attempt, by rank, as `gantry job --json` shows them."""
    code, out, err = cli(["job", name, "--cluster", str(cluster_file), "--json"], capsys)
    assert code == 0, err
    attempts = json.loads(out)["job"]["attempts"]
    return {r.get("rank", 0): r for r in attempts[-1]["ranks"]}


def _seconds(stamp: str) -> float:
    """An RFC 3339 UTC time stamp (as protobuf's JSON writes it) as epoch seconds."""
    whole, _, rest = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{rest or 0}")


def test_job_verbs_with_no_agent_up_say_so_with_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(
        json.dumps(
            {
                "nodes": [
                    {"name": "node-a", "address": "127.0.0.1:1", "token_file": str(token)},
                    {"name": "node-b", "address": "127.0.0.1:2", "token_file": str(token)},
                ]
            }
        )
    )
    for verb in (["job", "x"], ["stop", "x"], ["events", "x"]):
        code, _, err = cli([*verb, "--cluster", str(cluster_file)], capsys)
        assert code == 1, (verb, err)
        assert err.count("\n") == 1 and "node-a" in err and "node-b" in err, err
        assert "unreachable" in err
