"""The node supervisor stopping ranks, and re-adopting them after an agent restart: a rank
it killed is KILLED (a rank STOPPED event, never RANK_EXITED); one that exits 0 is EXITED."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import psutil
from gantry.v1 import job_pb2

from agent.jobs.journal import AttemptRow, Journal, RankRow
from agent.jobs.node.rank_states import RankEdge
from agent.jobs.node.supervisor import LocalSupervisor
from tests.test_local_supervisor import (
    K,
    all_done,
    events,  # noqa: F401  (a fixture)
    fake_rank,  # noqa: F401  (a fixture)
    journal,  # noqa: F401  (a fixture)
    kinds,
    poll_until,
    spec,
    states,
    steps,
    supervisors,  # noqa: F401  (a fixture)
    wait_for,
    wrapper_running,
)


def ends(seen: list[job_pb2.JobEvent]) -> dict[int, tuple[str, str]]:
    """Each rank's ending event: (kind, the state it names)."""
    ending = (
        K.JOB_EVENT_KIND_RANK_EXITED,
        K.JOB_EVENT_KIND_RANK_FAILED,
        K.JOB_EVENT_KIND_RANK_KILLED,
    )
    return {
        e.rank: (K.Name(e.kind).removeprefix("JOB_EVENT_KIND_"), e.details["state"])
        for e in seen
        if e.kind in ending
    }


async def test_stop_ranks_kills_or_lets_exit(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    journal: Journal,  # noqa: F811
    fake_rank: Path,  # noqa: F811
    events: list[job_pb2.JobEvent],  # noqa: F811
) -> None:
    sup = supervisors()
    stubborn = spec(fake_rank, "steps=1", "linger=30", "ignore_term=1")
    polite = spec(fake_rank, "steps=1", "linger=30", "clean_term=1")
    sup.start_ranks(stubborn, 1, [0], 2, "127.0.0.1", 29500)
    sup.start_ranks(polite, 1, [1], 2, "127.0.0.1", 29500, local_ranks=[1])
    await poll_until(sup, lambda: states(sup) == [job_pb2.RANK_STATE_RUNNING] * 2)
    pids = [r.pid for r in sup.ranks("moe")]
    ranks = await sup.stop_ranks("moe", 1, grace_s=0.5)
    assert [(r.state, r.exit_code) for r in ranks] == [
        (job_pb2.RANK_STATE_KILLED, -signal.SIGKILL),
        (job_pb2.RANK_STATE_EXITED, 0),
    ]
    assert not sup.live_keys()
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # The killed rank is announced as killed, never as exited (a success to the leader).
    assert ends(events) == {0: ("RANK_KILLED", "KILLED"), 1: ("RANK_EXITED", "EXITED")}
    assert kinds(events, 0).count(K.JOB_EVENT_KIND_RANK_EXITED) == 0
    [killed] = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_KILLED]
    assert killed.details["exit_code"] == str(-signal.SIGKILL) and "SIGKILL" in killed.message
    assert journal.events_after(0, "moe") == events
    assert journal.live_ranks("n1", [6, 7, 8]) == []


async def test_rank_killed_by_sigterm_while_stopping_is_killed(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    fake_rank: Path,  # noqa: F811
    events: list[job_pb2.JobEvent],  # noqa: F811
) -> None:
    """SIGTERM's default action ends the rank within the grace: killed all the same."""
    sup = supervisors()
    sup.start_ranks(spec(fake_rank, "steps=1", "linger=30"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: states(sup) == [job_pb2.RANK_STATE_RUNNING])
    [rank] = await sup.stop_ranks("moe", 1, grace_s=5.0)
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_KILLED, -signal.SIGTERM)
    assert ends(events) == {0: ("RANK_KILLED", "KILLED")}


async def test_stop_interrupted_by_an_agent_restart_ends_killed(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    journal: Journal,  # noqa: F811
    fake_rank: Path,  # noqa: F811
    events: list[job_pb2.JobEvent],  # noqa: F811
) -> None:
    """The agent died with a rank STOPPING: the next one finishes the stop, and says so."""
    first = supervisors()
    stubborn = spec(fake_rank, "steps=1", "linger=30", "ignore_term=1")
    first.start_ranks(stubborn, 1, [0], 1, "127.0.0.1", 29500)
    running = [job_pb2.RANK_STATE_RUNNING]
    await poll_until(first, lambda: [r.state for r in journal.ranks("moe")] == running)
    [row] = journal.ranks("moe")
    stopping = first.ranks_journal.edge(row, RankEdge.STOP, reason="stopping")
    journal.upsert_rank(stopping)
    del first
    second = supervisors(stop_grace_s=0.3)
    assert second.live_keys() == [("moe", 1, 0)]
    await poll_until(second, all_done(second))
    [rank] = second.ranks("moe")
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_KILLED, -signal.SIGKILL)
    assert ends(journal.events_after(0, "moe")) == {0: ("RANK_KILLED", "KILLED")}


async def test_agent_restart_readopts_without_losing_or_repeating_a_step(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    journal: Journal,  # noqa: F811
    fake_rank: Path,  # noqa: F811
    events: list[job_pb2.JobEvent],  # noqa: F811
) -> None:
    first = supervisors()
    first.start_ranks(spec(fake_rank, "steps=40", "period=0.02"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(first, lambda: len(steps(events)) >= 5)
    # The agent 'dies': its supervisor is dropped while the rank keeps running.
    del first
    second = supervisors()
    assert second.live_keys() == [("moe", 1, 0)]
    await poll_until(second, all_done(second))
    journaled = journal.events_after(0, "moe")
    assert steps(journaled) == list(range(1, 41))
    assert kinds(journaled).count(K.JOB_EVENT_KIND_RANK_EXITED) == 1
    [rank] = second.ranks("moe")
    assert (rank.state, rank.exit_code, rank.metrics.step) == (job_pb2.RANK_STATE_EXITED, 0, 40)


async def test_rank_that_died_while_the_agent_was_away(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    journal: Journal,  # noqa: F811
    fake_rank: Path,  # noqa: F811
) -> None:
    first = supervisors()
    first.start_ranks(spec(fake_rank, "steps=3", "exit=3"), 1, [0], 1, "127.0.0.1", 29500)
    del first
    [row] = journal.ranks("moe")
    await wait_for(lambda: not wrapper_running(row.pid))
    second = supervisors()
    await second.poll()
    [rank] = second.ranks("moe")
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_FAILED, 3)
    assert rank.metrics.step == 3  # what it wrote before dying was still read
    assert steps(journal.events_after(0, "moe")) == [1, 2, 3]
    assert not second.live_keys()


async def test_rank_journaled_but_never_started_is_failed_on_readopt(
    supervisors: Callable[..., LocalSupervisor],  # noqa: F811
    journal: Journal,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The agent died between journaling a rank and starting it: no process, no orphan."""
    journal.ensure_job(job_pb2.JobSpec(name="moe", command=["x"]))
    journal.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_STARTING))
    d = tmp_path / "r0"
    journal.upsert_rank(
        RankRow(
            "moe", 1, 0, 0, "n1", job_pb2.RANK_STATE_PENDING,
            str(d / "o"), str(d / "e"), str(d / "m"), str(d / "x"),
        )
    )  # fmt: skip
    sup = supervisors()
    [rank] = sup.ranks("moe")
    assert rank.state == job_pb2.RANK_STATE_FAILED and "before the rank was started" in rank.reason
    await sup.poll()
    assert not sup.live_keys()
