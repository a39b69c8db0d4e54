"""The console's one way to an agent: one channel and one set of call metadata per agent.

`AgentLinks` (one per client process: the app holds one, a CLI verb one for its run)
hands out the `AgentLink` of a target. A link opens its grpc.aio channel on first use,
inside the running loop (a grpc.aio requirement), and keeps it until closed; every call
to that agent, unary or streamed, from any part of the console, rides on it.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import grpc
from gantry.v1 import agent_service_pb2_grpc

from console.net.cluster_file import NodeTarget

Metadata = tuple[tuple[str, str], ...]
TlsPems = tuple[bytes, bytes, bytes]  # (ca, cert, key)
ChannelOption = tuple[str, int]
# (address, TLS PEMs or None for a plain channel, options) -> a new channel.
ChannelFactory = Callable[[str, TlsPems | None, Sequence[ChannelOption]], grpc.aio.Channel]

# Keepalive pings notice a peer that vanished without closing the connection.
CHANNEL_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
    ("grpc.http2.bdp_probe", 0),
)
# Each link's channel connects on its own: channels share a connection to an address, and
# its reconnect backoff, unless told otherwise (see `AgentLink.stub`).
LINK_OPTIONS: tuple[ChannelOption, ...] = (
    *CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
)
# A call on a channel still connecting waits for the connection (20 s when the node's
# packets are dropped): the verbs wait this long for it, once (see `AgentLink.reachable`).
CONNECT_DEADLINE_S = 5.0
CONNECT_POLL_MIN_S, CONNECT_POLL_MAX_S = 0.002, 0.1
LOST_AFTER_S = 2.0  # a connection that fails only after this long: lost, not refused
# A 1,024-rank job makes hundreds of calls a second: the token (and TLS) files are read
# at most this often per agent, so a rotated token is picked up within it.
TOKEN_REREAD_S = 5.0
# Who is operating: recorded by the agents with every job verb (audit trail, events).
OPERATOR_METADATA_KEY = "x-gantry-operator"
OPERATOR_ENV = "GANTRY_OPERATOR"


_READY = grpc.ChannelConnectivity.READY
# States in which a call does not wait for a connection.
_SETTLED = frozenset(
    {
        _READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


def auth_metadata(token: str) -> Metadata:
    """The bearer token; nothing for a TLS node without one (its certificate is enough)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def operator_name() -> str:
    """``$GANTRY_OPERATOR``, else the login name; "unknown" when neither can be found."""
    name = os.environ.get(OPERATOR_ENV, "")
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = ""
    # Visible ASCII only (gRPC metadata values); the agent narrows it further.
    return "".join(c if " " < c < "\x7f" else "?" for c in name) or "unknown"


def call_metadata(token: str) -> Metadata:
    """What every console call carries: the token and who is operating."""
    return (*auth_metadata(token), (OPERATOR_METADATA_KEY, operator_name()))


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


def lost_reason(deadline_s: float = CONNECT_DEADLINE_S) -> str:
    """The line for an agent whose connection did not come up within `deadline_s`."""
    return f"agent unreachable (no connection within {deadline_s:g}s)"


def _is_tls_failure(details: str) -> bool:
    lowered = details.lower()
    return any(word in lowered for word in ("handshake", "ssl", "certificate", "tls"))


