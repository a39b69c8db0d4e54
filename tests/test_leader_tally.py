"""The failure a job leader names for an attempt (agent.jobs.leader.peer_events.Tally):
the first, unless it only follows from another rank's (a peer's connection reset, a
remote NCCL process gone) and that rank's own failure comes within SETTLE_S; pure, with
scripted events and an injected time."""

from __future__ import annotations

from gantry.v1 import job_pb2

from agent.jobs.leader.peer_events import SETTLE_S, Tally
from agent.jobs.leader.states import AttemptEdge

EK = job_pb2.JobEventKind
RESET = "gloo: Connection reset by peer (10.0.0.2:29500): a peer rank died or the network dropped"


def _attempt() -> job_pb2.Attempt:
    return job_pb2.Attempt(
        number=1,
        ranks=[
            job_pb2.Rank(rank=0, node="node-a", state=job_pb2.RANK_STATE_RUNNING),
            job_pb2.Rank(rank=1, node="node-b", state=job_pb2.RANK_STATE_RUNNING),
        ],
    )


def _failed(
    rank: int, reason: str, signature: str = "", kind: int = EK.JOB_EVENT_KIND_RANK_FAILED
) -> job_pb2.JobEvent:
    details = {"reason": reason} | ({"signature": signature} if signature else {})
    node = "node-a" if rank == 0 else "node-b"
    return job_pb2.JobEvent(attempt=1, kind=kind, rank=rank, node=node, details=details)  # type: ignore[arg-type]


def test_a_peer_reset_waits_for_the_rank_it_follows_from() -> None:
    tally = Tally(_attempt())
    tally.add(_failed(0, f"{RESET} (exit code 1)", "gloo_reset"), now=100.0)
    assert tally.failure.startswith("rank 0 on node-a failed: gloo")
    assert tally.settle_at() == 100.0 + SETTLE_S
    assert tally.edge(100.5) is None  # not stopped yet: the root cause may still come
    tally.add(_failed(1, "killed by signal 9 (SIGKILL)"), now=100.8)
    assert tally.failure == "rank 1 on node-b failed: killed by signal 9 (SIGKILL)"
    assert tally.settle_at() is None and tally.edge(100.8) is AttemptEdge.RANK_FAILED
    tally.add(_failed(0, "Traceback ..."), now=101.0)  # later failures change nothing
    assert tally.failure.startswith("rank 1 on node-b")


def test_a_peer_reset_alone_is_named_once_the_wait_is_over() -> None:
    tally = Tally(_attempt())
    tally.add(_failed(0, RESET, "gloo_reset"), now=100.0)
    tally.add(_failed(1, "NCCL remote process exited", "nccl_remote_exited"), now=100.5)
    tally.add(_failed(1, "stopped", kind=EK.JOB_EVENT_KIND_RANK_KILLED), now=100.6)
    assert tally.edge(100.0 + SETTLE_S - 0.01) is None
    assert tally.edge(100.0 + SETTLE_S) is AttemptEdge.RANK_FAILED
    assert tally.failure.startswith("rank 0 on node-a failed: gloo")  # the first of them


def test_a_root_cause_first_is_named_at_once() -> None:
    tally = Tally(_attempt())
    tally.add(_failed(1, "CUDA out of memory", "cuda_oom"), now=100.0)
    assert tally.edge(100.0) is AttemptEdge.RANK_FAILED and tally.settle_at() is None
    tally.add(_failed(0, RESET, "gloo_reset"), now=100.1)
    assert tally.failure.startswith("rank 1 on node-b failed: CUDA out of memory")


def test_on_replay_a_following_failure_is_not_waited_for() -> None:
    """A restarted leader replays what it had journaled: it has no time to wait in."""
    tally = Tally(_attempt())
    tally.add(_failed(0, RESET, "gloo_reset"))
    assert tally.edge() is AttemptEdge.RANK_FAILED
