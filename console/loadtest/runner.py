"""Running a load test: preflight, the workers, live progress, the report.

    report = await run_loadtest(config, on_progress=show, stop=stop_event)

`on_progress` is called on this event loop at least once a second (each worker sends its
interval histograms and counters twice a second; they are merged exactly). Setting `stop`
ends the run cleanly: requests in flight are cut off (counted as unfinished) and the report
covers what was measured, marked partial.

With `config.from_nodes` the workers run on those nodes, as tasks of their agents, reached
through `nodes` (console.net.loadtest_nodes.AgentNodeTasks for the CLI; see
console.loadtest.cluster_workers); the report then has each node's figures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from console.loadtest.aggregate import Aggregate
from console.loadtest.cluster_workers import ClusterWorkers, NodeTasks, cluster_plan
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.plan import make_plan
from console.loadtest.progress import Progress
from console.loadtest.report import Report
from console.loadtest.resolve import resolve
from console.loadtest.workers import LocalWorkers, ProcessWorkers, Workers

__all__ = ["Progress", "preflight", "run_loadtest"]

PROGRESS_INTERVAL_S = 0.5
START_MARGIN_S = 0.05  # so that every worker begins at the same instant
STOP_GRACE_S = 10.0  # after a stop, how long a worker may take to send its last figures


async def preflight(config: LoadTestConfig) -> None:
    """Checks the config, reaches the target and resolves the method; LoadTestError if not."""
    await resolve(config)


async def run_loadtest(
    config: LoadTestConfig,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    *,
    in_process: bool | None = None,
    nodes: NodeTasks | None = None,
) -> Report:
    """Runs the test. `in_process` (default: only with one worker) keeps the engines in this
    event loop instead of child processes; `nodes`: the agents, for `config.from_nodes`.
    LoadTestError before the run starts."""
    if config.from_nodes and nodes is None:
        raise LoadTestError("--from-nodes needs the cluster's agents (give --cluster FILE)")
    spec = await resolve(config)
    plan = make_plan(config)
    local = config.workers == 1 if in_process is None else in_process
    workers: Workers
    if config.from_nodes:
        assert nodes is not None
        plan = cluster_plan(plan, config)
        workers = ClusterWorkers(spec, plan, config, nodes)
    elif local:
        workers = LocalWorkers(spec, plan, config)
    else:
        workers = ProcessWorkers(spec, plan, config)
    stop_watch: asyncio.Task[float] | None = None
    try:
        await workers.start()
        started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        start_at = time.monotonic() + START_MARGIN_S
        if isinstance(workers, ClusterWorkers):
            start_at = workers.start_at  # in the nodes' specs already
        aggregate = Aggregate(
            plan,
            start_at,
            plan.workers,
            max_tokens=None if spec.kind == "grpc" else config.max_tokens,
            ignore_eos=config.ignore_eos,
            node_of=workers.node_of if isinstance(workers, ClusterWorkers) else None,
        )
        workers.begin(start_at)
        if stop is not None:
            stop_watch = asyncio.create_task(_stop_when_set(stop, workers))
        next_progress = start_at + PROGRESS_INTERVAL_S
        notes = workers.notes
        while not aggregate.all_finished:
            if _stopped_long_ago(stop_watch):
                missing = sorted(set(range(plan.workers)) - aggregate.finished)
                notes.append(f"workers {missing} did not stop in time; their last figures are lost")
                aggregate.stopped = True
                break
            try:
                timeout = max(0.0, next_progress - time.monotonic())
                aggregate.add(await asyncio.wait_for(workers.snapshots.get(), timeout))
            except TimeoutError:
                pass
            now = time.monotonic()
            if now >= next_progress:
                # Skipped without a listener: with one worker it would share the loop.
                if on_progress is not None:
                    on_progress(aggregate.progress(now))
                next_progress = max(next_progress + PROGRESS_INTERVAL_S, now)
        while not workers.snapshots.empty():
            aggregate.add(workers.snapshots.get_nowait())
        if on_progress is not None:
            on_progress(aggregate.progress(time.monotonic(), done=True))
        return aggregate.to_report(
            config,
            method=spec.method,
            kind=spec.kind,
            streaming=spec.streaming,
            started_at=started_at,
            notes=list(notes),
            prompt_set=spec.prompt_set,
        )
    finally:
        if stop_watch is not None:
            stop_watch.cancel()
        workers.stop()
        await workers.close()


async def _stop_when_set(stop: asyncio.Event, workers: Workers) -> float:
    await stop.wait()
    workers.stop()
    return time.monotonic()


def _stopped_long_ago(stop_watch: asyncio.Task[float] | None) -> bool:
    return (
        stop_watch is not None
        and stop_watch.done()
        and time.monotonic() - stop_watch.result() > STOP_GRACE_S
    )
