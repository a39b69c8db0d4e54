"""The cluster file: which agents make up the cluster and how to reach them.

    nodes:
      - name: node-a
        address: 127.0.0.1:50051
        token_file: node-a/token     # relative to this file's folder

Errors are one line naming what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ClusterFileError(ValueError):
    pass


@dataclass(frozen=True)
class NodeTarget:
    name: str
    address: str
    token_file: Path | None = None

    def read_token(self) -> str:
        if self.token_file is None:
            raise ClusterFileError(f"node {self.name}: no token file given (--token-file)")
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ClusterFileError(
                f"node {self.name}: cannot read token file {self.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise ClusterFileError(f"node {self.name}: token file {self.token_file} is empty")
        return token


def parse_address(text: str, where: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterFileError(f"{where}: address {text!r} is not HOST:PORT")
    return text


def check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ClusterFileError(
            f"{where}: node name {name!r} must be lower-case letters, digits and '-'"
        )
    return name


def load_cluster_file(path: Path) -> list[NodeTarget]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ClusterFileError(f"cannot read cluster file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ClusterFileError(f"{path}{line}: not valid YAML") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ClusterFileError(f"{path}: expected a mapping with a 'nodes' list")
    targets: list[NodeTarget] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["nodes"]):
        where = f"{path}: nodes[{i}]"
        if not isinstance(entry, dict):
            raise ClusterFileError(f"{where}: expected a mapping with name and address")
        name = check_name(entry.get("name"), where)
        if name in seen:
            raise ClusterFileError(f"{where}: node {name} is listed twice")
        seen.add(name)
        address = entry.get("address")
        if not isinstance(address, str):
            raise ClusterFileError(f"{where}: node {name} needs an address HOST:PORT")
        token_file = entry.get("token_file")
        token_path = None
        if token_file is not None:
            token_path = Path(str(token_file))
            if not token_path.is_absolute():
                token_path = path.parent / token_path
        targets.append(NodeTarget(name, parse_address(address, where), token_path))
    return targets


def dump_cluster_file(path: Path, targets: list[NodeTarget]) -> None:
    nodes = []
    for t in targets:
        entry: dict[str, str] = {"name": t.name, "address": t.address}
        if t.token_file is not None:
            entry["token_file"] = str(t.token_file)
        nodes.append(entry)
    path.write_text(yaml.safe_dump({"nodes": nodes}, sort_keys=False))


def parse_agent_flags(flags: list[str], token_file: Path | None) -> list[NodeTarget]:
    """`--agent NAME=HOST:PORT`, all sharing one `--token-file`."""
    targets = []
    for flag in flags:
        name, sep, address = flag.partition("=")
        if not sep:
            raise ClusterFileError(f"--agent {flag!r}: expected NAME=HOST:PORT")
        where = f"--agent {flag}"
        targets.append(
            NodeTarget(check_name(name, where), parse_address(address, where), token_file)
        )
    return targets
