"""Issue 19, the partition fault, on the namespaced test bed (tests/netbed): a node's link
cut while its ranks are mid-step (tests/netbed/scenarios.py: partition_scenario, which
bench/faults.py runs too), and the console's link to a node cut while a job runs.
Needs root (CI runs as root): without it the bed fails with one line saying so."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.netbed.bed import Netbed
from tests.netbed.fixture import netbed, netbed_faults_undone  # noqa: F401
from tests.netbed.jobs import (
    barrier_spec,
    checkpoint_step,
    cli,
    launch,
    min_step,
    state,
    wait_report,
)
from tests.netbed.scenarios import PARTITION_COLLECTIVE_TIMEOUT_S, STOP_EXTRA_S, partition_scenario

COLLECTIVE_TIMEOUT_S = PARTITION_COLLECTIVE_TIMEOUT_S
STOP_BOUND_S = COLLECTIVE_TIMEOUT_S + STOP_EXTRA_S  # the bound


def test_partitioned_node_stops_every_rank_and_a_restart_resumes(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    seen = partition_scenario(netbed, tmp_path, COLLECTIVE_TIMEOUT_S)
    print(f"partition_to_all_stopped_s={seen.stopped_s:.2f}")
    assert not seen.ranks_left, f"ranks still running after the partition: {seen.ranks_left}"
    assert seen.stopped_s <= STOP_BOUND_S, f"{seen.stopped_s:.1f}s > collective timeout + 5 s"

    attempt = seen.failed
    assert "node-3" in attempt["reason"] and "unreachable" in attempt["reason"], attempt
    lost = [r for r in attempt["ranks"] if r["node"] == "node-3"]
    assert lost and all(r.get("state") != "RANK_STATE_RUNNING" for r in lost), lost
    assert all("unknownSince" in r and "unreachable" in r.get("reason", "") for r in lost)

    resumed = seen.resumed
    assert resumed["resumedFrom"] == str(seen.checkpoint_dir / f"step{seen.saved_step}"), resumed
    # No step lost beyond the checkpoint: every rank went on from the step it holds.
    print(f"partition_steps_lost={seen.steps_lost}")
    assert seen.resumed_at == [seen.saved_step] * 3, seen.resumed_at


def test_console_cut_from_a_node_shows_it_lost_and_the_job_goes_on(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = "console-cut"
    launch(netbed, barrier_spec(netbed, tmp_path, name, COLLECTIVE_TIMEOUT_S))
    wait_report(netbed, name, lambda r: min_step(r) >= 6, 60, "step 6 on every rank")
    host = netbed.host("node-2")
    netbed.cut_console(host, max_s=60)
    code, out = cli(["--cluster", str(netbed.cluster_file), "status", "--json"])
    assert code == 1, out  # a node is unreachable
    nodes = {n["name"]: n for n in json.loads(out)["nodes"]}
    assert nodes["node-2"]["state"] != "live", nodes["node-2"]
    assert nodes["node-1"]["state"] == nodes["node-3"]["state"] == "live"
    # The job's own progress, read where the ranks write it: two more checkpoints while
    # node-2 is cut.
    latest = tmp_path / "ckpt" / "latest"
    before = checkpoint_step(latest)
    deadline = time.monotonic() + 30
    while checkpoint_step(latest) < before + 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint_step(latest) >= before + 10, "the job stalled while node-2 was cut"
    netbed.heal_console(host)
    assert cli(["--cluster", str(netbed.cluster_file), "status", "--json"])[0] == 0
    # The leader's figures catch up with what the ranks wrote (its events may lag a beat).
    report = wait_report(
        netbed, name, lambda r: min_step(r) >= before + 10, 15, "the leader's figures"
    )
    assert state(report) == "JOB_STATE_RUNNING"
    assert len(report["job"]["attempts"]) == 1  # never restarted
    assert cli(["--cluster", str(netbed.cluster_file), "stop", name])[0] == 0
