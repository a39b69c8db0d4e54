"""The cluster file: which agents make up the cluster and how to reach them.

    nodes:
      - name: node-a
        address: 127.0.0.1:50051
        token_file: node-a/token     # relative to this file's folder

Direct mode (agents listening on the network, `gantry init --ca DIR`) adds mutual TLS,
for every node or per node (a node's own keys override the top-level ones):

    tls: {ca: ca.pem, cert: consoles/alice.pem, key: consoles/alice.key}
    nodes:
      - {name: node-a, address: "gpu-01.lan:50051"}          # no token needed with TLS

Errors are one line naming what to fix.
"""

from __future__ import annotations

import datetime
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml
from gantry.v1.rules import NAME_RE  # a node's name, as the agents require
from gantry.v1.tls_files import PemFile, TlsFileError, check_tls_pems


class ClusterFileError(ValueError):
    pass


TLS_KEYS = ("ca", "cert", "key")


@dataclass(frozen=True)
class TlsPaths:
    """The console's certificate and key, and the CA that signed the agents' certificates."""

    ca: Path
    cert: Path
    key: Path

    def read(self, node: str) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) as PEM bytes, checked as an agent checks its own
        (`gantry.v1.tls_files`): a key readable by others, a file that is not PEM, an
        expired certificate, one from another CA or a key of another certificate is
        refused with one line naming the file."""
        try:
            mode = self.key.stat().st_mode
        except OSError as exc:
            raise ClusterFileError(
                f"node {node}: cannot read TLS key {self.key}: {exc.strerror}"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ClusterFileError(
                f"node {node}: TLS key {self.key} is readable by others; run: chmod 600 {self.key}"
            )
        pems = []
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ClusterFileError(
                    f"node {node}: cannot read TLS {what} {path}: {exc.strerror}"
                ) from None
            if b"-----BEGIN " not in data:
                raise ClusterFileError(f"node {node}: TLS {what} {path} is not PEM")
            pems.append(data)
        ca, cert, key = pems
        try:
            check_tls_pems(
                PemFile(str(self.ca), ca),
                PemFile(str(self.cert), cert),
                PemFile(str(self.key), key),
                datetime.datetime.now(datetime.UTC),
            )
        except TlsFileError as exc:
            raise ClusterFileError(f"node {node}: TLS {exc}") from None
        return ca, cert, key


@dataclass(frozen=True)
class NodeTarget:
    name: str
    address: str
    token_file: Path | None = None
    tls: TlsPaths | None = None
    # SSH mode (`gantry --ssh`): `address` is the console's tunnel; the agent listens on
    # `node_address` on its own node, where a job's leader reaches it over SSH to `ssh`.
    ssh: str = ""
    node_address: str = ""
    node_token_file: str = ""  # the agent's token file on its node (SSH mode)

    @property
    def peer_address(self) -> str:
        """Where a job's leader connects to this agent (after SSH to `ssh`, if set)."""
        return self.node_address or self.address

    def read_token(self) -> str:
        """The bearer token ("" for a TLS node without one). A TLS node's files are checked
        here too, so every caller reports a missing certificate as it does a bad token."""
        if self.tls is not None:
            self.tls.read(self.name)
            if self.token_file is None:
                return ""
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
    shared = _tls_fields(doc.get("tls"), path, f"{path}: tls", only_tls=True)
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
        tls = _tls_paths({**shared, **_tls_fields(entry, path, where, only_tls=False)}, where)
        targets.append(NodeTarget(name, parse_address(address, where), token_path, tls))
    return targets


def _tls_fields(doc: object, path: Path, where: str, *, only_tls: bool) -> dict[str, Path]:
    """ca/cert/key of a mapping (the top-level `tls:` or a node), relative to the file."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ClusterFileError(f"{where}: expected a mapping with ca, cert and key")
    if only_tls:
        unknown = sorted(str(k) for k in doc if k not in TLS_KEYS)
        if unknown:
            raise ClusterFileError(f"{where}: unknown key {unknown[0]!r}; expected ca, cert, key")
    found: dict[str, Path] = {}
    for key in TLS_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ClusterFileError(f"{where}: {key} must be a file path")
        file = Path(value).expanduser()
        found[key] = file if file.is_absolute() else path.parent / file
    return found


def _tls_paths(fields: dict[str, Path], where: str) -> TlsPaths | None:
    if not fields:
        return None
    missing = [k for k in TLS_KEYS if k not in fields]
    if missing:
        raise ClusterFileError(f"{where}: TLS needs ca, cert and key; add {missing[0]}")
    return TlsPaths(fields["ca"], fields["cert"], fields["key"])


def dump_cluster_file(path: Path, targets: list[NodeTarget]) -> None:
    nodes = []
    for t in targets:
        entry: dict[str, str] = {"name": t.name, "address": t.address}
        if t.token_file is not None:
            entry["token_file"] = str(t.token_file)
        if t.tls is not None:
            entry.update(ca=str(t.tls.ca), cert=str(t.tls.cert), key=str(t.tls.key))
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
