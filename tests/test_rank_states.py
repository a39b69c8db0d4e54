"""The rank, attempt and job state machines: every edge from every state, legal or refused;
an attempt's outcome from its ranks' states, and a rank's state from its events."""

from __future__ import annotations

import itertools

import pytest
from gantry.v1 import job_pb2

from agent.jobs.leader.states import (
    ATTEMPT_EDGES,
    JOB_EDGES,
    TERMINAL_ATTEMPT_STATES,
    TERMINAL_JOB_STATES,
    AttemptEdge,
    AttemptState,
    JobEdge,
    JobState,
    attempt_edge_for,
    reported_rank_state,
    transition_attempt,
    transition_job,
)
from agent.jobs.node.rank_states import (
    RANK_EDGES,
    TERMINAL_RANK_STATES,
    IllegalTransition,
    RankEdge,
    RankState,
    transition,
)

R = RankState
A = AttemptState

EXPECTED_RANK_EDGES = {
    RankEdge.SPAWN: ({R.PENDING}, R.STARTING),
    RankEdge.SPAWN_FAILED: ({R.PENDING}, R.FAILED),
    RankEdge.FIRST_REPORT: ({R.STARTING}, R.RUNNING),
    RankEdge.EXIT_OK: ({R.STARTING, R.RUNNING, R.HUNG}, R.EXITED),
    RankEdge.EXIT_ERROR: ({R.STARTING, R.RUNNING, R.HUNG}, R.FAILED),
    RankEdge.HANG_DETECTED: ({R.STARTING, R.RUNNING}, R.HUNG),
    RankEdge.STACKS_DUMPED: ({R.HUNG}, R.FAILED),
    RankEdge.STOP: ({R.PENDING, R.STARTING, R.RUNNING, R.HUNG}, R.STOPPING),
    RankEdge.STOPPED: ({R.STOPPING}, R.KILLED),
    RankEdge.EXIT_DURING_STOP: ({R.STOPPING}, R.EXITED),
}

EXPECTED_ATTEMPT_EDGES = {
    AttemptEdge.RANKS_STARTED: ({A.STARTING}, A.RUNNING),
    AttemptEdge.START_FAILED: ({A.STARTING}, A.FAILED),
    AttemptEdge.ALL_EXITED_OK: ({A.RUNNING}, A.SUCCEEDED),
    AttemptEdge.RANK_FAILED: ({A.RUNNING}, A.FAILED),
    AttemptEdge.STOP: ({A.STARTING, A.RUNNING}, A.STOPPING),
    # Never SUCCEEDED: a stopped attempt is stopped whatever its ranks did meanwhile.
    AttemptEdge.STOPPED: ({A.STOPPING}, A.STOPPED),
}

J = JobState
LIVE = {J.PENDING, J.STARTING, J.RUNNING, J.RESTARTING, J.PREEMPTED}
ENDED = {J.STOPPED, J.SUCCEEDED, J.FAILED}
EXPECTED_JOB_EDGES = {
    JobEdge.SUBMIT: ({J.NEW} | ENDED, J.PENDING),
    JobEdge.ATTEMPT_STARTING: (
        {J.PENDING, J.STARTING, J.RUNNING, J.RESTARTING, J.PREEMPTED},
        J.STARTING,
    ),
    JobEdge.ATTEMPT_RUNNING: ({J.STARTING}, J.RUNNING),
    JobEdge.RESTART_AFTER_FAILURE: ({J.STARTING, J.RUNNING}, J.RESTARTING),
    JobEdge.SUCCEED: ({J.RUNNING}, J.SUCCEEDED),
    JobEdge.FAIL: (LIVE, J.FAILED),
    JobEdge.STOP: (LIVE, J.STOPPED),
    JobEdge.REOPEN: (ENDED, J.PENDING),
    # A node's preemption notice: checkpointed, stopped, waiting (issue 17).
    JobEdge.PREEMPT: ({J.STARTING, J.RUNNING}, J.PREEMPTED),
}


