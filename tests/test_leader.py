"""The job leader driven the way torch elastic tests its agent: scripted nodes (fake
NodeApis whose ranks report what each test says), an injected clock and an injected sleep,
no servers and no processes; each restart-policy path in milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2 as A
from gantry.v1 import job_pb2

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import Journal
from agent.jobs.leader.leader import JobError, JobLeader
from agent.jobs.leader.peers import LocalNode, NodeApi, NodeRefused, NodeUnreachable
from tests.fakes.scripted_node import ScriptedNode

EK = job_pb2.JobEventKind
JS = job_pb2.JobState
RS = job_pb2.RankState
JOB = "moe"
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """The leader's backoff: recorded, and over at once unless held."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.held = False
        self._release = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if self.held:
            await self._release.wait()
        await asyncio.sleep(0)

    def release(self) -> None:
        self._release.set()


class Agent:
    """node-a's agent: its journal, bus and leader; node-a's ranks and node-b are scripted."""

    def __init__(self, data_dir: Path, peer: ScriptedNode | None = None) -> None:
        self.data_dir = data_dir
        self.journal = Journal.open(data_dir)
        self.bus = EventBus(self.journal)
        self.clock = Clock()
        self.sleeps = Sleeps()
        self.a = ScriptedNode("node-a", self.bus.publish, job=JOB)
        self.b = peer if peer is not None else ScriptedNode("node-b", job=JOB)
        local = LocalNode("node-a", self.bus, self.a.start_ranks, self.a.stop_ranks)
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
        )

    def job(self) -> job_pb2.Job:
        return self.leader.describe(JOB)

    def kinds(self) -> list[str]:
        """The leader's own events, in order, without the JOB_EVENT_KIND_ prefix."""
        events = self.journal.events_after(0, JOB)
        return [EK.Name(e.kind)[15:] for e in events if e.node == "node-a" and e.rank < 0]

    async def until(self, check: Callable[[], bool], what: str) -> None:
        for _ in range(5_000):  # a bound, not a timing: each pass yields to the leader
            if check():
                return
            await asyncio.sleep(0.001)
        raise AssertionError(f"timed out waiting for {what}: {self.job()}")

    async def until_state(self, state: int) -> job_pb2.Job:
        await self.until(lambda: self.job().state == state, JS.Name(state))
        return self.job()

    async def until_attempt(self, number: int) -> job_pb2.Attempt:
        def running() -> bool:
            job = self.job()
            return len(job.attempts) >= number and job.state == JS.JOB_STATE_RUNNING

        await self.until(running, f"attempt {number} running")
        return self.job().attempts[number - 1]

    async def kill(self) -> None:
        await self.leader.close()
        self.journal.close()


def spec(
    max_restarts: int = 0, backoff_s: float = 0.0, checkpoint_dir: str = ""
) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name=JOB,
        nodes=[
            job_pb2.NodeSlots(node="node-a", slots=1),
            job_pb2.NodeSlots(node="node-b", slots=1),
        ],
        command=["python", "train.py"],
        checkpoint_dir=checkpoint_dir,
        restart=job_pb2.RestartPolicy(max_restarts=max_restarts, backoff_s=backoff_s),
    )


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path)
    yield agent
    agent.journal.close()


async def submitted(agent: Agent, job: job_pb2.JobSpec | None = None) -> job_pb2.Attempt:
    await agent.leader.submit(job or spec(), [A.PeerAgent(name="node-b")], "alice")
    return await agent.until_attempt(1)


def fail_rank_1(agent: Agent, attempt: int) -> None:
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_FAILED, 1, attempt, "rank 1 failed: exit code 3")


def fail_rank_0_on_a_reset(agent: Agent) -> None:
    """Rank 0 fails only because its peer's connection dropped (the node's diagnosis)."""
    reset = "gloo: Connection reset by peer: a peer rank died or the network dropped"
    agent.a.emit(
        EK.JOB_EVENT_KIND_RANK_FAILED,
        0,
        message="rank 0 failed",
        reason=reset,
        signature="gloo_reset",
    )


