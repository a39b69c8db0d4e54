"""Issue 16, "one agent's token opens all": a job's leader holds job tokens
(`gantry.v1.job_tokens`), never its peers' own tokens. A job token opens only the calls
a leader makes to a peer, for its job; a full job still runs with them across two real
agents."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gantry.v1 import agent_service_pb2, job_pb2, task_pb2
from gantry.v1.job_tokens import (
    JobTokenError,
    is_job_token,
    job_of,
    mint_job_token,
    scoped_for,
    verify_job_token,
)

from agent.jobs.leader.peers import RemoteNode
from console.model.job_spec import parse_job_spec
from console.net.agent_link import AgentLinks
from console.net.jobs_client import JobsClient
from tests.conftest import StartAgent
from tests.secure_agent import ThreadedAgent, threaded_agent

A = agent_service_pb2
JS = job_pb2.JobState
FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"
PEER_TOKEN = "peer-token-0123456789abcdef"
DENIED = grpc.StatusCode.PERMISSION_DENIED


# -- the token itself (pure) -----------------------------------------------------------------


def test_a_job_token_names_its_job_and_only_its_peer_can_verify_it() -> None:
    token = mint_job_token(PEER_TOKEN, "demo-moe")
    assert token.startswith("gj1.demo-moe.") and PEER_TOKEN not in token
    assert is_job_token(token) and job_of(token) == "demo-moe"
    assert verify_job_token(token, PEER_TOKEN) == "demo-moe"
    assert verify_job_token(token, "another-token-0123456789") is None
    # The job name cannot be swapped: the MAC covers it.
    forged = token.replace("gj1.demo-moe.", "gj1.other-job.")
    assert job_of(forged) == "other-job" and verify_job_token(forged, PEER_TOKEN) is None
    assert verify_job_token(PEER_TOKEN, PEER_TOKEN) is None
    # Two mints differ (a nonce each), both valid.
    again = mint_job_token(PEER_TOKEN, "demo-moe")
    assert again != token and verify_job_token(again, PEER_TOKEN) == "demo-moe"
    fixed = mint_job_token(PEER_TOKEN, "demo-moe", nonce="0" * 32)
    assert fixed == mint_job_token(PEER_TOKEN, "demo-moe", nonce="0" * 32)


def test_minting_refuses_what_it_cannot_scope() -> None:
    with pytest.raises(JobTokenError, match="needs the peer's token"):
        mint_job_token("", "demo-moe")
    with pytest.raises(JobTokenError, match="not another job token"):
        mint_job_token(mint_job_token(PEER_TOKEN, "a"), "a")
    with pytest.raises(JobTokenError, match="not a job name"):
        mint_job_token(PEER_TOKEN, "Bad.Name")
    # What a leader may keep: a job token as it is, a full token scoped, none as none.
    scoped = scoped_for(PEER_TOKEN, "demo-moe")
    assert verify_job_token(scoped, PEER_TOKEN) == "demo-moe"
    assert scoped_for(scoped, "demo-moe") == scoped
    assert scoped_for("", "demo-moe") == ""


# -- what a job token opens on a real agent ----------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ThreadedAgent]:
    with threaded_agent(tmp_path / "agent") as running:
        yield running


def call(agent: ThreadedAgent, method: str, request: object, token: str) -> grpc.RpcError | None:
    """The call's error, None when it succeeded (a stream is read to its first message)."""
    with grpc.insecure_channel(agent.address) as channel:
        stub = agent.stub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        try:
            reply = getattr(stub, method)(request, metadata=metadata, timeout=5)
            if method == "WatchJobEvents":
                next(iter(reply), None)
        except grpc.RpcError as exc:
            return exc
    return None


def code(error: grpc.RpcError | None) -> grpc.StatusCode:
    return grpc.StatusCode.OK if error is None else error.code()


