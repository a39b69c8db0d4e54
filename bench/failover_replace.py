"""Failover's hot-spare run: a third agent (node-c) is the job's spare; once both ranks are
past a checkpoint the bench SIGKILLs node-b's agent and everything below it (its rank), as a
machine that went away, and measures the time to the first step of rank 1 on the spare.

With the trainer the leader does it on its own: rank 0's collective fails, the leader pings
node-b (lost) and starts the next attempt with node-b's ranks on node-c, same world, from
the latest checkpoint as it is. The fake rank has no collectives and never notices a lost
peer, so with --fake the bench asks for it as an operator would (`restart --replace
node-b=node-c`) right after the kill.

- replace -> next step, less the model's own start-up: (kill -> the spare's first metrics
  record) - (the spare's rank start -> that record); raw: everything included.

Used by bench/failover.py (its `replace_to_next_step_s`); node-b's agent is started again
on its port after each run."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.v1 import job_pb2

from bench import failover_cluster as fo
from console.net.jobs_client import JobCommandError, JobsClient
from console.net.local_agents import LocalAgent, start_agent

SPARE = "node-c"
LOST = "node-b"


@dataclass
class ReplaceRun:
    number: int
    kill_to_spare_step_s: float = float("nan")  # raw
    startup_s: float = float("nan")  # the spare's rank start -> its first metrics record
    replace_to_next_step_s: float = float("nan")
    replaced_nodes: str = ""
    same_world: bool = False


def spare_spec(args: argparse.Namespace, name: str, data: Path, out: Path) -> job_pb2.JobSpec:
    """failover's job with node-c as its spare and a restart to spare."""
    spec = fo.job_spec(args, name, data, out)
    spec.spares.append(SPARE)
    spec.restart.max_restarts = 2
    return spec


def metrics_path(agent: LocalAgent, job: str, attempt: int, rank: int) -> Path:
    return agent.data_dir / "jobs" / job / f"attempt-{attempt}" / f"rank-{rank}" / "metrics.jsonl"


def first_metrics(agent: LocalAgent, job: str, attempt: int, rank: int) -> dict[str, Any] | None:
    records = fo.read_records(metrics_path(agent, job, attempt, rank))
    return next((r for r in records if r.get("kind") == "metrics"), None)


async def launch_when_back(client: JobsClient, spec: job_pb2.JobSpec) -> None:
    """Launches once every node answers: node-b's agent, started again after the last run,
    may still be reconnecting when the next run begins."""
    deadline = time.monotonic() + fo.START_TIMEOUT_S
    while True:
        try:
            await client.launch(spec)
            return
        except JobCommandError as exc:
            if "unreachable" not in str(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def replace_run(
    args: argparse.Namespace,
    number: int,
    client: JobsClient,
    agents: dict[str, LocalAgent],
    root: Path,
    data: Path,
) -> ReplaceRun:
    name = f"replace-{number}"
    out = root / f"replace-{number}"
    run = ReplaceRun(number)
    files = fo.RankFiles(agents, name)
    await launch_when_back(client, spare_spec(args, name, data, out))
    await fo.wait_attempt(client, name, 1, fo.START_TIMEOUT_S)
    await fo.wait_for(
        "steps past a checkpoint",
        lambda: fo.kill_point(files, args.save_steps, args.kill_after, args.fake),
        fo.START_TIMEOUT_S,
        name,
        client,
    )
    lost = agents[LOST]
    victims = fo.tree(lost.process.pid)
    kill_at = time.time()
    fo.kill_all(victims)  # the agent and its rank, at once
    lost.process.wait()
    if args.fake:
        await client.restart(name, LOST, [], "", replace={LOST: SPARE})
    spare = agents[SPARE]
    found = await fo.wait_for(
        "the spare's first step",
        lambda: first_metrics(spare, name, 2, 1),
        fo.START_TIMEOUT_S,
        name,
        client,
    )
    run.kill_to_spare_step_s = float(found["time"]) - kill_at
    events = await fo.job_events(client, name)
    started = [
        fo.ts(e.time)
        for e in events
        if e.kind == fo.EK.JOB_EVENT_KIND_RANK_STARTED and e.attempt == 2 and e.node == SPARE
    ]
    if not started:
        raise fo.BenchError(f"job {name}: no RANK_STARTED event of the spare in attempt 2")
    run.startup_s = float(found["time"]) - started[0]
    run.replace_to_next_step_s = run.kill_to_spare_step_s - run.startup_s
    led, _ = await client.describe(name)
    second = led.job.attempts[1]
    run.replaced_nodes = ",".join(f"{n}={s}" for n, s in sorted(second.replaced_nodes.items()))
    run.same_world = sorted((r.rank, r.local_rank) for r in second.ranks) == [(0, 0), (1, 0)]
    await client.stop(name, grace_s=5)
    await fo.wait_state(client, name, {fo.JS.JOB_STATE_STOPPED, fo.JS.JOB_STATE_FAILED}, 60)
    fo.kill_all([p for r in second.ranks for p in fo.tree(r.pid)])
    port = int(lost.address.rpartition(":")[2])
    agents[LOST] = start_agent(
        LOST, lost.data_dir, port, ["--torch-extensions-dir", str(fo.EXTENSIONS_DIR)]
    )
    return run
