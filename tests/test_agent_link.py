"""One channel per agent: every console path to an agent goes through `AgentLinks`, which
opens each agent's channel once, applies its TLS files and token, and closes them all."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from gantry.v1 import agent_service_pb2

from agent.security.tls import TlsFiles, load_tls
from console.model.cluster import ClusterStore, ConnState
from console.model.jobs import JobsStore
from console.net import agent_link
from console.net.agent_client import ClusterSession, fetch_status
from console.net.agent_link import (
    CHANNEL_OPTIONS,
    OPERATOR_METADATA_KEY,
    AgentLinks,
    ChannelOption,
    TlsPems,
    describe_rpc_error,
    open_channel,
)
from console.net.ca import init_ca
from console.net.cluster_file import NodeTarget, TlsPaths, dump_cluster_file
from console.net.job_session import JobsSession, list_interval_for
from console.net.jobs_client import AgentUnreachable, JobCommandError, JobsClient
from console.net.tasks_client import TasksClient
from tests.secure_agent import ThreadedAgent, threaded_agent
from tests.test_cli import run_cli

UNREACHABLE = "agent unreachable (connection refused or dropped)"
SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN


class Opened:
    """A channel factory that records what it opened (real channels, so calls work)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, TlsPems | None, list[ChannelOption]]] = []
        self.channels: list[grpc.aio.Channel] = []

    def __call__(
        self, address: str, pems: TlsPems | None, options: Sequence[ChannelOption]
    ) -> grpc.aio.Channel:
        self.calls.append((address, pems, list(options)))
        channel = open_channel(address, pems, options)
        self.channels.append(channel)
        return channel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def token_target(agent: ThreadedAgent, tmp_path: Path, name: str = "node-a") -> NodeTarget:
    token_file = tmp_path / f"{name}.token"
    token_file.write_text(agent.token + "\n")
    return NodeTarget(name, agent.address, token_file)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ThreadedAgent]:
    with threaded_agent(tmp_path / "agent") as running:
        yield running


async def test_one_channel_per_agent_across_many_calls_and_clients(
    agent: ThreadedAgent, tmp_path: Path
) -> None:
    a = token_target(agent, tmp_path, "node-a")
    b = token_target(agent, tmp_path, "node-b")  # same agent, another node: another link
    opened = Opened()
    async with AgentLinks(factory=opened) as links:
        jobs, tasks = JobsClient([a, b], links), TasksClient([a, b], links)
        for _ in range(5):
            listed, errors = await jobs.list_jobs()
            assert (listed, errors) == ([], [])
        for _ in range(3):
            assert await tasks.list() == ([], [])
        reply = await fetch_status(a, 5.0, links)
        assert reply.info.node_name == "node-a"
        session = JobsSession([a, b], JobsStore(), links=links)
        await session.refresh_listing()
        await session.stop()  # not its links: they stay open
        assert sorted(address for address, _, _ in opened.calls) == [agent.address] * 2
        assert all(ch.get_state() is not SHUTDOWN for ch in opened.channels)
    assert [ch.get_state() for ch in opened.channels] == [SHUTDOWN, SHUTDOWN]
    assert set(CHANNEL_OPTIONS) <= set(opened.calls[0][2])  # keepalive as it was


async def test_the_telemetry_stream_shares_the_link(agent: ThreadedAgent, tmp_path: Path) -> None:
    target = token_target(agent, tmp_path)
    opened = Opened()
    links = AgentLinks(factory=opened)
    store = ClusterStore()
    session = ClusterSession([target], store, links=links)
    session.start()
    try:
        deadline = time.monotonic() + 10
        while store.node("node-a").state is not ConnState.LIVE:
            assert time.monotonic() < deadline, store.node("node-a")
            await asyncio.sleep(0.05)
        async with JobsClient([target], links) as client:
            await client.list_jobs()
        assert len(opened.channels) == 1
        assert opened.channels[0].get_state() is not SHUTDOWN  # the client did not own it
    finally:
        await session.stop()
        await links.close()
    assert opened.channels[0].get_state() is SHUTDOWN


async def test_a_closed_registry_opens_anew_and_closes_again(
    agent: ThreadedAgent, tmp_path: Path
) -> None:
    target = token_target(agent, tmp_path)
    opened = Opened()
    links = AgentLinks(factory=opened)
    await fetch_status(target, 5.0, links)
    await links.close()
    assert opened.channels[0].get_state() is SHUTDOWN
    await fetch_status(target, 5.0, links)
    assert len(opened.channels) == 2
    await links.close()
    assert opened.channels[1].get_state() is SHUTDOWN


def test_one_registry_across_event_loops(agent: ThreadedAgent, tmp_path: Path) -> None:
    """A CLI helper may run asyncio.run more than once with one client."""
    target = token_target(agent, tmp_path)
    opened = Opened()
    client = JobsClient([target], AgentLinks(factory=opened))
    for _ in range(2):
        assert asyncio.run(client.list_jobs()) == ([], [])
    assert len(opened.channels) == 2  # a channel cannot outlive its loop
    asyncio.run(client.links.close())


