"""The rank state machine: one table of named edges, and nothing else.

Pure: no processes, no clock, no I/O. The supervisor decides *when* an edge happens; this
module decides whether it is legal and where it leads. State values equal the proto enum
(``job_pb2.RankState``), so converting is ``int(state)``. The job and attempt machines,
the leader's, are in ``agent.jobs.leader.states``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum

from gantry.v1 import job_pb2

from agent.jobs.state_tables import Edge, IllegalTransition

__all__ = [
    "RANK_EDGES",
    "TERMINAL_RANK_STATES",
    "Edge",
    "IllegalTransition",
    "RankEdge",
    "RankState",
    "transition",
]


class RankState(IntEnum):
    PENDING = job_pb2.RANK_STATE_PENDING
    STARTING = job_pb2.RANK_STATE_STARTING
    RUNNING = job_pb2.RANK_STATE_RUNNING
    HUNG = job_pb2.RANK_STATE_HUNG
    STOPPING = job_pb2.RANK_STATE_STOPPING
    EXITED = job_pb2.RANK_STATE_EXITED
    FAILED = job_pb2.RANK_STATE_FAILED
    KILLED = job_pb2.RANK_STATE_KILLED


class RankEdge(StrEnum):
    SPAWN = "spawn"
    SPAWN_FAILED = "spawn_failed"
    FIRST_REPORT = "first_report"
    EXIT_OK = "exit_ok"
    EXIT_ERROR = "exit_error"
    HANG_DETECTED = "hang_detected"
    STACKS_DUMPED = "stacks_dumped"
    STOP = "stop"
    STOPPED = "stopped"
    EXIT_DURING_STOP = "exit_during_stop"


_R = RankState
RANK_EDGES: Mapping[RankEdge, Edge] = {
    RankEdge.SPAWN: Edge.of([_R.PENDING], _R.STARTING),
    # The process could not even be started (bad executable, no memory, ...).
    RankEdge.SPAWN_FAILED: Edge.of([_R.PENDING], _R.FAILED),
    RankEdge.FIRST_REPORT: Edge.of([_R.STARTING], _R.RUNNING),
    # A rank that was only slow, and finishes while its stacks are being dumped, succeeded.
    RankEdge.EXIT_OK: Edge.of([_R.STARTING, _R.RUNNING, _R.HUNG], _R.EXITED),
    RankEdge.EXIT_ERROR: Edge.of([_R.STARTING, _R.RUNNING, _R.HUNG], _R.FAILED),
    RankEdge.HANG_DETECTED: Edge.of([_R.STARTING, _R.RUNNING], _R.HUNG),
    RankEdge.STACKS_DUMPED: Edge.of([_R.HUNG], _R.FAILED),
    RankEdge.STOP: Edge.of([_R.PENDING, _R.STARTING, _R.RUNNING, _R.HUNG], _R.STOPPING),
    RankEdge.STOPPED: Edge.of([_R.STOPPING], _R.KILLED),
    RankEdge.EXIT_DURING_STOP: Edge.of([_R.STOPPING], _R.EXITED),
}

TERMINAL_RANK_STATES = frozenset({_R.EXITED, _R.FAILED, _R.KILLED})


def transition(state: RankState, edge: RankEdge) -> RankState:
    """The rank state after ``edge``; raises ``IllegalTransition`` if ``edge`` cannot apply."""
    spec = RANK_EDGES[edge]
    if state not in spec.sources:
        names = (RankState(s).name for s in spec.sources)
        raise IllegalTransition("rank", RankState(state).name, edge.value, names)
    return RankState(spec.target)
