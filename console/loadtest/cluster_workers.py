"""Load workers on the cluster's nodes (`gantry loadtest --from-nodes A,B`): `--workers N`
workers on each node, each a task of the node's agent (gantry.v1.LoadTestTaskSpec: the
resolved target, the plan, the worker's index and the common start). Their snapshots come
back on the tasks' WatchTask streams and are merged exactly, as ProcessWorkers' are.

The start travels in the specs (wall-clock time, `lead_s` after the first StartTask), so
every worker must be connected and ready before it: a node that refuses the task, cannot
be reached or cannot reach the target fails the run before it starts, with one line naming
the node. The agents are reached through an injected `NodeTasks` (the load tester imports
no agent client: console.net.loadtest_nodes is the one the CLI uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Protocol

from gantry.v1 import task_pb2

from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.node_wire import READY_MESSAGE, WorkerRun, snapshot_from_message, task_spec
from console.loadtest.plan import Plan
from console.loadtest.recorder import Snapshot
from console.loadtest.targets import TargetSpec

START_LEAD_S = 5.0  # from the first StartTask to the common start
STOP_WAIT_S = 15.0  # how long close() waits for the StopTask calls


class NodeTasks(Protocol):
    """The cluster's agents, as a load test uses them; every error a LoadTestError line
    naming the node."""

    async def start(self, node: str, spec: task_pb2.LoadTestTaskSpec) -> str:
        """Starts the task on `node`; its id."""
        ...

    def watch(
        self, node: str, task_id: str
    ) -> AsyncIterator[task_pb2.TaskProgress | task_pb2.Task]:
        """The task's progress lines from its latest on, then the task once it ended."""
        ...

    async def stop(self, node: str, task_id: str) -> None:
        """Stops the task (its worker sends its last figures first); never raises."""
        ...


def cluster_plan(plan: Plan, config: LoadTestConfig) -> Plan:
    """The plan shared over every node's workers: `--workers` on each node."""
    return dataclasses.replace(plan, workers=len(config.from_nodes) * config.workers)


@dataclasses.dataclass
class _Worker:
    index: int
    node: str
    task_id: str = ""
    ready: bool = False
    failed: str = ""  # why it ended before the start
    next_seq: int = 1
    finished: bool = False


class ClusterWorkers:
    """One node task per worker; `start_at` is the common start on this machine's clock."""

    def __init__(
        self,
        spec: TargetSpec,
        plan: Plan,
        config: LoadTestConfig,
        nodes: NodeTasks,
        *,
        lead_s: float = START_LEAD_S,
    ) -> None:
        self.spec, self.plan, self.config, self.nodes = spec, plan, config, nodes
        self.lead_s = lead_s
        self.snapshots: asyncio.Queue[Snapshot] = asyncio.Queue()
        self.notes: list[str] = []
        per_node = config.workers
        self.node_of = {i: config.from_nodes[i // per_node] for i in range(plan.workers)}
        self._workers = [_Worker(i, node) for i, node in self.node_of.items()]
        self.start_at = 0.0
        self._readers: list[asyncio.Task[None]] = []
        self._stops: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()

    async def start(self) -> None:
        plan = self.plan
        if not plan.open_loop and plan.concurrency < plan.workers:
            raise LoadTestError(
                f"--concurrency {plan.concurrency} is below the {plan.workers} workers of "
                f"--from-nodes ({len(self.config.from_nodes)} nodes x --workers "
                f"{self.config.workers}): each needs a request in flight"
            )
        start_unix_s = time.time() + self.lead_s
        self.start_at = time.monotonic() + self.lead_s
        specs = [
            task_spec(
                WorkerRun(
                    self.spec,
                    plan,
                    w.index,
                    self.config.slo_ttft_ms,
                    self.config.slo_latency_ms,
                    start_unix_s,
                )
            )
            for w in self._workers
        ]
        started = await asyncio.gather(
            *(self.nodes.start(w.node, s) for w, s in zip(self._workers, specs, strict=True)),
            return_exceptions=True,
        )
        problems = []
        for worker, outcome in zip(self._workers, started, strict=True):
            if isinstance(outcome, str):
                worker.task_id = outcome
            elif isinstance(outcome, LoadTestError):
                problems.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        if problems:
            self.stop()
            raise problems[0]
        self._readers = [asyncio.create_task(self._read(w)) for w in self._workers]
        await self._until_ready()

    async def _until_ready(self) -> None:
        deadline = self.start_at - min(0.5, self.lead_s / 4)
        while not all(w.ready for w in self._workers):
            failed = next((w for w in self._workers if w.failed), None)
            if failed is not None:
                self.stop()
                raise LoadTestError(f"{failed.node}: {failed.failed}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                late = sorted({w.node for w in self._workers if not w.ready})
                self.stop()
                raise LoadTestError(
                    f"{', '.join(late)}: the load workers were not ready within "
                    f"{self.lead_s:g} s of starting; the run did not start"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def _read(self, worker: _Worker) -> None:
        why = "its task's stream ended"
        try:
            async for item in self.nodes.watch(worker.node, worker.task_id):
                if isinstance(item, task_pb2.Task):
                    worker.task_id = ""  # ended: nothing to stop
                    state = task_pb2.TaskState.Name(item.state).removeprefix("TASK_STATE_")
                    why = f"its task ended ({state.lower()})" + (
                        f": {item.error}" if item.error else ""
                    )
                    break
                self._on_progress(worker, item)
        except LoadTestError as exc:
            why = str(exc)
        finally:
            if not worker.ready and not worker.failed:
                worker.failed = why.removeprefix(f"{worker.node}: ")
                self._changed.set()
        if worker.ready and not worker.finished:
            worker.finished = True
            self.notes.append(
                f"{worker.node} worker {worker.index} stopped sending figures ({why}); "
                "its last ones are lost"
            )
            self.snapshots.put_nowait(
                Snapshot(worker.index, time.monotonic(), final=True, stopped=True)
            )

    def _on_progress(self, worker: _Worker, progress: task_pb2.TaskProgress) -> None:
        if not worker.ready and (progress.message == READY_MESSAGE or progress.HasField("load")):
            worker.ready = True
            self._changed.set()
        if not progress.HasField("load") or worker.finished:
            return
        load = progress.load
        if load.seq != worker.next_seq:
            self.notes.append(
                f"{worker.node} worker {worker.index}: figures {worker.next_seq}-{load.seq - 1} "
                "were lost on the way; the totals miss them"
            )
        worker.next_seq = load.seq + 1
        snap = snapshot_from_message(load, self.start_at)
        snap.worker = worker.index  # the index this console gave it, whatever the node says
        if snap.final:
            worker.finished = True
        self.snapshots.put_nowait(snap)

    def begin(self, start_at: float) -> None:
        """Nothing to send: every worker has the start (`self.start_at`) in its spec."""

    def stop(self) -> None:
        for worker in self._workers:
            if worker.task_id and not worker.finished:
                self._stops.append(
                    asyncio.create_task(self.nodes.stop(worker.node, worker.task_id))
                )
                worker.task_id = ""  # asked once

    async def close(self) -> None:
        if self._stops:
            await asyncio.wait(self._stops, timeout=STOP_WAIT_S)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, *self._stops, return_exceptions=True)
