"""What the kernel log says about this node's ranks: an XID on a GPU a rank uses, or the
oom-killer killing a rank's process. Pure bookkeeping: the daemon hands kernel events in
(it follows the kernel log in the telemetry room, which the jobs room does not import),
and the supervisor journals the ALERT events this returns and asks which rank's exit was
an oom kill.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from gantry.v1.xid_catalog import xid_info_for_line

from agent.jobs.journal import RankRow

__all__ = ["KernelAlert", "KernelAlerts"]

MAX_OOM_KILLS = 256
OOM_KILL_MEMORY_S = 600.0  # an oom kill explains a rank's SIGKILL seen this long after it


@dataclass(frozen=True)
class KernelAlert:
    """An ALERT event to journal for one rank."""

    key: tuple[str, int, int]  # (job, attempt, rank)
    message: str
    details: dict[str, str]


class KernelAlerts:
    def __init__(self) -> None:
        self._oom_kills: OrderedDict[int, tuple[float, str]] = OrderedDict()

    def xid(
        self,
        rows: Iterable[RankRow],
        code: int,
        gpu: int | None,
        pci: str,
        text: str,
        pid: int | None = None,
    ) -> list[KernelAlert]:
        """Alerts for the ranks on ``gpu`` (or whose process ``pid`` is) for Xid ``code``."""
        info = xid_info_for_line(code, text)  # as the node's kernel events read it
        where = f"GPU {gpu}" if gpu is not None else f"the GPU at PCI {pci}"
        cause = f"Xid {code} on {where}: {info.description} ({info.action_text})"
        out = []
        for row in rows:
            if not ((gpu is not None and gpu in row.gpu_indices) or (pid and pid == row.pid)):
                continue
            details = {
                "alert": "xid",
                "cause": cause,
                "severity": "critical" if info.severity == "critical" else "warning",
                "line": text[:2000],
                "stream": "kernel",
                "xid": str(code),
                "pci": pci,
                "action": info.action,
                "description": info.description,
            }
            if gpu is not None:
                details["gpu"] = str(gpu)
            out.append(KernelAlert(row.key, f"rank {row.rank}: {cause}", details))
        return out

    def gpu_failed(
        self, rows: Iterable[RankRow], gpu: int, pci: str, text: str
    ) -> list[KernelAlert]:
        """Alerts for the ranks on ``gpu``, which the driver lost or could not bring up."""
        cause = (
            f"GPU {gpu} (PCI {pci}) failed in the driver: it is gone until the node is "
            "drained and the GPU reset or the node rebooted"
        )
        return [
            KernelAlert(
                row.key,
                f"rank {row.rank}: {cause}",
                {
                    "alert": "gpu_missing",
                    "cause": cause,
                    "severity": "critical",
                    "line": text[:2000],
                    "stream": "kernel",
                    "gpu": str(gpu),
                    "pci": pci,
                    "action": "drain_node",
                },
            )
            for row in rows
            if gpu in row.gpu_indices
        ]

    def oom_kill(
        self, rows: Iterable[RankRow], pid: int, process: str, text: str, now: float
    ) -> list[KernelAlert]:
        """Remembers the kill (for ``killed_by_oom``); an alert if it was a rank's process."""
        what = f"the kernel's oom-killer killed pid {pid} ({process})"
        self._oom_kills[pid] = (now, what)
        self._oom_kills.move_to_end(pid)
        while len(self._oom_kills) > MAX_OOM_KILLS:
            self._oom_kills.popitem(last=False)
        return [
            KernelAlert(
                row.key,
                f"rank {row.rank}: host out of memory: {what}",
                {
                    "alert": "host_oom",
                    "cause": f"host out of memory: {what}",
                    "severity": "critical",
                    "line": text[:2000],
                    "stream": "kernel",
                    "pid": str(pid),
                },
            )
            for row in rows
            if row.pid == pid
        ]

    def killed_by_oom(self, pid: int, code: int, now: float) -> str | None:
        """What the oom-killer said of ``pid``, when the rank died of SIGKILL (-9, or 137
        through a shell) and the kill was recent."""
        if code not in (-9, 137) or not pid:
            return None
        found = self._oom_kills.get(pid)
        if found is None or now - found[0] > OOM_KILL_MEMORY_S:
            return None
        return found[1]
