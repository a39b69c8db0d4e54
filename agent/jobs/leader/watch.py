"""How the leader watches a running attempt: every node's events pumped into one bounded
queue (a peer's copied into the journal with its read position), the ranks' states
tallied until the attempt's table names its edge, and the operator's commands answered
meanwhile (and a node's preemption notice: the ranks' checkpoints awaited within the
grace, agent.jobs.leader.preemption); and how it stops an attempt's ranks on every node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.event_bus import MAX_BATCH
from agent.jobs.journal_db import JournalWriteError
from agent.jobs.leader.led_job import STOP_GRACE_S, Command, LedJob, Outcome
from agent.jobs.leader.peer_events import (
    BY_OPERATOR,
    PeerLedger,
    Tally,
    failure_with_unreachable,
    mark_unreachable,
    stopped_with_unstopped,
)
from agent.jobs.leader.peers import NodeRefused, NodeUnreachable
from agent.jobs.leader.preemption import Preempting
from agent.jobs.leader.states import AttemptEdge
from agent.jobs.leader.store import LeaderStore

log = logging.getLogger("gantry.agent")
EK = job_pb2.JobEventKind
UNREACHABLE = "unreachable"  # why a node's ranks were not stopped, when it is
JOURNAL_RETRY_S = 1.0  # a peer's event the journal could not take is tried again this soon
# While a failure waits for the one it follows from, how often the leader looks whether a
# node of the attempt is lost (its events stream ends at once when its agent dies).
LOST_POLL_S = 0.1


async def watch_attempt(
    store: LeaderStore,
    ledger: PeerLedger,
    led: LedJob,
    attempt: job_pb2.Attempt,
    adopted: bool = False,
) -> tuple[Outcome, str, Command | None]:
    """Until the attempt ends: SUCCEEDED (its edge still to write), FAILED (written, its
    ranks stopped), or, on a command, STOPPED/RESTART (stopped, the STOPPED edge still to
    write, with the command); on a node's preemption notice, PREEMPTED once every rank
    saved the checkpoint asked for or the grace is over (stopped, the STOPPED edge still
    to write)."""
    name = led.name
    # Bounded: a leader busy stopping ranks holds its peers' streams back, not its memory.
    queue: asyncio.Queue[tuple[str, job_pb2.JobEvent]] = asyncio.Queue(MAX_BATCH)
    tally = Tally(attempt)
    led.live = attempt
    if adopted:
        # What this leader knew before its restart: the ranks' figures, and perhaps a
        # failure or the last exit it copied but had no time to act on.
        led.seen[store.node_name] = await ledger.replay(name, attempt.number, tally)

    async def pump(node: str) -> None:
        events = led.nodes[node].events(name, led.seen.get(node, 0))
        async with contextlib.aclosing(events):
            async for event in events:
                await queue.put((node, event))

    pumps = [asyncio.create_task(pump(n)) for n in sorted({r.node for r in attempt.ranks})]
    getter: asyncio.Task[tuple[str, job_pb2.JobEvent]] | None = None
    commander: asyncio.Task[Command] | None = None
    preempting: Preempting | None = None
    asks: set[asyncio.Task[None]] = set()
    try:
        while (edge := _edge(tally, led, attempt, store.clock())) is None or preempting is not None:
            if preempting is not None and (
                edge is not None
                or preempting.complete(attempt.ranks)
                or store.clock() >= preempting.deadline
            ):
                return await _preempted(store, led, attempt, preempting)
            getter = getter or asyncio.create_task(queue.get())
            commander = commander or asyncio.create_task(led.commands.get())
            settle = tally.settle_at()
            settle = None if settle is None else min(settle, store.clock() + LOST_POLL_S)
            deadline = preempting.deadline if preempting is not None else None
            wake = [t for t in (settle, deadline) if t is not None]
            timeout = max(0.0, min(wake) - store.clock()) if wake else None
            done, _ = await asyncio.wait(
                {getter, commander}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if commander in done:
                command = commander.result()
                commander = None
                store.attempt_edge(name, attempt.number, AttemptEdge.STOP, ranks=attempt.ranks)
                reason = await stop_by_operator(led, attempt, command.grace_s)
                if command.kind == "stop":
                    return Outcome.STOPPED, reason, command
                return Outcome.RESTART, "restarted by the operator", command
            if getter not in done:
                continue
            node, event = getter.result()
            getter = None
            led.seen[node] = max(led.seen.get(node, 0), event.seq)
            if event.attempt != attempt.number:
                continue
            if node != store.node_name:
                if _told_already(store, event):
                    ledger.skip(name, node, event)
                else:
                    copied = await _copy(ledger, name, node, event)
                    # The tally reads the leader's clock too (agent.jobs.journal_clock).
                    event.time.CopyFrom(copied.time)
                    if event.HasField("metrics") and copied.metrics.HasField("time"):
                        event.metrics.time.CopyFrom(copied.metrics.time)  # unset stays unset
            tally.add(event, store.clock())
            preempting, request = _on_preemption(store, led, attempt, preempting, event)
            if request:
                for node in sorted({r.node for r in attempt.ranks}):
                    asking = asyncio.create_task(_ask(led, node, attempt.number, request))
                    asks.add(asking)
                    asking.add_done_callback(asks.discard)
        if edge is AttemptEdge.ALL_EXITED_OK:
            return Outcome.SUCCEEDED, "every rank exited 0", None
        unreachable = await stop_attempt(led, attempt, STOP_GRACE_S)
        # A partitioned node's ranks fail nowhere the leader can hear; the ranks it hears
        # fail on a collective's timeout: the node it cannot reach is the cause to name.
        failure = failure_with_unreachable(tally.failure, unreachable)
        told = (EK.JOB_EVENT_KIND_ATTEMPT_FAILED, failure)
        store.attempt_edge(name, attempt.number, edge, failure, told, attempt.ranks)
        return Outcome.FAILED, failure, None
    finally:
        for ask in asks:
            ask.cancel()
        for task in [*pumps, getter, commander]:
            if task is not None:
                task.cancel()
        for task in pumps:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _edge(tally: Tally, led: LedJob, attempt: job_pb2.Attempt, now: float) -> AttemptEdge | None:
    """The attempt's edge now. A failure that only follows from another rank's waits for
    that rank's own report (Tally.settle_at), unless a node of the attempt is lost: its
    ranks' reports will not come, and `failure_with_unreachable` names it."""
    if tally.settle_at() is not None and any(
        led.nodes[node].lost_since() is not None for node in {r.node for r in attempt.ranks}
    ):
        tally.settle()
    return tally.edge(now)


