"""The console's SSH mode (`gantry --ssh HOSTFILE`): a tunnel per node to the agent
`gantry up` started there, one-line SSH reasons in the cluster view, and the restart of
a node's agent over SSH."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from console.model.cluster import ClusterStore, ConnState
from console.net.cluster_file import NodeTarget
from console.ssh.connect import SshError  # first: it imports asyncssh without warnings
from console.ssh.defaults import DEFAULT_STATE
from console.ssh.hostfile import load_hostfile
from console.ssh.remote_agent import RemoteError, start_agent
from console.ssh.state import StateError, dump_state, load_state, select_nodes
from console.ssh.tunnels import TunnelManager

TUNNEL_WAIT_S = 15.0


def ssh_targets(
    hostfile: Path, state: Path = DEFAULT_STATE, wait_s: float = TUNNEL_WAIT_S
) -> tuple[list[NodeTarget], TunnelManager, dict[str, str]]:
    """`gantry --ssh HOSTFILE`: a tunnel per node of HOSTFILE to the agent `gantry up`
    started there, kept up with backoff. Returns the targets (local tunnel addresses,
    stable while the manager runs), the manager (close it at exit) and {node: reason}
    for the nodes not connected after `wait_s`. Raises HostfileError or StateError."""
    hosts = load_hostfile(hostfile)
    cluster = load_state(state)
    nodes = select_nodes(cluster, hosts)
    manager = TunnelManager(nodes, cluster.options)
    failures = manager.start(wait_s)
    return manager.targets(), manager, failures


@dataclass
class SshMode:
    """What the console (and the verbs) need in SSH mode; `close()` at exit."""

    targets: list[NodeTarget]
    manager: TunnelManager
    agents: SshAgents
    background: Callable[[HasStore], Coroutine[Any, Any, None]]

    def close(self) -> None:
        self.manager.close()


def open_ssh(hostfile: Path, state: Path = DEFAULT_STATE, wait_s: float = TUNNEL_WAIT_S) -> SshMode:
    """`gantry --ssh HOSTFILE`: tunnels up (one line on stderr per node that is not,
    saying why); raises HostfileError or StateError (ValueErrors) on bad input."""
    targets, manager, failures = ssh_targets(hostfile, state, wait_s)
    for node, why in failures.items():
        print(f"gantry: {node}: {why}", file=sys.stderr)
    return SshMode(targets, manager, SshAgents(manager, state), ssh_reasons(manager))


class HasStore(Protocol):
    store: ClusterStore


def ssh_reasons(
    manager: TunnelManager, interval_s: float = 1.0
) -> Callable[[HasStore], Coroutine[Any, Any, None]]:
    """For `GantryApp(background=...)`: a node whose SSH connection is down shows why
    (authentication, host key, name resolution, timeout...) instead of the gRPC
    client's "agent unreachable"."""

    async def show(app: HasStore) -> None:
        while True:
            now = time.time()
            for node, why in manager.failures().items():
                if not why.startswith("ssh:") or node not in app.store:
                    continue
                if app.store.node(node).state is not ConnState.LIVE:
                    app.store.set_lost(node, now, why)
            await asyncio.sleep(interval_s)

    return show


class SshAgents:
    """The console's "restart the node's agent" over SSH, through the tunnels' own
    connections; the token and, when free, the port stay the same (a new port is
    written to the SSH cluster file `state`)."""

    def __init__(self, manager: TunnelManager, state: Path | None = None) -> None:
        self.manager = manager
        self.state = state

    def can_restart(self, node: str) -> str:
        """ "" when offered, else why not."""
        if not self.manager.has(node):
            return f"{node} was not started by `gantry up`"
        return ""

    async def restart(self, node: str) -> str:
        return await self.manager.call_async(self._restart(node))

    async def _restart(self, node: str) -> str:
        ssh_node = self.manager.node(node)
        port = self.manager.remote_port(node)
        try:
            conn = await self.manager.connection(node)
            agent = await start_agent(
                conn,
                ssh_node.remote_python,
                node,
                ssh_node.remote_dir,
                port=port,
                agent_args=ssh_node.agent_args,
            )
        except (SshError, RemoteError) as exc:
            raise RemoteError(f"restarting the agent of {node} failed: {exc}") from None
        self.manager.set_remote_port(node, agent.port)
        moved = ""
        if agent.port != port:
            moved = f", now on port {agent.port}"
            if self.state is not None:
                _record_port(self.state, node, agent.port)
        return f"{node}: agent restarted over SSH (pid {agent.pid}{moved})"


def _record_port(state: Path, node: str, port: int) -> None:
    with contextlib.suppress(StateError, OSError):
        cluster = load_state(state)
        nodes = [
            dataclasses.replace(n, agent_port=port) if n.name == node else n for n in cluster.nodes
        ]
        dump_state(dataclasses.replace(cluster, nodes=nodes))