async def test_a_rank_failing_on_its_peers_reset_waits_for_the_peers_own_failure(
    agent: Agent,
) -> None:
    """Rank 1 is killed with -9 and rank 0's gloo reset reaches the leader first: the
    leader stops nothing yet, names rank 1's own failure when it comes (within
    SETTLE_S), and only then stops the ranks."""
    await submitted(agent)
    fail_rank_0_on_a_reset(agent)
    await agent.until(
        lambda: agent.job().attempts[0].ranks[0].state == RS.RANK_STATE_FAILED, "rank 0 read"
    )
    assert agent.job().state == JS.JOB_STATE_RUNNING
    assert agent.a.stopped == [] and agent.b.stopped == []
    agent.b.emit(
        EK.JOB_EVENT_KIND_RANK_FAILED, 1, message="rank 1 failed", reason="killed by signal 9"
    )
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert job.attempts[0].reason == "rank 1 on node-b failed: killed by signal 9"
    assert agent.a.stopped and agent.b.stopped
    await agent.kill()


async def test_a_peers_reset_waits_for_nothing_once_the_peers_node_is_lost(
    agent: Agent,
) -> None:
    """node-b's agent dies with its rank: rank 0's reset comes, and the rank it follows
    from will never report. The leader stops waiting once node-b is lost (the clock here
    never moves, so only that can end the wait) and names the node it cannot reach."""
    await submitted(agent)
    agent.b.lost = T0
    agent.b.refuse = NodeUnreachable("node-b's agent at 10.0.0.2:7000 is unreachable")
    fail_rank_0_on_a_reset(agent)
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert "node-b" in job.attempts[0].reason and "unreachable" in job.attempts[0].reason
    await agent.kill()


async def test_a_reset_after_a_peer_exited_0_names_the_early_exit(agent: Agent) -> None:
    """Rank 1's script ends (exit 0) while rank 0 still trains: rank 0's lost connection is
    all that fails, and the reason says the peer ended early rather than died."""
    await submitted(agent)
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, exit_code="0", state="EXITED")
    await agent.until(
        lambda: agent.job().attempts[0].ranks[1].state == RS.RANK_STATE_EXITED, "rank 1 read"
    )
    fail_rank_0_on_a_reset(agent)  # no wait for rank 1's own failure: it has none
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    reason = job.attempts[0].reason
    assert reason.startswith("rank 0 on node-a failed: gloo: Connection reset by peer")
    assert reason.endswith(
        "(rank 1 had exited 0 first: its script ended while the others still trained)"
    )
    await agent.kill()


WAITING_STACKS = """Thread 0x00007f1a2b3c4700 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait

Current thread 0x00007f1a2d8e1740 (most recent call first):
  File "/venv/site-packages/torch/distributed/distributed_c10d.py", line 3012 in all_gather
  File "/venv/site-packages/transformers/trainer_pt_utils.py", line 140 in nested_gather
  File "/job/run_clm.py", line 620 in main"""
STUCK_STACKS = """Current thread 0x00007f55aa0e1740 (most recent call first):
  File "/job/run_clm.py", line 97 in on_step_end
  File "/venv/site-packages/transformers/trainer_callback.py", line 556 in call_event"""


async def test_of_two_hung_ranks_the_one_stuck_outside_a_collective_is_named(
    agent: Agent,
) -> None:
    """Rank 1 is stuck in its own code; rank 0 waits for it in all_gather. Rank 0's hang
    reaches the leader first; the leader waits for the rank it waits on and names that."""
    await submitted(agent)
    hung = "hung: no progress for 31 s (hang timeout 30 s)"
    agent.a.emit(
        EK.JOB_EVENT_KIND_RANK_FAILED, 0, message=f"rank 0 failed: {hung}", stacks=WAITING_STACKS
    )
    await agent.until(
        lambda: agent.job().attempts[0].ranks[0].state == RS.RANK_STATE_FAILED, "rank 0 read"
    )
    assert agent.job().state == JS.JOB_STATE_RUNNING  # waiting for the rank it waits on
    agent.b.emit(
        EK.JOB_EVENT_KIND_RANK_FAILED, 1, message=f"rank 1 failed: {hung}", stacks=STUCK_STACKS
    )
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert job.attempts[0].reason == f"rank 1 on node-b failed: rank 1 failed: {hung}"
    await agent.kill()


