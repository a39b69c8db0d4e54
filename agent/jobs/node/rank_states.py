"""The rank and attempt state machines: one table of named edges each, and nothing else.

Pure: no processes, no clock, no I/O. The supervisor decides *when* an edge happens; this
module decides whether it is legal and where it leads. State values equal the proto enums
(``job_pb2.RankState`` and ``job_pb2.JobState``), so converting is ``int(state)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from gantry.v1 import job_pb2

__all__ = [
    "ATTEMPT_EDGES",
    "RANK_EDGES",
    "TERMINAL_ATTEMPT_STATES",
    "TERMINAL_RANK_STATES",
    "AttemptEdge",
    "AttemptState",
    "Edge",
    "IllegalTransition",
    "RankEdge",
    "RankState",
    "attempt_edge_for",
    "transition",
    "transition_attempt",
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


class AttemptState(IntEnum):
    STARTING = job_pb2.JOB_STATE_STARTING
    RUNNING = job_pb2.JOB_STATE_RUNNING
    STOPPING = job_pb2.JOB_STATE_STOPPING
    STOPPED = job_pb2.JOB_STATE_STOPPED
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED


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


class AttemptEdge(StrEnum):
    ALL_RUNNING = "all_running"
    ALL_EXITED_OK = "all_exited_ok"
    RANK_FAILED = "rank_failed"
    STOP = "stop"
    STOPPED = "stopped"
    EXITED_DURING_STOP = "exited_during_stop"


@dataclass(frozen=True)
class Edge:
    sources: frozenset[int]
    target: int


def _edge(sources: Iterable[int], target: int) -> Edge:
    return Edge(frozenset(sources), target)


_R = RankState
RANK_EDGES: Mapping[RankEdge, Edge] = {
    RankEdge.SPAWN: _edge([_R.PENDING], _R.STARTING),
    # The process could not even be started (bad executable, no memory, ...).
    RankEdge.SPAWN_FAILED: _edge([_R.PENDING], _R.FAILED),
    RankEdge.FIRST_REPORT: _edge([_R.STARTING], _R.RUNNING),
    # A rank that was only slow, and finishes while its stacks are being dumped, succeeded.
    RankEdge.EXIT_OK: _edge([_R.STARTING, _R.RUNNING, _R.HUNG], _R.EXITED),
    RankEdge.EXIT_ERROR: _edge([_R.STARTING, _R.RUNNING, _R.HUNG], _R.FAILED),
    RankEdge.HANG_DETECTED: _edge([_R.STARTING, _R.RUNNING], _R.HUNG),
    RankEdge.STACKS_DUMPED: _edge([_R.HUNG], _R.FAILED),
    RankEdge.STOP: _edge([_R.PENDING, _R.STARTING, _R.RUNNING, _R.HUNG], _R.STOPPING),
    RankEdge.STOPPED: _edge([_R.STOPPING], _R.KILLED),
    RankEdge.EXIT_DURING_STOP: _edge([_R.STOPPING], _R.EXITED),
}

_A = AttemptState
ATTEMPT_EDGES: Mapping[AttemptEdge, Edge] = {
    AttemptEdge.ALL_RUNNING: _edge([_A.STARTING], _A.RUNNING),
    AttemptEdge.ALL_EXITED_OK: _edge([_A.STARTING, _A.RUNNING], _A.SUCCEEDED),
    # The attempt's outcome is fixed at the first failure; the leader then stops the rest.
    AttemptEdge.RANK_FAILED: _edge([_A.STARTING, _A.RUNNING], _A.FAILED),
    AttemptEdge.STOP: _edge([_A.STARTING, _A.RUNNING], _A.STOPPING),
    AttemptEdge.STOPPED: _edge([_A.STOPPING], _A.STOPPED),
    AttemptEdge.EXITED_DURING_STOP: _edge([_A.STOPPING], _A.SUCCEEDED),
}

TERMINAL_RANK_STATES = frozenset({_R.EXITED, _R.FAILED, _R.KILLED})
TERMINAL_ATTEMPT_STATES = frozenset({_A.STOPPED, _A.SUCCEEDED, _A.FAILED})


class IllegalTransition(ValueError):
    """An edge was applied to a state it does not leave from."""

    def __init__(self, machine: str, state: str, edge: str, allowed: Iterable[str]) -> None:
        self.state = state
        self.edge = edge
        allowed_s = ", ".join(sorted(allowed)) or "nowhere"
        super().__init__(
            f"{machine} edge {edge!r} is not allowed from {state} (it leaves from {allowed_s})"
        )


def transition(state: RankState, edge: RankEdge) -> RankState:
    """The rank state after ``edge``; raises ``IllegalTransition`` if ``edge`` cannot apply."""
    spec = RANK_EDGES[edge]
    if state not in spec.sources:
        names = (RankState(s).name for s in spec.sources)
        raise IllegalTransition("rank", RankState(state).name, edge.value, names)
    return RankState(spec.target)


def transition_attempt(state: AttemptState, edge: AttemptEdge) -> AttemptState:
    """The attempt state after ``edge``; raises ``IllegalTransition`` if it cannot apply."""
    spec = ATTEMPT_EDGES[edge]
    if state not in spec.sources:
        names = (AttemptState(s).name for s in spec.sources)
        raise IllegalTransition("attempt", AttemptState(state).name, edge.value, names)
    return AttemptState(spec.target)


def attempt_edge_for(state: AttemptState, ranks: Iterable[RankState]) -> AttemptEdge | None:
    """The edge an attempt takes given all its ranks' states (across nodes), or ``None``.

    A HUNG rank does not fail the attempt by itself: its stacks are being collected and it
    becomes FAILED a moment later; stopping it earlier would lose the dump. A rank KILLED
    outside a stop (someone stopped it on its node) counts as a failure.
    """
    states = list(ranks)
    if not states or state in TERMINAL_ATTEMPT_STATES:
        return None
    if state == AttemptState.STOPPING:
        if not all(s in TERMINAL_RANK_STATES for s in states):
            return None
        if all(s == RankState.EXITED for s in states):
            return AttemptEdge.EXITED_DURING_STOP
        return AttemptEdge.STOPPED
    if any(s in (RankState.FAILED, RankState.KILLED) for s in states):
        return AttemptEdge.RANK_FAILED
    if all(s == RankState.EXITED for s in states):
        return AttemptEdge.ALL_EXITED_OK
    if state == AttemptState.STARTING and all(
        s in (RankState.RUNNING, RankState.EXITED) for s in states
    ):
        return AttemptEdge.ALL_RUNNING
    return None
