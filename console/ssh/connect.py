"""Opening SSH connections to nodes, as OpenSSH would, with one-line reasons on failure.

- `~/.ssh/config` (or the files given) supplies HostName, Port, User, IdentityFile...;
  keys come from the ssh-agent and the usual key files, or only from `-i` files.
- Host keys are checked against known_hosts. An unknown key stops the host with its
  fingerprint and how to accept it; with `accept_new` it is accepted and recorded
  (OpenSSH's `StrictHostKeyChecking=accept-new`); a changed key is never accepted.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from console.ssh.defaults import CONNECT_TIMEOUT_S
from console.ssh.hostfile import HostEntry
from console.ssh.quiet_asyncssh import asyncssh

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")
KEEPALIVE_INTERVAL_S = 10.0
KEEPALIVE_COUNT_MAX = 3


class SshError(Exception):
    """Why a node cannot be reached over SSH, in one line (`kind`: auth, host-key,
    resolve, timeout, refused, network, ssh)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SshOptions:
    user: str | None = None  # None: ~/.ssh/config's User, else the local user
    config: tuple[Path, ...] = ()  # empty: ~/.ssh/config
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts (or the config's)
    identities: tuple[Path, ...] = ()  # given: only these keys (like IdentitiesOnly)
    accept_new: bool = False
    connect_timeout_s: float = CONNECT_TIMEOUT_S

    def to_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {}
        if self.user:
            doc["user"] = self.user
        if self.config:
            doc["config"] = [str(p) for p in self.config]
        if self.known_hosts is not None:
            doc["known_hosts"] = str(self.known_hosts)
        if self.identities:
            doc["identities"] = [str(p) for p in self.identities]
        doc["connect_timeout_s"] = self.connect_timeout_s
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, object]) -> SshOptions:
        def paths(key: str) -> tuple[Path, ...]:
            value = doc.get(key) or []
            return tuple(Path(str(p)) for p in value) if isinstance(value, list) else ()

        user = doc.get("user")
        known = doc.get("known_hosts")
        timeout = doc.get("connect_timeout_s", CONNECT_TIMEOUT_S)
        return cls(
            user=str(user) if user else None,
            config=paths("config"),
            known_hosts=Path(str(known)) if known else None,
            identities=paths("identities"),
            connect_timeout_s=float(timeout) if isinstance(timeout, int | float) else 10.0,
        )


@dataclass
class _HostKeyVerdict:
    """What the host-key check saw, for the error message (or the file to update)."""

    offered: asyncssh.SSHKey | None = None
    known: bool = False  # known_hosts held other keys for this host: the key changed
    host: str = ""
    port: int = 22
    accepted: bool = False


class _Client(asyncssh.SSHClient):
    """Decides on host keys that known_hosts does not already trust."""

    def __init__(self, known: asyncssh.SSHKnownHosts, accept_new: bool) -> None:
        self.known = known
        self.accept_new = accept_new
        self.verdict = _HostKeyVerdict()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        trusted = self.known.match(host, addr, port if port != 22 else None)[0]
        self.verdict = _HostKeyVerdict(key, bool(trusted), host, port)
        if trusted or not self.accept_new:
            return False
        self.verdict.accepted = True
        return True


def known_hosts_entry(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint()}"


def _known_hosts_file(options: SshOptions, config_known: object) -> Path:
    if options.known_hosts is not None:
        return options.known_hosts.expanduser()
    if isinstance(config_known, list | tuple) and config_known:
        return Path(str(config_known[0])).expanduser()
    return DEFAULT_KNOWN_HOSTS.expanduser()


async def connect(entry: HostEntry, options: SshOptions) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the node, or SshError saying why not."""
    kwargs: dict[str, object] = {
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "connect_timeout": options.connect_timeout_s,
    }
    if options.config:
        kwargs["config"] = [str(p.expanduser()) for p in options.config]
    if entry.port is not None:
        kwargs["port"] = entry.port
    if options.user:
        kwargs["username"] = options.user
    if options.identities:
        kwargs["client_keys"] = [str(p.expanduser()) for p in options.identities]
        kwargs["agent_path"] = None
    try:
        resolved = asyncssh.SSHClientConnectionOptions(host=entry.host, **kwargs)
    except (OSError, ValueError, asyncssh.Error) as exc:
        raise SshError("ssh", f"ssh options for {entry.host}: {exc}") from None
    known_path = _known_hosts_file(options, getattr(resolved, "known_hosts", None))
    try:
        known_text = known_path.read_text() if known_path.exists() else ""
        known = asyncssh.import_known_hosts(known_text)
    except (OSError, ValueError) as exc:
        raise SshError("host-key", f"cannot read known_hosts {known_path}: {exc}") from None
    client = _Client(known, options.accept_new)
    host = str(getattr(resolved, "host", entry.host) or entry.host)
    port = int(getattr(resolved, "port", 22) or 22)
    where = f"{entry.host}" + (f" ({host}:{port})" if (host, port) != (entry.host, 22) else "")
    try:
        conn = await asyncssh.connect(
            entry.host,
            known_hosts=known,
            client_factory=lambda: client,
            **kwargs,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise _host_key_error(client.verdict, known_path, host, port) from None
    except asyncssh.PermissionDenied:
        user = options.user or getattr(resolved, "username", None) or "?"
        how = (
            "the -i key files"
            if options.identities
            else "your ssh-agent and key files (-i KEY, IdentityFile)"
        )
        raise SshError(
            "auth", f"authentication failed for {user}@{where}: the node refused {how}"
        ) from None
    except socket.gaierror:
        raise SshError(
            "resolve",
            f"cannot resolve host name {host} (check the hostfile or ~/.ssh/config's HostName)",
        ) from None
    except TimeoutError:
        raise SshError(
            "timeout", f"timed out after {options.connect_timeout_s:.0f}s connecting to {where}"
        ) from None
    except ConnectionRefusedError:
        raise SshError("refused", f"connection refused by {where} (is sshd running?)") from None
    except OSError as exc:
        raise SshError("network", f"cannot connect to {where}: {exc.strerror or exc}") from None
    except asyncssh.Error as exc:
        raise SshError("ssh", f"ssh to {where} failed: {exc.reason}") from None
    verdict = client.verdict
    if verdict.accepted and verdict.offered is not None:
        _record_host_key(known_path, verdict)
    return conn


def _host_key_error(verdict: _HostKeyVerdict, known_path: Path, host: str, port: int) -> SshError:
    entry = known_hosts_entry(verdict.host or host, verdict.port or port)
    if verdict.offered is None:
        return SshError("host-key", f"host key of {entry} could not be verified")
    offered = fingerprint(verdict.offered)
    if verdict.known:
        return SshError(
            "host-key",
            f"HOST KEY OF {entry} HAS CHANGED (now {offered}), maybe an attack; never "
            f"accepted automatically: if the node was reinstalled, run: "
            f"ssh-keygen -R '{entry}' -f {known_path}",
        )
    return SshError(
        "host-key",
        f"host key of {entry} is unknown ({offered}); if that is the node's key, "
        f"accept it with --accept-new (or ssh to it once)",
    )


def _record_host_key(path: Path, verdict: _HostKeyVerdict) -> None:
    assert verdict.offered is not None
    key = verdict.offered.export_public_key().decode().split()
    line = f"{known_hosts_entry(verdict.host, verdict.port)} {key[0]} {key[1]}\n"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(line)
