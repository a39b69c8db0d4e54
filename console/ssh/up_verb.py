"""`gantry up HOSTFILE` and `gantry down [HOSTFILE]`: agents on every node's loopback,
reached through SSH (the console's side of it: console/ssh/mode.py).

    gantry up hosts.txt [--user U] [--accept-new] [--remote-python PATH]
    gantry down [hosts.txt] [--stop-ranks | --keep-ranks]

`up` works on every host at once: connect (host key checked), compare the node's Gantry
version with ours and install our wheel when it differs, start the agent detached on
127.0.0.1 with a fresh token, check it answers through an SSH port forward, and record
it in the SSH cluster file (.gantry/ssh/cluster.yaml). Exit status: 0 all up, 1 some
host failed (one line each, saying why), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import secrets
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from console.net.cluster_file import ClusterFileError, NodeTarget
from console.ssh.connect import SshError, SshOptions, connect
from console.ssh.down_jobs import maybe_stop_jobs
from console.ssh.hostfile import HostEntry, HostfileError, load_hostfile
from console.ssh.mode import TUNNEL_WAIT_S
from console.ssh.quiet_asyncssh import asyncssh
from console.ssh.remote_agent import (
    RemoteError,
    VersionMismatch,
    WheelSource,
    install_wheel,
    local_version,
    remote_version,
    start_agent,
    stop_agent,
)
from console.ssh.state import (
    SshCluster,
    SshNode,
    StateError,
    dump_state,
    load_state,
    select_nodes,
    token_path,
    write_token,
)
from console.ssh.tunnels import TunnelManager

VERIFY_TIMEOUT_S = 10.0


def options_from_args(args: argparse.Namespace) -> SshOptions:
    return SshOptions(
        user=args.user,
        config=tuple(args.ssh_config),
        known_hosts=args.known_hosts,
        identities=tuple(args.identity),
        accept_new=bool(getattr(args, "accept_new", False)),
        connect_timeout_s=args.connect_timeout,
    )


def run_ssh_verb(args: argparse.Namespace) -> int:
    try:
        if args.verb == "up":
            return cmd_up(args)
        return cmd_down(args)
    except (HostfileError, StateError, ClusterFileError) as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2


# -- up --------------------------------------------------------------------------------


@dataclass
class UpResult:
    entry: HostEntry
    node: SshNode | None = None
    error: str = ""
    installed: str = ""  # the version installed, when it was
    seconds: float = 0.0


async def up_host(
    entry: HostEntry,
    options: SshOptions,
    *,
    state: Path,
    remote_python: str,
    remote_dir: str,
    wheels: WheelSource,
    agent_args: tuple[str, ...] = (),
    port: int = 0,
) -> UpResult:
    started = time.monotonic()
    result = UpResult(entry)
    try:
        conn = await connect(entry, options)
    except SshError as exc:
        result.error = f"ssh: {exc}"
        return result
    try:
        async with conn:
            want = local_version()
            token = secrets.token_urlsafe(32)
            # Only an agent that answers replaces the recorded token (tokens/NODE).
            pending = write_token(state, entry.name, token, suffix=".new")
            start = partial(
                start_agent,
                conn,
                remote_python,
                entry.name,
                remote_dir,
                token=token,
                port=port,
                version=want,
                agent_args=agent_args,
            )
            try:
                agent = await start()
            except VersionMismatch:
                wheel = await wheels.get()
                await install_wheel(conn, remote_python, wheel, remote_dir, entry.name)
                have = await remote_version(conn, remote_python, entry.name)
                if have != want:
                    raise RemoteError(
                        f"{entry.name}: {remote_python} has gantry {have or 'missing'} after "
                        f"installing {wheel.name}; expected {want}"
                    ) from None
                result.installed = have
                agent = await start()
            node = SshNode(entry, agent.port, pending, remote_python, remote_dir, agent_args)
            await verify_through_forward(conn, node)
            final = token_path(state, entry.name)
            pending.replace(final)
            result.node = dataclasses.replace(node, token_file=final)
    except (RemoteError, SshError) as exc:
        result.error = str(exc).removeprefix(f"{entry.name}: ")
    except (asyncssh.Error, OSError) as exc:
        result.error = f"ssh: {exc}"
    if result.node is None:
        token_path(state, entry.name, ".new").unlink(missing_ok=True)
    result.seconds = time.monotonic() - started
    return result


async def verify_through_forward(conn: asyncssh.SSHClientConnection, node: SshNode) -> None:
    """The agent answers, with our token, through a port forward of this connection."""
    from console.net.agent_client import fetch_status

    listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", node.agent_port)
    try:
        target = NodeTarget(node.name, f"127.0.0.1:{listener.get_port()}", node.token_file)
        await fetch_status(target, VERIFY_TIMEOUT_S)
    except Exception as exc:
        raise RemoteError(
            f"{node.name}: the agent started but does not answer through SSH: {exc}"
        ) from None
    finally:
        listener.close()


async def bring_up(
    hosts: list[HostEntry],
    options: SshOptions,
    *,
    state: Path,
    remote_python: str,
    remote_dir: str,
    wheel: Path | None = None,
    agent_args: tuple[str, ...] = (),
    ports: dict[str, int] | None = None,
) -> list[UpResult]:
    """`ports`: the port each node's agent had (kept when free, so that a job's leader
    still reaches a restarted peer where it last did)."""
    wheels = WheelSource(wheel)
    try:
        return list(
            await asyncio.gather(
                *(
                    up_host(
                        entry,
                        options,
                        state=state,
                        remote_python=remote_python,
                        remote_dir=remote_dir,
                        wheels=wheels,
                        agent_args=agent_args,
                        port=(ports or {}).get(entry.name, 0),
                    )
                    for entry in hosts
                )
            )
        )
    finally:
        wheels.close()


def record_up(state: Path, hostfile: Path, options: SshOptions, results: list[UpResult]) -> None:
    """The nodes that came up replace their entries; others keep theirs."""
    previous: list[SshNode] = []
    ports: dict[str, int] = {}
    if state.exists():
        with contextlib.suppress(StateError):
            cluster = load_state(state)
            previous, ports = cluster.nodes, cluster.ports()
    fresh = {r.entry.name: r.node for r in results if r.node is not None}
    nodes = [fresh.pop(n.name, n) or n for n in previous]
    nodes += [n for n in fresh.values() if n is not None]
    dump_state(SshCluster(state, hostfile, options, nodes, ports))


def recorded_ports(state: Path) -> dict[str, int]:
    """The agent port of every node of the SSH cluster file (none when there is none)."""
    with contextlib.suppress(StateError):
        return load_state(state).ports()
    return {}


def agent_args_from(args: argparse.Namespace) -> tuple[str, ...]:
    """`gantry up`'s options for the agents' own command lines."""
    found = [a for path in args.peer_ssh_config for a in ("--peer-ssh-config", path)]
    if getattr(args, "no_warm_ops", False):
        found.append("--no-warm-ops")
    return tuple(found)


def cmd_up(args: argparse.Namespace) -> int:
    hosts = load_hostfile(args.hostfile)
    options = options_from_args(args)
    remote_python = args.remote_python or sys.executable
    if args.wheel is not None and not args.wheel.is_file():
        raise HostfileError(f"--wheel {args.wheel}: no such file")
    results = asyncio.run(
        bring_up(
            hosts,
            options,
            state=args.state,
            remote_python=remote_python,
            remote_dir=args.remote_dir,
            wheel=args.wheel,
            agent_args=agent_args_from(args),
            ports=recorded_ports(args.state),
        )
    )
    record_up(args.state, args.hostfile, options, results)
    width = max(len(r.entry.name) for r in results)
    for r in results:
        if r.node is not None:
            extra = f", installed gantry {r.installed}" if r.installed else ""
            print(
                f"{r.entry.name:<{width}}  up      agent on {r.entry.where} "
                f"127.0.0.1:{r.node.agent_port} ({r.seconds:.1f}s{extra})"
            )
        else:
            print(f"{r.entry.name:<{width}}  FAILED  {r.error}")
    failed = [r for r in results if r.node is None]
    if not failed:
        print(f"wrote {args.state}; open the console: gantry --ssh {args.hostfile}")
    return 1 if failed else 0


# -- down --------------------------------------------------------------------------------


def cmd_down(args: argparse.Namespace) -> int:
    cluster = load_state(args.state)
    nodes = cluster.nodes
    if args.hostfile is not None:
        nodes = select_nodes(cluster, load_hostfile(args.hostfile))
    if not nodes:
        print(f"no agents in {args.state}")
        return 0
    manager = TunnelManager(nodes, _down_options(cluster.options, args))
    failures = manager.start(TUNNEL_WAIT_S)
    try:
        for name, why in failures.items():
            print(f"{name}: {why}", file=sys.stderr)
        reachable = [t for t in manager.targets() if t.name not in failures]
        if reachable and not args.keep_ranks:
            maybe_stop_jobs(reachable, args.stop_ranks)
        stopped: list[str] = []
        for node in nodes:
            if node.name in failures:
                continue
            try:
                was = manager.call(_stop(manager, node), timeout_s=60)
            except (RemoteError, SshError) as exc:
                print(f"{node.name}: {exc}", file=sys.stderr)
                failures[node.name] = str(exc)
                continue
            stopped.append(node.name)
            print(f"{node.name}: agent {'stopped' if was else 'was not running'}")
    finally:
        manager.close()
    gone = set(stopped)
    left = [n for n in cluster.nodes if n.name not in gone]
    for node in cluster.nodes:
        if node.name in gone:
            node.token_file.unlink(missing_ok=True)
    dump_state(SshCluster(cluster.path, cluster.hostfile, cluster.options, left, cluster.ports()))
    return 1 if failures else 0


def _down_options(saved: SshOptions, args: argparse.Namespace) -> SshOptions:
    given = options_from_args(args)
    return SshOptions(
        user=given.user or saved.user,
        config=given.config or saved.config,
        known_hosts=given.known_hosts or saved.known_hosts,
        identities=given.identities or saved.identities,
        connect_timeout_s=given.connect_timeout_s,
    )


async def _stop(manager: TunnelManager, node: SshNode) -> bool:
    conn = await manager.connection(node.name)
    return await stop_agent(conn, node.remote_python, node.name, node.remote_dir)
