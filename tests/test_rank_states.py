"""The rank and attempt state machines: every edge from every state, legal or refused."""

from __future__ import annotations

import itertools

import pytest
from gantry.v1 import job_pb2

from agent.jobs.node.rank_states import (
    ATTEMPT_EDGES,
    RANK_EDGES,
    TERMINAL_ATTEMPT_STATES,
    TERMINAL_RANK_STATES,
    AttemptEdge,
    AttemptState,
    IllegalTransition,
    RankEdge,
    RankState,
    attempt_edge_for,
    transition,
    transition_attempt,
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
    AttemptEdge.ALL_RUNNING: ({A.STARTING}, A.RUNNING),
    AttemptEdge.ALL_EXITED_OK: ({A.STARTING, A.RUNNING}, A.SUCCEEDED),
    AttemptEdge.RANK_FAILED: ({A.STARTING, A.RUNNING}, A.FAILED),
    AttemptEdge.STOP: ({A.STARTING, A.RUNNING}, A.STOPPING),
    AttemptEdge.STOPPED: ({A.STOPPING}, A.STOPPED),
    AttemptEdge.EXITED_DURING_STOP: ({A.STOPPING}, A.SUCCEEDED),
}


def test_states_mirror_the_proto_enums() -> None:
    for state in RankState:
        assert job_pb2.RankState.Name(state) == f"RANK_STATE_{state.name}"
    assert len(RankState) == len(job_pb2.RankState.keys()) - 1  # all but UNSPECIFIED
    for attempt_state in AttemptState:
        assert job_pb2.JobState.Name(attempt_state) == f"JOB_STATE_{attempt_state.name}"


def test_the_tables_are_exactly_the_documented_edges() -> None:
    assert {e: (set(s.sources), s.target) for e, s in RANK_EDGES.items()} == EXPECTED_RANK_EDGES
    assert {
        e: (set(s.sources), s.target) for e, s in ATTEMPT_EDGES.items()
    } == EXPECTED_ATTEMPT_EDGES
    assert set(RANK_EDGES) == set(RankEdge)
    assert set(ATTEMPT_EDGES) == set(AttemptEdge)


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
        (A.STARTING, [], None),
        (A.STARTING, [R.STARTING, R.RUNNING], None),
        (A.STARTING, [R.RUNNING, R.RUNNING], AttemptEdge.ALL_RUNNING),
        (A.STARTING, [R.RUNNING, R.EXITED], AttemptEdge.ALL_RUNNING),
        (A.RUNNING, [R.RUNNING, R.RUNNING], None),
        (A.RUNNING, [R.RUNNING, R.EXITED], None),
        (A.RUNNING, [R.EXITED, R.EXITED], AttemptEdge.ALL_EXITED_OK),
        (A.STARTING, [R.EXITED], AttemptEdge.ALL_EXITED_OK),
        (A.RUNNING, [R.RUNNING, R.FAILED], AttemptEdge.RANK_FAILED),
        (A.STARTING, [R.STARTING, R.FAILED], AttemptEdge.RANK_FAILED),
        (A.RUNNING, [R.EXITED, R.KILLED], AttemptEdge.RANK_FAILED),
        # A hung rank is failed a moment later, once its stacks are dumped.
        (A.RUNNING, [R.RUNNING, R.HUNG], None),
        (A.STOPPING, [R.STOPPING, R.KILLED], None),
        (A.STOPPING, [R.KILLED, R.EXITED], AttemptEdge.STOPPED),
        (A.STOPPING, [R.FAILED, R.KILLED], AttemptEdge.STOPPED),
        (A.STOPPING, [R.EXITED, R.EXITED], AttemptEdge.EXITED_DURING_STOP),
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
