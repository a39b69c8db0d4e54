"""What opening a job event shows: for a failure or an alert, the diagnosed cause first,
then its evidence (the signature's facts) and the last error lines, and where in the
rank's log the error is. Pure: read from the event the agent sent."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

from console.model.job_rows import job_kind
from console.model.jobs import ts
from console.model.log_errors import error_starts

# The facts a signature may carry, in the order they read best (see the diagnosis
# contract); any other detail follows in name order.
FACT_ORDER = (
    "op",
    "seq",
    "timeout_ms",
    "ran_ms",
    "last_enqueued",
    "last_completed",
    "tried",
    "free",
    "total",
    "gpu",
    "xid",
    "pci",
    "description",
    "action",
    "pid",
    "stream",
)
# Details shown in their own places, not as facts.
_SHOWN_APART = frozenset(
    ("cause", "reason", "last_lines", "line", "alert", "signature", "severity")
)


@dataclass(frozen=True)
class EventDetail:
    """One event, as its detail view reads."""

    title: str  # "rank failed · rank 3 on node-b · attempt 2 · 12:00:01"
    cause: str  # the diagnosed cause, or the event's message
    severity: str  # "critical", "warning", "info", or "" when the agent did not say
    signature: str  # the alert that found it ("cuda_oom"), "" for none
    facts: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # the last error lines, oldest first
    rank: int | None = None  # the rank whose log holds the error
    attempt: int = 0
    seek_line: str = ""  # the log line to open the log at ("": its last error)


def signature_of(details: dict[str, str], text: str) -> str:
    """The alert name; an old journal's "oom" is read as the contract says."""
    name = details.get("signature") or details.get("alert", "")
    if name == "oom":
        return "cuda_oom" if "CUDA" in text or "Cuda" in text else "host_oom"
    return name


def event_detail(event: job_pb2.JobEvent) -> EventDetail:
    """The detail of any job event; failures and alerts open on their cause."""
    details = dict(event.details)
    kind = job_kind(event.kind)
    message = event.message.strip()
    first_line = message.splitlines()[0] if message else ""
    rank = event.rank if event.rank >= 0 and event.node else None
    cause = details.get("cause") or details.get("reason") or _without_rank(first_line, rank)
    lines = details.get("last_lines", "").splitlines()
    line = details.get("line", "")
    if not lines and line:
        lines = [line]
    if not lines and len(message.splitlines()) > 1:
        lines = message.splitlines()[1:]
    seek_line = line
    if not seek_line and lines:
        starts = error_starts(lines)
        # The last error in them is the one that ended the rank.
        seek_line = lines[starts[-1][0]] if starts else ""
    where = [kind]
    if rank is not None:
        where.append(f"rank {rank} on {event.node}")
    elif event.node:
        where.append(event.node)
    if event.attempt:
        where.append(f"attempt {event.attempt}")
    if event.HasField("time"):
        where.append(time.strftime("%H:%M:%S", time.localtime(ts(event.time))))
    facts = [(key, details[key]) for key in FACT_ORDER if details.get(key)]
    facts += sorted(
        (key, value)
        for key, value in details.items()
        if value and key not in _SHOWN_APART and key not in FACT_ORDER
    )
    return EventDetail(
        title=" · ".join(where),
        cause=cause or kind,
        severity=details.get("severity", ""),
        signature=signature_of(details, f"{cause}\n{line}\n{message}"),
        facts=facts,
        lines=lines,
        rank=rank,
        attempt=event.attempt,
        seek_line=seek_line,
    )


def _without_rank(text: str, rank: int | None) -> str:
    prefix = f"rank {rank}: "
    return text[len(prefix) :] if rank is not None and text.startswith(prefix) else text
