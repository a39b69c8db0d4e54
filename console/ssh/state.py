"""The SSH cluster file `gantry up` writes and `gantry --ssh` / `gantry down` read
(default `.gantry/ssh/cluster.yaml`): where each node's agent listens on the node's
loopback, the token to use (a local copy, mode 600), and the SSH options used.

    hostfile: /home/alice/hosts.txt
    ssh: {user: alice, known_hosts: ~/.ssh/known_hosts, connect_timeout_s: 10.0}
    nodes:
      - {name: gpu-01, host: gpu-01, agent_port: 41234, token_file: tokens/gpu-01,
         remote_python: /shared/venv/bin/python, remote_dir: ~/.gantry/agents}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from console.ssh.connect import SshOptions
from console.ssh.hostfile import HostEntry


class StateError(ValueError):
    pass


@dataclass(frozen=True)
class SshNode:
    entry: HostEntry
    agent_port: int
    token_file: Path
    remote_python: str
    remote_dir: str
    agent_args: tuple[str, ...] = ()  # added to the agent's command line (restarts too)

    @property
    def name(self) -> str:
        return self.entry.name


@dataclass(frozen=True)
class SshCluster:
    path: Path
    hostfile: Path
    options: SshOptions
    nodes: list[SshNode]
    # The port each node's agent last had, stopped ones too: `gantry up` starts a node's
    # agent there again when free, so a job's leader reaches it where it last did.
    last_ports: dict[str, int] = field(default_factory=dict)

    def ports(self) -> dict[str, int]:
        return {**self.last_ports, **{n.name: n.agent_port for n in self.nodes}}

    def node(self, name: str) -> SshNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise StateError(f"{self.path}: no node {name}; run: gantry up {self.hostfile}")


def token_path(state: Path, node: str, suffix: str = "") -> Path:
    return state.parent / "tokens" / f"{node}{suffix}"


def write_token(state: Path, node: str, token: str, suffix: str = "") -> Path:
    path = token_path(state, node, suffix)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return path


def dump_state(cluster: SshCluster) -> None:
    nodes = []
    for node in cluster.nodes:
        doc: dict[str, object] = {"name": node.name, "host": node.entry.host}
        if node.entry.port is not None:
            doc["port"] = node.entry.port
        doc["slots"] = node.entry.slots
        doc["agent_port"] = node.agent_port
        token = node.token_file
        if token.is_relative_to(cluster.path.parent):
            token = token.relative_to(cluster.path.parent)
        doc.update(
            token_file=str(token),
            remote_python=node.remote_python,
            remote_dir=node.remote_dir,
        )
        if node.agent_args:
            doc["agent_args"] = list(node.agent_args)
        nodes.append(doc)
    body = {
        "hostfile": str(cluster.hostfile.resolve()),
        "ssh": cluster.options.to_doc(),
        "nodes": nodes,
        "last_ports": cluster.ports(),
    }
    cluster.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cluster.path.with_suffix(".tmp")
    tmp.write_text(
        "# written by `gantry up`; read by `gantry --ssh` and `gantry down`\n"
        + yaml.safe_dump(body, sort_keys=False)
    )
    tmp.replace(cluster.path)


def load_state(path: Path) -> SshCluster:
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise StateError(f"no {path}: run `gantry up HOSTFILE` first") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError:
        raise StateError(f"{path}: not valid YAML; run `gantry up HOSTFILE` again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise StateError(f"{path}: expected a mapping with a 'nodes' list")
    ssh = doc.get("ssh") or {}
    if not isinstance(ssh, dict):
        raise StateError(f"{path}: 'ssh' must be a mapping")
    nodes = []
    for i, item in enumerate(doc["nodes"]):
        try:
            port = item.get("port")
            entry = HostEntry(
                str(item["name"]),
                str(item["host"]),
                int(port) if port is not None else None,
                int(item.get("slots", 1)),
            )
            token = Path(str(item["token_file"]))
            nodes.append(
                SshNode(
                    entry,
                    int(item["agent_port"]),
                    token if token.is_absolute() else path.parent / token,
                    str(item["remote_python"]),
                    str(item["remote_dir"]),
                    tuple(str(a) for a in item.get("agent_args") or []),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise StateError(
                f"{path}: nodes[{i}] is incomplete; run `gantry up HOSTFILE` again"
            ) from None
    ports = doc.get("last_ports") or {}
    last_ports = (
        {str(k): int(v) for k, v in ports.items() if isinstance(v, int)}
        if isinstance(ports, dict)
        else {}
    )
    hostfile = Path(str(doc.get("hostfile", "")))
    return SshCluster(path, hostfile, SshOptions.from_doc(ssh), nodes, last_ports)


def select_nodes(cluster: SshCluster, hosts: list[HostEntry]) -> list[SshNode]:
    """The nodes of `hosts` (a hostfile), each of which `gantry up` must have started."""
    chosen = []
    for entry in hosts:
        node = next((n for n in cluster.nodes if n.name == entry.name), None)
        if node is None:
            raise StateError(
                f"node {entry.name} has no agent in {cluster.path}; run: gantry up HOSTFILE"
            )
        chosen.append(node)
    return chosen
