"""The agent's gRPC server on port 0 with a real client: auth, health, reflection, replay."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.rpc.server import ListenError, build_server, check_loopback, split_listen
from agent.runtime import build_job_runtime
from agent.security.auth import TokenError, load_or_create_token
from agent.telemetry.sampler import Sampler
from tests.fakes.fake_nvml import FakeNvml


@dataclass
class RunningAgent:
    address: str
    token: str
    sampler: Sampler

    def metadata(self, token: str | None = None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token or self.token}"),)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[RunningAgent]:
    sampler = Sampler("node-a", nvml_lib=FakeNvml(gpu_count=8), interval_s=0.02)
    token, _ = load_or_create_token(tmp_path, None)
    runtime = build_job_runtime("node-a", tmp_path, [])
    server, port, _ = await build_server(sampler, token, "127.0.0.1:0", runtime.jobs)
    sampler.start()
    await runtime.start()
    await server.start()
    try:
        yield RunningAgent(f"127.0.0.1:{port}", token, sampler)
    finally:
        await server.stop(0)
        await runtime.close()
        sampler.stop()


async def wait_for_samples(sampler: Sampler, count: int) -> None:
    for _ in range(500):
        if len(sampler.history()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"sampler produced fewer than {count} samples")


async def test_missing_and_wrong_tokens_are_refused(agent: RunningAgent) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetNodeInfo(agent_service_pb2.GetNodeInfoRequest(), timeout=5)
        assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "missing bearer token" in (missing.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.GetNodeInfo(
                agent_service_pb2.GetNodeInfoRequest(),
                metadata=agent.metadata("x" * 43),
                timeout=5,
            )
        assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "wrong bearer token" in (wrong.value.details() or "")

        stream = stub.WatchNode(agent_service_pb2.WatchNodeRequest(replay_history=True))
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stream:
                pass
        assert streamed.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_token_accepted_returns_node_info(agent: RunningAgent) -> None:
    await wait_for_samples(agent.sampler, 1)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        reply = await stub.GetNodeInfo(
            agent_service_pb2.GetNodeInfoRequest(), metadata=agent.metadata(), timeout=5
        )
    assert reply.info.node_name == "node-a"
    assert reply.info.gpu_count == 8
    assert len(reply.latest.gpus) == 8
    assert reply.latest.host.mem_total_bytes > 0


async def test_health_needs_no_token(agent: RunningAgent) -> None:
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gantry.v1.AgentService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def list_services(address: str, metadata: tuple[tuple[str, str], ...] | None) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        call = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
        names: list[str] = []
        async for response in call:
            names.extend(s.name for s in response.list_services_response.service)
        return names


async def test_reflection_lists_the_services(agent: RunningAgent) -> None:
    names = await list_services(agent.address, agent.metadata())
    assert {"gantry.v1.AgentService", "grpc.health.v1.Health"} <= set(names)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await list_services(agent.address, None)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_reflection_v1_and_undecodable_bytes(agent: RunningAgent) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

    async with grpc.aio.insecure_channel(agent.address) as channel:
        # Reflection v1: the same messages as v1alpha under grpc.reflection.v1.
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=v1alpha.ServerReflectionRequest.SerializeToString,
            response_deserializer=v1alpha.ServerReflectionResponse.FromString,
        )(iter([v1alpha.ServerReflectionRequest(list_services="")]), metadata=agent.metadata())
        names = [s.name async for r in call for s in r.list_services_response.service]
        assert "gantry.v1.AgentService" in names
        # Bytes that are no DescribeJobRequest: INVALID_ARGUMENT in one line, not UNKNOWN.
        raw = channel.unary_unary(
            "/gantry.v1.AgentService/DescribeJob",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff", metadata=agent.metadata(), timeout=5)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "request: not a gantry.v1.DescribeJobRequest"


async def test_watch_replays_history_then_streams_live(agent: RunningAgent) -> None:
    await wait_for_samples(agent.sampler, 10)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        call = stub.WatchNode(
            agent_service_pb2.WatchNodeRequest(replay_history=True), metadata=agent.metadata()
        )
        received: list[agent_service_pb2.WatchNodeResponse] = []
        async for message in call:
            received.append(message)
            if not message.replayed and len([m for m in received if not m.replayed]) >= 5:
                break
        call.cancel()
    replayed = [m.sample.seq for m in received if m.replayed]
    live = [m.sample.seq for m in received if not m.replayed]
    assert len(replayed) >= 10
    assert received[0].replayed  # history comes first
    seqs = replayed + live
    # One continuous sequence: no sample missing or repeated between replay and live.
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_watch_without_history_starts_live(agent: RunningAgent) -> None:
    await wait_for_samples(agent.sampler, 5)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        call = stub.WatchNode(agent_service_pb2.WatchNodeRequest(), metadata=agent.metadata())
        first = await call.read()
        call.cancel()
    assert isinstance(first, agent_service_pb2.WatchNodeResponse)
    assert not first.replayed


async def test_garbage_on_the_port_does_not_take_the_agent_down(agent: RunningAgent) -> None:
    host, port = split_listen(agent.address)
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", os.urandom(4096)):
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(payload)
    async with grpc.aio.insecure_channel(agent.address) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        reply = await stub.GetNodeInfo(
            agent_service_pb2.GetNodeInfoRequest(), metadata=agent.metadata(), timeout=5
        )
    assert reply.info.node_name == "node-a"


def test_token_file_created_private_and_reused(tmp_path: Path) -> None:
    token, path = load_or_create_token(tmp_path / "data", None)
    assert path == tmp_path / "data" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    again, _ = load_or_create_token(tmp_path / "data", None)
    assert again == token


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("s" * 40)
    path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        load_or_create_token(tmp_path, path)
    path.chmod(0o600)
    assert load_or_create_token(tmp_path, path)[0] == "s" * 40
    with pytest.raises(TokenError, match="does not exist"):
        load_or_create_token(tmp_path, tmp_path / "missing")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "192.168.0.1"])
def test_non_loopback_listen_is_refused(host: str) -> None:
    with pytest.raises(ListenError, match="SSH tunnel"):
        check_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_listen_is_allowed(host: str) -> None:
    check_loopback(host)


@pytest.mark.parametrize("text", ["nohostport", ":50051", "host:", "host:99999", "h:p"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ListenError, match="HOST:PORT"):
        split_listen(text)