def test_a_leaked_job_token_cannot_start_a_task_or_touch_another_job(
    agent: ThreadedAgent, tmp_path: Path
) -> None:
    leaked = mint_job_token(agent.token, "demo-moe")
    spec = job_pb2.JobSpec(name="demo-moe", command=["python", "x.py"], working_dir=str(tmp_path))
    spec.nodes.add(node="node-a", slots=1)
    serve = task_pb2.ServeTaskSpec(model_dir=str(tmp_path))
    refused = {
        "StartTask": A.StartTaskRequest(serve=serve),
        "SubmitJob": A.SubmitJobRequest(spec=spec),
        "ListJobs": A.ListJobsRequest(),
        "StopJob": A.StopJobRequest(name="demo-moe"),
        "ListTasks": A.ListTasksRequest(),
    }
    for method, request in refused.items():
        error = call(agent, method, request, leaked)
        assert code(error) is DENIED, (method, error)
        assert error is not None
        details = error.details() or ""
        assert "a job token for demo-moe" in details and method in details
    other = {
        "StopRanks": A.StopRanksRequest(job_name="other-job", attempt=1),
        "RequestCheckpoint": A.RequestCheckpointRequest(job_name="other-job", request_id="p-1"),
        "WatchJobEvents": A.WatchJobEventsRequest(job_name="other-job"),
        "StartRanks": A.StartRanksRequest(
            spec=job_pb2.JobSpec(name="other-job", command=["python", "x.py"]), attempt=1
        ),
    }
    for method, request in other.items():
        error = call(agent, method, request, leaked)
        assert code(error) is DENIED, (method, error)
        assert "a job token for demo-moe does not open job other-job" in str(error)
    every = call(agent, "WatchJobEvents", A.WatchJobEventsRequest(job_name=""), leaked)
    assert code(every) is DENIED and "does not open every job" in str(every)
    # What the leader of demo-moe does need still works: a ping, its own job's calls.
    assert call(agent, "GetNodeInfo", A.GetNodeInfoRequest(), leaked) is None
    own = call(agent, "StopRanks", A.StopRanksRequest(job_name="demo-moe", attempt=1), leaked)
    assert own is None
    ask = A.RequestCheckpointRequest(job_name="demo-moe", attempt=1, request_id="preempt-x-1")
    assert call(agent, "RequestCheckpoint", ask, leaked) is None
    # A job token another agent's token minted is no token here; the full one opens all.
    stranger = mint_job_token("someone-elses-token-0123456789", "demo-moe")
    assert code(call(agent, "GetNodeInfo", A.GetNodeInfoRequest(), stranger)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert call(agent, "ListTasks", A.ListTasksRequest(), agent.token) is None


# -- the leader in SSH mode: a restarted peer's fresh token, scoped again ------------------------


class FakeForward:
    def __init__(self, text: str) -> None:
        self.text = text
        self.destination = "gpu-02"

    async def read_text(self, path: str) -> str:
        return self.text


def unauthenticated() -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, empty, empty, "wrong token", None)


def test_an_ssh_leader_mints_a_job_token_from_a_restarted_peers_new_token() -> None:
    old = mint_job_token(PEER_TOKEN, "demo-moe")
    peer = A.PeerAgent(
        name="gpu-02", address="127.0.0.1:1", token=old, ssh="gpu-02", token_file="~/d/token"
    )
    node = RemoteNode(peer)
    fresh = "fresh-token-after-restart-0123"
    node._forward = FakeForward(fresh)  # type: ignore[assignment]
    assert asyncio.run(node._token_refreshed(unauthenticated(), old))
    bearer = dict(node._metadata)["authorization"].removeprefix("Bearer ")
    assert verify_job_token(bearer, fresh) == "demo-moe" and fresh not in bearer
    # A call that was sent with the old token beside it tries the renewed one
    # (test_ssh_peers: the events stream renewed it while a stop was in flight).
    assert asyncio.run(node._token_refreshed(unauthenticated(), old))
    assert dict(node._metadata)["authorization"] == f"Bearer {bearer}"
    # The renewed token refused, and the same token read again: nothing new to try.
    assert not asyncio.run(node._token_refreshed(unauthenticated(), bearer))


class SlowForward(FakeForward):
    """Every read waits for all of them to have started: calls refused at once read the
    token file at once."""

    def __init__(self, text: str, readers: int) -> None:
        super().__init__(text)
        self.readers = readers
        self.started = 0
        self.all_started = asyncio.Event()

    async def read_text(self, path: str) -> str:
        self.started += 1
        if self.started == self.readers:
            self.all_started.set()
        await self.all_started.wait()
        return self.text


