"""The leader's bookkeeping of its peers, with a scripted peer (a fake NodeApi) and no
servers: each peer event copied once across a leader restart, a copied failure acted on
after one, the copy and its position journaled together, lost nodes' ranks unknown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2 as A
from gantry.v1 import job_pb2

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import Journal
from agent.jobs.leader.leader import JobLeader
from agent.jobs.leader.peer_events import PeerLedger
from agent.jobs.leader.peers import LocalNode, NodeApi
from tests.fakes.scripted_node import ScriptedNode

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
RS = job_pb2.RankState
JOB = "j"


class ScriptedPeer(ScriptedNode):
    """node-b: its ranks start and stop as asked (and report nothing of it); its events
    are what the test emits, rank 1's by default."""

    def __init__(self, name: str = "node-b") -> None:
        super().__init__(name, job=JOB, on_stop="")

    def emit_event(self, kind: int, rank: int = 1, step: int = 0, attempt: int = 1) -> None:
        failed = kind == EK.JOB_EVENT_KIND_RANK_FAILED
        metrics = kind == EK.JOB_EVENT_KIND_METRICS
        message = "exit code 3" if failed else ""
        self.emit(kind, rank, attempt, message, step=step if metrics else None)


class Agent:
    """The leader's node: journal, bus, leader; its own rank 0 through `local_event`."""

    def __init__(self, data_dir: Path, peer: NodeApi) -> None:
        self.journal = Journal.open(data_dir)
        self.bus = EventBus(self.journal)
        self.stopped: list[int] = []

        async def start(request: A.StartRanksRequest) -> A.StartRanksResponse:
            ranks = [job_pb2.Rank(rank=r, node="node-a") for r in request.ranks]
            return A.StartRanksResponse(ranks=[] if request.validate_only else ranks)

        async def stop(request: A.StopRanksRequest) -> A.StopRanksResponse:
            self.stopped.append(request.attempt)
            return A.StopRanksResponse()

        local = LocalNode("node-a", self.bus, start, stop)
        self.leader = JobLeader(
            "node-a", data_dir, self.bus, local, self.journal, make_remote=lambda _: peer
        )

    def local_event(self, kind: int) -> None:
        self.bus.publish(
            job_pb2.JobEvent(job_name=JOB, attempt=1, kind=kind, node="node-a", rank=0)  # type: ignore[arg-type]
        )

    def copies(self) -> list[int]:
        """The seqs (on node-b) of the node-b events journaled here, in journal order."""
        return [
            int(e.details["origin_seq"])
            for e in self.journal.events_after(0, JOB)
            if e.details.get("origin") == "node-b"
        ]

    async def kill(self) -> None:
        """As far as a test can: the leader's tasks end with nothing more written."""
        await self.leader.close()
        self.journal.close()


def spec() -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name=JOB,
        nodes=[
            job_pb2.NodeSlots(node="node-a", slots=1),
            job_pb2.NodeSlots(node="node-b", slots=1),
        ],
        command=["python", "train.py"],
        restart=job_pb2.RestartPolicy(max_restarts=0),
    )


async def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def running_job(tmp_path: Path, peer: ScriptedPeer) -> Agent:
    agent = Agent(tmp_path, peer)
    await agent.leader.submit(spec(), [A.PeerAgent(name="node-b")], "alice")
    await until(lambda: agent.leader.describe(JOB).state == JS.JOB_STATE_RUNNING, "running")
    return agent