def test_states_mirror_the_proto_enums() -> None:
    for state in RankState:
        assert job_pb2.RankState.Name(state) == f"RANK_STATE_{state.name}"
    assert len(RankState) == len(job_pb2.RankState.keys()) - 1  # all but UNSPECIFIED
    for attempt_state in AttemptState:
        assert job_pb2.JobState.Name(attempt_state) == f"JOB_STATE_{attempt_state.name}"
    for job_state in JobState:
        name = "UNSPECIFIED" if job_state is J.NEW else job_state.name
        assert job_pb2.JobState.Name(job_state) == f"JOB_STATE_{name}"


def test_the_tables_are_exactly_the_documented_edges() -> None:
    assert {e: (set(s.sources), s.target) for e, s in RANK_EDGES.items()} == EXPECTED_RANK_EDGES
    assert {
        e: (set(s.sources), s.target) for e, s in ATTEMPT_EDGES.items()
    } == EXPECTED_ATTEMPT_EDGES
    assert {e: (set(s.sources), s.target) for e, s in JOB_EDGES.items()} == EXPECTED_JOB_EDGES
    assert set(RANK_EDGES) == set(RankEdge)
    assert set(ATTEMPT_EDGES) == set(AttemptEdge)
    assert set(JOB_EDGES) == set(JobEdge)


@pytest.mark.parametrize(
    ("state", "edge"), list(itertools.product(RankState, RankEdge)), ids=lambda v: str(v)
)
def test_every_rank_edge_from_every_state(state: RankState, edge: RankEdge) -> None:
    sources, target = EXPECTED_RANK_EDGES[edge]
    if state in sources:
        assert transition(state, edge) is target
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(state, edge)
        assert edge.value in str(info.value) and state.name in str(info.value)


@pytest.mark.parametrize(
    ("state", "edge"), list(itertools.product(AttemptState, AttemptEdge)), ids=lambda v: str(v)
)
def test_every_attempt_edge_from_every_state(state: AttemptState, edge: AttemptEdge) -> None:
    sources, target = EXPECTED_ATTEMPT_EDGES[edge]
    if state in sources:
        assert transition_attempt(state, edge) is target
    else:
        with pytest.raises(IllegalTransition):
            transition_attempt(state, edge)


@pytest.mark.parametrize(
    ("state", "edge"), list(itertools.product(JobState, JobEdge)), ids=lambda v: str(v)
)
def test_every_job_edge_from_every_state(state: JobState, edge: JobEdge) -> None:
    sources, target = EXPECTED_JOB_EDGES[edge]
    if state in sources:
        assert transition_job(state, edge) is target
    else:
        with pytest.raises(IllegalTransition, match=f"job edge '{edge.value}'"):
            transition_job(state, edge)


def test_an_ended_job_leaves_only_when_submitted_again_or_reopened() -> None:
    for edge in JobEdge:
        if TERMINAL_JOB_STATES & JOB_EDGES[edge].sources:
            assert edge in (JobEdge.SUBMIT, JobEdge.REOPEN)
            assert JOB_EDGES[edge].target == J.PENDING


def test_terminal_states_have_no_way_out() -> None:
    for edge in RankEdge:
        assert not TERMINAL_RANK_STATES & RANK_EDGES[edge].sources
    for attempt_edge in AttemptEdge:
        assert not TERMINAL_ATTEMPT_STATES & ATTEMPT_EDGES[attempt_edge].sources


def test_the_error_names_where_the_edge_leaves_from() -> None:
    with pytest.raises(IllegalTransition, match=r"'stacks_dumped' is not allowed from RUNNING"):
        transition(R.RUNNING, RankEdge.STACKS_DUMPED)
    with pytest.raises(IllegalTransition, match="leaves from HUNG"):
        transition(R.EXITED, RankEdge.STACKS_DUMPED)


