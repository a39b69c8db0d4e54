"""`make demo`: a two-node cluster of agents on this machine, then the console.

Data lives under .gantry/demo/. Quitting the console stops the agents it started.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from console.cluster_file import dump_cluster_file
from console.local_agents import AgentStartError, LocalAgent, start_agent, stop_all

DEMO_NODES = ("node-a", "node-b")


def start_demo_cluster(root: Path) -> tuple[list[LocalAgent], Path]:
    agents: list[LocalAgent] = []
    try:
        for name in DEMO_NODES:
            agents.append(start_agent(name, root / name))
    except AgentStartError:
        stop_all(agents)
        raise
    cluster_file = root / "cluster.yaml"
    dump_cluster_file(cluster_file, [a.target for a in agents])
    return agents, cluster_file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gantry-demo")
    parser.add_argument("--root", type=Path, default=Path(".gantry/demo"))
    parser.add_argument(
        "--check", action="store_true", help="start the cluster, print its status, stop it"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        agents, cluster_file = start_demo_cluster(root)
    except AgentStartError as exc:
        print(f"gantry demo: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"demo cluster: {cluster_file}", file=sys.stderr)
    try:
        if args.check:
            from console.status import gather_status, to_table

            statuses = asyncio.run(gather_status([a.target for a in agents]))
            print(to_table(statuses))
            sys.exit(0 if all(s.state == "live" for s in statuses) else 1)
        from console.app import GantryApp
        from console.cluster_file import load_cluster_file

        GantryApp(load_cluster_file(cluster_file)).run()
    finally:
        stop_all(agents)


if __name__ == "__main__":
    main()