async def test_every_rank_exiting_0_is_a_success(agent: Agent) -> None:
    await submitted(agent)
    agent.clock.now = T0 + 60
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, exit_code="0", state="EXITED")
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, exit_code="0", state="EXITED")
    job = await agent.until_state(JS.JOB_STATE_SUCCEEDED)
    assert job.reason == "every rank exited 0" and job.restarts_used == 0
    (attempt,) = job.attempts
    assert attempt.state == JS.JOB_STATE_SUCCEEDED
    assert [r.state for r in attempt.ranks] == [RS.RANK_STATE_EXITED] * 2
    assert (attempt.started.seconds, attempt.ended.seconds) == (T0, T0 + 60)
    assert job.created.seconds == T0
    assert agent.kinds() == ["SUBMITTED", "ATTEMPT_STARTED", "SUCCEEDED"]
    assert agent.a.stopped == [] and agent.b.stopped == []
    await agent.kill()


async def test_a_failed_rank_restarts_the_job_until_its_restarts_run_out(agent: Agent) -> None:
    await submitted(agent, spec(max_restarts=2, backoff_s=30))
    for number in (1, 2, 3):
        await agent.until_attempt(number)
        fail_rank_1(agent, number)
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert (
        job.reason == "rank 1 on node-b failed: rank 1 failed: exit code 3; out of restarts (2/2)"
    )
    assert job.restarts_used == 2
    assert [a.state for a in job.attempts] == [JS.JOB_STATE_FAILED] * 3
    assert agent.sleeps.asked == [30, 30]  # the policy's backoff, before attempts 2 and 3
    # Every failure stopped the attempt's ranks on every node.
    assert [n for n, _ in agent.b.stopped] == [1, 2, 3]
    assert [n for n, _ in agent.a.stopped] == [1, 2, 3]
    # Without a checkpoint_dir Gantry resumes nothing; the script may resume itself.
    events = agent.journal.events_after(0, JOB)
    started = [e.message for e in events if e.kind == EK.JOB_EVENT_KIND_ATTEMPT_STARTED]
    assert started[0].endswith("fresh start")
    assert all("no checkpoint_dir to resume from" in m for m in started[1:])
    assert agent.kinds() == [
        "SUBMITTED",
        *(["ATTEMPT_STARTED", "ATTEMPT_FAILED", "RESTARTING"] * 2),
        "ATTEMPT_STARTED",
        "ATTEMPT_FAILED",
        "FAILED",
    ]
    await agent.kill()


async def test_the_next_attempt_waits_for_the_backoff(agent: Agent) -> None:
    agent.sleeps.held = True
    await submitted(agent, spec(max_restarts=1, backoff_s=12.5))
    fail_rank_1(agent, 1)
    await agent.until(lambda: agent.sleeps.asked == [12.5], "the backoff")
    job = agent.job()
    assert job.state == JS.JOB_STATE_RESTARTING and job.restarts_used == 1
    assert len(job.attempts) == 1 and len(agent.b.started) == 1
    agent.sleeps.release()
    attempt = await agent.until_attempt(2)
    assert attempt.state == JS.JOB_STATE_RUNNING and len(agent.b.started) == 2
    await agent.kill()


async def test_a_hung_rank_is_restarted_once_its_node_fails_it(agent: Agent) -> None:
    await submitted(agent, spec(max_restarts=1))
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_HUNG, 1, message="no progress for 60s")
    await agent.until(
        lambda: agent.job().attempts[0].ranks[1].state == RS.RANK_STATE_HUNG, "rank 1 hung"
    )
    # Its stacks are being dumped: nothing is stopped yet.
    assert agent.job().attempts[0].state == JS.JOB_STATE_RUNNING and agent.b.stopped == []
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_FAILED, 1, message="hung, then killed", reason="hung")
    await agent.until_attempt(2)
    first = agent.job().attempts[0]
    assert first.state == JS.JOB_STATE_FAILED and first.reason == "rank 1 on node-b failed: hung"
    await agent.kill()


