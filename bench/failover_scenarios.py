"""Failover's kill-a-rank scenario (bench/failover.py): one run launches the 2-rank job,
SIGKILLs rank 1's training process past a checkpoint and times the way to every attempt-1
process gone and to attempt 2's first step; `measure` runs those and then the lose-a-node
runs of bench/failover_replace.py."""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.failover_cluster import (
    EK,
    GONE_TIMEOUT_S,
    JS,
    NODES,
    START_TIMEOUT_S,
    BenchError,
    RankFiles,
    check_sources,
    job_events,
    job_spec,
    kill_all,
    kill_point,
    running,
    step_of,
    trainer_sources,
    tree,
    ts,
    wait_attempt,
    wait_for,
    wait_state,
)
from bench.failover_replace import ReplaceRun, replace_run
from console.net.jobs_client import JobsClient
from console.net.local_agents import LocalAgent


@dataclass
class Run:
    number: int
    kill_to_all_stopped_s: float = float("nan")
    kill_to_first_step_s: float = float("nan")
    startup_s: float = float("nan")  # attempt 2: last rank started -> first metrics record
    kill_to_next_step_s: float = float("nan")
    last_step_1: int = -1  # attempt 1's last step (either rank)
    killed_at_step: int = -1  # rank 1's last reported step when killed
    resumed_step: int = -1  # the checkpoint attempt 2 loaded
    first_step_2: int = -1
    continues: bool = False
    replayed: int = 0  # steps both attempts ran (after the checkpoint, before the kill)
    replay_rel_diff: float = float("nan")  # their rank-0 losses, max relative difference
    standby: bool = False  # attempt 2's ranks were handed to their standbys
    timeline: list[tuple[float, str]] = field(default_factory=list)


def standbys_ready(agents: dict[str, LocalAgent], job: str) -> bool:
    """Every agent of the job has a standby for its next attempt that has done its imports
    (not the spare, node-c: it holds no ranks of the job)."""
    for agent in (agents[node] for node in NODES):
        logs = list((agent.data_dir / "standby" / job).glob("*/stdout.log"))
        if not logs or not all("gantry standby: ready" in p.read_text() for p in logs):
            return False
    return True


