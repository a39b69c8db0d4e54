"""DeepSpeed hostfiles: one node a line, `HOST slots=N`.

    # comments and blank lines are ignored
    gpu-01 slots=8
    gpu-02 slots=8
    127.0.0.1:2222 slots=1     # HOST:PORT: another sshd port (tests, containers)

HOST is what `ssh HOST` would take: a name, an address or a `Host` alias of
~/.ssh/config (which may set HostName, Port, User, IdentityFile). The node's name in
the cluster is HOST (lower-cased, other characters than letters, digits and '-'
turned into '-'), with `-PORT` appended when the line names a port. Errors are one
line naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gantry.v1.rules import MAX_NAME_CHARS

HOST_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
SLOTS_RE = re.compile(r"^slots=(\d+)$")


class HostfileError(ValueError):
    pass


@dataclass(frozen=True)
class HostEntry:
    name: str  # the node's name in the cluster
    host: str  # what SSH connects to (a name, an address or an ssh_config alias)
    port: int | None = None  # None: ~/.ssh/config's Port, else 22
    slots: int = 1

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host


def node_name(host: str, port: int | None) -> str:
    name = re.sub(r"[^a-z0-9-]", "-", host.lower()).strip("-") or "node"
    if port is not None:
        name = f"{name}-{port}"
    return name[:MAX_NAME_CHARS]


def parse_hostfile(text: str, source: str = "hostfile") -> list[HostEntry]:
    entries: list[HostEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        words = line.split()
        host, port = _host_port(words[0], where)
        slots = 1
        for word in words[1:]:
            match = SLOTS_RE.match(word)
            if match is None:
                raise HostfileError(f"{where}: expected 'HOST slots=N', got {word!r}")
            slots = int(match.group(1))
            if slots < 1:
                raise HostfileError(f"{where}: slots must be at least 1")
        name = node_name(host, port)
        if name in seen:
            raise HostfileError(
                f"{where}: {words[0]} is node {name} again (first on line {seen[name]})"
            )
        seen[name] = number
        entries.append(HostEntry(name, host, port, slots))
    if not entries:
        raise HostfileError(f"{source}: no hosts (expected lines like 'gpu-01 slots=8')")
    return entries


def _host_port(word: str, where: str) -> tuple[str, int | None]:
    host, sep, port_text = word.rpartition(":")
    if not sep:
        host, port_text = word, ""
    if not host or not HOST_RE.match(host):
        raise HostfileError(f"{where}: {word!r} is not a host name, address or HOST:PORT")
    if not sep:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HostfileError(f"{where}: port in {word!r} must be 1-65535")
    return host, int(port_text)


def load_hostfile(path: Path) -> list[HostEntry]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise HostfileError(f"cannot read hostfile {path}: {exc.strerror}") from None
    return parse_hostfile(text, str(path))
