"""Clock skew (issue 19): node-b's agent and its rank see a wall clock five minutes ahead,
node-a (the leader) the true one. A (fake) job on both whose rank 1 fails once: the job's
timeline (``gantry events --json``) is in order in its times as in its sequence, no event is
from the future (the metrics' own times included), and the cost figures (``gantry job
--json``) are those of the seconds the job took, not of the skew.

The skew is injected into node-b's Python processes (time.time and time.time_ns, by
tests/fixtures/skewed_clock/sitecustomize.py on their PYTHONPATH): libfaketime 0.9.10 makes
Python's time.sleep fail with EINVAL, or, faking the monotonic clock too, hangs its threads.

Prints ``{"skew_events_ordered": ...}`` for the bench.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import LocalAgent, start_agent, stop_all
from tests.conftest import kill_processes_mentioning
from tests.test_cli import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SKEWED_CLOCK = FIXTURES / "skewed_clock"  # a sitecustomize moving time.time by $SKEW_ENV
FAKE_RANK = FIXTURES / "fake_rank.py"
SKEW_ENV = "GANTRY_TEST_CLOCK_SKEW_S"
SKEW_S = 300.0
JOB = "skewed"


def skewed_env() -> dict[str, str]:
    """The environment that puts node-b's agent (and its ranks) ``SKEW_S`` ahead."""
    return {"PYTHONPATH": str(SKEWED_CLOCK), SKEW_ENV: f"{SKEW_S:g}"}


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    agents: list[LocalAgent] = [start_agent("node-a", tmp_path / "agents" / "node-a")]
    with monkeypatch.context() as m:  # node-b's agent inherits the skew, and its ranks
        for name, value in skewed_env().items():
            m.setenv(name, value)
        agents.append(start_agent("node-b", tmp_path / "agents" / "node-b"))
    file = tmp_path / "cluster.yaml"
    dump_cluster_file(file, [a.target for a in agents])
    try:
        yield file
    finally:
        stop_all(agents)
        kill_processes_mentioning(str(tmp_path / "agents"))


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_node_minutes_ahead_keeps_the_timeline_and_the_figures_right(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {
        "name": JOB,
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "30", "--step-s", "0.05", "--fail-rank", "1", "--fail-at", "10"],
        "working_dir": str(tmp_path),
        # Without Gantry's bootstrap sitecustomize, node-b's ranks load the skewed one from
        # their agent's PYTHONPATH: their clock is off from their first instruction.
        "env": {"GANTRY_INSTRUMENT": "0"},
        "restart": {"max_restarts": 1, "backoff_s": 0.2},
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(spec))
    began = time.time()
    assert run_cli(["launch", str(path), "--cluster", str(cluster)], capsys)[0] == 0

    def job() -> dict[str, Any]:
        code, out, err = run_cli(["job", JOB, "--cluster", str(cluster), "--json"], capsys)
        assert code == 0, err
        report: dict[str, Any] = json.loads(out)
        return report

    deadline = time.monotonic() + 90
    while (report := job())["job"].get("state") not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
        assert time.monotonic() < deadline, report
        time.sleep(0.3)
    finished = time.time()
    assert report["job"]["state"] == "JOB_STATE_SUCCEEDED", report["job"].get("reason")
    code, out, err = run_cli(["events", JOB, "--cluster", str(cluster), "--json"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    times = [when(e["time"]) for e in events]
    from_b = [when(e["time"]) for e in events if e.get("node") == "node-b"]
    assert from_b, events
    # No event stamped after the job was seen finished (node-b's clock is 300 s ahead).
    future = [e for e, t in zip(events, times, strict=True) if t > finished + 2]
    late_in_order = [
        (a["message"], b["message"])
        for a, b, ta, tb in zip(events, events[1:], times, times[1:], strict=False)
        if tb < ta - 2
    ]
    ordered = not future and not late_in_order
    with capsys.disabled():
        print(json.dumps({"skew_events_ordered": ordered}))
    assert not future, [(e["node"], e["message"], e["time"]) for e in future][:5]
    assert not late_in_order, late_in_order[:5]
    # Every metric's own time is as true as its event's.
    for e in events:
        m = e.get("metrics", {})
        if "time" in m:
            assert began - 2 <= when(m["time"]) <= finished + 2, e
    # Cost: ranks x the attempts' seconds, a few seconds in all, never minutes.
    job_json = report["job"]
    hours = report["cost"]["gpu_hours"]
    assert 0 < hours * 3600 <= 2 * (finished - began) + 10, (hours, finished - began)
    for att in job_json["attempts"]:
        started, ended = when(att["started"]), when(att["ended"])
        assert 0 <= ended - started <= finished - began + 2, att
        for rank in att["ranks"]:
            if "lastHeartbeat" in rank:
                assert when(rank["lastHeartbeat"]) <= finished + 2, rank
    assert not os.environ.get(SKEW_ENV)  # the skew stayed on node-b
