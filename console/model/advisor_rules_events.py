"""The advisor's event rules: what the agents diagnosed from the ranks' logs and the kernel
log while the job ran (ALERT events by signature, NCCL findings, failed ranks' causes), each
turned into a finding with its evidence and fix. See the diagnosis contract of issue 15."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from console.model.advisor_rules_failures import CUDA_OOM_RE
from console.model.advisor_rules_training import lower_lr_remedy
from console.model.advisor_series import ago, clip, nodes_text, ranks_text
from console.model.advisor_types import (
    AdvisorInput,
    EventNote,
    Finding,
    Remedy,
    Severity,
    Thresholds,
)

WATCHDOG_ALERTS = frozenset({"nccl_watchdog_timeout", "nccl_flight_recorder"})
PEER_LOST_ALERTS = frozenset({"nccl_remote_exited", "gloo_reset"})
NCCL_ERROR_ALERTS = PEER_LOST_ALERTS | {
    "nccl_system_error",
    "nccl_cuda_error",
    "nccl_internal_error",
}
# An XID's recommended action: the node cannot be trusted with the job until it is done.
FATAL_XID_ACTIONS = frozenset({"reset_gpu", "drain_node"})
_XID_ACTION_WORDS: Mapping[str, str] = {
    "reset_gpu": "reset the GPU (nvidia-smi -r) or reboot the node",
    "drain_node": "drain the node and have its hardware checked",
    "restart_job": "restart the job",
    "report": "report it to the cluster's administrators if it repeats",
}


def _alerts(inp: AdvisorInput, names: Collection[str]) -> list[EventNote]:
    """The ALERT notes with one of these signatures, and failed ranks diagnosed with one."""
    out = []
    for note in inp.notes:
        key = {"alert": "alert", "rank_failed": "signature"}.get(note.kind)
        if key is not None and note.details.get(key) in names:
            out.append(note)
    return out


def _said(note: EventNote) -> str:
    """The note's diagnosis: its cause, else its message less the "rank N: " prefix."""
    cause = note.details.get("cause") or note.message.partition(": ")[2] or note.message
    return clip(cause, 120)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _done(said: Mapping[str, str]) -> int | None:
    """The last work a rank completed: as NCCL said, else the one before the one timing out."""
    done = _int(said.get("last_completed"))
    seq = _int(said.get("seq"))
    return done if done is not None else (seq - 1 if seq is not None else None)


def _rank_at(rank: int, node: str) -> str:
    return f"rank {rank} ({node})" if rank >= 0 else node


# --- NCCL watchdog timeouts -----------------------------------------------------------------


