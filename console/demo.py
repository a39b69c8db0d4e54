"""`make demo`: a two-node cluster of agents on this machine, then the console: the demo
job trains, then its model is evaluated, quantized to int8 and served (each a task the
console shows under `T`).

Data lives under .gantry/demo/. Quitting the console stops the agents it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from console.net.cluster_file import NodeTarget, dump_cluster_file
from console.ui.forked import without_grpc_fork_handlers

if TYPE_CHECKING:
    from console.ui.app import GantryApp
from console.net.local_agents import AgentStartError, LocalAgent, start_agent, stop_all

DEMO_NODES = ("node-a", "node-b")
REPO = Path(__file__).resolve().parent.parent
DEMO_JOB = REPO / "examples" / "job-demo.yaml"


class DemoError(RuntimeError):
    pass


def make_demo_data(root: Path) -> None:
    """The demo conversations, generated deterministically once (run as a program:
    the console does not import the agent's code)."""
    data = root / "data"
    if (data / "train.jsonl").exists():
        return
    done = subprocess.run(
        [sys.executable, "-m", "agent.demo_data", "--out", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"generating the demo data failed: {last}")


def launch_demo_job(targets: list[NodeTarget]) -> str:
    """Sends examples/job-demo.yaml to node-a; an already finished demo is left alone."""
    from console.model.job_spec import load_job_spec
    from console.net.jobs_client import JobCommandError, JobsClient, LedJob

    spec = load_job_spec(DEMO_JOB, known_nodes={t.name for t in targets})

    async def launch() -> LedJob:
        async with JobsClient(targets) as client:
            return await client.launch(spec)

    try:
        led = asyncio.run(launch())
    except JobCommandError as exc:
        return f"demo job not launched: {exc}"
    return f"demo job {spec.name} launched on {led.leader.name}: `gantry jobs` to follow it"


def demo_steps(targets: list[NodeTarget]) -> Callable[[GantryApp], Awaitable[object]]:
    """After training: evaluate, quantize and serve, each step told in the console."""
    from console.verbs.demo_pipeline import run_pipeline

    def steps(app: GantryApp) -> Awaitable[object]:
        return run_pipeline(
            targets, "demo-moe", lambda line: app.notify(line, timeout=15), app.links
        )

    return steps


def start_demo_cluster(root: Path) -> tuple[list[LocalAgent], Path]:
    agents: list[LocalAgent] = []
    try:
        # One extensions folder for the demo's agents: its op is built once, not per node.
        shared = ["--torch-extensions-dir", str((root / "torch_extensions").resolve())]
        for name in DEMO_NODES:
            agents.append(start_agent(name, root / name, extra_args=shared))
    except AgentStartError:
        stop_all(agents)
        raise
    cluster_file = root / "cluster.yaml"
    dump_cluster_file(cluster_file, [a.target for a in agents])
    return agents, cluster_file


def stop_demo_job(agents: list[LocalAgent]) -> None:
    """Ranks outlive their agent by design; the demo's must not outlive the demo."""
    from console.net.jobs_client import JobCommandError, JobsClient

    targets = [a.target for a in agents]

    async def stop_job() -> None:
        async with JobsClient(targets) as client:
            await client.stop("demo-moe", 5.0)

    with contextlib.suppress(JobCommandError):
        asyncio.run(stop_job())
    with contextlib.suppress(JobCommandError):
        asyncio.run(_stop_tasks(targets))


async def _stop_tasks(targets: list[NodeTarget]) -> None:
    """The demo's server (and any task still running) outlives its agent by design."""
    from gantry.v1 import task_pb2

    from console.net.tasks_client import TasksClient

    async with TasksClient(targets) as client:
        tasks, _ = await client.list()
        running = (task_pb2.TaskState.TASK_STATE_PENDING, task_pb2.TaskState.TASK_STATE_RUNNING)
        for found in tasks:
            if found.task.state in running:
                await client.stop(found.task.id, 5.0)


def main(argv: list[str] | None = None) -> None:
    without_grpc_fork_handlers()
    parser = argparse.ArgumentParser(prog="gantry-demo")
    parser.add_argument("--root", type=Path, default=Path(".gantry/demo"))
    parser.add_argument(
        "--check", action="store_true", help="start the cluster, print its status, stop it"
    )
    parser.add_argument("--no-train", action="store_true", help="do not launch the demo job")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    train = not (args.no_train or args.check)
    try:
        if train:
            make_demo_data(root)
        agents, cluster_file = start_demo_cluster(root)
    except (AgentStartError, DemoError) as exc:
        print(f"gantry demo: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"demo cluster: {cluster_file}", file=sys.stderr)
    try:
        if args.check:
            from console.verbs.status import gather_status, to_table

            statuses = asyncio.run(gather_status([a.target for a in agents]))
            print(to_table(statuses))
            sys.exit(0 if all(s.state == "live" for s in statuses) else 1)
        from console.net.cluster_file import load_cluster_file
        from console.ui.app import GantryApp, tune_gc

        targets = load_cluster_file(cluster_file)
        if train:
            print(launch_demo_job(targets), file=sys.stderr)
        tune_gc()
        GantryApp(targets, background=demo_steps(targets) if train else None).run()
    finally:
        if train:
            stop_demo_job(agents)
        stop_all(agents)


if __name__ == "__main__":
    main()
