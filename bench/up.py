"""`gantry up` over SSH on loopback: 8 agents at once against one.

A real OpenSSH sshd on 127.0.0.1 (tests/sshd.py: its own host and user keys, aliases
node-1..node-8 in an ssh_config), and the same code path as `gantry up HOSTFILE`
(`bring_up`: connect with host-key check, version check, start the agent detached with a
fresh token, check it answers through a port forward). The nodes' Python is this one, so
nothing is installed (installing is a once-per-node cost). Agents are stopped between
runs, so each run starts them cold; every process the bench starts is stopped on exit.

    .venv/bin/python bench/up.py [--runs 3] [--hosts 8] [--sequential]

On a cluster every node starts its agent on its own CPUs; here all agents share this
machine's cores, so the ratio also measures how many agent start-ups the cores run at
once (see the cpu lines: the second one adds what sshd, the login shell and the node
script cost per host).

Last line: {"up_8_concurrent_s": ..., "up_1_s": ..., "up_concurrent_vs_single_ratio": ...}
(medians).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.ssh.connect import SshOptions  # noqa: E402
from console.ssh.hostfile import HostEntry  # noqa: E402
from console.ssh.remote_agent import stop_agent  # noqa: E402
from console.ssh.up_verb import bring_up  # noqa: E402
from tests.conftest import kill_processes_mentioning  # noqa: E402
from tests.sshd import Sshd, running_sshd  # noqa: E402


async def up(hosts: list[HostEntry], options: SshOptions, work: Path) -> float:
    started = time.monotonic()
    results = await bring_up(
        hosts,
        options,
        state=work / "state" / "cluster.yaml",
        remote_python=sys.executable,
        remote_dir=str(work / "remote"),
    )
    elapsed = time.monotonic() - started
    failed = [r for r in results if r.node is None]
    if failed:
        raise SystemExit(f"up failed: {failed[0].entry.name}: {failed[0].error}")
    return elapsed


def agents_cpu_s(hosts: list[HostEntry], work: Path) -> list[float]:
    """CPU seconds each running agent has used so far (its start-up, right after up)."""
    used = []
    for entry in hosts:
        info = json.loads((work / "remote" / entry.name / "agent.json").read_text())
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(info["pid"]).cpu_times()
            used.append(times.user + times.system)
    return used


def sshd_cpu_s(sshd: Sshd) -> float:
    """CPU seconds of the sshd daemon and everything it has reaped: the per-connection
    sshd processes, the user's shell (and its rc files) and the node scripts."""
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(sshd.process.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return 0.0


async def down(hosts: list[HostEntry], options: SshOptions, work: Path) -> None:
    from console.ssh.connect import connect

    async def one(entry: HostEntry) -> None:
        async with await connect(entry, options) as conn:
            await stop_agent(conn, sys.executable, entry.name, str(work / "remote"))

    await asyncio.gather(*(one(e) for e in hosts))


async def sequential(hosts: list[HostEntry], options: SshOptions, work: Path) -> float:
    started = time.monotonic()
    for entry in hosts:
        await up([entry], options, work)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--sequential", action="store_true", help="also one host after another")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gantry-bench-up-") as tmp:
        work = Path(tmp)
        try:
            with running_sshd(work / "sshd", aliases=args.hosts) as sshd:
                options = SshOptions(
                    config=(sshd.ssh_config,),
                    known_hosts=sshd.known_hosts(work / "known_hosts"),
                    identities=(sshd.user_key,),
                )
                hosts = [HostEntry(f"node-{i}", f"node-{i}") for i in range(1, args.hosts + 1)]
                singles: list[float] = []
                concurrent: list[float] = []
                agent_cpu: list[float] = []
                sessions_cpu: list[float] = []  # per host, of the concurrent ups
                client_cpu: list[float] = []
                # Warm-up (imports, first connections), not measured.
                asyncio.run(up(hosts[:1], options, work))
                asyncio.run(down(hosts[:1], options, work))
                cpu_start = os.times()
                for run in range(args.runs):
                    single = asyncio.run(up(hosts[:1], options, work))
                    asyncio.run(down(hosts[:1], options, work))
                    sshd_before, client_before = sshd_cpu_s(sshd), time.process_time()
                    many = asyncio.run(up(hosts, options, work))
                    client_cpu.append((time.process_time() - client_before) / len(hosts))
                    time.sleep(0.3)  # not timed: sshd reaps the closed connections
                    sessions_cpu.append((sshd_cpu_s(sshd) - sshd_before) / len(hosts))
                    agent_cpu.extend(agents_cpu_s(hosts, work))
                    asyncio.run(down(hosts, options, work))
                    singles.append(single)
                    concurrent.append(many)
                    print(
                        f"run {run + 1}: 1 host {single:.2f}s, {args.hosts} hosts at once "
                        f"{many:.2f}s",
                        flush=True,
                    )
                if args.sequential:
                    one_by_one = asyncio.run(sequential(hosts, options, work))
                    asyncio.run(down(hosts, options, work))
                    print(f"{args.hosts} hosts one after another: {one_by_one:.2f}s")
                cpu = os.times()
                per_agent = statistics.median(agent_cpu)
                per_session = statistics.median(sessions_cpu)
                per_client = statistics.median(client_cpu)
                per_host = per_agent + per_session + per_client
                cores = os.cpu_count() or 1
                print(
                    f"cpu: {cores} cores, load {os.getloadavg()[0]:.1f}; this process "
                    f"{cpu.user + cpu.system - cpu_start.user - cpu_start.system:.1f}s"
                    f" (SSH client side); each agent's start-up "
                    f"{per_agent:.2f}s CPU, so {args.hosts} at once need at least "
                    f"{args.hosts * per_agent / cores:.2f}s of these cores"
                )
                print(
                    f"cpu per host: agent {per_agent:.2f}s + sshd, login shell and node "
                    f"script {per_session:.2f}s + SSH client {per_client:.2f}s = "
                    f"{per_host:.2f}s, so {args.hosts} at once need at least "
                    f"{args.hosts * per_host / cores:.2f}s of {cores} cores"
                )
        finally:
            kill_processes_mentioning(str(work / "remote"))
    up_8 = statistics.median(concurrent)
    up_1 = statistics.median(singles)
    print(
        json.dumps(
            {
                f"up_{args.hosts}_concurrent_s": round(up_8, 3),
                "up_1_s": round(up_1, 3),
                "up_concurrent_vs_single_ratio": round(up_8 / up_1, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
