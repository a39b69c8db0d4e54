"""Each agent's telemetry: one long-lived WatchNode stream per agent, on its link,
reconnecting with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
from gantry.v1 import agent_service_pb2

from console.model.cluster import ClusterStore
from console.net.agent_link import AgentLink, AgentLinks, describe_rpc_error
from console.net.backoff import Backoff
from console.net.cluster_file import ClusterFileError, NodeTarget

CONNECT_TIMEOUT_S = 5.0
# The replies that say the agent is there but refuses this console's credentials.
REFUSED_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class AgentConnection:
    """Keeps one agent's WatchNode stream flowing into the store."""

    def __init__(
        self,
        target: NodeTarget,
        store: ClusterStore,
        links: AgentLinks,
        *,
        on_change: Callable[[], None] = lambda: None,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.store = store
        self.links = links
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
                if exc.code() in REFUSED_CODES:
                    self.store.set_unauthorized(name, self.now(), describe_rpc_error(exc))
                else:
                    self.store.set_lost(name, self.now(), describe_rpc_error(exc, tls=tls))
            except ClusterFileError as exc:
                # The token file is re-read on every attempt: fixing it heals the row. An
                # agent that is not there is lost, whatever the token.
                why = await unreachable_reason(self.links.link(self.target), CONNECT_TIMEOUT_S)
                if why:
                    self.store.set_lost(name, self.now(), why)
                else:
                    self.store.set_unauthorized(name, self.now(), str(exc))
            self.on_change()
            await asyncio.sleep(self.backoff.next())

    async def _stream_once(self) -> None:
        link = self.links.link(self.target)
        metadata = link.metadata(max_age_s=0)
        stub = await link.stub()
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
    """All agent connections of one console, as tasks on the running loop; `links`: the
    console's (without, the session's own, closed by `stop`)."""

    def __init__(
        self,
        targets: list[NodeTarget],
        store: ClusterStore,
        *,
        on_change: Callable[[], None] = lambda: None,
        links: AgentLinks | None = None,
    ) -> None:
        self.targets = targets
        self.store = store
        self.on_change = on_change
        self._owns_links = links is None
        self.links = links if links is not None else AgentLinks()
        self._tasks: list[asyncio.Task[None]] = []
        now = time.time()
        for target in targets:
            if target.name not in store:
                store.add_node(target.name, target.address, now)

    def start(self) -> None:
        for target in self.targets:
            conn = AgentConnection(target, self.store, self.links, on_change=self.on_change)
            self._tasks.append(asyncio.create_task(conn.run(), name=f"agent:{target.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._owns_links:
            await self.links.close()


async def fetch_status(
    target: NodeTarget, timeout_s: float = CONNECT_TIMEOUT_S, links: AgentLinks | None = None
) -> agent_service_pb2.GetNodeInfoResponse:
    """One GetNodeInfo call (`gantry status`); without `links`, over a channel closed after.

    Raises ClusterFileError (token or TLS files) and grpc.aio.AioRpcError.
    """
    if links is None:
        async with AgentLinks() as own:
            return await fetch_status(target, timeout_s, own)
    link = links.link(target)
    metadata = link.metadata()
    stub = await link.stub()
    reply: agent_service_pb2.GetNodeInfoResponse = await stub.GetNodeInfo(
        agent_service_pb2.GetNodeInfoRequest(), metadata=metadata, timeout=timeout_s
    )
    return reply


async def unreachable_reason(link: AgentLink, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
    """Why the agent cannot be reached ("": it answered, whatever it said), asked without a
    token: for when the console has none to send, so that an address nobody listens on is
    reported as unreachable, not as a token problem."""
    try:
        stub = await link.stub()
        await stub.GetNodeInfo(agent_service_pb2.GetNodeInfoRequest(), timeout=timeout_s)
    except ClusterFileError:
        return ""  # a TLS file: the caller's own error names it
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return describe_rpc_error(exc, tls=link.tls)
    return ""