@pytest.mark.parametrize("on_stop", ["rank_killed", "killed", "killed_state", "exit0"])
async def test_a_stopped_attempt_is_stopped_whatever_its_ranks_report(
    agent: Agent, on_stop: str
) -> None:
    agent.a.on_stop = agent.b.on_stop = on_stop
    await submitted(agent, spec(max_restarts=3))
    job = await agent.leader.stop(JOB, 4.0, "bob")
    assert job.state == JS.JOB_STATE_STOPPED and job.reason == "stopped by the operator"
    assert job.attempts[0].state == JS.JOB_STATE_STOPPED
    assert agent.b.stopped == [(1, 4.0)] and agent.a.stopped == [(1, 4.0)]
    await asyncio.sleep(0.01)  # the ranks' exits arrive after: nothing changes
    job = agent.job()
    assert (job.state, job.restarts_used, len(job.attempts)) == (JS.JOB_STATE_STOPPED, 0, 1)
    assert agent.kinds() == ["SUBMITTED", "ATTEMPT_STARTED", "OPERATOR_ACTION", "STOPPED"]
    await agent.kill()


@pytest.mark.parametrize(
    ("refusal", "why"),
    [
        (NodeUnreachable("node-b's agent at 10.0.0.2:7000 is unreachable"), "unreachable"),
        (
            NodeRefused("node-b's agent at 10.0.0.2:7000 refused the token"),
            "the stop was refused (node-b's agent at 10.0.0.2:7000 refused the token)",
        ),
    ],
)
async def test_a_stop_that_could_not_reach_a_node_says_its_ranks_may_still_run(
    agent: Agent, refusal: Exception, why: str
) -> None:
    await submitted(agent)
    agent.b.refuse = refusal
    job = await agent.leader.stop(JOB, 4.0, "bob")
    assert job.state == JS.JOB_STATE_STOPPED
    want = f"stopped by the operator, but ranks may still run on node-b: {why}"
    assert job.reason == want and job.attempts[0].reason == want
    assert agent.a.stopped == [(1, 4.0)]
    await agent.kill()


async def test_a_stop_during_the_backoff_stops_the_job(agent: Agent) -> None:
    agent.sleeps.held = True
    await submitted(agent, spec(max_restarts=2, backoff_s=30))
    fail_rank_1(agent, 1)
    await agent.until(lambda: agent.job().state == JS.JOB_STATE_RESTARTING, "restarting")
    job = await agent.leader.stop(JOB, 0, "bob")
    assert job.state == JS.JOB_STATE_STOPPED and job.reason == "stopped by the operator"
    assert len(job.attempts) == 1 and job.attempts[0].state == JS.JOB_STATE_FAILED
    agent.sleeps.release()
    await asyncio.sleep(0.01)
    assert agent.job().state == JS.JOB_STATE_STOPPED and len(agent.b.started) == 1
    await agent.kill()


@pytest.mark.parametrize("details", [{"exit_code": "-15"}, {"exit_code": "-15", "state": "KILLED"}])
async def test_a_rank_killed_while_the_attempt_runs_is_not_a_success(
    agent: Agent, details: dict[str, str]
) -> None:
    await submitted(agent)
    # Its node stopped rank 1 (not the leader), and rank 0 then ended well.
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, 1, "rank 1 stopped", details)
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, exit_code="0", state="EXITED")
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert job.attempts[0].state == JS.JOB_STATE_FAILED
    assert job.attempts[0].reason == "rank 1 on node-b was killed: rank 1 stopped"
    assert job.attempts[0].ranks[1].state == RS.RANK_STATE_KILLED
    await agent.kill()


