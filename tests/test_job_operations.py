"""Issue 16's job operations on the leader, driven as tests/test_leader.py drives it
(scripted nodes, an injected clock): restart --from a tag, --include, forget."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2 as A
from gantry.v1 import job_pb2

from agent.jobs.leader.leader import JobError
from agent.jobs.leader.peers import NodeRefused
from tests.test_leader import JOB, Agent, spec

EK = job_pb2.JobEventKind
JS = job_pb2.JobState


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(tmp_path)
    yield agent
    agent.journal.close()


def save(root: Path, tag: str, ranks: int = 0) -> Path:
    """A DeepSpeed tag and the latest file naming it: ZeRO-3 partitions of ``ranks``, or
    (0) a model any world size loads."""
    folder = root / tag
    folder.mkdir(parents=True)
    if not ranks:
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"m" * 10)
    for rank in range(ranks):
        (folder / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").write_bytes(b"m" * 10)
    (root / "latest").write_text(tag)
    return folder


async def succeeded(agent: Agent, job: job_pb2.JobSpec) -> job_pb2.Job:
    await agent.leader.submit(job, [A.PeerAgent(name="node-b")], "alice")
    await agent.until_attempt(1)
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, exit_code="0", state="EXITED")
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, exit_code="0", state="EXITED")
    return await agent.until_state(JS.JOB_STATE_SUCCEEDED)


async def test_restart_from_a_missing_tag_leaves_a_finished_job_alone(
    agent: Agent, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step100")
    await succeeded(agent, spec(checkpoint_dir=str(ckpt)))
    with pytest.raises(JobError) as refused:
        await agent.leader.restart(JOB, "", [], "step200", operator="bob")
    message = str(refused.value)
    assert "step200" in message and str(ckpt) in message and "\n" not in message
    assert refused.value.code == "not_found"
    job = agent.job()
    assert job.state == JS.JOB_STATE_SUCCEEDED and len(job.attempts) == 1
    assert "OPERATOR_ACTION" not in agent.kinds()


async def test_restart_from_a_tag_resumes_from_it_in_checkpoint_dir(
    agent: Agent, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step100")
    save(ckpt, "step200")
    await succeeded(agent, spec(checkpoint_dir=str(ckpt)))
    await agent.leader.restart(JOB, "", [], "step100", operator="bob")
    attempt = await agent.until_attempt(2)
    assert attempt.resumed_from == str(ckpt / "step100")
    assert agent.a.started[-1].resume_from == str(ckpt / "step100")


def batch_spec(ckpt: Path, gas: str = "1") -> job_pb2.JobSpec:
    job = spec(max_restarts=1, checkpoint_dir=str(ckpt))
    job.args[:] = ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", gas]
    return job


def args_of(request: A.StartRanksRequest) -> list[str]:
    return list(request.spec.args)


async def test_an_excluded_node_comes_back_with_include_and_the_batch_is_kept(
    agent: Agent, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step10")
    await agent.leader.submit(batch_spec(ckpt), [A.PeerAgent(name="node-b")], "alice")
    await agent.until_attempt(1)
    await agent.leader.restart(JOB, "", ["node-b"], "", operator="bob")
    attempt = await agent.until_attempt(2)
    assert list(attempt.excluded_nodes) == ["node-b"]
    # One rank of two: twice the accumulation keeps the global batch (4 x 1 x 2 = 8).
    assert args_of(agent.a.started[-1])[-1] == "2"
    assert agent.job().spec.args[-1] == "1"  # the job's own spec is unchanged
    action = [e for e in agent.journal.events_after(0, JOB) if e.details.get("action")][-1]
    assert (
        "gradient accumulation 1 -> 2" in action.message and "global batch at 8" in action.message
    )
    assert action.details["excluded"] == "node-b"
    # A failure's restart stays on the smaller world, with the same batch.
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_FAILED, 0, 2, "boom")
    attempt = await agent.until_attempt(3)
    assert list(attempt.excluded_nodes) == ["node-b"] and args_of(agent.a.started[-1])[-1] == "2"
    started = [
        e for e in agent.journal.events_after(0, JOB) if e.kind == EK.JOB_EVENT_KIND_ATTEMPT_STARTED
    ]
    assert "keeps the global batch at 8" in started[-1].message
    assert started[-1].details["gradient_accumulation_steps"] == "1->2"

    await agent.leader.restart(JOB, "", [], "", operator="bob", include=["node-b"])
    attempt = await agent.until_attempt(4)
    assert list(attempt.excluded_nodes) == [] and {r.node for r in attempt.ranks} == {
        "node-a",
        "node-b",
    }
    assert args_of(agent.b.started[-1])[-1] == "1" and agent.b.started[-1].world_size == 2
    action = [e for e in agent.journal.events_after(0, JOB) if e.details.get("action")][-1]
    assert "including node-b again" in action.message and action.details["excluded"] == ""


async def test_include_refuses_a_node_that_is_not_excluded_or_not_in_the_job(
    agent: Agent, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step10")
    await agent.leader.submit(batch_spec(ckpt), [A.PeerAgent(name="node-b")], "alice")
    await agent.until_attempt(1)
    cases = [
        (["node-x"], [], "node node-x is not part of job moe (node-a, node-b)"),
        (["node-b"], [], "node node-b is not excluded from job moe (excluded: none)"),
        (["node-b"], ["node-b"], "node node-b is both excluded and included"),
    ]
    for include, exclude, message in cases:
        with pytest.raises(JobError, match=re.escape(message)) as refused:
            await agent.leader.restart(JOB, "", exclude, "", operator="bob", include=include)
        assert "\n" not in str(refused.value)
    assert len(agent.job().attempts) == 1 and agent.job().state == JS.JOB_STATE_RUNNING


async def test_forget_removes_an_ended_job_and_refuses_a_live_one(
    agent: Agent, tmp_path: Path
) -> None:
    # node-b's ranks say nothing when stopped (as in test_leader's resubmission: a peer's
    # events of an earlier job of the same name are not told apart).
    agent.b.on_stop = ""
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step10")
    await agent.leader.submit(spec(checkpoint_dir=str(ckpt)), [A.PeerAgent(name="node-b")], "a")
    await agent.until_attempt(1)
    with pytest.raises(JobError, match="job moe is running; stop it before forgetting it") as e:
        await agent.leader.forget(JOB)
    assert e.value.code == "unavailable" and len(agent.leader.list_jobs()) == 1
    await agent.leader.stop(JOB, 0, "bob")
    await agent.leader.forget(JOB)
    assert agent.leader.list_jobs() == []
    with pytest.raises(JobError, match="no job named moe") as e:
        agent.leader.describe(JOB)
    assert e.value.code == "not_found"
    with pytest.raises(JobError) as e:
        await agent.leader.forget(JOB)
    assert e.value.code == "not_found"
    assert (ckpt / "step10").is_dir()  # checkpoints stay on disk
    assert agent.leader.store.led_jobs() == []  # a restarted leader does not bring it back
    # The name is free again: a new job, its attempts from 1.
    await agent.leader.submit(spec(), [A.PeerAgent(name="node-b")], "alice")
    assert (await agent.until_attempt(1)).number == 1 and len(agent.job().attempts) == 1


async def test_a_checkpoint_every_node_reports_is_one_event_on_the_leader(agent: Agent) -> None:
    await agent.leader.submit(spec(), [A.PeerAgent(name="node-b")], "alice")
    await agent.until_attempt(1)
    saved = EK.JOB_EVENT_KIND_CHECKPOINT_SAVED
    agent.a.emit(saved, 0, message="checkpoint step10 saved", tag="step10", path="/c/step10")
    agent.b.emit(saved, 1, message="checkpoint step10 saved", tag="step10", path="/c/step10")
    agent.b.emit(saved, 1, message="checkpoint step20 saved", tag="step20", path="/c/step20")
    agent.b.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 1, exit_code="0", state="EXITED")
    agent.a.emit(EK.JOB_EVENT_KIND_RANK_EXITED, 0, exit_code="0", state="EXITED")
    await agent.until_state(JS.JOB_STATE_SUCCEEDED)
    told = agent.journal.events_after(0, JOB, kinds=[saved])
    assert [(e.details["tag"], e.node) for e in told] == [
        ("step10", "node-a"),
        ("step20", "node-b"),
    ]
    # node-b's events were all read: a restarted leader does not read them again.
    assert agent.journal.peer_positions(JOB)["node-b"] == 3


async def test_a_checkpoint_a_node_cannot_see_is_refused_before_the_restart(
    agent: Agent, tmp_path: Path
) -> None:
    # The leader sees step100; node-b (another machine, its own disk) does not.
    ckpt = tmp_path / "ckpt"
    save(ckpt, "step100")
    await succeeded(agent, spec(checkpoint_dir=str(ckpt)))
    agent.b.refuse = NodeRefused(
        f"node-b: checkpoint {ckpt / 'step100'} to resume from does not exist"
    )
    with pytest.raises(JobError, match=r"node-b: checkpoint .* does not exist"):
        await agent.leader.restart(JOB, "", [], "step100", operator="bob")
    job = agent.job()
    assert job.state == JS.JOB_STATE_SUCCEEDED and len(job.attempts) == 1
    assert "OPERATOR_ACTION" not in agent.kinds()
