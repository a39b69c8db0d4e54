"""The job and attempt state machines: one table of named edges each, and nothing else.

Pure: no processes, no clock, no I/O. The leader decides *when* an edge happens; these
tables decide whether it is legal and where it leads, and the leader's store writes the
result to the journal (agent.jobs.leader.store), the one writer of job and attempt state.
State values equal ``job_pb2.JobState``. The rank machine, the nodes', is in
``agent.jobs.node.rank_states``; a rank's state reaches the leader through its events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum, StrEnum

from gantry.v1 import job_pb2

from agent.jobs.state_tables import Edge, IllegalTransition

__all__ = [
    "ACTIVE_JOB_STATES",
    "ATTEMPT_EDGES",
    "ENDED_RANK_STATES",
    "JOB_EDGES",
    "TERMINAL_ATTEMPT_STATES",
    "TERMINAL_JOB_STATES",
    "AttemptEdge",
    "AttemptState",
    "JobEdge",
    "JobState",
    "attempt_edge_for",
    "reported_rank_state",
    "transition_attempt",
    "transition_job",
]

EK = job_pb2.JobEventKind
RS = job_pb2.RankState
# A rank's ends, as its node's table (agent.jobs.node.rank_states) names them.
ENDED_RANK_STATES: frozenset[int] = frozenset(
    {RS.RANK_STATE_EXITED, RS.RANK_STATE_FAILED, RS.RANK_STATE_KILLED}
)


class JobState(IntEnum):
    NEW = job_pb2.JOB_STATE_UNSPECIFIED  # not in the journal yet
    PENDING = job_pb2.JOB_STATE_PENDING
    STARTING = job_pb2.JOB_STATE_STARTING
    RUNNING = job_pb2.JOB_STATE_RUNNING
    RESTARTING = job_pb2.JOB_STATE_RESTARTING
    STOPPED = job_pb2.JOB_STATE_STOPPED
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    # A node announced its preemption: the attempt checkpointed and stopped, the job waits.
    PREEMPTED = job_pb2.JOB_STATE_PREEMPTED


class AttemptState(IntEnum):
    STARTING = job_pb2.JOB_STATE_STARTING
    RUNNING = job_pb2.JOB_STATE_RUNNING
    STOPPING = job_pb2.JOB_STATE_STOPPING
    STOPPED = job_pb2.JOB_STATE_STOPPED
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED


class JobEdge(StrEnum):
    SUBMIT = "submit"
    ATTEMPT_STARTING = "attempt_starting"
    ATTEMPT_RUNNING = "attempt_running"
    RESTART_AFTER_FAILURE = "restart_after_failure"
    SUCCEED = "succeed"
    FAIL = "fail"
    STOP = "stop"
    REOPEN = "reopen"
    PREEMPT = "preempt"


class AttemptEdge(StrEnum):
    RANKS_STARTED = "ranks_started"
    START_FAILED = "start_failed"
    ALL_EXITED_OK = "all_exited_ok"
    RANK_FAILED = "rank_failed"
    STOP = "stop"
    STOPPED = "stopped"


_J = JobState
_ENDED = (_J.STOPPED, _J.SUCCEEDED, _J.FAILED)
_LIVE = (_J.PENDING, _J.STARTING, _J.RUNNING, _J.RESTARTING, _J.PREEMPTED)
JOB_EDGES: Mapping[JobEdge, Edge] = {
    # A new job, or one submitted again under the name of an ended one (which it replaces).
    JobEdge.SUBMIT: Edge.of([_J.NEW, *_ENDED], _J.PENDING),
    # A first attempt, one after a backoff, one the operator asked for while the last ran,
    # one after a leader restart found its attempt half started, or one once the nodes of
    # a preempted job are back.
    JobEdge.ATTEMPT_STARTING: Edge.of(
        [_J.PENDING, _J.STARTING, _J.RUNNING, _J.RESTARTING, _J.PREEMPTED], _J.STARTING
    ),
    JobEdge.ATTEMPT_RUNNING: Edge.of([_J.STARTING], _J.RUNNING),
    JobEdge.RESTART_AFTER_FAILURE: Edge.of([_J.STARTING, _J.RUNNING], _J.RESTARTING),
    JobEdge.SUCCEED: Edge.of([_J.RUNNING], _J.SUCCEEDED),
    # Out of restarts, or the leader itself failed.
    JobEdge.FAIL: Edge.of(_LIVE, _J.FAILED),
    JobEdge.STOP: Edge.of(_LIVE, _J.STOPPED),
    # The operator restarts an ended job.
    JobEdge.REOPEN: Edge.of(_ENDED, _J.PENDING),
    # A node's preemption notice: the attempt checkpointed and stopped (no restart spent).
    JobEdge.PREEMPT: Edge.of([_J.STARTING, _J.RUNNING], _J.PREEMPTED),
}

_A = AttemptState
ATTEMPT_EDGES: Mapping[AttemptEdge, Edge] = {
    # Every node started its ranks (they report on their own from then on).
    AttemptEdge.RANKS_STARTED: Edge.of([_A.STARTING], _A.RUNNING),
    # A node could not start its ranks, or the checkpoint cannot be loaded by this world.
    AttemptEdge.START_FAILED: Edge.of([_A.STARTING], _A.FAILED),
    AttemptEdge.ALL_EXITED_OK: Edge.of([_A.RUNNING], _A.SUCCEEDED),
    # The outcome is the first failure's; the leader stops the other ranks.
    AttemptEdge.RANK_FAILED: Edge.of([_A.RUNNING], _A.FAILED),
    AttemptEdge.STOP: Edge.of([_A.STARTING, _A.RUNNING], _A.STOPPING),
    # Whatever its ranks did meanwhile (exited 0, killed): a stopped attempt never succeeds.
    AttemptEdge.STOPPED: Edge.of([_A.STOPPING], _A.STOPPED),
}

TERMINAL_JOB_STATES: frozenset[int] = frozenset(_ENDED)
ACTIVE_JOB_STATES: frozenset[int] = frozenset(_LIVE)
TERMINAL_ATTEMPT_STATES: frozenset[int] = frozenset({_A.STOPPED, _A.SUCCEEDED, _A.FAILED})


def transition_job(state: int, edge: JobEdge) -> JobState:
    """The job state after ``edge``; raises ``IllegalTransition`` if it cannot apply."""
    spec = JOB_EDGES[edge]
    if state not in spec.sources:
        names = (JobState(s).name for s in spec.sources)
        raise IllegalTransition("job", JobState(state).name, edge.value, names)
    return JobState(spec.target)


def transition_attempt(state: int, edge: AttemptEdge) -> AttemptState:
    """The attempt state after ``edge``; raises ``IllegalTransition`` if it cannot apply."""
    spec = ATTEMPT_EDGES[edge]
    if state not in spec.sources:
        names = (AttemptState(s).name for s in spec.sources)
        raise IllegalTransition("attempt", AttemptState(state).name, edge.value, names)
    return AttemptState(spec.target)


def attempt_edge_for(state: int, ranks: Iterable[int]) -> AttemptEdge | None:
    """The edge a running or stopping attempt takes given all its ranks' states (across
    nodes), or ``None`` while it waits.

    A HUNG rank does not fail the attempt by itself: its stacks are being collected and it
    becomes FAILED a moment later; stopping it earlier would lose the dump. A rank KILLED
    while the attempt runs (someone stopped it on its node) is a failure; while it stops,
    the ranks' ends make it STOPPED, even when they all exited 0.
    """
    states = list(ranks)
    if not states:
        return None
    if state == AttemptState.STOPPING:
        return AttemptEdge.STOPPED if all(s in ENDED_RANK_STATES for s in states) else None
    if state != AttemptState.RUNNING:
        return None
    if any(s in (RS.RANK_STATE_FAILED, RS.RANK_STATE_KILLED) for s in states):
        return AttemptEdge.RANK_FAILED
    if all(s == RS.RANK_STATE_EXITED for s in states):
        return AttemptEdge.ALL_EXITED_OK
    return None


_ENDS = {RS.Name(s)[len("RANK_STATE_") :]: s for s in ENDED_RANK_STATES}


def reported_rank_state(event: job_pb2.JobEvent) -> int | None:
    """The rank state an event of that rank reports, or ``None`` (not a state change).

    A node reports a rank it killed while stopping it as RANK_KILLED; an older node sent
    RANK_EXITED for it too, so there only an exit with code 0 is EXITED (the node's
    ``state`` detail says KILLED when it stopped the rank).
    """
    kind = event.kind
    if kind == EK.JOB_EVENT_KIND_RANK_FAILED:
        return RS.RANK_STATE_FAILED
    if kind == EK.JOB_EVENT_KIND_RANK_HUNG:
        return RS.RANK_STATE_HUNG
    if kind == EK.JOB_EVENT_KIND_RANK_KILLED:
        return RS.RANK_STATE_KILLED
    if kind != EK.JOB_EVENT_KIND_RANK_EXITED:
        return None
    named = _ENDS.get(event.details.get("state", ""))
    if named is not None:
        return named
    code = event.details.get("exit_code", "0")
    return RS.RANK_STATE_EXITED if code.strip() in ("0", "") else RS.RANK_STATE_KILLED