def watchdog_timeout(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A collective timed out (PyTorch's NCCL watchdog): which op, and which rank the others
    waited for (the lowest last completed work, or the ranks that reported no timeout)."""
    notes = _alerts(inp, WATCHDOG_ALERTS)
    if not notes:
        return []
    merged: dict[int, dict[str, str]] = {}  # rank -> what its lines said, later over earlier
    nodes: dict[int, str] = {}
    for note in sorted(notes, key=lambda n: n.time):
        merged.setdefault(note.rank, {}).update({k: v for k, v in note.details.items() if v})
        nodes[note.rank] = note.node
    latest = max(notes, key=lambda n: n.time)
    said = merged[latest.rank]
    op, seq = said.get("op", "a collective"), said.get("seq")
    what = f"{op} SeqNum={seq}" if seq else op
    timeout_ms, ran_ms = _int(said.get("timeout_ms")), _int(said.get("ran_ms"))
    evidence = f"{what} timed out"
    if timeout_ms is not None:
        evidence += f" after {timeout_ms} ms ({ago(timeout_ms / 1000)})"
    if ran_ms is not None:
        evidence += f", ran {ran_ms} ms"
    merged.pop(-1, None)  # a line no rank can be told from says nothing of who was behind
    reporters = sorted(merged)
    if reporters:
        evidence += f"; reported by {ranks_text(reporters)}"
        if inp.world_size:
            evidence += f" ({len(reporters)} of {inp.world_size})"
    evidence += f", latest {ago(inp.now - latest.time)} ago"
    # How far each reporting rank got: its last completed work, else the work it timed out on.
    progress = {rank: done for rank, d in merged.items() if (done := _done(d)) is not None}
    behind: int | None = None
    if len(set(progress.values())) > 1:
        behind = min(progress, key=lambda r: (progress[r], r))
        ahead = max(progress.values())
        evidence += (
            f"; lowest last completed: rank {behind} at {progress[behind]} (others up to "
            f"{ahead}): the others waited for it"
        )
    elif inp.world_size and len(reporters) < inp.world_size:
        silent = sorted(set(range(inp.world_size)) - set(reporters))
        evidence += (
            f"; {ranks_text(silent)} reported no timeout: the others may have waited for them"
        )
    elif len(reporters) > 1:
        evidence += "; every reporting rank stopped at the same work"
    if behind is not None:
        node = nodes[behind]
        summary = f"Look at rank {behind} on {node}: the others waited for it"
    else:
        summary = "Find the rank the others waited for (the one that reported no timeout)"
    remedy = Remedy(
        kind="advice",
        summary=summary,
        details=(
            "A rank that never reached the collective holds every other rank up: read its "
            "stderr (gantry logs JOB --rank N --stderr) and its node (XID, OOM, a hung "
            "dataloader, a rank on another code path). Set TORCH_NCCL_TRACE_BUFFER_SIZE=2000 "
            "(with TORCH_NCCL_DUMP_ON_TIMEOUT=1) for PyTorch's flight-recorder dump of every "
            "rank's collectives at the next timeout. Raise the timeout (init_process_group's "
            "timeout, --ddp_timeout) only if the op is legitimately slow, such as rank 0 "
            "saving a checkpoint or preprocessing data while the others wait."
        ),
        params={"rank": str(behind)} if behind is not None else {},
    )
    title = f"NCCL watchdog timeout in {what}"
    return [Finding("watchdog_timeout", "critical", title, evidence, remedy)]


# --- XIDs and missing GPUs ------------------------------------------------------------------


def _exclude(node: str, why: str, then: str) -> Remedy:
    return Remedy(
        kind="exclude-node",
        summary=f"Go on without {node}",
        details=(
            f"{why} Restart without {node}: the latest checkpoint is converted to a universal "
            f"one and the job resumes at the smaller world size (gantry restart JOB --exclude "
            f"{node}). Then {then} before {node} takes work again."
        ),
        params={"node": node},
    )


def xid(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """An XID the kernel logged on a GPU of the job: critical where NVIDIA's recommended
    action is to reset the GPU or drain the node, and then the fix is to go on without it."""
    notes = [n for n in _alerts(inp, ("xid",)) if n.details.get("action", "report") != "none"]
    if not notes:
        return []

    def weight(note: EventNote) -> tuple[bool, float]:
        return note.details.get("action") in FATAL_XID_ACTIONS, note.time

    worst = max(notes, key=weight)
    d = worst.details
    code, gpu, action = d.get("xid", "?"), d.get("gpu", ""), d.get("action", "report")
    description = d.get("description") or "(not in the XID catalogue)"
    on_gpu = f"GPU {gpu} on {worst.node}" if gpu else worst.node
    title = f"{on_gpu}: Xid {code} {description}"
    evidence = f"Xid {code} on {on_gpu}"
    if d.get("pci"):
        evidence += f" (PCI {d['pci']})"
    evidence += f", {ago(inp.now - worst.time)} ago"
    if worst.rank >= 0:
        evidence += f", rank {worst.rank}'s GPU"
    evidence += f"; kernel: {clip(d.get('line') or worst.message, 90)!r}"
    others = sorted({(n.node, n.details.get("xid", "?")) for n in notes} - {(worst.node, code)})
    if others:
        evidence += "; also " + ", ".join(f"Xid {x} on {node}" for node, x in others[:3])
    words = _XID_ACTION_WORDS.get(action, "report it")
    if action in FATAL_XID_ACTIONS:
        why = f"Xid {code} ({description}): NVIDIA's recommended action is to {words}."
        return [Finding("xid", "critical", title, evidence, _exclude(worst.node, why, words))]
    remedy = Remedy(
        kind="advice",
        summary=f"Xid {code}: {words}",
        details=(
            f"Xid {code} ({description}) usually follows from the application or a transient "
            f"fault: {words}. If it repeats on {worst.node}, go on without it (gantry restart "
            f"JOB --exclude {worst.node})."
        ),
        params={"node": worst.node, "xid": code},
    )
    return [Finding("xid", "warning", title, evidence, remedy)]


def gpu_missing(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """A GPU that failed to initialise, so the node runs with fewer than it should."""
    notes = _alerts(inp, ("gpu_missing",))
    if not notes:
        return []
    latest = max(notes, key=lambda n: n.time)
    severity: Severity = "warning" if latest.details.get("severity") == "warning" else "critical"
    evidence = f"{_rank_at(latest.rank, latest.node)} {ago(inp.now - latest.time)} ago: "
    evidence += _said(latest)
    also = {n.node for n in notes} - {latest.node}
    if also:
        evidence += f"; also on {nodes_text(also)}"
    why = f"A GPU of {latest.node} did not initialise ({_said(latest)})."
    remedy = _exclude(latest.node, why, "check it with nvidia-smi and the kernel log")
    title = f"A GPU is missing on {latest.node}"
    return [Finding("gpu_missing", severity, title, evidence, remedy)]


# --- NCCL and gloo errors ---------------------------------------------------------------------


_NCCL_ERROR_ADVICE: Mapping[str, str] = {
    "nccl_remote_exited": (
        "A peer process exited: this rank only lost it. The cause is on the rank that failed "
        "first (gantry events JOB): read its stderr (gantry logs JOB --rank N --stderr)."
    ),
    "gloo_reset": (
        "A gloo connection was reset: a peer died. The cause is on the rank that failed "
        "first (gantry events JOB): read its stderr (gantry logs JOB --rank N --stderr)."
    ),
    "nccl_system_error": (
        "NCCL met a system or network error: check the links (ibstat, ip link), "
        "NCCL_SOCKET_IFNAME, firewalls between the nodes, and in containers the locked-memory "
        "limit (ulimit -l) and the size of /dev/shm."
    ),
    "nccl_cuda_error": (
        "NCCL met a CUDA error: look for an XID on the node and a driver or CUDA version "
        "that differs between nodes."
    ),
    "nccl_internal_error": (
        "NCCL reported an internal error: make sure every node runs the same NCCL version "
        "(the job screen's transport panel) and rerun with NCCL_DEBUG=INFO to see where."
    ),
}


def nccl_error(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """NCCL or gloo errors (a lost peer, a system, CUDA or internal error); the earliest one
    names the evidence, since the others usually follow from it."""
    notes = [n for n in _alerts(inp, NCCL_ERROR_ALERTS) if not CUDA_OOM_RE.search(_said(n))]
    if not notes:
        return []
    first = min(notes, key=lambda n: n.time)
    alert = first.details.get("alert") or first.details.get("signature", "")
    critical = any(n.details.get("severity", "critical") == "critical" for n in notes)
    severity: Severity = "critical" if critical or not inp.running else "warning"
    evidence = f"{_rank_at(first.rank, first.node)} {ago(inp.now - first.time)} ago: {_said(first)}"
    others = {n.rank for n in notes if n.rank >= 0} - {first.rank}
    if others:
        evidence += f"; then {ranks_text(others)}"
    peer_lost = alert in PEER_LOST_ALERTS
    title = "A peer process died" if peer_lost else "NCCL communication failed"
    remedy = Remedy(
        kind="advice",
        summary="Find the rank that failed first" if peer_lost else "Check the network and NCCL",
        details=_NCCL_ERROR_ADVICE.get(alert, _NCCL_ERROR_ADVICE["nccl_internal_error"]),
    )
    return [Finding("nccl_error", severity, title, evidence, remedy)]


# --- the transport ----------------------------------------------------------------------------


def ib_fallback(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """NCCL runs over TCP sockets although InfiniBand was asked for (the agent's NCCL finding
    `ib_fallback`): the job runs, slowly."""
    if not inp.running:
        return []
    notes = [
        n
        for n in inp.notes
        if (n.kind == "nccl" and n.details.get("finding") == "ib_fallback")
        or (n.kind == "alert" and n.details.get("alert") == "ib_fallback")
    ]
    if not notes:
        return []
    latest = max(notes, key=lambda n: n.time)
    line = latest.details.get("line") or latest.message
    evidence = f"{_rank_at(latest.rank, latest.node)}: NCCL said {clip(line, 110)!r}"
    nodes = {n.node for n in notes}
    evidence += f" ({len({(n.node, n.rank) for n in notes})} ranks on {nodes_text(nodes)})"
    remedy = Remedy(
        kind="advice",
        summary="Bring InfiniBand back, or set NCCL_IB_DISABLE=1 if sockets are intended",
        details=(
            "NCCL fell back from InfiniBand to TCP sockets although IB was asked for. Check the "
            "IB driver and libibverbs (ibv_devinfo, ibstat: ports Active), NCCL_IB_HCA naming "
            "the right HCAs, and in containers /dev/infiniband and the locked-memory limit; if "
            "sockets are intended, set NCCL_IB_DISABLE=1 and NCCL_SOCKET_IFNAME to the fast "
            "interface."
        ),
        params={"node": latest.node},
    )
    title = "NCCL fell back to TCP sockets"
    return [Finding("ib_fallback", "warning", title, evidence, remedy)]


# --- training health from the logs -------------------------------------------------------------


def training_alerts(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """NaN losses and loss-scale storms the logs showed (the metric rules' findings, where
    they have one, are kept over these)."""
    findings = []
    for alert, rule, title in (
        ("nan_loss", "nan-loss", "Loss is NaN or infinite"),
        ("loss_scale_storm", "loss-scale-collapse", "Loss scale collapsed"),
    ):
        notes = _alerts(inp, (alert,))
        if not notes:
            continue
        latest = max(notes, key=lambda n: n.time)
        severity: Severity = (
            "critical" if latest.details.get("severity") == "critical" else "warning"
        )
        evidence = (
            f"{_rank_at(latest.rank, latest.node)} {ago(inp.now - latest.time)} ago: "
            f"{clip(latest.details.get('line') or latest.message, 110)!r}"
        )
        if len(notes) > 1:
            evidence += f" ({len(notes)} such lines)"
        findings.append(Finding(rule, severity, title, evidence, lower_lr_remedy(inp)))
    return findings


# --- why the attempt ended, when no other rule says ----------------------------------------------


def rank_failed(inp: AdvisorInput, th: Thresholds) -> list[Finding]:
    """The first rank of the attempt to fail, with its diagnosed cause (the advisor runs this
    only when no other rule found something critical)."""
    notes = [n for n in inp.notes if n.kind == "rank_failed"]
    if not notes:
        return []
    first = min(notes, key=lambda n: (n.time, n.rank))
    cause = _said(first)
    evidence = f"{_rank_at(first.rank, first.node)} failed first, {ago(inp.now - first.time)} ago"
    evidence += f": {cause}"
    others = {n.rank for n in notes} - {first.rank}
    if others:
        evidence += f"; then {ranks_text(others)}"
    remedy = Remedy(
        kind="advice",
        summary=f"Read rank {first.rank}'s errors: gantry logs JOB --rank {first.rank} --stderr",
        details=(
            "The failure event holds the rank's last error lines (gantry events JOB); fix what "
            "they say, then restart from the latest checkpoint (gantry restart JOB)."
        ),
        params={"rank": str(first.rank), "node": first.node},
    )
    title = f"Rank {first.rank} failed: {clip(cause, 60)}"
    return [Finding("rank_failed", "critical", title, evidence, remedy)]