def open_channel(
    address: str, pems: TlsPems | None = None, options: Sequence[ChannelOption] = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    """A new channel: plain (loopback, SSH tunnel) or mutual TLS (direct mode)."""
    if pems is None:
        return grpc.aio.insecure_channel(address, options=options)
    ca, cert, key = pems
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(address, credentials, options=options)


class AgentLink:
    """One agent's channel (opened on first use, kept until `close`) and call metadata."""

    def __init__(
        self,
        target: NodeTarget,
        *,
        factory: ChannelFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        reread_s: float = TOKEN_REREAD_S,
    ) -> None:
        self.target = target
        self._factory = factory or open_channel
        self._clock = clock
        self._reread_s = reread_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: agent_service_pb2_grpc.AgentServiceStub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._metadata: Metadata = ()
        self._read_at: float | None = None
        self._lost = False  # its connection did not come up within a connect deadline

    @property
    def tls(self) -> bool:
        return self.target.tls is not None

    def metadata(self, max_age_s: float | None = None) -> Metadata:
        """Token and operator, re-read when older than `max_age_s` (default TOKEN_REREAD_S).

        Raises ClusterFileError when the token or TLS files cannot be read.
        """
        now = self._clock()
        max_age = self._reread_s if max_age_s is None else max_age_s
        if self._read_at is None or now - self._read_at >= max_age:
            self._metadata = call_metadata(self.target.read_token())
            self._read_at = now
        return self._metadata

    async def stub(self) -> agent_service_pb2_grpc.AgentServiceStub:
        """The agent's stub on the kept channel, opened now if need be.

        Raises ClusterFileError when a TLS file cannot be read.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A channel cannot move between loops (a CLI helper may run several, one after
            # another); the one from an ended loop is dropped, which closes it.
            self._channel = self._stub = None
            self._loop, self._lock = loop, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            channel = self._channel
            failing = grpc.ChannelConnectivity.TRANSIENT_FAILURE
            if channel is not None and channel.get_state() is failing:
                # gRPC's reconnect backoff grows to 120 s: an agent back after a minute
                # would be reached only a minute later. A new channel (LINK_OPTIONS: a
                # connection of its own) tries at once, and re-reads the TLS files.
                self._channel = self._stub = None
                await channel.close(None)
            if self._stub is None:
                tls = self.target.tls
                pems = tls.read(self.target.name) if tls is not None else None
                self._channel = self._factory(self.target.address, pems, LINK_OPTIONS)
                # Once per channel, not per call: a stub builds a callable per method.
                self._stub = agent_service_pb2_grpc.AgentServiceStub(self._channel)
            return self._stub

    async def reachable(self, deadline_s: float = CONNECT_DEADLINE_S) -> bool:
        """False when the channel has not connected within `deadline_s`, or failed only
        after seconds (a call on it would wait out its own timeout); once so found, False
        at once until the channel, which goes on trying in the background, is ready. True
        also when the connection was refused at once: a call then fails with its reason.

        Raises ClusterFileError when a TLS file cannot be read.
        """
        await self.stub()
        channel = self._channel
        assert channel is not None
        state = channel.get_state(try_to_connect=True)
        if state is not _READY and self._lost:
            return False
        # Polled: a cancelled wait_for_state_change leaves gRPC a callback for a loop that
        # may be closed by the time the channel changes.
        began = time.monotonic()
        pause_s = CONNECT_POLL_MIN_S
        while state not in _SETTLED and time.monotonic() - began < deadline_s:
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, CONNECT_POLL_MAX_S)
            state = channel.get_state(try_to_connect=True)
        # A refusal comes at once; a connection that failed only after seconds (a TLS
        # handshake whose packets are dropped gives up after ~5 s) is a lost node too.
        waited_s = time.monotonic() - began
        self._lost = state is not _READY and (
            state not in _SETTLED or waited_s >= min(LOST_AFTER_S, deadline_s)
        )
        return not self._lost

    async def close(self) -> None:
        """Closes the channel (its calls end cancelled); the next use opens a new one."""
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None and self._loop is asyncio.get_running_loop():
            await channel.close(None)


class AgentLinks:
    """The links of one client process: one per agent target, all closed together."""

    def __init__(
        self,
        *,
        factory: ChannelFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._clock = clock
        self._links: dict[NodeTarget, AgentLink] = {}

    def link(self, target: NodeTarget) -> AgentLink:
        """The one link for `target`, made on first ask."""
        found = self._links.get(target)
        if found is None:
            found = self._links[target] = AgentLink(
                target, factory=self._factory, clock=self._clock
            )
        return found

    async def close(self) -> None:
        """Closes every channel (a link used again opens a new one, closed by the next
        `close`)."""
        for link in list(self._links.values()):
            await link.close()

    async def __aenter__(self) -> AgentLinks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