def test_a_happy_life_and_a_hung_one() -> None:
    state = R.PENDING
    for edge in (RankEdge.SPAWN, RankEdge.FIRST_REPORT, RankEdge.EXIT_OK):
        state = transition(state, edge)
    assert state is R.EXITED
    state = R.PENDING
    for edge in (
        RankEdge.SPAWN,
        RankEdge.FIRST_REPORT,
        RankEdge.HANG_DETECTED,
        RankEdge.STACKS_DUMPED,
    ):
        state = transition(state, edge)
    assert state is R.FAILED


@pytest.mark.parametrize(
    ("attempt", "ranks", "edge"),
    [
        (A.RUNNING, [], None),
        (A.RUNNING, [R.STARTING, R.RUNNING], None),
        (A.RUNNING, [R.RUNNING, R.RUNNING], None),
        (A.RUNNING, [R.RUNNING, R.EXITED], None),
        (A.RUNNING, [R.EXITED, R.EXITED], AttemptEdge.ALL_EXITED_OK),
        (A.RUNNING, [R.RUNNING, R.FAILED], AttemptEdge.RANK_FAILED),
        # Killed while the attempt runs (not by its stop): a failure, never a success.
        (A.RUNNING, [R.EXITED, R.KILLED], AttemptEdge.RANK_FAILED),
        # A hung rank is failed a moment later, once its stacks are dumped.
        (A.RUNNING, [R.RUNNING, R.HUNG], None),
        (A.STARTING, [R.EXITED], None),  # the leader watches only once every node started
        (A.STOPPING, [R.STOPPING, R.KILLED], None),
        (A.STOPPING, [R.KILLED, R.EXITED], AttemptEdge.STOPPED),
        (A.STOPPING, [R.FAILED, R.KILLED], AttemptEdge.STOPPED),
        # Every rank exited 0 while being stopped: still stopped, not succeeded.
        (A.STOPPING, [R.EXITED, R.EXITED], AttemptEdge.STOPPED),
        (A.FAILED, [R.FAILED, R.RUNNING], None),
        (A.SUCCEEDED, [R.EXITED], None),
        (A.STOPPED, [R.KILLED], None),
    ],
)
def test_attempt_outcome_from_rank_states(
    attempt: AttemptState, ranks: list[RankState], edge: AttemptEdge | None
) -> None:
    assert attempt_edge_for(attempt, ranks) == edge
    if edge is not None:
        transition_attempt(attempt, edge)  # whatever it decides is legal


EK = job_pb2.JobEventKind


@pytest.mark.parametrize(
    ("kind", "details", "state"),
    [
        (EK.JOB_EVENT_KIND_RANK_EXITED, {"exit_code": "0"}, R.EXITED),
        (EK.JOB_EVENT_KIND_RANK_EXITED, {}, R.EXITED),
        # A node that killed the rank while stopping it says so, or only gives its code.
        (EK.JOB_EVENT_KIND_RANK_EXITED, {"exit_code": "-15", "state": "KILLED"}, R.KILLED),
        (EK.JOB_EVENT_KIND_RANK_EXITED, {"exit_code": "-9"}, R.KILLED),
        (EK.JOB_EVENT_KIND_RANK_EXITED, {"exit_code": "0", "state": "EXITED"}, R.EXITED),
        (EK.JOB_EVENT_KIND_RANK_FAILED, {"exit_code": "3"}, R.FAILED),
        (EK.JOB_EVENT_KIND_RANK_HUNG, {}, R.HUNG),
        (EK.JOB_EVENT_KIND_METRICS, {}, None),
        (EK.JOB_EVENT_KIND_RANK_STARTED, {}, None),
    ],
)
def test_the_rank_state_an_event_reports(
    kind: int, details: dict[str, str], state: RankState | None
) -> None:
    event = job_pb2.JobEvent(kind=kind, details=details)  # type: ignore[arg-type]
    assert reported_rank_state(event) == state


def test_a_rank_killed_event_is_a_killed_rank() -> None:
    event = job_pb2.JobEvent(kind=EK.JOB_EVENT_KIND_RANK_KILLED, details={"exit_code": "-9"})
    assert reported_rank_state(event) == R.KILLED
