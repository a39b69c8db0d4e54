"""Issue 19, the agent host reboot, on the namespaced test bed (tests/netbed): every process
of node-3's namespace (its agent, its rank, its sshd) killed mid-job, then started again.
The node rejoins (live in `gantry status`), and the job goes on by its restart policy: a
restart from the latest checkpoint when max_restarts allows, failed with a reason naming the
node when not. Needs root (CI runs as root): without it the bed fails with one line."""

from __future__ import annotations

from pathlib import Path

from tests.netbed.bed import Netbed
from tests.netbed.fixture import netbed, netbed_faults_undone  # noqa: F401
from tests.netbed.jobs import last_attempt, state
from tests.netbed.scenarios import reboot_scenario


def test_a_rebooted_host_rejoins_and_the_job_restarts_from_its_latest_checkpoint(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    seen = reboot_scenario(netbed, tmp_path, max_restarts=1, name="reboot-restart")
    assert seen.status_code == 0 and seen.node_states["node-3"] == "live", seen.node_states
    assert seen.saved_step >= 5
    attempts = seen.report["job"]["attempts"]
    assert len(attempts) == 2, [(a["number"], a.get("reason")) for a in attempts]
    assert "node-3" in attempts[0]["reason"], attempts[0]
    resumed = last_attempt(seen.report)
    assert resumed["resumedFrom"] == str(seen.checkpoint_dir / f"step{seen.saved_step}"), resumed
    assert sorted(r["node"] for r in resumed["ranks"]) == ["node-1", "node-2", "node-3"]
    assert min(seen.steps) >= seen.saved_step + 2, seen.steps
    assert seen.resumed_at == [seen.saved_step] * 3, seen.resumed_at  # no step lost beyond it


def test_a_rebooted_host_fails_the_job_naming_it_when_no_restart_is_left(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    seen = reboot_scenario(netbed, tmp_path, max_restarts=0, name="reboot-fail")
    assert seen.status_code == 0 and seen.node_states["node-3"] == "live", seen.node_states
    assert state(seen.report) == "JOB_STATE_FAILED", seen.report["job"]
    attempts = seen.report["job"]["attempts"]
    assert len(attempts) == 1 and not seen.resumed_at
    reason = seen.report["job"].get("reason", "")
    assert "node-3 is unreachable" in reason and "out of restarts" in reason, reason
