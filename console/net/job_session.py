"""Keeps the console's `JobsStore` fed from the agents (grpc.aio, on the app's loop).

- Every `list_interval_s`: ListJobs on every agent, over its link (the console's one
  channel to it), so the cluster screen knows which job and rank runs on each node, and
  which nodes hold a failed rank. By default every 2 s, and on a big cluster at most
  `LIST_CALLS_PER_S` calls a second (128 agents: every 4 s).
- For the job on screen: a followed WatchJobEvents stream on its leader, in batches
  (what the leader has at hand per message), picking up after the last event held when
  it reconnects, and of the metric history only the recent tail (`metrics_tail`); and
  DescribeJob (attempts, checkpoints) every `describe_interval_s` and at once after an
  attempt event.
- A rank's log, on request: a followed TailRankLog stream on the rank's node.

Operator actions go through `JobsClient` (they are the CLI verbs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2

from console.model.jobs import EK, RANK_HISTORY, JobsStore, JobView
from console.net.agent_link import AgentLinks, Metadata, describe_rpc_error, lost_reason
from console.net.backoff import Backoff
from console.net.cluster_file import ClusterFileError, NodeTarget

RPC_TIMEOUT_S = 10.0
LIST_GAP_MAX_S = 0.01  # between two agents' ListJobs calls of one listing
LIST_INTERVAL_S = 2.0
# ListJobs calls a second across the cluster, at most, unless an interval is given: each
# costs the console a reply to decode; 64 a second were a third of its CPU at 128 agents.
LIST_CALLS_PER_S = 32.0
LIST_INTERVAL_MAX_S = 10.0


def list_interval_for(agents: int) -> float:
    """The listing's period for a cluster of `agents`: 2 s, longer past 64 agents."""
    return min(max(LIST_INTERVAL_S, agents / LIST_CALLS_PER_S), LIST_INTERVAL_MAX_S)


# Metric events replayed on opening a job at most (a thousand ranks: ~32 steps).
MAX_METRICS_TAIL = 32_768
# Events applied between two turns of the event loop (~10 ms).
APPLY_SLICE = 256
# Events after which the attempts table is stale at once, not at the next poll.
DESCRIBE_NOW = frozenset(
    {
        EK.JOB_EVENT_KIND_ATTEMPT_STARTED,
        EK.JOB_EVENT_KIND_RANK_STARTED,
        EK.JOB_EVENT_KIND_RANK_EXITED,
        EK.JOB_EVENT_KIND_RANK_KILLED,
        EK.JOB_EVENT_KIND_RANK_FAILED,
        EK.JOB_EVENT_KIND_RANK_HUNG,
        EK.JOB_EVENT_KIND_ATTEMPT_FAILED,
        EK.JOB_EVENT_KIND_RESTARTING,
        EK.JOB_EVENT_KIND_STOPPED,
        EK.JOB_EVENT_KIND_SUCCEEDED,
        EK.JOB_EVENT_KIND_FAILED,
        EK.JOB_EVENT_KIND_CHECKPOINT_SAVED,
    }
)


def metrics_tail(view: JobView | None) -> int:
    """How many of the journaled metric events to ask for on (re)connecting: enough for
    the charts' and the advisor's window on a small job, bounded for a big one (its
    history fills in as it runs)."""
    attempt = view.latest_attempt() if view is not None else None
    world = len(attempt.ranks) if attempt is not None else 0
    return min(MAX_METRICS_TAIL, max(world, 1) * RANK_HISTORY)


