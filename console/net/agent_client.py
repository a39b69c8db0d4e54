"""Talking to agents: one long-lived stream per agent, reconnecting with backoff.

Channels are created inside the running event loop (grpc.aio requirement).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc

from console.model.cluster import ClusterStore
from console.net.backoff import Backoff
from console.net.cluster_file import ClusterFileError, NodeTarget, TlsPaths

CONNECT_TIMEOUT_S = 5.0
# Keepalive pings notice a peer that vanished without closing the connection.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
    ("grpc.http2.bdp_probe", 0),
]


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The bearer token; nothing for a TLS node without one (its certificate is enough)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def describe_rpc_error(exc: grpc.aio.AioRpcError, *, tls: bool = False) -> str:
    """One line an operator can act on; `tls`: the channel was mutual TLS."""
    code = exc.code()
    details = exc.details() or ""
    if code is grpc.StatusCode.UNAVAILABLE and _is_tls_failure(details):
        return "TLS handshake failed (check the cluster file's ca, cert and key)"
    if code is grpc.StatusCode.UNAVAILABLE and tls:
        # An agent that refuses our certificate just closes the connection.
        return "agent unreachable, or it refused this console's certificate (check cert and ca)"
    if code is grpc.StatusCode.UNAVAILABLE:
        return "agent unreachable (connection refused or dropped)"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "agent did not answer in time"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return f"token refused: {exc.details()} (check the token file)"
    return f"{code.name.lower()}: {exc.details()}"


def _is_tls_failure(details: str) -> bool:
    lowered = details.lower()
    return any(word in lowered for word in ("handshake", "ssl", "certificate", "tls"))


def open_channel(address: str, tls: TlsPaths | None = None, node: str = "") -> grpc.aio.Channel:
    """A channel to an agent: plain (loopback, SSH tunnel) or mutual TLS (direct mode).

    Raises ClusterFileError when a TLS file cannot be read.
    """
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    ca, cert, key = tls.read(node or address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


def target_channel(target: NodeTarget) -> grpc.aio.Channel:
    """The channel for one node of the cluster file, TLS when the file says so."""
    return open_channel(target.address, target.tls, target.name)


class AgentConnection:
    """Keeps one agent's WatchNode stream flowing into the store."""

    def __init__(
        self,
        target: NodeTarget,
        store: ClusterStore,
        *,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.store = store
        self.on_change = on_change
        self.backoff = backoff or Backoff()
        self.now = wall_clock

    async def run(self) -> None:
        name = self.target.name
        while True:
            self.store.set_connecting(name, self.now())
            self.on_change()
            try:
                await self._stream_once()
                self.store.set_lost(name, self.now(), "agent closed the stream")
            except grpc.aio.AioRpcError as exc:
                tls = self.target.tls is not None
                if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                    self.store.set_unauthorized(name, self.now(), describe_rpc_error(exc))
                else:
                    self.store.set_lost(name, self.now(), describe_rpc_error(exc, tls=tls))
            except ClusterFileError as exc:
                # The token file is re-read on every attempt: fixing it heals the row.
                self.store.set_unauthorized(name, self.now(), str(exc))
            self.on_change()
            await asyncio.sleep(self.backoff.next())

    async def _stream_once(self) -> None:
        token = self.target.read_token()
        metadata = auth_metadata(token)
        async with target_channel(self.target) as channel:
            stub = agent_service_pb2_grpc.AgentServiceStub(channel)
            reply = await stub.GetNodeInfo(
                agent_service_pb2.GetNodeInfoRequest(),
                metadata=metadata,
                timeout=CONNECT_TIMEOUT_S,
            )
            self.store.set_live(self.target.name, reply.info, self.now())
            if reply.HasField("latest"):
                self.store.apply_sample(self.target.name, reply.latest, self.now())
            self.on_change()
            self.backoff.reset()
            request = agent_service_pb2.WatchNodeRequest(replay_history=True)
            async for message in stub.WatchNode(request, metadata=metadata):
                if self.store.apply_sample(self.target.name, message.sample, self.now()):
                    self.on_change()


class ClusterSession:
    """All agent connections of one console, as tasks on the running loop."""

    def __init__(
        self,
        targets: list[NodeTarget],
        store: ClusterStore,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.targets = targets
        self.store = store
        self.on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        now = time.time()
        for target in targets:
            if target.name not in store:
                store.add_node(target.name, target.address, now)

    def start(self) -> None:
        for target in self.targets:
            conn = AgentConnection(target, self.store, on_change=self.on_change)
            self._tasks.append(asyncio.create_task(conn.run(), name=f"agent:{target.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


async def fetch_status(
    target: NodeTarget, timeout_s: float = CONNECT_TIMEOUT_S
) -> agent_service_pb2.GetNodeInfoResponse:
    """One unary call, for `gantry status`."""
    metadata = auth_metadata(target.read_token())
    async with target_channel(target) as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        reply: agent_service_pb2.GetNodeInfoResponse = await stub.GetNodeInfo(
            agent_service_pb2.GetNodeInfoRequest(), metadata=metadata, timeout=timeout_s
        )
        return reply