def _on_preemption(
    store: LeaderStore,
    led: LedJob,
    attempt: job_pb2.Attempt,
    preempting: Preempting | None,
    event: job_pb2.JobEvent,
) -> tuple[Preempting | None, str]:
    """A notice begins (or joins) the attempt's preemption, and its request id is returned
    for every node's ranks to be asked the same checkpoint; a rank's answer is counted."""
    if event.kind != EK.JOB_EVENT_KIND_PREEMPTION_NOTICE:
        return preempting, ""  # the hot path: metrics, phases
    policy = store.spec(led.name).preemption
    request = ""
    if preempting is None:
        preempting = Preempting.first(event, policy, store.clock())
        if preempting is None:
            return None, ""
        request = event.details["request"]
        grace = preempting.deadline - preempting.noticed_at
        store.event(
            led.name,
            EK.JOB_EVENT_KIND_PREEMPTION_NOTICE,
            f"{event.node} announced its preemption: waiting up to {grace:.0f} s for every"
            f" rank's checkpoint {request}",
            attempt=attempt.number,
            details={"node": event.node, "request": request, "grace_s": f"{grace:g}"},
        )
    else:
        request = preempting.add(event, policy, store.clock())
    return preempting, request


async def _ask(led: LedJob, node: str, attempt: int, request_id: str) -> None:
    """One node's ranks asked for the preemption's checkpoint (the node that announced has
    asked its own already: asking again changes nothing). A node that cannot be asked only
    saves nothing: the grace still bounds the wait."""
    api = led.nodes.get(node)
    if api is None:
        return
    ask = agent_service_pb2.RequestCheckpointRequest(
        job_name=led.name, attempt=attempt, request_id=request_id
    )
    try:
        await api.request_checkpoint(ask)
    except (NodeUnreachable, NodeRefused) as exc:
        log.warning("checkpoint %s not asked of %s: %s", request_id, node, exc)


async def _preempted(
    store: LeaderStore, led: LedJob, attempt: job_pb2.Attempt, preempting: Preempting
) -> tuple[Outcome, str, Command | None]:
    """The attempt's ranks stopped after a preemption's checkpoint (or its grace)."""
    now = store.clock()
    reason = preempting.reason(attempt.ranks, now)
    details = preempting.details(attempt.ranks, now)
    store.attempt_edge(led.name, attempt.number, AttemptEdge.STOP, ranks=attempt.ranks)
    store.event(
        led.name,
        EK.JOB_EVENT_KIND_PREEMPTION_NOTICE,
        reason,
        attempt=attempt.number,
        details=details,
    )
    led.preempted_nodes = tuple(preempting.nodes)
    led.preempt_deadline = preempting.deadline
    await stop_attempt(led, attempt, STOP_GRACE_S)
    return Outcome.PREEMPTED, reason, None