async def test_a_lost_node_fails_attempts_until_the_operator_excludes_it(
    agent: Agent, tmp_path: Path
) -> None:
    checkpoints = tmp_path / "ckpt"
    (checkpoints / "step10").mkdir(parents=True)
    (checkpoints / "latest").write_text("step10")
    await submitted(agent, spec(max_restarts=1, checkpoint_dir=str(checkpoints)))
    agent.b.lost = T0 + 5
    agent.b.refuse = NodeUnreachable("node-b's agent at 10.0.0.2:7000 is unreachable")
    ranks = agent.job().attempts[0].ranks
    assert ranks[1].unknown_since.seconds == T0 + 5 and not ranks[0].HasField("unknown_since")
    # The survivor's collective fails once its peer is gone.
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_FAILED, 0, message="gloo: Connection reset by peer")
    job = await agent.until_state(JS.JOB_STATE_FAILED)
    assert [a.state for a in job.attempts] == [JS.JOB_STATE_FAILED] * 2
    assert job.attempts[1].reason.startswith("could not start ranks on node-b: ")
    assert job.attempts[1].resumed_from == str(checkpoints / "step10")
    assert agent.a.stopped[0][0] == 1 and agent.b.stopped[0][0] == 1  # tried, unreachable

    await agent.leader.restart(JOB, "node-b", ["node-b"], "", operator="bob")
    attempt = await agent.until_attempt(3)
    assert list(attempt.excluded_nodes) == ["node-b"]
    assert [r.node for r in attempt.ranks] == ["node-a"]
    request = agent.a.started[-1]
    assert (request.world_size, list(request.ranks)) == (1, [0])
    assert request.resume_from == str(checkpoints / "step10")
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, attempt=3, exit_code="0")
    job = await agent.until_state(JS.JOB_STATE_SUCCEEDED)
    assert job.attempts[2].state == JS.JOB_STATE_SUCCEEDED
    with pytest.raises(JobError, match="cannot exclude every node"):
        await agent.leader.restart(JOB, "", ["node-a"], "", operator="bob")
    await agent.kill()


async def test_a_restart_with_a_new_spec_runs_it_from_the_next_attempt(agent: Agent) -> None:
    await submitted(agent)
    new = spec()
    new.command[:] = ["python", "train.py", "--lr", "1e-4"]
    answer = await agent.leader.restart(JOB, "", [], "", operator="bob", spec=new)
    # The answer is the job as the restart found it: "attempt 1 was the last".
    assert [a.number for a in answer.attempts] == [1]
    attempt = await agent.until_attempt(2)
    job = agent.job()
    assert job.attempts[0].state == JS.JOB_STATE_STOPPED
    assert job.attempts[0].reason == "restarted by the operator"
    assert job.spec == new and agent.leader.spec(JOB) == new
    assert list(agent.b.started[-1].spec.command) == list(new.command)
    assert attempt.number == 2 and job.restarts_used == 0  # the operator's, not the policy's
    action = [e for e in agent.journal.events_after(0, JOB) if e.details.get("action")]
    assert action[-1].details["changes"] != "none"
    moved = spec()
    moved.nodes[1].node = "node-c"
    with pytest.raises(JobError, match="keeps the job's nodes"):
        await agent.leader.restart(JOB, "", [], "", operator="bob", spec=moved)
    await agent.kill()


async def test_an_ended_job_restarted_or_submitted_again(agent: Agent) -> None:
    # node-a's ranks say they were killed when stopped; node-b's say nothing (a peer's
    # events of an earlier job of the same name are not told apart: its positions go on).
    agent.b.on_stop = ""
    await submitted(agent)
    fail_rank_1(agent, 1)
    await agent.until_state(JS.JOB_STATE_FAILED)
    await agent.leader.restart(JOB, "", [], "", operator="bob")
    await agent.until_attempt(2)
    with pytest.raises(JobError, match="already running") as refused:
        await agent.leader.submit(spec(), [A.PeerAgent(name="node-b")], "alice")
    assert refused.value.code == "exists"
    await agent.leader.stop(JOB, 0, "bob")
    # Submitted again: a new job of that name, its attempts from 1.
    await submitted(agent)
    job = agent.job()
    assert [a.number for a in job.attempts] == [1] and job.state == JS.JOB_STATE_RUNNING
    # The first job's events of attempt 1 are not this one's.
    await asyncio.sleep(0.01)
    assert agent.job().state == JS.JOB_STATE_RUNNING
    await agent.kill()


