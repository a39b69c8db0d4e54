"""The advisor's rule for failures of a rank's own runtime that the agents diagnose from its
log (agent/jobs/node/runtime_signatures.py): a disk that filled while saving, a DataLoader
worker that died, a rendezvous that could not start, a GLOO_SOCKET_IFNAME naming no
interface. Each is one finding with its evidence and what to change."""

from __future__ import annotations

from collections.abc import Mapping

from console.model.advisor_series import ago, clip, ranks_text
from console.model.advisor_types import (
    AdvisorInput,
    EventNote,
    Finding,
    Remedy,
    Severity,
    Thresholds,
)

# alert -> (title, the remedy's summary, its details)
RUNTIME_ADVICE: Mapping[str, tuple[str, str, str]] = {
    "disk_full": (
        "A write failed: the disk is full or a limit was hit",
        "Free space where the job saves, or save elsewhere",
        "A checkpoint or output write failed for lack of space, a quota or a file-size limit "
        "(df -h and du on the job's checkpoint_dir; ulimit -f). Delete old checkpoints or point "
        "checkpoint_dir at a larger volume, then restart from the latest complete checkpoint "
        "(gantry restart JOB).",
    ),
    "dataloader_worker": (
        "A DataLoader worker died",
        "Give the workers memory, or fewer of them",
        "A DataLoader worker process was killed, most often by the host's out-of-memory killer "
        "or a /dev/shm too small for the batches it hands over (a Bus error). Lower "
        "num_workers or the prefetch factor, raise the container's shared memory "
        "(--shm-size) and the node's memory limit, then restart the job.",
    ),
    "rendezvous": (
        "The ranks could not start their process group",
        "Fix MASTER_ADDR / MASTER_PORT, then restart",
        "The rendezvous failed: the master's port was taken, its address did not resolve or "
        "could not be reached. Gantry chooses a free MASTER_PORT per attempt; a script that "
        "sets its own, or a stale process still holding the port (ss -ltnp), defeats that. "
        "Check that every node resolves and reaches the first node of the job.",
    ),
    "socket_ifname": (
        "A socket interface name matches no interface",
        "Set GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME to a real interface",
        "The job's env names a network interface this node does not have: set it to one that "
        "`ip -br addr` lists on every node (they may differ by node), or remove it to let the "
        "library choose, then restart the job.",
    ),
}


def _notes(inp: AdvisorInput) -> dict[str, list[EventNote]]:
    found: dict[str, list[EventNote]] = {}
    for note in inp.notes:
        key = {"alert": "alert", "rank_failed": "signature"}.get(note.kind)
        name = note.details.get(key, "") if key is not None else ""
        if name in RUNTIME_ADVICE:
            found.setdefault(name, []).append(note)
    return found


def runtime_failures(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """One finding per runtime failure the ranks' logs showed, the earliest as evidence."""
    findings = []
    for alert, notes in _notes(inp).items():
        first = min(notes, key=lambda n: (n.time, n.rank))
        said = first.details.get("cause") or first.message.partition(": ")[2] or first.message
        where = f"rank {first.rank} ({first.node})" if first.rank >= 0 else first.node
        evidence = f"{where} {ago(inp.now - first.time)} ago: {clip(said, 120)}"
        others = {n.rank for n in notes if n.rank >= 0} - {first.rank}
        if others:
            evidence += f"; also {ranks_text(others)}"
        title, summary, details = RUNTIME_ADVICE[alert]
        remedy = Remedy(kind="advice", summary=summary, details=details)
        # A warning (a join that is only slow so far) stays one while the job runs.
        critical = any(n.details.get("severity", "critical") == "critical" for n in notes)
        severity: Severity = "critical" if critical or not inp.running else "warning"
        findings.append(Finding(alert, severity, title, evidence, remedy))
    return findings
