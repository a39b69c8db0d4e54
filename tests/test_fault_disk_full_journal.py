"""Disk full under an agent's journal (issue 19): node-b's data dir (not the leader's) on a
small tmpfs that a filler file fills while a (fake) job's rank reports steps. No event is lost
(every step's record is in node-b's journal once space is back), the job completes, and the
agent said so (a log line naming the journal and the cause). Needs root (mount)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import start_agent, stop_all
from tests.conftest import kill_processes_mentioning
from tests.test_cli import run_cli
from tests.test_fault_disk_full import require_root

METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS
FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"
STEPS = 60


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for node-b's data dir, unmounted afterwards."""
    require_root()
    data = tmp_path / "agents" / "node-b"
    data.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16M", "gantry-b2j", str(data)], check=True)
    try:
        yield data
    finally:
        kill_processes_mentioning(str(tmp_path))
        if (data / "agent.log").is_file():  # kept for a failure's reader
            (tmp_path / "node-b.log").write_bytes((data / "agent.log").read_bytes())
        subprocess.run(["umount", "-l", str(data)], check=False)


def agent_log(data_dir: Path) -> str:
    return (data_dir / "agent.log").read_text(errors="replace")[-4000:]


def fill(folder: Path) -> Path:
    """A file that takes every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_journal_disk_is_said_and_loses_no_event(
    small_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = [
        start_agent("node-a", tmp_path / "agents" / "node-a"),
        start_agent("node-b", small_data_dir),
    ]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])
    spec = {
        "name": "full-journal",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", str(STEPS), "--step-s", "0.1"],
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0},
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))

    def state() -> str:
        code, out, err = run_cli(
            ["job", "full-journal", "--cluster", str(cluster), "--json"], capsys
        )
        assert code == 0, err
        return str(json.loads(out)["job"].get("state", ""))

    try:
        assert run_cli(["launch", str(path), "--cluster", str(cluster)], capsys)[0] == 0
        deadline = time.monotonic() + 60
        while state() != "JOB_STATE_RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        filler = fill(small_data_dir)
        time.sleep(2.0)  # steps reported while the disk is full
        log_text = agent_log(small_data_dir)
        filler.unlink()
        deadline = time.monotonic() + 60
        while (now := state()) not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
            assert time.monotonic() < deadline, (now, agent_log(small_data_dir))
            time.sleep(0.3)
        journal = Journal.open(small_data_dir)
        try:
            events = journal.events_after(0, "full-journal", kinds=[METRICS])
        finally:
            journal.close()
        steps = [int(e.metrics.step) for e in events if e.node == "node-b"]
        assert steps == list(range(1, STEPS + 1)), steps  # nothing lost
        assert now == "JOB_STATE_SUCCEEDED"
        # ... and the agent said so.
        assert f"journal {small_data_dir / 'journal.sqlite3'}: database or disk is full" in log_text
        assert "holding the ranks' events in memory" in log_text
    finally:
        stop_all(agents)