async def one_run(
    args: argparse.Namespace,
    number: int,
    client: JobsClient,
    agents: dict[str, LocalAgent],
    root: Path,
    data: Path,
) -> Run:
    name = f"failover-{number}"
    out = root / f"run-{number}"
    run = Run(number)
    files = RankFiles(agents, name)
    await client.launch(job_spec(args, name, data, out))
    first = await wait_attempt(client, name, 1, START_TIMEOUT_S)
    if not (args.fake or args.cold):
        # A failure comes long after a start: the agents' standbys are ready by then.
        await wait_for(
            "the agents' standbys for the next attempt",
            lambda: True if standbys_ready(agents, name) else None,
            START_TIMEOUT_S,
            name,
            client,
        )
    killed_at = await wait_for(
        "steps past a checkpoint",
        lambda: kill_point(files, args.save_steps, args.kill_after, args.fake),
        START_TIMEOUT_S,
        name,
        client,
    )
    attempt_1 = [p for r in first.ranks for p in tree(r.pid)]
    wrapper_1 = next(r.pid for r in first.ranks if r.rank == 1)
    victims = psutil.Process(wrapper_1).children()
    if len(victims) != 1:
        raise BenchError(f"rank 1's wrapper {wrapper_1} has {len(victims)} children, not 1")
    victim = victims[0]
    kill_at = time.time()
    victim.kill()  # SIGKILL
    while running(attempt_1):
        if time.time() - kill_at > GONE_TIMEOUT_S:
            left = ", ".join(str(p.pid) for p in running(attempt_1))
            raise BenchError(f"attempt 1's processes {left} still run {GONE_TIMEOUT_S:.0f}s later")
        time.sleep(0.005)
    run.kill_to_all_stopped_s = time.time() - kill_at
    run.killed_at_step = int(killed_at)

    second = await wait_attempt(client, name, 2, START_TIMEOUT_S)
    firsts = await wait_for(
        "attempt 2's first step",
        lambda: (
            [m[0] for m in (files.records(2, rank, "metrics") for rank in (0, 1))]
            if all(files.records(2, rank, "metrics") for rank in (0, 1))
            else None
        ),
        START_TIMEOUT_S,
        name,
        client,
    )
    first_step_at = min(float(m["time"]) for m in firsts)
    events = await job_events(client, name)
    started = [ts(e.time) for e in events if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED]
    started_2 = [
        ts(e.time)
        for e in events
        if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED and e.attempt == 2 and e.rank >= 0
    ]
    if len(started_2) < len(NODES) or not started:
        raise BenchError(f"job {name}: no RANK_STARTED events for attempt 2")
    run.standby = all(
        e.details.get("standby") == "yes"
        for e in events
        if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED and e.attempt == 2 and e.rank >= 0
    )
    run.kill_to_first_step_s = first_step_at - kill_at
    run.startup_s = first_step_at - max(started_2)
    run.kill_to_next_step_s = run.kill_to_first_step_s - run.startup_s

    steps_1 = [int(r["step"]) for rank in (0, 1) for r in files.records(1, rank, "metrics")]
    run.last_step_1 = max(steps_1)
    run.first_step_2 = min(int(m["step"]) for m in firsts)
    starts_2 = [files.records(2, rank, "start") for rank in (0, 1)]
    loaded = {int(s[0]["step"]) for s in starts_2 if s}
    from_path = step_of(second.resumed_from)
    if args.fake:
        run.resumed_step = 0
    elif from_path is not None:
        run.resumed_step = from_path
        if loaded != {from_path}:
            raise BenchError(
                f"attempt 2 resumed from {second.resumed_from} but started at {loaded}"
            )
    run.continues = run.first_step_2 == run.resumed_step + 1 and run.resumed_step <= run.last_step_1
    if not args.fake:
        await wait_for(
            "attempt 2 to pass attempt 1's last step",
            lambda: (
                True
                if any(int(r["step"]) >= run.last_step_1 for r in files.records(2, 0, "metrics"))
                else None
            ),
            START_TIMEOUT_S,
            name,
            client,
        )
        loss_1 = {int(r["step"]): float(r["loss"]) for r in files.records(1, 0, "metrics")}
        loss_2 = {int(r["step"]): float(r["loss"]) for r in files.records(2, 0, "metrics")}
        both = sorted(set(loss_1) & set(loss_2))
        run.replayed = len(both)
        if both:
            run.replay_rel_diff = max(
                abs(loss_1[s] - loss_2[s]) / max(abs(loss_1[s]), 1e-12) for s in both
            )

    seen: set[tuple[int, int, int]] = set()
    for event in events:
        key = (event.kind, event.attempt, event.rank)
        if event.kind == EK.JOB_EVENT_KIND_METRICS or key in seen or ts(event.time) < kill_at:
            continue
        seen.add(key)
        who = f" rank {event.rank}" if event.rank >= 0 else ""
        label = f"{EK.Name(event.kind).removeprefix('JOB_EVENT_KIND_').lower()}{who}"
        run.timeline.append((ts(event.time) - kill_at, f"{label} (attempt {event.attempt})"))
    run.timeline.append((run.kill_to_all_stopped_s, "attempt 1: every process gone"))
    run.timeline.append((run.kill_to_first_step_s, f"attempt 2: first step {run.first_step_2}"))
    run.timeline.sort()

    await client.stop(name, grace_s=5)
    await wait_state(client, name, {JS.JOB_STATE_STOPPED, JS.JOB_STATE_FAILED}, 60)
    leftovers = [p for r in second.ranks for p in tree(r.pid)]
    kill_all(leftovers)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return run


async def measure(
    args: argparse.Namespace, agents: dict[str, LocalAgent], root: Path, data: Path
) -> tuple[list[Run], list[ReplaceRun]]:
    runs = []
    replaced = []
    sources = trainer_sources()
    async with JobsClient([a.target for a in agents.values()]) as client:
        for number in range(1, args.runs + 1):
            run = await one_run(args, number, client, agents, root, data)
            check_sources(sources)
            print(
                f"run {number}: kill -> all stopped {run.kill_to_all_stopped_s:.3f} s, "
                f"kill -> next step {run.kill_to_next_step_s:.3f} s "
                f"(+ {run.startup_s:.1f} s model start-up); steps {run.last_step_1} | "
                f"ckpt {run.resumed_step} -> {run.first_step_2}",
                flush=True,
            )
            runs.append(run)
        for number in range(1, args.runs + 1):
            spared = await replace_run(args, number, client, agents, root, data)
            check_sources(sources)
            print(
                f"spare run {number}: node lost -> first step on the spare "
                f"{spared.replace_to_next_step_s:.3f} s (+ {spared.startup_s:.1f} s model "
                f"start-up); {spared.replaced_nodes or 'NOT replaced'}",
                flush=True,
            )
            replaced.append(spared)
    return runs, replaced