class JobsSession:
    """`links`: the console's (without, the session's own, closed by `stop`)."""

    def __init__(
        self,
        targets: list[NodeTarget],
        store: JobsStore,
        *,
        on_change: Callable[[], None] = lambda: None,
        list_interval_s: float | None = None,
        describe_interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        links: AgentLinks | None = None,
    ) -> None:
        self.targets = targets
        self._by_name = {t.name: t for t in targets}
        self._owns_links = links is None
        self.links = links if links is not None else AgentLinks()
        self.store = store
        self.on_change = on_change
        self.list_interval_s = (
            list_interval_for(len(targets)) if list_interval_s is None else list_interval_s
        )
        self.describe_interval_s = describe_interval_s
        self.clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._watched = ""
        self._describe_now = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._list_loop(), name="jobs:list"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._watch] if self._watch else [])]
        self._tasks, self._watch = [], None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_links:
            await self.links.close()

    @property
    def watched(self) -> str:
        return self._watched

    def watch(self, name: str) -> None:
        """Follows one job's events and attempts (the job screen's); "" stops."""
        if name == self._watched:
            return
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._watched = name
        if name:
            self._watch = asyncio.create_task(self._watch_job(name), name=f"jobs:watch:{name}")

    def describe_soon(self) -> None:
        self._describe_now.set()

    async def _stub(self, node: str) -> tuple[agent_service_pb2_grpc.AgentServiceStub, Metadata]:
        """The node's stub and call metadata, from its link (KeyError: not in the cluster)."""
        link = self.links.link(self._by_name[node])
        stub = await link.stub()
        return stub, link.metadata()

    # -- polling -------------------------------------------------------------------

    async def refresh_listing(self) -> None:
        async def ask(node: str) -> list[tuple[str, job_pb2.Job]] | str:
            try:
                stub, metadata = await self._stub(node)
                if not await self.links.link(self._by_name[node]).reachable():
                    return f"{node}: {lost_reason()}"  # not waited on again while lost
                reply = await stub.ListJobs(
                    agent_service_pb2.ListJobsRequest(), metadata=metadata, timeout=RPC_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as exc:
                return f"{node}: {describe_rpc_error(exc)}"
            except ClusterFileError as exc:
                return f"{node}: {exc}"
            return [(node, job) for job in reply.jobs]

        # Spread over a fraction of the interval: replies from a hundred agents at once
        # would be decoded in one burst between two frames.
        gap = min(0.5 * self.list_interval_s / max(len(self.targets), 1), LIST_GAP_MAX_S)

        async def ask_in_turn(i: int, node: str) -> list[tuple[str, job_pb2.Job]] | str:
            await asyncio.sleep(i * gap)
            return await ask(node)

        results = await asyncio.gather(
            *(ask_in_turn(i, t.name) for i, t in enumerate(self.targets))
        )
        jobs = [j for r in results if isinstance(r, list) for j in r]
        errors = [r for r in results if isinstance(r, str)]
        self.store.set_listing(jobs, errors)
        self.on_change()

    async def _list_loop(self) -> None:
        while True:
            await self.refresh_listing()
            await asyncio.sleep(self.list_interval_s)

    async def describe(self, name: str) -> None:
        view = self.store.get(name)
        if view is None:
            return
        stub, metadata = await self._stub(view.leader)
        reply = await stub.DescribeJob(
            agent_service_pb2.DescribeJobRequest(name=name),
            metadata=metadata,
            timeout=RPC_TIMEOUT_S,
        )
        self.store.apply_job(view.leader, reply.job, list(reply.checkpoints), self.clock())
        self.on_change()

    # -- one job -------------------------------------------------------------------

    async def _watch_job(self, name: str) -> None:
        describer = asyncio.create_task(self._describe_loop(name), name=f"jobs:describe:{name}")
        backoff = Backoff()
        try:
            while True:
                view = self.store.get(name)
                if view is None:
                    await self.refresh_listing()
                    if self.store.get(name) is None:
                        await asyncio.sleep(backoff.next())
                    continue
                with contextlib.suppress(grpc.aio.AioRpcError, ClusterFileError):
                    await self._stream_events(name, view.leader, backoff)
                await asyncio.sleep(backoff.next())
        finally:
            describer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await describer

    async def _stream_events(self, name: str, leader: str, backoff: Backoff) -> None:
        view = self.store.get(name)
        after = view.last_seq if view is not None else 0
        stub, metadata = await self._stub(leader)
        request = agent_service_pb2.WatchJobEventsRequest(
            job_name=name,
            after_seq=after,
            follow=True,
            metrics_tail=metrics_tail(view),
            batched=True,
        )
        async for message in stub.WatchJobEvents(request, metadata=metadata):
            backoff.reset()
            # Batched (an older agent ignores the ask and sends one event a message).
            batch = message.events or (message.event,)
            for start in range(0, len(batch), APPLY_SLICE):
                applied = self.store.apply_events(batch[start : start + APPLY_SLICE])
                if applied:
                    if any(e.kind in DESCRIBE_NOW for e in applied):
                        self._describe_now.set()
                    self.on_change()
                if len(batch) > APPLY_SLICE:
                    # A replay's big batches: let keys and repaints in between slices.
                    await asyncio.sleep(0)

    async def _describe_loop(self, name: str) -> None:
        while True:
            self._describe_now.clear()
            with contextlib.suppress(grpc.aio.AioRpcError, ClusterFileError):
                await self.describe(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._describe_now.wait(), self.describe_interval_s)

    # -- logs ----------------------------------------------------------------------

    async def tail_log(
        self,
        name: str,
        rank: int,
        attempt: int,
        on_lines: Callable[[list[str]], None],
        *,
        stream: str = "stdout",
        tail_lines: int = 100_000,
        on_error: Callable[[str], None] = lambda line: None,
    ) -> None:
        """Follows one rank's log until cancelled, reconnecting (from the last offset
        read) when the node's agent goes away."""
        backoff = Backoff()
        offset = 0
        while True:
            view = self.store.get(name)
            attempts = view.job.attempts if view is not None else []
            chosen = attempts[attempt - 1] if 0 < attempt <= len(attempts) else None
            if chosen is None and attempts:
                chosen = attempts[-1]
            nodes = [r.node for r in chosen.ranks if r.rank == rank] if chosen else []
            if not nodes:
                on_error(f"job {name} has no rank {rank} in that attempt yet")
                await asyncio.sleep(backoff.next())
                continue
            request = agent_service_pb2.TailRankLogRequest(
                job_name=name,
                attempt=chosen.number if chosen else 0,
                rank=rank,
                stream=stream,
                tail_lines=0 if offset else tail_lines,
                follow=True,
                from_offset=offset,
            )
            try:
                stub, metadata = await self._stub(nodes[0])
                async for message in stub.TailRankLog(request, metadata=metadata):
                    backoff.reset()
                    if message.lines:
                        last = message.lines[-1]
                        offset = last.offset + len(last.text.encode()) + 1
                        on_lines([line.text for line in message.lines])
            except grpc.aio.AioRpcError as exc:
                on_error(f"{nodes[0]}: {describe_rpc_error(exc)}")
            except ClusterFileError as exc:
                on_error(str(exc))
            await asyncio.sleep(backoff.next())