async def _copy(
    ledger: PeerLedger, name: str, node: str, event: job_pb2.JobEvent
) -> job_pb2.JobEvent:
    """A peer's event into the journal; while the journal cannot be written (a full disk)
    it is tried again each second, said once in the log: the peer's read position is not
    moved, so nothing is lost, and the leader stays alive."""
    said = False
    while True:
        try:
            return ledger.copy(name, node, event)
        except JournalWriteError as exc:
            if not said:
                log.error("job %s: %s; retrying each second", name, exc)
                said = True
            await asyncio.sleep(JOURNAL_RETRY_S)


def _told_already(store: LeaderStore, event: job_pb2.JobEvent) -> bool:
    """A peer's CHECKPOINT_SAVED for a checkpoint another node's rank already reported:
    each node tells its first rank's save, the job's timeline one per checkpoint."""
    kind = EK.JOB_EVENT_KIND_CHECKPOINT_SAVED
    return event.kind == kind and store.journal.checkpoint_told(event)


async def stop_attempt(led: LedJob, attempt: job_pb2.Attempt, grace_s: float) -> list[str]:
    """Every node stops the attempt's ranks; their last states go into ``attempt``. A node
    that does not answer a ping is not waited on (a stop's deadline is far longer): its
    ranks are marked unreachable. Returns those nodes."""
    unstopped = await _stop(led, attempt, grace_s)
    return sorted(node for node, why in unstopped.items() if why == UNREACHABLE)


async def stop_by_operator(led: LedJob, attempt: job_pb2.Attempt, grace_s: float) -> str:
    """`stop_attempt` for an operator's stop: the attempt's reason, naming the nodes
    whose ranks it could not stop (unreachable, or refusing) and why."""
    return stopped_with_unstopped(BY_OPERATOR, await _stop(led, attempt, grace_s))


async def _stop(led: LedJob, attempt: job_pb2.Attempt, grace_s: float) -> dict[str, str]:
    """Node -> why its ranks were not stopped (UNREACHABLE, or the node's refusal)."""
    request = agent_service_pb2.StopRanksRequest(
        job_name=led.name, attempt=attempt.number, grace_s=grace_s
    )
    nodes = sorted({r.node for r in attempt.ranks})
    unstopped: dict[str, str] = {}

    async def stop_one(node: str) -> None:
        api = led.nodes[node]
        stopping = asyncio.create_task(api.stop_ranks(request))
        pinging = asyncio.create_task(api.ping())
        try:
            # Until the stop is answered, or either call fails (a ping that fails first
            # gives the stop up).
            await asyncio.wait({stopping, pinging}, return_when=asyncio.FIRST_EXCEPTION)
            if not stopping.done():
                pinging.result()
            reply = stopping.result()
        except NodeUnreachable as exc:
            log.warning("job %s: stopping ranks on %s: %s", led.name, node, exc)
            unstopped[node] = UNREACHABLE
            mark_unreachable(attempt, node, str(exc), api.lost_since() or time.time())
            return
        except NodeRefused as exc:
            log.warning("job %s: stopping ranks on %s: %s", led.name, node, exc)
            unstopped[node] = f"the stop was refused ({exc})"
            return
        finally:
            for task in (stopping, pinging):
                task.cancel()
            await asyncio.gather(stopping, pinging, return_exceptions=True)
        for rank in reply.ranks:
            merge_rank(attempt, rank)

    await asyncio.gather(*(stop_one(n) for n in nodes if n in led.nodes))
    return unstopped


def merge_rank(attempt: job_pb2.Attempt, rank: job_pb2.Rank) -> None:
    """A node's answer about one rank, keeping the figures the leader has if it has none."""
    for existing in attempt.ranks:
        if existing.rank == rank.rank:
            metrics = job_pb2.RankMetrics()
            metrics.CopyFrom(existing.metrics)
            existing.CopyFrom(rank)
            if not rank.HasField("metrics"):
                existing.metrics.CopyFrom(metrics)
            return


async def readopt(store: LeaderStore, led: LedJob) -> job_pb2.Attempt | None:
    """After a leader restart: the attempt to go on with (running, or being stopped), or
    None for a new one."""
    job = store.job(led.name)
    if not job.attempts:
        return None
    attempt = job.attempts[-1]
    if attempt.state in (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_STOPPING):
        return attempt
    if attempt.state == job_pb2.JOB_STATE_STARTING:
        # Some nodes may have started its ranks: stopped, and a new attempt started.
        attempt.ranks.extend(job_pb2.Rank(rank=-1, node=n) for n in led.nodes)
        await stop_attempt(led, attempt, STOP_GRACE_S)
        why = "the leader was restarted while the attempt started"
        told = (EK.JOB_EVENT_KIND_ATTEMPT_FAILED, why)
        store.attempt_edge(led.name, attempt.number, AttemptEdge.START_FAILED, why, told)
    return None