async def test_each_peer_event_is_copied_once_across_a_leader_restart(tmp_path: Path) -> None:
    peer = ScriptedPeer()
    agent = await running_job(tmp_path, peer)
    peer.emit_event(EK.JOB_EVENT_KIND_RANK_STARTED)
    for step in range(1, 6):
        peer.emit_event(EK.JOB_EVENT_KIND_METRICS, step=step)
    peer.emit_event(EK.JOB_EVENT_KIND_METRICS, step=1, attempt=7)  # another attempt's: not copied
    await until(lambda: agent.copies() == [1, 2, 3, 4, 5, 6], "the first copies")
    # The peer's figures carry no time (a script's printed line has none): none is made up.
    figures = agent.leader.describe(JOB).attempts[0].ranks[1].metrics
    assert figures.step == 5 and not figures.HasField("time")
    await agent.kill()

    agent = Agent(tmp_path, peer)
    assert agent.leader._ledger.positions(JOB) == {"node-b": 6}
    await agent.leader.recover()
    # Nothing new from the peer yet: the figures the leader had copied are back.
    await until(lambda: agent.leader.describe(JOB).attempts[0].ranks[1].metrics.step == 5, "5")
    assert agent.leader.describe(JOB).attempts[0].ranks[1].state == RS.RANK_STATE_RUNNING
    for step in range(6, 9):
        peer.emit_event(EK.JOB_EVENT_KIND_METRICS, step=step)
    await until(lambda: agent.copies() == [1, 2, 3, 4, 5, 6, 8, 9, 10], "the copies after")
    assert peer.asked == [0, 6]  # the restarted leader read on from where it had copied

    peer.emit_event(EK.JOB_EVENT_KIND_RANK_EXITED)
    agent.local_event(EK.JOB_EVENT_KIND_RANK_EXITED)
    await until(lambda: agent.leader.describe(JOB).state == JS.JOB_STATE_SUCCEEDED, "success")
    assert agent.copies() == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert agent.leader._ledger.positions(JOB) == {"node-b": 11}
    await agent.kill()


async def test_a_failure_copied_just_before_a_restart_is_acted_on(tmp_path: Path) -> None:
    peer = ScriptedPeer()
    agent = await running_job(tmp_path, peer)
    peer.emit_event(EK.JOB_EVENT_KIND_RANK_STARTED)
    await until(lambda: agent.copies() == [1], "the first copy")
    await agent.kill()
    # Copied (with its position), then the agent died before stopping the attempt.
    peer.emit_event(EK.JOB_EVENT_KIND_RANK_FAILED)
    with Journal.open(tmp_path) as journal:
        PeerLedger("node-a", journal, EventBus(journal)).copy(JOB, "node-b", peer.log[-1])

    agent = Agent(tmp_path, peer)
    await agent.leader.recover()
    await until(lambda: agent.leader.describe(JOB).state == JS.JOB_STATE_FAILED, "failed")
    job = agent.leader.describe(JOB)
    assert job.attempts[0].reason == "rank 1 on node-b failed: exit code 3"
    assert [a for a, _ in peer.stopped] == [1] and agent.stopped == [1]
    assert agent.copies() == [1, 2]  # the failure was not read (nor copied) again
    await agent.kill()


def test_a_copy_and_its_position_are_journaled_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal.open(tmp_path)
    ledger = PeerLedger("node-a", journal, EventBus(journal))
    event = job_pb2.JobEvent(seq=41, job_name=JOB, attempt=1, node="node-b", rank=1)
    ledger.copy(JOB, "node-b", event)

    def broken(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(journal, "set_peer_position", broken)
    event.seq = 42
    with pytest.raises(OSError):
        ledger.copy(JOB, "node-b", event)
    monkeypatch.undo()
    assert [e.details["origin_seq"] for e in journal.events_after(0, JOB)] == ["41"]
    assert ledger.positions(JOB) == {"node-b": 41}
    journal.close()


async def test_ranks_of_a_node_that_does_not_answer_are_unknown_since(tmp_path: Path) -> None:
    peer = ScriptedPeer()
    agent = await running_job(tmp_path, peer)
    peer.lost = 1_700_000_000.5
    for job in (agent.leader.describe(JOB), agent.leader.list_jobs()[0]):
        ranks = job.attempts[0].ranks
        assert not ranks[0].HasField("unknown_since")
        assert ranks[1].unknown_since.ToNanoseconds() == 1_700_000_000_500_000_000
        assert ranks[1].state == RS.RANK_STATE_STARTING  # the last it knew
    peer.lost = None
    assert not agent.leader.describe(JOB).attempts[0].ranks[1].HasField("unknown_since")
    await agent.kill()
