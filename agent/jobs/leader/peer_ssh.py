"""Agent-to-agent calls over SSH, for SSH mode (`gantry up`).

There every agent listens on its own node's loopback only, so a job's leader reaches a
peer's agent the way DeepSpeed's multi-node launcher reaches the nodes: over SSH, as
this agent's user, with that user's SSH config (or the files `--peer-ssh-config`
names), keys, ssh-agent and known_hosts, through a local port forward to the peer's
127.0.0.1:PORT. An unknown or changed host key is refused, never accepted: the
operator trusts the nodes' keys once, as for DeepSpeed's own pdsh/ssh launch.

asyncssh is imported on the first SSH peer only: most agents never need it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncssh

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 10.0
KEEPALIVE_COUNT_MAX = 3

# One agent per process, so one setting per process (`agent.main` sets it at start).
_config_files: tuple[Path, ...] = ()


def configure_peer_ssh(config_files: Sequence[Path]) -> None:
    """The SSH config files for calls to peers; empty: ~/.ssh/config."""
    global _config_files
    _config_files = tuple(config_files)


class PeerSshError(Exception):
    """Why a peer cannot be reached over SSH, in one line."""


def split_destination(destination: str) -> tuple[str | None, str, int | None]:
    """ "user@host:port" (user and port optional) -> (user, host, port)."""
    user, _, rest = destination.rpartition("@")
    host, sep, port = rest.rpartition(":")
    if sep and port.isdigit() and host and not host.endswith("]") and ":" not in host:
        return user or None, host, int(port)
    return user or None, rest, None


def _why(exc: BaseException, destination: str) -> str:
    import asyncssh

    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return (
            f"ssh {destination}: host key not trusted by this node's known_hosts "
            "(add it there, e.g. ssh to it once from this node)"
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"ssh {destination}: authentication failed (this node's keys are not accepted)"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return f"ssh {destination}: the forward to the agent was refused ({exc.reason})"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh {destination}: disconnected ({exc.reason})"
    if isinstance(exc, TimeoutError):
        return f"ssh {destination}: timed out after {CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, OSError):
        return f"ssh {destination}: {exc.strerror or exc}"
    return f"ssh {destination}: {exc}"


class SshForward:
    """A local port on this node forwarded over SSH to `remote_address` (HOST:PORT as seen
    on the peer's node). The connection is opened on first use and again after it
    drops; `local_address()` says where to connect now."""

    def __init__(self, destination: str, remote_address: str) -> None:
        self.destination = destination
        host, _, port = remote_address.rpartition(":")
        self._remote_host = host.strip("[]") or "127.0.0.1"
        self._remote_port = int(port)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._listener: asyncssh.SSHListener | None = None
        self._lock = asyncio.Lock()

    async def local_address(self) -> str:
        async with self._lock:
            if self._conn is None or self._listener is None or self._conn.is_closed():
                await self._open()
            assert self._listener is not None
            return f"127.0.0.1:{self._listener.get_port()}"

    async def local_ip(self) -> str:
        """This node's address on the network it reaches the peer over (the SSH
        connection's own end): where the peer's ranks can reach this node."""
        await self.local_address()
        assert self._conn is not None
        return str(self._conn.get_extra_info("sockname")[0])

    async def read_text(self, path: str, limit: int = 4096) -> str:
        """A small file on the peer's node (its token file), over SFTP: no remote shell."""
        import asyncssh

        await self.local_address()
        assert self._conn is not None
        # SFTP resolves a relative path from the home directory.
        where = path.removeprefix("~/")
        try:
            async with self._conn.start_sftp_client() as sftp, sftp.open(where, "rb") as f:
                data = await f.read(limit)
        except (asyncssh.Error, OSError) as exc:
            raise PeerSshError(f"ssh {self.destination}: cannot read {path}: {exc}") from None
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        return text.strip()

    async def _open(self) -> None:
        import asyncssh

        await self._close()
        user, host, port = split_destination(self.destination)
        options: dict[str, Any] = {
            "config": list(_config_files) or (),
            "connect_timeout": CONNECT_TIMEOUT_S,
            "keepalive_interval": KEEPALIVE_INTERVAL_S,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        }
        if user is not None:
            options["username"] = user
        if port is not None:
            options["port"] = port
        try:
            self._conn = await asyncssh.connect(host, **options)
            self._listener = await self._conn.forward_local_port(
                "127.0.0.1", 0, self._remote_host, self._remote_port
            )
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            await self._close()
            raise PeerSshError(_why(exc, self.destination)) from None

    async def _close(self) -> None:
        listener, conn = self._listener, self._conn
        self._listener = self._conn = None
        if listener is not None:
            listener.close()
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    async def close(self) -> None:
        async with self._lock:
            await self._close()
