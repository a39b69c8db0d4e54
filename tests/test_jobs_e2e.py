"""Jobs across two real agents on 127.0.0.1, with a fake training script (no DeepSpeed):
launch, success, failure and restart, out of restarts, stop, logs, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import LocalAgent
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli

ROOT = Path(__file__).resolve().parent.parent
METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS
FAKE_RANK = ROOT / "tests" / "fixtures" / "fake_rank.py"


@pytest.fixture
def cluster(local_agents: StartAgent, tmp_path: Path) -> tuple[Path, list[LocalAgent]]:
    agents = [local_agents("node-a"), local_agents("node-b")]
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [a.target for a in agents])
    return path, agents


def write_job(tmp_path: Path, name: str, args: list[str], **extra: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name,
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": args,
        "working_dir": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
    }
    spec.update(extra)
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def wait_job(
    cluster_file: Path,
    name: str,
    states: set[str],
    capsys: pytest.CaptureFixture[str],
    timeout: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, out, err = cli(["job", name, "--cluster", str(cluster_file), "--json"], capsys)
        assert code == 0, err
        report: dict[str, Any] = json.loads(out)
        state = report["job"].get("state", "JOB_STATE_UNSPECIFIED")
        if state in states:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name} stayed {state}: {report}")
        time.sleep(0.3)


def test_job_runs_on_both_nodes_and_succeeds(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(tmp_path, "ok-job", ["--steps", "4"])
    code, out, err = cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    assert "submitted to node-a" in out
    report = wait_job(cluster_file, "ok-job", {"JOB_STATE_SUCCEEDED"}, capsys)
    ranks = report["job"]["attempts"][0]["ranks"]
    assert sorted((r.get("rank", 0), r["node"]) for r in ranks) == [
        (0, "node-a"),
        (1, "node-b"),
    ]
    assert all(r["metrics"]["step"] == 4 for r in ranks)
    code, out, _ = cli(["jobs", "--cluster", str(cluster_file)], capsys)
    assert code == 0
    assert "ok-job" in out and "succeeded" in out
    code, out, _ = cli(["logs", "ok-job", "--rank", "1", "--cluster", str(cluster_file)], capsys)
    assert code == 0
    assert "rank 1 of 2 attempt 1 master 127.0.0.1:" in out
    assert "step 4" in out
    # Launched again once it ended (as `make demo` does each time): its leader begins at
    # attempt 1 again, and node-b, which still holds the first run's rank 1, starts it.
    code, out, err = cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    again = wait_job(cluster_file, "ok-job", {"JOB_STATE_SUCCEEDED"}, capsys)
    assert len(again["job"]["attempts"]) == 1
    assert all(r["metrics"]["step"] == 4 for r in again["job"]["attempts"][0]["ranks"])


def test_failed_rank_stops_all_and_a_new_attempt_succeeds(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(
        tmp_path,
        "retry-job",
        ["--steps", "40", "--fail-rank", "1", "--fail-at", "3"],
        restart={"max_restarts": 2, "backoff_s": 0.2},
    )
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "retry-job", {"JOB_STATE_SUCCEEDED"}, capsys)
    job = report["job"]
    assert job["restartsUsed"] == 1
    first, second = job["attempts"]
    assert first["state"] == "JOB_STATE_FAILED"
    assert "rank 1 on node-b failed" in first["reason"]
    # Rank 0 was stopped by the leader, not left running.
    rank0 = next(r for r in first["ranks"] if r.get("rank", 0) == 0)
    assert rank0["state"] in ("RANK_STATE_KILLED", "RANK_STATE_EXITED")
    assert second["state"] == "JOB_STATE_SUCCEEDED"
    assert first["masterPort"] != second["masterPort"]


def test_out_of_restarts_ends_failed_with_reason(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(
        tmp_path, "doomed", ["--steps", "40", "--fail-rank", "0", "--fail-attempt", "9"]
    )
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "doomed", {"JOB_STATE_FAILED"}, capsys)
    assert "out of restarts (0/0)" in report["job"]["reason"]
    assert "rank 0 on node-a failed" in report["job"]["reason"]


def test_stop_ends_every_rank(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(tmp_path, "long-job", ["--steps", "100000", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "long-job", {"JOB_STATE_RUNNING"}, capsys)
    code, _, err = cli(["stop", "long-job", "--cluster", str(cluster_file)], capsys)
    assert code == 0, err
    report = wait_job(cluster_file, "long-job", {"JOB_STATE_STOPPED"}, capsys, timeout=30)
    states = {r["state"] for r in report["job"]["attempts"][-1]["ranks"]}
    assert states <= {"RANK_STATE_KILLED", "RANK_STATE_EXITED"}
    pids = [r["pid"] for r in report["job"]["attempts"][-1]["ranks"]]
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def test_bad_jobs_are_refused_before_anything_starts(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, agents = cluster
    cases = [
        (
            write_job(tmp_path, "unknown-node", [], nodes=["node-a", "node-x"]),
            "unknown node node-x",
        ),
        (
            write_job(tmp_path, "no-entry", [], command=["python", str(tmp_path / "nope.py")]),
            "does not exist",
        ),
        (write_job(tmp_path, "no-prog", [], command=["no-such-program-xyz"]), "not found"),
        (
            write_job(tmp_path, "bad-resume", [], restart={"resume": str(tmp_path / "missing")}),
            "does not exist",
        ),
        (write_job(tmp_path, "neg", [], restart={"max_restarts": -1}), "max_restarts"),
    ]
    for spec, message in cases:
        code, _, err = cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)
        assert code == 2, (spec.name, err)
        assert message in err, (spec.name, err)
        assert err.count("\n") == 1
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    code, _, err = cli(["launch", str(bad_yaml), "--cluster", str(cluster_file)], capsys)
    assert code == 2 and "not valid YAML" in err
    # An unreachable agent is named, and nothing started on the other node.
    agents[1].stop()
    spec = write_job(tmp_path, "half", ["--steps", "2"])
    code, _, err = cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)
    assert code == 2
    assert "node-b" in err and "unreachable" in err
    code, out, _ = cli(["jobs", "--cluster", str(cluster_file), "--json"], capsys)
    names = [j["job"]["spec"]["name"] for j in json.loads(out)["jobs"]]
    assert names == []
    assert not list((agents[0].data_dir / "jobs").glob("*/attempt-*"))


def job_events(
    cluster_file: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> list[dict[str, Any]]:
    code, out, err = cli(["events", name, "--cluster", str(cluster_file), "--json"], capsys)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def test_stopped_rank_is_detected_as_hung_with_its_stacks(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(
        tmp_path, "hang-job", ["--steps", "100000", "--step-s", "0.1"], hang_timeout_s=3
    )
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "hang-job", {"JOB_STATE_RUNNING"}, capsys)
    rank1 = next(r for r in report["job"]["attempts"][0]["ranks"] if r.get("rank") == 1)
    time.sleep(1.0)  # let it start and report a few steps
    # The rank's own process is the wrapper's child.
    children = psutil.Process(rank1["pid"]).children()
    assert len(children) == 1
    rank_proc = children[0]
    stopped_at = time.monotonic()
    rank_proc.suspend()  # SIGSTOP
    report = wait_job(cluster_file, "hang-job", {"JOB_STATE_FAILED"}, capsys, timeout=30)
    detected = [
        e
        for e in job_events(cluster_file, "hang-job", capsys)
        if e.get("kind") == "JOB_EVENT_KIND_RANK_HUNG"
    ]
    assert detected and detected[0]["rank"] == 1
    assert time.monotonic() - stopped_at < 3 + 5 + 5  # detection within timeout + 5 s (+ polling)
    failed = [
        e
        for e in job_events(cluster_file, "hang-job", capsys)
        if e.get("kind") == "JOB_EVENT_KIND_RANK_FAILED" and e.get("rank") == 1
    ]
    stacks = failed[0]["details"]["stacks"]
    assert "fake_rank.py" in stacks and "main" in stacks
    assert "hung" in report["job"]["attempts"][0]["reason"]
    assert not psutil.pid_exists(rank_proc.pid) or rank_proc.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("victim", ["node-b", "node-a"])
def test_agent_killed_and_restarted_loses_nothing(
    victim: str,
    cluster: tuple[Path, list[LocalAgent]],
    local_agents: StartAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cluster_file, agents = cluster
    spec = write_job(tmp_path, "steady", ["--steps", "60", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "steady", {"JOB_STATE_RUNNING"}, capsys)
    pids = {r["node"]: r["pid"] for r in report["job"]["attempts"][0]["ranks"]}
    agent = next(a for a in agents if a.name == victim)
    port = int(agent.address.rsplit(":", 1)[1])
    time.sleep(1.5)
    agent.process.kill()  # SIGKILL: no chance to clean up
    agent.process.wait()
    time.sleep(1.0)
    local_agents(victim, port=port)
    report = wait_job(cluster_file, "steady", {"JOB_STATE_SUCCEEDED"}, capsys, timeout=90)
    attempts = report["job"]["attempts"]
    assert len(attempts) == 1  # the ranks never stopped
    assert {r["node"]: r["pid"] for r in attempts[0]["ranks"]} == pids
    events = job_events(cluster_file, "steady", capsys)
    assert any(e.get("kind") == "JOB_EVENT_KIND_SUCCEEDED" for e in events)
    for rank, agent in enumerate(agents):
        # Each node's journal holds every step of its rank once: none lost, none twice.
        journal = Journal.open(agent.data_dir)
        try:
            metrics = journal.events_after(0, "steady", kinds=[METRICS])
        finally:
            journal.close()
        steps = [e.metrics.step for e in metrics if e.rank == rank]
        assert steps == list(range(1, 61)), (rank, steps)


def test_restart_refusals_name_what_to_fix(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = cluster
    spec = write_job(tmp_path, "no-ckpt", ["--steps", "100000", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    wait_job(cluster_file, "no-ckpt", {"JOB_STATE_RUNNING"}, capsys)
    cases = [
        (["--exclude", "node-x"], "node node-x is not part of job no-ckpt"),
        (["--exclude", "node-a", "--exclude", "node-b"], "cannot exclude every node"),
        (["--exclude", "node-b"], "--exclude needs a checkpoint to convert"),
        (["--node", "node-q"], "node node-q is not part of job no-ckpt"),
    ]
    for extra, message in cases:
        code, _, err = cli(["restart", "no-ckpt", *extra, "--cluster", str(cluster_file)], capsys)
        assert code == 2 and message in err, (extra, err)
        assert err.count("\n") == 1
    code, _, err = cli(["restart", "nope", "--cluster", str(cluster_file)], capsys)
    assert code == 2 and "nope" in err
    # Nothing was disturbed: still the first attempt, running.
    report = wait_job(cluster_file, "no-ckpt", {"JOB_STATE_RUNNING"}, capsys)
    assert len(report["job"]["attempts"]) == 1
    assert cli(["stop", "no-ckpt", "--cluster", str(cluster_file)], capsys)[0] == 0


def test_a_failed_ranks_cause_is_the_jobs_reason(
    cluster: tuple[Path, list[LocalAgent]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Gantry's own trainer, given a DeepSpeed config that is not there: the job's reason
    names the cause (argparse's error), not only "exit code 2"."""
    cluster_file, _ = cluster
    spec = write_job(
        tmp_path,
        "bad-config",
        [
            "--deepspeed_config",
            "missing.json",
            "--model_name_or_path",
            "tiny-moe",
            "--output_dir",
            "out",
            "--data",
            "data.jsonl",
        ],
        command=["python", "-m", "agent.train"],
    )
    (tmp_path / "data.jsonl").write_text("{}\n")
    assert cli(["launch", str(spec), "--cluster", str(cluster_file)], capsys)[0] == 0
    report = wait_job(cluster_file, "bad-config", {"JOB_STATE_FAILED"}, capsys)
    reason = report["job"]["reason"]
    assert "--deepspeed_config missing.json: no such file (exit code 2)" in reason, reason
    failed = report["job"]["attempts"][0]["ranks"]
    assert any("no such file" in r.get("reason", "") for r in failed)