def test_calls_refused_together_all_retry_with_the_token_one_of_them_renewed() -> None:
    """A stop, a ping and the events stream refused with the old token at once each read
    the new token file; whichever read finished first renewed the token, and the others
    must retry with it (test_ssh_peers: the stop gave up, leaving node-2's ranks)."""
    old = mint_job_token(PEER_TOKEN, "demo-moe")
    peer = A.PeerAgent(
        name="gpu-02", address="127.0.0.1:1", token=old, ssh="gpu-02", token_file="~/d/token"
    )
    node = RemoteNode(peer)
    fresh = "fresh-token-after-restart-0123"
    node._forward = SlowForward(fresh, readers=3)  # type: ignore[assignment]

    async def together() -> list[bool]:
        calls = [node._token_refreshed(unauthenticated(), old) for _ in range(3)]
        return list(await asyncio.gather(*calls))

    assert asyncio.run(together()) == [True, True, True]
    bearer = dict(node._metadata)["authorization"].removeprefix("Bearer ")
    assert verify_job_token(bearer, fresh) == "demo-moe"


# -- a whole job across two real agents with job tokens ----------------------------------------


def test_a_job_runs_across_two_agents_with_job_tokens_only(
    local_agents: StartAgent, tmp_path: Path
) -> None:
    agents = [local_agents(name) for name in ("node-a", "node-b")]
    doc: dict[str, object] = {
        "name": "scoped-job",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "3", "--step-s", "0.01"],
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0, "backoff_s": 0},
    }
    spec = parse_job_spec(json.dumps(doc), tmp_path, {"node-a", "node-b"})
    tokens = {a.name: a.target.read_token() for a in agents}
    peers = [
        A.PeerAgent(
            name=a.name, address=a.address, token=mint_job_token(tokens[a.name], "scoped-job")
        )
        for a in agents
    ]

    async def run() -> agent_service_pb2.DescribeJobResponse:
        async with AgentLinks() as links:
            link = links.link(agents[0].target)
            stub, metadata = await link.stub(), link.metadata()
            request = A.SubmitJobRequest(spec=spec, peers=peers)
            await stub.SubmitJob(request, metadata=metadata, timeout=30)
            deadline = time.monotonic() + 60
            while True:
                reply: agent_service_pb2.DescribeJobResponse = await stub.DescribeJob(
                    A.DescribeJobRequest(name="scoped-job"), metadata=metadata, timeout=10
                )
                if reply.job.state in (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED):
                    return reply
                assert time.monotonic() < deadline, reply.job
                await asyncio.sleep(0.2)

    reply = asyncio.run(run())
    assert reply.job.state == JS.JOB_STATE_SUCCEEDED, reply.job.reason
    assert sorted(r.node for r in reply.job.attempts[0].ranks) == ["node-a", "node-b"]
    # The leader's file of peers opens nothing but this job.
    kept = (agents[0].data_dir / "jobs" / "scoped-job" / "peers.json").read_text()
    for token in tokens.values():
        assert token not in kept
    assert all(job_of(p["token"]) == "scoped-job" for p in json.loads(kept))


@pytest.mark.parametrize("sender", ["console", "old console"])
def test_the_leader_keeps_only_job_tokens_whoever_sends_the_job(
    local_agents: StartAgent, tmp_path: Path, sender: str
) -> None:
    agents = [local_agents(name) for name in ("node-a", "node-b")]
    doc = {
        "name": "kept-job",
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "1", "--step-s", "0.01"],
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0, "backoff_s": 0},
    }
    spec = parse_job_spec(json.dumps(doc), tmp_path, {"node-a", "node-b"})
    tokens = {a.name: a.target.read_token() for a in agents}

    async def send() -> None:
        if sender == "console":
            async with JobsClient([a.target for a in agents]) as client:
                await client.launch(spec)
            return
        # A console from before job tokens sends the peers' own tokens.
        peers = [A.PeerAgent(name=a.name, address=a.address, token=tokens[a.name]) for a in agents]
        async with AgentLinks() as links:
            link = links.link(agents[0].target)
            request = A.SubmitJobRequest(spec=spec, peers=peers)
            await (await link.stub()).SubmitJob(request, metadata=link.metadata(), timeout=30)

    asyncio.run(send())
    kept = (agents[0].data_dir / "jobs" / "kept-job" / "peers.json").read_text()
    for token in tokens.values():
        assert token not in kept
    assert all(job_of(p["token"]) == "kept-job" for p in json.loads(kept) if p.get("token"))
