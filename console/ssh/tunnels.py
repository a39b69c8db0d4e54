"""Tunnels from the console to agents on the nodes' loopback, kept up with backoff.

Each node gets a local listener on 127.0.0.1 whose port never changes while the
console runs, so its `NodeTarget` stays valid; every connection accepted there is
carried to the agent's port on the node through a direct-tcpip channel of that node's
SSH connection. A dropped SSH connection is re-established with backoff; meanwhile
accepted connections are closed at once (the gRPC client sees the agent unreachable
and retries) and `reason(node)` says why, in one line.

The manager runs its own event loop in a thread, so the Textual app and the CLI verbs
(which run `asyncio.run` themselves) use it alike. `call(coro)` runs a coroutine on
that loop (a node's agent restart over its live connection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from console.net.backoff import Backoff
from console.net.cluster_file import NodeTarget
from console.ssh.connect import SshError, SshOptions, connect
from console.ssh.quiet_asyncssh import asyncssh
from console.ssh.remote_agent import node_token_path
from console.ssh.state import SshNode

T = TypeVar("T")
Connector = Callable[[SshNode], Awaitable[asyncssh.SSHClientConnection]]
PUMP_CHUNK = 65536


class _Tunnel:
    def __init__(self, node: SshNode, backoff: Backoff) -> None:
        self.node = node
        self.remote_port = node.agent_port
        self.backoff = backoff
        self.conn: asyncssh.SSHClientConnection | None = None
        self.server: asyncio.Server | None = None
        self.local_port = 0
        self.reason = "connecting"
        self.connected = asyncio.Event()
        self.attempted = asyncio.Event()
        self.connects = 0
        self.pumps: set[asyncio.Task[None]] = set()


class TunnelManager:
    def __init__(
        self,
        nodes: list[SshNode],
        options: SshOptions,
        *,
        connector: Connector | None = None,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.options = options
        self._connector = connector or (lambda node: connect(node.entry, options))
        self._tunnels = {n.name: _Tunnel(n, backoff()) for n in nodes}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ssh-tunnels")
        self._thread.daemon = True
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # -- from any thread -------------------------------------------------------------

    def start(self, wait_s: float = 0.0) -> dict[str, str]:
        """Binds the local ports and starts connecting; waits up to `wait_s` for every
        node's first attempt. Returns {node: reason} for the nodes not connected."""
        self._thread.start()
        self._started = True
        self.call(self._start(), timeout_s=30)
        if wait_s > 0:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                self.call(self._wait_attempted(), timeout_s=wait_s)
        return self.failures()

    def targets(self) -> list[NodeTarget]:
        return [
            NodeTarget(
                t.node.name,
                f"127.0.0.1:{t.local_port}",
                t.node.token_file,
                ssh=t.node.entry.where,
                node_address=f"127.0.0.1:{t.remote_port}",
                node_token_file=node_token_path(t.node.remote_dir, t.node.name),
            )
            for t in self._tunnels.values()
        ]

    def reason(self, node: str) -> str:
        """Why the node's tunnel is down ("" when up)."""
        return self._tunnels[node].reason

    def failures(self) -> dict[str, str]:
        return {name: t.reason for name, t in self._tunnels.items() if t.reason}

    def connects(self, node: str) -> int:
        """How many times the node's SSH connection was (re-)established."""
        return self._tunnels[node].connects

    def has(self, node: str) -> bool:
        return node in self._tunnels

    def node(self, name: str) -> SshNode:
        return self._tunnels[name].node

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Runs `coro` on the tunnels' loop and waits (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the tunnels' loop, awaited from another running loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if not self._started:
            self._loop.close()
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.call(self._close(), timeout_s=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._started = False

    # -- on the tunnels' loop --------------------------------------------------------

    async def connection(self, node: str) -> asyncssh.SSHClientConnection:
        """The node's live SSH connection, or a fresh one (the caller must not close)."""
        tunnel = self._tunnels[node]
        if tunnel.conn is not None:
            return tunnel.conn
        try:
            await asyncio.wait_for(tunnel.connected.wait(), self.options.connect_timeout_s)
        except TimeoutError:
            raise SshError("timeout", tunnel.reason or "no SSH connection") from None
        assert tunnel.conn is not None
        return tunnel.conn

    def remote_port(self, node: str) -> int:
        return self._tunnels[node].remote_port

    def set_remote_port(self, node: str, port: int) -> None:
        """The node's agent now listens on `port` (after a restart)."""
        self._tunnels[node].remote_port = port

    async def _start(self) -> None:
        for tunnel in self._tunnels.values():
            tunnel.server = await asyncio.start_server(
                functools.partial(self._accept, tunnel), "127.0.0.1", 0
            )
            tunnel.local_port = tunnel.server.sockets[0].getsockname()[1]
        for tunnel in self._tunnels.values():
            self._tasks.append(
                asyncio.create_task(self._keep_up(tunnel), name=f"ssh:{tunnel.node.name}")
            )

    async def _wait_attempted(self) -> None:
        await asyncio.gather(*(t.attempted.wait() for t in self._tunnels.values()))

    async def _keep_up(self, tunnel: _Tunnel) -> None:
        while True:
            try:
                conn = await self._connector(tunnel.node)
            except SshError as exc:
                tunnel.reason = f"ssh: {exc}"
            except (OSError, asyncssh.Error) as exc:
                tunnel.reason = f"ssh: {exc}"
            else:
                tunnel.conn = conn
                tunnel.reason = ""
                tunnel.connects += 1
                tunnel.connected.set()
                tunnel.attempted.set()
                tunnel.backoff.reset()
                await conn.wait_closed()
                tunnel.conn = None
                tunnel.connected.clear()
                tunnel.reason = "ssh: connection lost; reconnecting"
                continue
            tunnel.attempted.set()
            await asyncio.sleep(tunnel.backoff.next())

    async def _accept(
        self, tunnel: _Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        tunnel.pumps.add(task)
        try:
            await self._carry(tunnel, reader, writer)
        except asyncio.CancelledError:
            pass  # the manager is closing; asyncio's stream callback must not see it
        finally:
            tunnel.pumps.discard(task)
            writer.close()

    async def _carry(
        self, tunnel: _Tunnel, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = tunnel.conn
        if conn is None:
            return  # closed at once: the client sees the agent unreachable and retries
        try:
            remote_reader, remote_writer = await conn.open_connection(
                "127.0.0.1", tunnel.remote_port
            )
        except (asyncssh.Error, OSError):
            return
        try:
            await asyncio.gather(
                _pump(reader, remote_writer), _pump(remote_reader, writer), return_exceptions=True
            )
        finally:
            remote_writer.close()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for tunnel in self._tunnels.values():
            if tunnel.server is not None:
                tunnel.server.close()
            for pump in list(tunnel.pumps):
                pump.cancel()
            if tunnel.conn is not None:
                tunnel.conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(tunnel.conn.wait_closed(), 2)
                tunnel.conn = None


async def _pump(reader: Any, writer: Any) -> None:
    try:
        while True:
            data = await reader.read(PUMP_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(Exception):
            writer.write_eof()
