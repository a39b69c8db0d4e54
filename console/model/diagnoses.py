"""What the agents diagnosed in a job's logs and kernel logs: its ALERT events (failure
signatures, XIDs, oom kills) and its failed ranks' causes, for the latest attempt. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gantry.v1 import job_pb2

from console.model.event_detail import signature_of

__all__ = ["Diagnosis", "diagnoses", "diagnoses_json"]

_K = job_pb2.JobEventKind


@dataclass(frozen=True)
class Diagnosis:
    rank: int
    node: str
    alert: str  # the signature, or "rank_failed"
    severity: str
    cause: str
    time: float
    line: str


def diagnoses(events: Iterable[job_pb2.JobEvent], attempt: int | None = None) -> list[Diagnosis]:
    """The latest attempt's diagnoses (or ``attempt``'s), oldest first."""
    chosen = list(events)
    if attempt is None:
        attempt = max((e.attempt for e in chosen), default=0)
    out = []
    for event in chosen:
        if event.attempt != attempt:
            continue
        details = dict(event.details)
        when = event.time.ToNanoseconds() / 1e9
        if event.kind == _K.JOB_EVENT_KIND_ALERT:
            out.append(
                Diagnosis(
                    event.rank,
                    event.node,
                    signature_of(details, details.get("line", "")),
                    details.get("severity", "warning"),
                    details.get("cause") or event.message,
                    when,
                    details.get("line", ""),
                )
            )
        elif event.kind == _K.JOB_EVENT_KIND_RANK_FAILED:
            out.append(
                Diagnosis(
                    event.rank,
                    event.node,
                    details.get("signature") or "rank_failed",
                    "critical",
                    details.get("reason") or event.message,
                    when,
                    details.get("last_lines", "").splitlines()[-1:][0]
                    if details.get("last_lines")
                    else "",
                )
            )
    return out


def diagnoses_json(found: list[Diagnosis]) -> list[dict[str, object]]:
    return [
        {
            "rank": d.rank,
            "node": d.node,
            "alert": d.alert,
            "severity": d.severity,
            "cause": d.cause,
            "time": round(d.time, 3),
            "line": d.line,
        }
        for d in found
    ]
