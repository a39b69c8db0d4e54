"""What the kernel log says of this node's ranks, as their ALERTs: an XID on a GPU a rank
uses, a GPU the driver lost, an oom kill of a rank's process (pure; the e2e test sends an
oom kill through a real agent)."""

from __future__ import annotations

from agent.jobs.journal import RankRow
from agent.jobs.node.kernel_alerts import KernelAlerts


def row(rank: int, gpu: int, pid: int) -> RankRow:
    return RankRow(
        job="moe",
        attempt=2,
        rank=rank,
        local_rank=rank,
        node="node-b",
        state=0,
        stdout_path="",
        stderr_path="",
        metrics_path="",
        exit_path="",
        gpu_indices=(gpu,),
        pid=pid,
    )


ROWS = [row(0, 0, 100), row(1, 3, 101)]
# The line's format: tests/fixtures/logs/xid_79_fallen_off_bus_dmesg_T_akash209.log.
XID = "NVRM: Xid (PCI:0000:a1:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."


def test_an_xid_is_an_alert_for_the_ranks_on_its_gpu_only() -> None:
    (alert,) = KernelAlerts().xid(ROWS, 79, 3, "0000:a1:00", XID)
    assert alert.key == ("moe", 2, 1)
    assert alert.details["alert"] == "xid" and alert.details["severity"] == "critical"
    assert alert.details["gpu"] == "3" and alert.details["action"] == "drain_node"
    assert alert.message.startswith("rank 1: Xid 79 on GPU 3: ")
    assert KernelAlerts().xid(ROWS, 79, None, "0000:a1:00", XID) == []  # no GPU known
    assert len(KernelAlerts().xid(ROWS, 13, None, "0000:a1:00", XID, pid=100)) == 1  # its pid


def test_a_lost_gpu_is_an_alert_for_its_ranks() -> None:
    (alert,) = KernelAlerts().gpu_failed(ROWS, 0, "0000:3b:00", "NVRM: RmInitAdapter failed!")
    assert alert.key == ("moe", 2, 0) and alert.details["alert"] == "gpu_missing"


def test_an_oom_kill_explains_only_its_ranks_sigkill() -> None:
    alerts = KernelAlerts()
    (alert,) = alerts.oom_kill(ROWS, 101, "python", "Out of memory: Killed process 101", 50.0)
    assert alert.key == ("moe", 2, 1) and alert.details["pid"] == "101"
    assert alerts.killed_by_oom(101, -9, 60.0) == "the kernel's oom-killer killed pid 101 (python)"
    assert alerts.killed_by_oom(101, 1, 60.0) is None  # not a SIGKILL
    assert alerts.killed_by_oom(100, -9, 60.0) is None  # another process
    assert alerts.killed_by_oom(101, 137, 10_000.0) is None  # long ago
    assert alerts.oom_kill(ROWS, 999, "java", "Out of memory: Killed process 999", 70.0) == []
