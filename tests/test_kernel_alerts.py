"""What the kernel log says of this node's ranks, as their ALERTs: an XID on a GPU a rank
uses, a GPU the driver lost, an oom kill of a rank's process (pure; the e2e test sends an
oom kill through a real agent)."""

from __future__ import annotations

from gantry.v1.xid_catalog import xid_info, xid_info_for_line

from agent.jobs.journal import RankRow
from agent.jobs.node.kernel_alerts import KernelAlerts
from agent.jobs.node.log_scan import LogScanner


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


def test_the_line_decides_an_xids_verdict_here_and_in_a_ranks_log() -> None:
    """One reading of a line: the per-rank kernel alert and the rank scanner's finding take
    the verdict the line prints (NVLink5 Fatal/Nonfatal), as the node's kernel events do."""
    nonfatal = (  # https://github.com/leptonai/gpud/pull/1174 (kmsg input in the description)
        "NVRM: Xid (PCI:0018:01:00): 145, RLW_RXPIPE Nonfatal XC0 i0 Link 13 "
        "(0x0409a0c2 0x00000008 0x00000001 0x00000000 0x00100000 0x00000004)"
    )
    for code, line in ((145, nonfatal), (79, "NVRM: Xid (PCI:0018:01:00): 79, GPU has fallen")):
        want = xid_info_for_line(code, line)
        (alert,) = KernelAlerts().xid([row(0, 0, 7)], code, 0, "0018:01:00", line)
        assert (alert.details["action"], alert.details["description"]) == (
            want.action,
            want.description,
        )
        scanner = LogScanner()
        scanner.feed("stderr", line, 0.0)
        assert scanner.found["xid"].fields["action"] == want.action
    assert xid_info(145).action != xid_info_for_line(145, nonfatal).action  # the line decided
