"""The journal's rows as Python values, and each row as its proto."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gantry.v1 import job_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = [
    "ATTEMPT_COLUMNS",
    "EVENT_COLUMNS",
    "RANK_COLUMNS",
    "AttemptRow",
    "AuditEntry",
    "JobRow",
    "RankRow",
    "attempt_from_db",
    "attempt_to_pb",
    "event_from_db",
    "metrics_json",
    "rank_from_db",
    "rank_to_pb",
    "set_ts",
]


@dataclass(frozen=True)
class JobRow:
    name: str
    spec: job_pb2.JobSpec
    state: int
    reason: str
    leader: str
    created: float
    restarts_used: int


@dataclass(frozen=True)
class AttemptRow:
    job: str
    number: int
    state: int
    reason: str = ""
    started: float | None = None
    ended: float | None = None
    resumed_from: str = ""
    master_port: int = 0
    excluded_nodes: tuple[str, ...] = ()
    replaced_nodes: tuple[tuple[str, str], ...] = ()  # (node of the spec, its spare)


@dataclass(frozen=True)
class RankRow:
    job: str
    attempt: int
    rank: int
    local_rank: int
    node: str
    state: int
    stdout_path: str
    stderr_path: str
    metrics_path: str
    exit_path: str
    gpu_indices: tuple[int, ...] = ()
    pid: int = 0
    create_time: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    started: float | None = None
    ended: float | None = None
    last_heartbeat: float | None = None
    last_metrics: job_pb2.RankMetrics | None = field(default=None, compare=False)
    metrics_source: str = ""
    phase: int = 0  # gantry.v1.RankPhase
    phase_since: float | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job, self.attempt, self.rank)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    who: str
    what: str
    time: float
    details: dict[str, str]


RANK_COLUMNS = (
    "job, attempt, rank, local_rank, node, gpu_indices, pid, create_time, state, exit_code, "
    "reason, stdout_path, stderr_path, metrics_path, exit_path, started, ended, "
    "last_heartbeat, last_metrics, metrics_source, phase, phase_since"
)
EVENT_COLUMNS = "seq, job, attempt, kind, time, node, rank, message, details, metrics"
ATTEMPT_COLUMNS = (
    "job, number, state, reason, started, ended, resumed_from, master_port, excluded_nodes, "
    "replaced_nodes"
)


def set_ts(t: float | None, out: Timestamp) -> None:
    """``out`` set to wall-clock seconds ``t``; left unset for None."""
    if t is not None:
        out.FromNanoseconds(int(t * 1e9))


def metrics_json(m: job_pb2.RankMetrics | None) -> str | None:
    if m is None:
        return None
    return json_format.MessageToJson(m, indent=None, preserving_proto_field_name=True)


def _metrics_from_json(text: str | None) -> job_pb2.RankMetrics | None:
    if not text:
        return None
    m = job_pb2.RankMetrics()
    try:
        json_format.Parse(text, m)
    except json_format.ParseError:
        return None
    return m


def rank_from_db(r: tuple[Any, ...]) -> RankRow:
    """A row of ``SELECT RANK_COLUMNS``."""
    return RankRow(
        job=r[0],
        attempt=r[1],
        rank=r[2],
        local_rank=r[3],
        node=r[4],
        gpu_indices=tuple(json.loads(r[5])),
        pid=r[6],
        create_time=r[7],
        state=r[8],
        exit_code=r[9],
        reason=r[10],
        stdout_path=r[11],
        stderr_path=r[12],
        metrics_path=r[13],
        exit_path=r[14],
        started=r[15],
        ended=r[16],
        last_heartbeat=r[17],
        last_metrics=_metrics_from_json(r[18]),
        metrics_source=r[19],
        phase=r[20],
        phase_since=r[21],
    )


def attempt_from_db(r: tuple[Any, ...]) -> AttemptRow:
    """A row of ``SELECT ATTEMPT_COLUMNS``."""
    replaced = tuple(sorted(json.loads(r[9]).items()))
    return AttemptRow(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])), replaced
    )


def event_from_db(r: tuple[Any, ...]) -> job_pb2.JobEvent:
    """A row of ``SELECT EVENT_COLUMNS``."""
    event = job_pb2.JobEvent(
        seq=r[0],
        job_name=r[1],
        attempt=r[2],
        kind=r[3],
        node=r[5],
        rank=r[6],
        message=r[7],
    )
    set_ts(r[4], event.time)
    event.details.update(json.loads(r[8]))
    if r[9] is not None:
        event.metrics.ParseFromString(r[9])
    return event


def attempt_to_pb(row: AttemptRow) -> job_pb2.Attempt:
    pb = job_pb2.Attempt(
        number=row.number,
        state=row.state,  # type: ignore[arg-type]
        reason=row.reason,
        resumed_from=row.resumed_from,
        master_port=row.master_port,
        excluded_nodes=row.excluded_nodes,
        replaced_nodes=dict(row.replaced_nodes),
    )
    set_ts(row.started, pb.started)
    set_ts(row.ended, pb.ended)
    return pb


def rank_to_pb(row: RankRow) -> job_pb2.Rank:
    pb = job_pb2.Rank(
        rank=row.rank,
        local_rank=row.local_rank,
        node=row.node,
        pid=row.pid,
        state=row.state,  # type: ignore[arg-type]
        exit_code=row.exit_code or 0,
        reason=row.reason,
        gpu_indices=row.gpu_indices,
    )
    set_ts(row.last_heartbeat, pb.last_heartbeat)
    pb.phase = row.phase  # type: ignore[assignment]
    set_ts(row.phase_since, pb.phase_since)
    if row.last_metrics is not None:
        pb.metrics.CopyFrom(row.last_metrics)
    return pb
