"""The leader through a preemption, with scripted nodes (tests/test_leader.py's harness):
a node's notice, every rank's answer, the stop, the wait as PREEMPTED (no restart spent),
and the resume once the node is back; the grace running out; an operator's stop while it
waits; a leader restarted while its job waits."""

from __future__ import annotations

from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.leader.leader import JobLeader
from agent.jobs.leader.peers import LocalNode, NodeApi, NodeUnreachable
from tests.fakes.scripted_node import ScriptedNode
from tests.test_leader import JOB, T0, Agent, spec, submitted

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
NOTICE = EK.JOB_EVENT_KIND_PREEMPTION_NOTICE


class PreemptAgent(Agent):
    """tests.test_leader.Agent whose leader asks each node's ranks for a checkpoint through
    the node's ``request_checkpoint`` (node-a's is its LocalNode's, the supervisor's there)."""

    def __init__(self, data_dir: Path, peer: ScriptedNode | None = None) -> None:
        super().__init__(data_dir, peer)
        local = LocalNode(
            "node-a", self.bus, self.a.start_ranks, self.a.stop_ranks, self.a.request_checkpoint
        )
        remotes: dict[str, NodeApi] = {"node-b": self.b}

        self.leader = JobLeader(
            "node-a",
            data_dir,
            self.bus,
            local,
            self.journal,
            clock=self.clock,
            sleep=self.sleeps,
            make_remote=lambda peer: remotes[peer.name],
            preempt_settle_s=3600,
        )


def notice(agent: Agent, request: str = "preempt-node-b-1", deadline: str = "") -> None:
    extra = {"source": "file:/run/notice", "request": request}
    if deadline:
        extra["deadline"] = deadline
    agent.b.emit(NOTICE, 1, 1, "node-b is being preempted", extra)


def answer(node: ScriptedNode, rank: int, request: str = "preempt-node-b-1") -> None:
    details = {"request": request, "answered": "true", "tag": "step7", "step": "7"}
    node.emit(NOTICE, rank, 1, f"rank {rank}: checkpoint step7 saved", details)


def asked(node: ScriptedNode) -> list[tuple[str, str, int]]:
    return [(r.job_name, r.request_id, r.attempt) for r in node.checkpoints]


async def preempted(agent: PreemptAgent) -> job_pb2.Job:
    await submitted(agent, spec(max_restarts=0))
    notice(agent)
    # Every node of the attempt is asked, the one that announced too (it changes nothing).
    await agent.until(lambda: bool(agent.a.checkpoints and agent.b.checkpoints), "asked")
    assert asked(agent.a) == asked(agent.b) == [(JOB, "preempt-node-b-1", 1)]
    answer(agent.b, 1)
    answer(agent.a, 0)
    return await agent.until_state(JS.JOB_STATE_PREEMPTED)


async def test_checkpointed_stopped_waiting_then_resumed_without_a_restart(tmp_path: Path) -> None:
    agent = PreemptAgent(tmp_path)
    job = await preempted(agent)
    first = job.attempts[0]
    assert first.state == JS.JOB_STATE_STOPPED and first.preempted
    assert first.reason == (
        "preempted: node-b (file:/run/notice) announced; checkpoint step7 saved by 2/2 ranks"
        " in 0.0 s"
    )
    assert job.reason == first.reason and job.restarts_used == 0
    assert [a for a, _ in agent.a.stopped] == [1] and [a for a, _ in agent.b.stopped] == [1]
    # node-b still answers: the instance has not gone yet, so the job waits.
    await agent.until(lambda: len(agent.sleeps.asked) >= 3, "probes")
    assert agent.job().state == JS.JOB_STATE_PREEMPTED and len(agent.b.started) == 1
    agent.b.refuse = NodeUnreachable("node-b's agent at x is unreachable")  # it went
    probes = len(agent.sleeps.asked)
    await agent.until(lambda: len(agent.sleeps.asked) >= probes + 3, "probes while it is gone")
    assert agent.job().state == JS.JOB_STATE_PREEMPTED
    agent.b.refuse = None  # back
    second = await agent.until_attempt(2)
    assert agent.job().restarts_used == 0  # max_restarts 0, and it resumed all the same
    assert not second.preempted and len(agent.b.started) == 2
    assert "PREEMPTION_NOTICE" in agent.kinds()
    await agent.kill()


async def test_the_grace_over_stops_the_attempt_with_what_was_saved(tmp_path: Path) -> None:
    agent = PreemptAgent(tmp_path)
    await submitted(agent)
    notice(agent, deadline=f"{T0 + 5}")  # the instance goes before the 30 s grace
    await agent.until(lambda: bool(agent.a.checkpoints), "asked")
    answer(agent.b, 1)
    agent.clock.now = T0 + 6
    agent.a.emit(EK.JOB_EVENT_KIND_METRICS, 0, step=8)  # rank 0 never answered
    job = await agent.until_state(JS.JOB_STATE_PREEMPTED)
    assert "checkpoint step7 saved by 1/2 ranks in 6.0 s" in job.attempts[0].reason
    await agent.kill()


async def test_an_operator_stop_while_preempted_stops_the_job(tmp_path: Path) -> None:
    agent = PreemptAgent(tmp_path)
    await preempted(agent)
    job = await agent.leader.stop(JOB, 0, "bob")
    assert job.state == JS.JOB_STATE_STOPPED and len(job.attempts) == 1
    assert job.attempts[0].preempted
    await agent.kill()


async def test_a_leader_restarted_while_preempted_resumes_once_every_node_answers(
    tmp_path: Path,
) -> None:
    agent = PreemptAgent(tmp_path)
    await preempted(agent)
    await agent.kill()
    again = PreemptAgent(tmp_path, peer=agent.b)
    agent.b.refuse = NodeUnreachable("node-b's agent at x is unreachable")
    await again.leader.recover()
    await again.until(lambda: len(again.sleeps.asked) >= 2, "probes")
    assert again.job().state == JS.JOB_STATE_PREEMPTED
    agent.b.refuse = None
    await again.until_attempt(2)
    assert again.job().restarts_used == 0
    await again.kill()
