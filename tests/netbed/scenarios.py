"""The fault scenarios on the test bed, each a function the tests assert on and
bench/faults.py reports from: a node partitioned mid-step, and a node's host rebooted
(every process of its namespace killed, then its agent and sshd started again). Each runs
the barrier stand-in (tests/netbed/barrier_rank.py) and stops its job before returning."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netbed.bed import Host, Netbed, _start_sshd, _wait_sshd
from tests.netbed.jobs import (
    Report,
    barrier_spec,
    checkpoint_step,
    cli,
    cluster_of,
    last_attempt,
    launch,
    min_step,
    resumed_step,
    state,
    wait_report,
)

PARTITION_COLLECTIVE_TIMEOUT_S = 4.0
STOP_EXTRA_S = 5.0  # the bound: all ranks stopped within the collective timeout + 5 s
ENDED = ("JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED", "JOB_STATE_STOPPED")


@dataclass
class Partition:
    """What the partition scenario saw."""

    stopped_s: float  # from the cut to the last rank process gone
    ranks_left: list[str]  # hosts with a rank still running at the bound
    saved_step: int  # the latest checkpoint when the ranks stopped
    failed: Report  # the attempt the partition failed, as the leader tells it
    resumed: Report  # the restart's attempt
    resumed_at: list[int]  # the step each rank of the restart went on from
    checkpoint_dir: Path

    @property
    def steps_lost(self) -> int:
        """Steps the restart lost beyond the latest checkpoint (0: none)."""
        return max(self.saved_step - at for at in self.resumed_at)


def partition_scenario(
    bed: Netbed, workdir: Path, collective_timeout_s: float = PARTITION_COLLECTIVE_TIMEOUT_S
) -> Partition:
    """node-3's link cut while every rank is mid-step (past step 12, two checkpoints in);
    the ranks' stop timed; the failure read from the leader alone; healed; restarted."""
    name = "partition"
    bound_s = collective_timeout_s + STOP_EXTRA_S
    launch(bed, barrier_spec(bed, workdir, name, collective_timeout_s))
    try:
        wait_report(bed, name, lambda r: min_step(r) >= 12, 60, "step 12 on every rank")
        running = sorted(bed.rank_pids(name))
        assert running == [h.name for h in bed.hosts], running
        cut_node = bed.host("node-3")
        bed.cut(cut_node, max_s=60)
        cut_at = time.monotonic()
        while bed.rank_pids(name) and time.monotonic() - cut_at < bound_s + 10:
            time.sleep(0.1)
        stopped_s = time.monotonic() - cut_at
        ranks_left = sorted(bed.rank_pids(name))
        saved_step = checkpoint_step(workdir / "ckpt" / "latest")
        # Still cut: asked of the leader alone, not of node-3 too.
        failed = wait_report(
            bed,
            name,
            lambda r: state(r) == "JOB_STATE_FAILED",
            30,
            "the attempt's failure",
            cluster_of(bed, ["node-1"]),
        )
        bed.heal(cut_node)
        code, out = cli(["--cluster", str(bed.cluster_file), "restart", name])
        assert code == 0, out
        report = wait_report(
            bed,
            name,
            lambda r: len(r["job"].get("attempts", [])) == 2 and min_step(r) >= saved_step + 2,
            60,
            "the second attempt's steps",
        )
        resumed_at = [resumed_step(bed, name, rank) for rank in range(len(bed.hosts))]
    finally:
        bed.heal_all()
        cli(["--cluster", str(bed.cluster_file), "stop", name])
    return Partition(
        stopped_s,
        ranks_left,
        saved_step,
        last_attempt(failed),
        last_attempt(report),
        resumed_at,
        workdir / "ckpt",
    )


def reboot_host(bed: Netbed, host: Host) -> None:
    """Every process of `host` killed, then its sshd and agent started again (same data
    dir, address and certificate), as after a power cycle."""
    bed.kill_host_processes(host)
    _start_sshd(bed, host)
    bed.start_agent(host)
    _wait_sshd(host)
    bed.wait_agent(host)


@dataclass
class Reboot:
    """What the reboot scenario saw."""

    node_states: dict[str, str]  # `gantry status --json` once the host is back
    status_code: int
    report: Report  # the job once it went on (or ended) by its restart policy
    saved_step: int  # the latest checkpoint when the host went down
    checkpoint_dir: Path
    steps: list[int] = field(default_factory=list)  # the last attempt's ranks' steps
    resumed_at: list[int] = field(default_factory=list)  # each rank's restart step, if any


def reboot_scenario(bed: Netbed, workdir: Path, max_restarts: int, name: str = "reboot") -> Reboot:
    """node-3's host rebooted while the job's ranks are mid-step (past the first
    checkpoint). With `max_restarts` left the job goes on from its latest checkpoint
    once node-3 is back; without, it fails."""
    # The backoff outlasts the reboot: the restart finds node-3's agent back.
    restart = {"max_restarts": max_restarts, "backoff_s": 6.0}
    launch(bed, barrier_spec(bed, workdir, name, 10.0, restart=restart))
    try:
        wait_report(bed, name, lambda r: min_step(r) >= 7, 60, "step 7 on every rank")
        reboot_host(bed, bed.host("node-3"))
        saved_step = checkpoint_step(workdir / "ckpt" / "latest")
        code, out = cli(["--cluster", str(bed.cluster_file), "status", "--json"])
        nodes = {n["name"]: n["state"] for n in json.loads(out)["nodes"]}

        def went_on(r: Report) -> bool:
            if state(r) in ENDED:
                return True
            return len(r["job"].get("attempts", [])) >= 2 and min_step(r) >= saved_step + 2

        report = wait_report(bed, name, went_on, 75, "the job to go on by its restart policy")
        steps = [int(r.get("metrics", {}).get("step", 0)) for r in last_attempt(report)["ranks"]]
        restarted = len(report["job"].get("attempts", [])) >= 2
        world = range(len(bed.hosts))
        resumed_at = [resumed_step(bed, name, rank) for rank in world] if restarted else []
    finally:
        cli(["--cluster", str(bed.cluster_file), "stop", name])
    return Reboot(nodes, code, report, saved_step, workdir / "ckpt", steps, resumed_at)


@dataclass
class ConsoleCut:
    """What `gantry job NAME --json` and `gantry jobs --json` gave with node-2 cut from
    the console."""

    job_s: float
    job_code: int
    job_state: str
    jobs_code: int
    jobs_errors: list[str]


def console_cut_scenario(bed: Netbed, workdir: Path, name: str = "console-cut-wait") -> ConsoleCut:
    """The console's link to node-2 cut while a job runs (leader node-1); one `gantry job
    --json` timed, and `gantry jobs --json`'s report of the lost node."""
    launch(bed, barrier_spec(bed, workdir, name, 10.0))
    host = bed.host("node-2")
    try:
        wait_report(bed, name, lambda r: min_step(r) >= 3, 60, "step 3 on every rank")
        bed.cut_console(host, max_s=60)
        began = time.monotonic()
        job_code, out = cli(["--cluster", str(bed.cluster_file), "job", name, "--json"])
        job_s = time.monotonic() - began
        job_state = state(json.loads(out)) if job_code == 0 else out.strip()
        jobs_code, out = cli(["--cluster", str(bed.cluster_file), "jobs", "--json"])
        errors = [str(e) for e in json.loads(out)["errors"]] if out.strip() else []
    finally:
        bed.heal_console(host)
        cli(["--cluster", str(bed.cluster_file), "stop", name])
    return ConsoleCut(job_s, job_code, job_state, jobs_code, errors)