async def test_a_restarted_leader_adopts_the_running_attempt(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    await submitted(agent, spec(max_restarts=1))
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_STARTED, 1)
    agent.b.emit(EK.JOB_EVENT_KIND_METRICS, 1)
    await agent.until(lambda: agent.b.log[-1].seq == 2 and len(copies(agent)) == 2, "copies")
    await agent.kill()

    again = Agent(tmp_path, peer=agent.b)
    await again.leader.recover()
    await again.until(lambda: len(agent.b.asked) == 2, "node-b read again")
    assert agent.b.asked == [0, 2]  # on from where it had copied
    assert len(agent.b.started) == 1 and agent.b.stopped == []  # the attempt goes on
    assert again.job().attempts[0].ranks[1].state == RS.RANK_STATE_RUNNING
    again.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, exit_code="0")
    again.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, exit_code="0")
    job = await again.until_state(JS.JOB_STATE_SUCCEEDED)
    assert len(job.attempts) == 1
    assert copies(again) == [1, 2, 3]  # none of node-b's events twice
    await again.kill()


def copies(agent: Agent) -> list[int]:
    events = agent.journal.events_after(0, JOB)
    return [int(e.details["origin_seq"]) for e in events if e.details.get("origin") == "node-b"]


async def test_a_leader_restarted_while_stopping_finishes_the_stop(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    agent.b.on_stop = ""
    await submitted(agent)
    blocked = asyncio.Event()

    async def hanging_stop(request: A.StopRanksRequest) -> A.StopRanksResponse:
        await blocked.wait()
        return A.StopRanksResponse()

    agent.b.stop_ranks = hanging_stop  # type: ignore[method-assign]
    stopping = asyncio.create_task(agent.leader.stop(JOB, 0, "bob"))
    await agent.until(lambda: agent.job().attempts[0].state == JS.JOB_STATE_STOPPING, "stopping")
    await agent.kill()
    stopping.cancel()

    peer = ScriptedNode("node-b", job=JOB)
    peer.started = agent.b.started
    again = Agent(tmp_path, peer=peer)
    await again.leader.recover()
    job = await again.until_state(JS.JOB_STATE_STOPPED)
    assert job.attempts[0].state == JS.JOB_STATE_STOPPED and len(job.attempts) == 1
    assert peer.stopped == [(1, 10.0)]
    await again.kill()


async def test_jobs_an_older_leader_kept_in_job_pb_files_are_imported_once(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "jobs" / JOB
    folder.mkdir(parents=True)
    (folder / "peers.json").write_text('[{"name": "node-b", "address": "127.0.0.1:9"}]')
    old = job_pb2.Job(spec=spec(), state=JS.JOB_STATE_SUCCEEDED, leader="node-a", reason="ok")
    old.created.FromSeconds(100)
    first = old.attempts.add(number=1, state=JS.JOB_STATE_SUCCEEDED, master_port=29500)
    first.started.FromSeconds(110)
    first.ranks.add(rank=0, node="node-a", state=RS.RANK_STATE_EXITED)
    first.ranks.add(rank=1, node="node-b", state=RS.RANK_STATE_EXITED)
    (folder / "job.pb").write_bytes(old.SerializeToString())

    agent = Agent(tmp_path)
    await agent.leader.recover()
    job = agent.job()
    assert job == old
    assert not (folder / "job.pb").exists() and (folder / "job.pb.imported").exists()
    assert agent.a.started == [] and agent.b.started == []  # ended: nothing to run
    await agent.kill()
    again = Agent(tmp_path)
    await again.leader.recover()
    assert again.job() == old  # from the journal now
    await again.kill()
