"""How a job's leader talks to the nodes of the job: the same interface for its own
node (direct calls) and for peers (agent-to-agent gRPC with job tokens the console minted
from the peers' tokens, `gantry.v1.job_tokens`, or with mutual TLS)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2
from gantry.v1.job_tokens import job_of, mint_job_token, verify_job_token

from agent.jobs.event_bus import EventBus
from agent.jobs.leader.peer_ssh import PeerSshError, SshForward

log = logging.getLogger("gantry.agent")

RPC_TIMEOUT_S = 30.0
PING_TIMEOUT_S = 5.0
# A peer's event stream is tried again this soon after it broke, then at most this late.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 1.0
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # gRPC's default reconnect backoff grows to 120 s: a peer whose agent was down a
    # minute would be reached again only half a minute after it is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    # Pings notice a peer that vanished without closing the connection (agents allow one
    # every 5 s).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
# Channels to one address share one connection, and its backoff, unless told otherwise:
# each new event stream gets a connection of its own, tried at once.
STREAM_CHANNEL_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1))
# Channels given up after an unreachable peer, kept open for the calls still on them; the
# oldest beyond this many are closed (their calls ended by their deadlines long since).
MAX_RETIRED_CHANNELS = 4

# How this agent calls its peers: its certificate (mutual TLS; None: plain channels) and
# the name it gives for their audit trails. One agent per process, so one setting per
# process (`agent.main` sets it at start).
_peer_credentials: grpc.ChannelCredentials | None = None
_caller_metadata: tuple[tuple[str, str], ...] = ()
OPERATOR_METADATA_KEY = "x-gantry-operator"  # as agent.rpc.jobs reads it


def configure_peers(node_name: str, credentials: grpc.ChannelCredentials | None) -> None:
    global _peer_credentials, _caller_metadata
    _peer_credentials = credentials
    _caller_metadata = ((OPERATOR_METADATA_KEY, f"leader@{node_name}"),) if node_name else ()


class NodeUnreachable(Exception):
    pass


class NodeRefused(Exception):
    """The node answered, and said no; the message says why."""


class NodeApi(Protocol):
    name: str

    async def ping(self) -> None: ...

    def lost_since(self) -> float | None:
        """When this node stopped answering (wall-clock seconds); None while it answers."""
        ...

    async def start_ranks(
        self, request: agent_service_pb2.StartRanksRequest
    ) -> agent_service_pb2.StartRanksResponse: ...

    async def stop_ranks(
        self, request: agent_service_pb2.StopRanksRequest
    ) -> agent_service_pb2.StopRanksResponse: ...

    async def request_checkpoint(
        self, request: agent_service_pb2.RequestCheckpointRequest
    ) -> agent_service_pb2.RequestCheckpointResponse: ...

    def events(self, job_name: str, after_seq: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        """The node's events of the job after `after_seq` (its own seq), on and on."""
        ...

    async def close(self) -> None: ...


StartRanks = Callable[
    [agent_service_pb2.StartRanksRequest], Awaitable[agent_service_pb2.StartRanksResponse]
]
StopRanks = Callable[
    [agent_service_pb2.StopRanksRequest], Awaitable[agent_service_pb2.StopRanksResponse]
]
AskCheckpoint = Callable[
    [agent_service_pb2.RequestCheckpointRequest],
    Awaitable[agent_service_pb2.RequestCheckpointResponse],
]


async def _ask_nobody(
    request: agent_service_pb2.RequestCheckpointRequest,
) -> agent_service_pb2.RequestCheckpointResponse:
    return agent_service_pb2.RequestCheckpointResponse()


