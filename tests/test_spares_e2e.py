"""Hot spares through three real agents on 127.0.0.1 (node-c the spare) with the fake rank
script: `gantry restart --replace` by hand and back, its refusals, and the leader's own
swap after a node failed two attempts in a row or lost its agent."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import LocalAgent
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_job_operations_e2e import ds_save
from tests.test_jobs_e2e import wait_job, write_job

REPLACED = "JOB_EVENT_KIND_NODE_REPLACED"


@pytest.fixture
def spare_cluster(local_agents: StartAgent, tmp_path: Path) -> tuple[Path, list[LocalAgent]]:
    agents = [local_agents(name) for name in ("node-a", "node-b", "node-c")]
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [a.target for a in agents])
    return path, agents


def ranks_of(attempt: dict[str, Any]) -> list[tuple[int, int, str]]:
    return sorted((r.get("rank", 0), r.get("localRank", 0), r["node"]) for r in attempt["ranks"])


def replaced_events(cluster_file: Path, name: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The messages of the job's NODE_REPLACED events (`gantry events --json`)."""
    code, out, err = cli(["events", name, "--json", "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e["message"] for e in events if e.get("kind") == REPLACED]


def wait_attempt(
    cluster_file: Path, name: str, number: int, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """The job once its attempt ``number`` runs with every rank past step 1."""
    deadline = time.monotonic() + 60
    while True:
        report = wait_job(cluster_file, name, {"JOB_STATE_RUNNING", "JOB_STATE_RESTARTING"}, capsys)
        attempts = report["job"].get("attempts", [])
        if len(attempts) >= number and attempts[-1].get("number") == number:
            ranks = attempts[-1].get("ranks", [])
            steps = [r.get("metrics", {}).get("step", 0) for r in ranks]
            if len(ranks) == 2 and all(int(s) >= 1 for s in steps):
                return report
        assert time.monotonic() < deadline, f"attempt {number} of {name} never ran: {report}"
        time.sleep(0.3)


def test_replace_a_node_by_hand_then_give_its_ranks_back(
    spare_cluster: tuple[Path, list[LocalAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, _ = spare_cluster
    args = ["--cluster", str(cluster_file)]
    ds_save(tmp_path / "ckpt", "step100")  # written by 2 ranks: loadable as is at world 2
    spec = write_job(tmp_path, "sp", ["--steps", "100000", "--step-s", "0.1"], spares=["node-c"])
    assert cli(["launch", str(spec), *args], capsys)[0] == 0
    first = wait_attempt(cluster_file, "sp", 1, capsys)
    assert ranks_of(first["job"]["attempts"][0]) == [(0, 0, "node-a"), (1, 0, "node-b")]

    # Refused, one line each, the running attempt untouched.
    for replace, said in (
        ("node-b=node-x", "node node-x is not a spare of job sp (spares: node-c)"),
        ("node-z=node-c", "node node-z is not in job sp"),
        ("node-b", "--replace node-b: write NODE=SPARE"),
    ):
        code, out, err = cli(["restart", "sp", "--replace", replace, *args], capsys)
        assert code == 2 and said in err and err.count("\n") == 1, (replace, out, err)
    assert len(wait_job(cluster_file, "sp", {"JOB_STATE_RUNNING"}, capsys)["job"]["attempts"]) == 1

    code, out, err = cli(["restart", "sp", "--replace", "node-b=node-c", *args], capsys)
    assert code == 0, err
    assert "restart accepted replacing node-b with node-c" in out
    second = wait_attempt(cluster_file, "sp", 2, capsys)["job"]["attempts"][1]
    # Same ranks, same local ranks, same world; the checkpoint as it is (no conversion).
    assert ranks_of(second) == [(0, 0, "node-a"), (1, 0, "node-c")]
    assert second["replacedNodes"] == {"node-b": "node-c"}
    assert second["resumedFrom"] == str(tmp_path / "ckpt" / "step100")

    code, out, err = cli(["restart", "sp", "--replace", "node-a=node-c", *args], capsys)
    assert code == 2 and "spare node-c is busy with job sp: it runs node-b's ranks" in err

    # A restart without --replace keeps the spare in.
    assert cli(["restart", "sp", *args], capsys)[0] == 0
    third = wait_attempt(cluster_file, "sp", 3, capsys)["job"]["attempts"][2]
    assert ranks_of(third) == [(0, 0, "node-a"), (1, 0, "node-c")]

    # The spare gives the ranks back to their node.
    assert cli(["restart", "sp", "--replace", "node-c=node-b", *args], capsys)[0] == 0
    report = wait_attempt(cluster_file, "sp", 4, capsys)
    fourth = report["job"]["attempts"][3]
    assert ranks_of(fourth) == [(0, 0, "node-a"), (1, 0, "node-b")]
    assert not fourth.get("replacedNodes")
    told = replaced_events(cluster_file, "sp", capsys)
    assert len(told) == 2, told
    assert "node-b's ranks (1) run on node-c" in told[0] and "operator" in told[0]
    assert "node-b's ranks (1) run on node-b instead of node-c" in told[1]
    assert cli(["stop", "sp", *args], capsys)[0] == 0


def test_a_node_that_fails_twice_in_a_row_is_replaced_by_the_spare(
    spare_cluster: tuple[Path, list[LocalAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, _ = spare_cluster
    spec = write_job(
        tmp_path,
        "flaky",
        ["--steps", "6", "--fail-rank", "1", "--fail-attempt", "2"],
        spares=["node-c"],
        restart={"max_restarts": 3, "backoff_s": 0.2},
    )
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "flaky", {"JOB_STATE_SUCCEEDED"}, capsys)
    attempts = report["job"]["attempts"]
    assert [ranks_of(a)[1][2] for a in attempts] == ["node-b", "node-b", "node-c"]
    assert attempts[2]["replacedNodes"] == {"node-b": "node-c"}
    told = replaced_events(cluster_file, "flaky", capsys)
    assert len(told) == 1 and "node-b failed 2 attempts in a row" in told[0], told


def test_a_lost_node_is_replaced_by_the_spare(
    spare_cluster: tuple[Path, list[LocalAgent]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, (_, node_b, _) = spare_cluster
    # Rank 0 fails once node-b is gone, as a real peer's collective would.
    args = ["--steps", "100000", "--step-s", "0.1", "--fail-rank", "0", "--fail-at", "80"]
    spec = write_job(
        tmp_path, "lost", args, spares=["node-c"], restart={"max_restarts": 2, "backoff_s": 0}
    )
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    first = wait_attempt(cluster_file, "lost", 1, capsys)["job"]["attempts"][0]
    rank1 = next(r for r in first["ranks"] if r.get("rank", 0) == 1)
    wrapper = psutil.Process(int(rank1["pid"]))
    node_b.process.kill()  # the agent and its ranks, as a machine that went away
    os.killpg(wrapper.pid, signal.SIGKILL)
    report = wait_attempt(cluster_file, "lost", 2, capsys)
    second = report["job"]["attempts"][1]
    assert ranks_of(second) == [(0, 0, "node-a"), (1, 0, "node-c")]
    told = replaced_events(cluster_file, "lost", capsys)
    assert told and "node-b failed its health check" in told[0], told
    assert cli(["stop", "lost", "--cluster", str(cluster_file)], capsys)[0] == 0