async def test_token_and_operator_ride_every_call(
    agent: ThreadedAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GANTRY_OPERATOR", "alice")
    target = token_target(agent, tmp_path)
    now = [0.0]
    links = AgentLinks(clock=lambda: now[0])
    link = links.link(target)
    assert links.link(target) is link
    assert link.metadata() == (
        ("authorization", f"Bearer {agent.token}"),
        (OPERATOR_METADATA_KEY, "alice"),
    )
    async with JobsClient([target], links) as client:
        assert await client.list_jobs() == ([], [])
        assert target.token_file is not None
        target.token_file.write_text("wrong\n")
        assert await client.list_jobs() == ([], [])  # read at most every TOKEN_REREAD_S
        now[0] += agent_link.TOKEN_REREAD_S
        _, errors = await client.list_jobs()
        assert len(errors) == 1 and errors[0].startswith("node-a: token refused: ")
    await links.close()


async def test_tls_files_make_the_channel_and_no_token_is_needed(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, {"node-a": ["127.0.0.1"]}, ["alice"], port=50051)
    files = TlsFiles(ca_dir / "ca.pem", ca_dir / "agents/node-a.pem", ca_dir / "agents/node-a.key")
    consoles = ca_dir / "consoles"
    tls = TlsPaths(ca_dir / "ca.pem", consoles / "alice.pem", consoles / "alice.key")
    opened = Opened()
    with threaded_agent(tmp_path / "agent", tls=load_tls(files)) as agent:
        target = NodeTarget("node-a", agent.address, None, tls)
        async with AgentLinks(factory=opened) as links:
            assert links.link(target).tls
            assert [key for key, _ in links.link(target).metadata()] == [OPERATOR_METADATA_KEY]
            reply = await fetch_status(target, 5.0, links)
            assert reply.info.node_name == "node-a"
    [(_, pems, _)] = opened.calls
    assert pems == (tls.ca.read_bytes(), tls.cert.read_bytes(), tls.key.read_bytes())


async def test_a_dead_agent_gives_the_same_one_line_error(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret\n")
    target = NodeTarget("node-a", f"127.0.0.1:{free_port()}", token_file)
    async with AgentLinks() as links:
        client = JobsClient([target], links)
        assert await client.list_jobs() == ([], [f"node-a: {UNREACHABLE}"])
        with pytest.raises(AgentUnreachable) as info:
            await client.describe("job")
        assert str(info.value) == f"no agent answered: node-a: {UNREACHABLE}"
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await fetch_status(target, 5.0, links)
        assert describe_rpc_error(rpc.value) == UNREACHABLE


async def test_an_unreadable_token_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    target = NodeTarget("node-a", f"127.0.0.1:{port}", tmp_path / "missing")
    unreadable = r"^node node-a: cannot read token file "
    (tmp_path / "agent").mkdir()
    with threaded_agent(tmp_path / "agent", listen=f"127.0.0.1:{port}"):  # there to refuse
        async with TasksClient([target]) as client:
            with pytest.raises(JobCommandError, match=unreadable):
                await client.start("node-a", agent_service_pb2.StartTaskRequest())
            with pytest.raises(JobCommandError, match=unreadable):
                async for _ in client.watch(target, "task-1"):
                    pass
    # Nobody listening: that is said first, whatever the token.
    async with TasksClient([target]) as client:
        with pytest.raises(AgentUnreachable, match=r"^node-a: agent unreachable"):
            await client.start("node-a", agent_service_pb2.StartTaskRequest())


async def test_an_agent_that_comes_back_is_reached_at_once(tmp_path: Path) -> None:
    """A failing channel is replaced: gRPC's own reconnect backoff would wait (to 120 s)."""
    port = free_port()
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    token_file = data_dir / "token"  # the agent's own, made before it starts
    token_file.write_text("a-token-of-thirty-two-characters\n")
    token_file.chmod(0o600)
    target = NodeTarget("node-a", f"127.0.0.1:{port}", token_file)
    opened = Opened()
    async with AgentLinks(factory=opened) as links:
        with pytest.raises(grpc.aio.AioRpcError):
            await fetch_status(target, 5.0, links)
        assert opened.channels[0].get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        with threaded_agent(data_dir, listen=f"127.0.0.1:{port}"):
            assert (await fetch_status(target, 5.0, links)).info.node_name == "node-a"
    assert [ch.get_state() for ch in opened.channels] == [SHUTDOWN, SHUTDOWN]


@pytest.mark.parametrize("verb", [["jobs"], ["tasks"], ["status"], ["job", "nope"]])
def test_a_cli_verb_closes_its_channels(
    agent: ThreadedAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    verb: list[str],
) -> None:
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [token_target(agent, tmp_path)])
    opened = Opened()
    monkeypatch.setattr(agent_link, "open_channel", opened)
    run_cli([*verb, "--cluster", str(cluster)], capsys)
    assert len(opened.channels) == 1
    assert opened.channels[0].get_state() is SHUTDOWN


def test_the_job_listing_slows_down_on_a_big_cluster() -> None:
    # ListJobs on every agent every 2 s, but at most 32 calls a second, and at least every 10 s.
    assert [list_interval_for(n) for n in (1, 64, 128, 256, 4096)] == [2.0, 2.0, 4.0, 8.0, 10.0]