class LocalNode:
    """The leader's own node: the calls go straight to its supervisor."""

    def __init__(
        self,
        name: str,
        bus: EventBus,
        start: StartRanks,
        stop: StopRanks,
        ask: AskCheckpoint = _ask_nobody,
    ) -> None:
        self.name = name
        self._bus = bus
        self._start = start
        self._stop = stop
        self._ask = ask

    async def ping(self) -> None:
        return None

    def lost_since(self) -> float | None:
        return None

    async def start_ranks(
        self, request: agent_service_pb2.StartRanksRequest
    ) -> agent_service_pb2.StartRanksResponse:
        return await self._start(request)

    async def stop_ranks(
        self, request: agent_service_pb2.StopRanksRequest
    ) -> agent_service_pb2.StopRanksResponse:
        return await self._stop(request)

    async def request_checkpoint(
        self, request: agent_service_pb2.RequestCheckpointRequest
    ) -> agent_service_pb2.RequestCheckpointResponse:
        return await self._ask(request)

    async def events(self, job_name: str, after_seq: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        async for event in self._bus.follow(job_name, after_seq):
            # The leader's journal also holds events it copied from peers; only this
            # node's own rank events come from here.
            if event.node == self.name and event.rank >= 0 and not event.details.get("origin"):
                yield event

    async def close(self) -> None:
        return None


def _translate(exc: grpc.aio.AioRpcError, name: str, address: str) -> Exception:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return NodeUnreachable(f"{name}'s agent at {address} is unreachable")
    if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
        return NodeRefused(f"{name}'s agent at {address} refused the token")
    if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
        return NodeRefused(f"{name}'s agent refused the request: {exc.details()}")
    return NodeRefused(f"{name}: {exc.details()}")


class RemoteNode:
    """A peer agent, reached over gRPC with its bearer token, or with mutual TLS (this
    agent's certificate) when the agent runs with TLS. A peer given with an SSH
    destination (SSH mode) is reached through a port forward over SSH
    (agent.jobs.leader.peer_ssh)."""

    def __init__(
        self,
        peer: agent_service_pb2.PeerAgent,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.name = peer.name
        self.address = peer.address
        self._token_file = peer.token_file if peer.ssh else ""
        self._token = ""
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._use_token(peer.token)
        self._credentials = credentials if credentials is not None else _peer_credentials
        self._forward = SshForward(peer.ssh, peer.address) if peer.ssh else None
        self._channel: grpc.aio.Channel | None = None
        self._channel_address = ""
        self._lost_since: float | None = None
        self._retired: list[grpc.aio.Channel] = []  # see _retire_channel
        self._closing: set[asyncio.Future[None]] = set()

    def lost_since(self) -> float | None:
        return self._lost_since

    def _heard(self) -> None:
        self._lost_since = None

    def _lost(self) -> None:
        if self._lost_since is None:
            self._lost_since = time.time()

    def _use_token(self, token: str) -> None:
        self._token = token
        bearer = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*bearer, *_caller_metadata)

    async def _token_refreshed(self, exc: grpc.aio.AioRpcError, refused: str) -> bool:
        """SSH mode: the peer refused our token `refused` (its agent was started again,
        with a fresh one): read its token file over SSH, and use a job token minted from
        it when the console gave one. True when there is a new one to try, also when a
        call running beside this one renewed the token since."""
        if exc.code() is not grpc.StatusCode.UNAUTHENTICATED or not self._token_file:
            return False
        if self._token != refused:
            return True
        assert self._forward is not None
        try:
            token = await self._forward.read_text(self._token_file)
        except PeerSshError as err:
            log.warning("%s: %s", self.name, err)
            return False
        if self._token != refused:
            return True  # renewed by a call that read the file while this one did
        if not token:
            return False
        job = job_of(self._token)
        if job is None:
            if token == self._token:
                return False
            self._use_token(token)
            return True
        if verify_job_token(self._token, token) is not None:
            return False  # the same token as before: it was not the token it refused
        # Only a token scoped to this job is kept, as the console gave one.
        self._use_token(mint_job_token(token, job))
        return True

    async def _call(self, method: str, request: Any, timeout: float) -> Any:
        """One unary call; in SSH mode retried once with the peer's new token."""
        for attempt in (1, 2):
            token = self._token
            try:
                stub = await self._stub()
                reply = await getattr(stub, method)(
                    request, metadata=self._metadata, timeout=timeout
                )
            except grpc.aio.AioRpcError as exc:
                if attempt == 1 and await self._token_refreshed(exc, token):
                    continue
                error = _translate(exc, self.name, self._where())
                if isinstance(error, NodeUnreachable):
                    self._lost()
                    self._retire_channel()
                raise error from None
            except NodeUnreachable:
                self._lost()
                raise
            self._heard()
            return reply
        raise AssertionError("unreachable")

    async def _address(self) -> str:
        if self._forward is None:
            return self.address
        try:
            return await self._forward.local_address()
        except PeerSshError as exc:
            raise NodeUnreachable(f"{self.name}'s agent: {exc}") from None

    def _open(self, address: str, options: tuple[tuple[str, int], ...]) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def _stub(self) -> agent_service_pb2_grpc.AgentServiceStub:
        address = await self._address()
        if self._channel is None or address != self._channel_address:
            if self._channel is not None:
                await self._channel.close(None)
            # After a retirement, a connection of its own: channels to one address share
            # one otherwise, and the retired channel's would be reused.
            options = STREAM_CHANNEL_OPTIONS if self._retired else CHANNEL_OPTIONS
            self._channel = self._open(address, options)
            self._channel_address = address
        return agent_service_pb2_grpc.AgentServiceStub(self._channel)

    async def local_ip(self) -> str | None:
        """For a peer reached over SSH: this node's address as the peer's network sees
        it (None otherwise)."""
        if self._forward is None:
            return None
        try:
            return await self._forward.local_ip()
        except PeerSshError as exc:
            raise NodeUnreachable(f"{self.name}'s agent: {exc}") from None

    def _retire_channel(self) -> None:
        """After a call found the peer unreachable, the next one opens a new connection:
        the old one may sit on a link that was cut and healed since, where gRPC notices
        only at its next keepalive (seconds later) and fails the calls sent on it. Calls
        still running on it end by their deadlines; it is closed later."""
        if self._channel is None:
            return
        self._retired.append(self._channel)
        self._channel = None
        while len(self._retired) > MAX_RETIRED_CHANNELS:
            old = self._retired.pop(0)
            task = asyncio.ensure_future(old.close(None))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _where(self) -> str:
        if self._forward is not None:
            return f"{self.address} (over ssh {self._forward.destination})"
        return self.address

    async def ping(self) -> None:
        await self._call("GetNodeInfo", agent_service_pb2.GetNodeInfoRequest(), PING_TIMEOUT_S)

    async def start_ranks(
        self, request: agent_service_pb2.StartRanksRequest
    ) -> agent_service_pb2.StartRanksResponse:
        reply: agent_service_pb2.StartRanksResponse = await self._call(
            "StartRanks", request, RPC_TIMEOUT_S
        )
        return reply

    async def stop_ranks(
        self, request: agent_service_pb2.StopRanksRequest
    ) -> agent_service_pb2.StopRanksResponse:
        reply: agent_service_pb2.StopRanksResponse = await self._call(
            "StopRanks", request, RPC_TIMEOUT_S + request.grace_s
        )
        return reply

    async def request_checkpoint(
        self, request: agent_service_pb2.RequestCheckpointRequest
    ) -> agent_service_pb2.RequestCheckpointResponse:
        reply: agent_service_pb2.RequestCheckpointResponse = await self._call(
            "RequestCheckpoint", request, RPC_TIMEOUT_S
        )
        return reply

    async def events(self, job_name: str, after_seq: int) -> AsyncGenerator[job_pb2.JobEvent, None]:
        """Follows the peer's events; reconnects (from the last seq) when the peer's agent
        restarts, or its SSH connection drops, so that loses the leader nothing. Each try
        is a fresh connection: a peer that comes back is seen within RETRY_MAX_S."""
        last = after_seq
        delay = RETRY_MIN_S
        while True:
            channel: grpc.aio.Channel | None = None
            token = self._token
            try:
                channel = self._open(await self._address(), STREAM_CHANNEL_OPTIONS)
                stub = agent_service_pb2_grpc.AgentServiceStub(channel)
                if self._lost_since is not None:
                    # The stream itself may stay quiet a long while: this says it is back.
                    await stub.GetNodeInfo(
                        agent_service_pb2.GetNodeInfoRequest(),
                        metadata=self._metadata,
                        timeout=PING_TIMEOUT_S,
                    )
                    self._heard()
                request = agent_service_pb2.WatchJobEventsRequest(
                    job_name=job_name, after_seq=last, follow=True
                )
                async for message in stub.WatchJobEvents(request, metadata=self._metadata):
                    self._heard()
                    delay = RETRY_MIN_S
                    last = max(last, message.event.seq)
                    yield message.event
            except grpc.aio.AioRpcError as exc:
                await self._token_refreshed(exc, token)
            except NodeUnreachable:
                pass
            finally:
                if channel is not None:
                    await channel.close(None)
            self._lost()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        for channel in self._retired:
            await channel.close(None)
        self._retired.clear()
        if self._forward is not None:
            await self._forward.close()
