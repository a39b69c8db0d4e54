"""The job leader (one class, the agent's job API; just past 400 lines, its checks and
stories live in attempt_start, restart_checks, spec_checks, spares and preemption): the agent
of a job's first node starts every rank of every node,
watches them all, and on any failure stops them all and starts a new attempt from
the latest checkpoint, within the job's restart policy.

Here: the operator's verbs and each job's attempt loop. The job's state is in the journal,
written through its state tables (store.py, states.py); starting an attempt is in
attempt_start.py, watching one in watch.py, the restart policy's decisions in policy.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.spec_diff import spec_changes

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import Journal
from agent.jobs.leader.attempt_start import (
    NodeCheckFailed,
    check_nodes,
    first_resume,
    latest_path,
    spare_after_failure,
    start_attempt,
)
from agent.jobs.leader.errors import JobError
from agent.jobs.leader.led_job import STOP_GRACE_S, Command, LedJob, Outcome
from agent.jobs.leader.peer_events import BY_OPERATOR, PeerLedger, with_unknown_ranks
from agent.jobs.leader.peers import NodeApi, RemoteNode
from agent.jobs.leader.policy import PREEMPT_SETTLE_S, after_failure
from agent.jobs.leader.preemption import wait_until_back
from agent.jobs.leader.restart_checks import check_restart_nodes, resolve_from, restart_told
from agent.jobs.leader.spares import check_replace, nodes_to_lead
from agent.jobs.leader.spec_checks import check_replacement, scoped, validate_spec
from agent.jobs.leader.states import ACTIVE_JOB_STATES, JobEdge
from agent.jobs.leader.store import LeaderStore
from agent.jobs.leader.watch import readopt, stop_attempt, stop_by_operator, watch_attempt

__all__ = ["STOP_GRACE_S", "UNKNOWN_OPERATOR", "JobError", "JobLeader", "validate_spec"]

log = logging.getLogger("gantry.agent")

JS = job_pb2.JobState
EK = job_pb2.JobEventKind
UNKNOWN_OPERATOR = "unknown"


class JobLeader:
    def __init__(
        self,
        node_name: str,
        data_dir: Path,
        bus: EventBus,
        local: NodeApi,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        make_remote: Callable[[agent_service_pb2.PeerAgent], NodeApi] = RemoteNode,
        preempt_settle_s: float = PREEMPT_SETTLE_S,
    ) -> None:
        self.node_name = node_name
        self.root = data_dir / "jobs"
        self.bus = bus
        self.local = local
        self.store = LeaderStore(node_name, journal, bus, self.root, clock)
        self._ledger = PeerLedger(node_name, journal, bus)
        self._sleep = sleep
        self._make_remote = make_remote
        self._settle_s = preempt_settle_s
        self._jobs: dict[str, LedJob] = {}

    # -- operator verbs ---------------------------------------------------------
    async def submit(
        self,
        spec: job_pb2.JobSpec,
        peers: list[agent_service_pb2.PeerAgent],
        operator: str = UNKNOWN_OPERATOR,
    ) -> job_pb2.Job:
        validate_spec(spec)
        if self.store.state(spec.name) in ACTIVE_JOB_STATES:
            raise JobError(f"job {spec.name} is already running; stop it first", code="exists")
        # Only job tokens are kept (peers.json, memory), whatever the console sent: one leaked
        # file opens this job's rank calls, not the cluster.
        known = {p.name: scoped(p, spec.name) for p in peers}
        known.setdefault(self.node_name, agent_service_pb2.PeerAgent(name=self.node_name))
        if spec.nodes[0].node != self.node_name:
            raise JobError(
                f"job {spec.name} must be sent to its first node's agent ({spec.nodes[0].node}),"
                f" not {self.node_name}"
            )
        for entry in spec.nodes:
            if entry.node not in known:
                raise JobError(
                    f"unknown node {entry.node} (the cluster has {', '.join(sorted(known))})"
                )
        for spare in spec.spares:
            if spare not in known:
                raise JobError(
                    f"unknown spare {spare} (the cluster has {', '.join(sorted(known))})"
                )
        # This node's events of an earlier job of that name are not this one's.
        seen = {**self._ledger.positions(spec.name), self.node_name: self.bus.last_seq()}
        led = LedJob(spec.name, peers=known, seen=seen)
        led.nodes = {name: self._node(known[name]) for name in nodes_to_lead(spec)}
        # Everything is checked on every node before anything starts.
        await self._check(led, spec, first_resume(spec))
        self._jobs[spec.name] = led
        told = (EK.JOB_EVENT_KIND_SUBMITTED, f"submitted to {self.node_name} by {operator}")
        self.store.submit(spec, list(known.values()), told, {"operator": operator})
        led.task = asyncio.create_task(self._run(led), name=f"job:{spec.name}")
        return self._job_pb(led)

    async def stop(
        self, name: str, grace_s: float, operator: str = UNKNOWN_OPERATOR
    ) -> job_pb2.Job:
        led = self._get(name)
        if self.store.state(name) in ACTIVE_JOB_STATES and led.running():
            grace = grace_s or STOP_GRACE_S
            self.store.event(
                name,
                EK.JOB_EVENT_KIND_OPERATOR_ACTION,
                f"operator stop by {operator} (grace {grace:g}s)",
                details={"operator": operator, "action": "stop", "grace_s": f"{grace:g}"},
            )
            await self._command(led, Command("stop", grace_s=grace))
        return self._job_pb(led)

    async def restart(
        self,
        name: str,
        node: str,
        exclude: list[str],
        from_checkpoint: str,
        *,
        operator: str = UNKNOWN_OPERATOR,
        spec: job_pb2.JobSpec | None = None,
        include: list[str] | None = None,
        replace: dict[str, str] | None = None,
    ) -> job_pb2.Job:
        """A new attempt now; with ``spec``, the job runs that spec from the new attempt on;
        ``exclude`` and ``include`` change the nodes it goes without from then on;
        ``replace`` (running node -> spare, or a spare -> its node back) where ranks run.
        Returns the job as it was before (its last attempt is the one replaced)."""
        led = self._get(name)
        include = include or []
        replace = replace or {}
        current = self.store.spec(name)
        if spec is not None:
            check_replacement(current, spec)
        target = spec if spec is not None else current
        last = self.store.last_attempt(name)
        already = list(last.excluded_nodes) if last is not None else []
        # Everything is refused now, while the running attempt (or a finished job) is untouched.
        excluded = check_restart_nodes(name, target, node, exclude, include, already)
        kept = dict(last.replaced_nodes) if last is not None else {}
        swaps = check_replace(name, target, replace, kept, sorted(excluded)) if replace else kept
        if from_checkpoint:
            from_checkpoint = str(resolve_from(from_checkpoint, target))
        changes: list[str] = []
        if spec is not None:
            changes = spec_changes(current, spec)
        if spec is not None or include or from_checkpoint or replace:
            # Every node of the next attempt sees the checkpoint and takes the spec.
            resume = from_checkpoint or (latest_path(target) if replace else "")
            await self._check(led, target, resume, excluded, swaps)
        command = Command(
            "restart",
            exclude=tuple(exclude),
            include=tuple(include),
            from_checkpoint=from_checkpoint,
            spec=job_pb2.JobSpec.FromString(spec.SerializeToString()) if spec else None,
            replace=dict(replace),
            reason=f"by the operator {operator}",
        )
        why, details = restart_told(
            operator, node, exclude, include, replace, swaps, excluded, target, spec, changes
        )
        self.store.event(name, EK.JOB_EVENT_KIND_OPERATOR_ACTION, why, details=details)
        # The answer is the job as the restart found it: its last attempt is the one the
        # restart replaces (the CLI says "attempt N was the last").
        before = self._job_pb(led)
        if led.running():
            await self._command(led, command)
        else:
            self.store.job_edge(name, JobEdge.REOPEN)
            led.task = asyncio.create_task(self._run(led, command), name=f"job:{name}")
        return before

    async def forget(self, name: str) -> None:
        """Removes an ended job from the journal (its checkpoints and logs stay on disk)."""
        led = self._get(name)
        state = self.store.state(name)
        if state in ACTIVE_JOB_STATES:
            what = job_pb2.JobState.Name(state)[len("JOB_STATE_") :].lower()
            raise JobError(
                f"job {name} is {what}; stop it before forgetting it", code="unavailable"
            )
        if led.running():
            raise JobError(f"job {name} is still ending; forget it in a moment", code="unavailable")
        del self._jobs[name]
        self.store.forget(name)
        for api in led.nodes.values():
            await api.close()

    def list_jobs(self) -> list[job_pb2.Job]:
        return [with_unknown_ranks(self._job_pb(led), led.nodes) for led in self._jobs.values()]

    def describe(self, name: str) -> job_pb2.Job:
        led = self._get(name)
        return with_unknown_ranks(self._job_pb(led), led.nodes)

    def spec(self, name: str) -> job_pb2.JobSpec:
        self._get(name)
        return self.store.spec(name)

    # -- agent lifecycle --------------------------------------------------------
    async def recover(self) -> None:
        """After an agent restart: pick up the jobs this node was leading."""
        self.store.import_job_files()
        for name in self.store.led_jobs():
            peers = self.store.peers(name)
            spec = self.store.spec(name)
            led = LedJob(name, peers, seen=self._ledger.positions(name))
            led.nodes = {n: self._node(peers[n]) for n in nodes_to_lead(spec) if n in peers}
            self._jobs[name] = led
            if self.store.state(name) in ACTIVE_JOB_STATES:
                attempt = self.store.last_attempt(name)
                log.info(
                    "resuming supervision of job %s (attempt %d)",
                    name,
                    attempt.number if attempt is not None else 0,
                )
                led.task = asyncio.create_task(self._run(led, adopt=True), name=f"job:{name}")

    async def close(self) -> None:
        for led in self._jobs.values():
            if led.task is not None:
                led.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await led.task
            for node in led.nodes.values():
                await node.close()

    # -- the attempt loop -------------------------------------------------------
    async def _run(self, led: LedJob, first: Command | None = None, adopt: bool = False) -> None:
        name = led.name
        command = first
        try:
            if adopt and self.store.state(name) == JS.JOB_STATE_PREEMPTED:
                # Led again after a restart: whatever was away, every node must answer.
                command = await self._wait_back(led, recovered=True)
                if command is not None and command.kind == "stop":
                    return self._stopped(led, command)
                adopt = False
            while True:
                attempt = await readopt(self.store, led) if adopt else None
                adopted, adopt = attempt is not None, False
                if attempt is None:
                    attempt = await start_attempt(self.store, led, command)
                    command = None
                if attempt.state == JS.JOB_STATE_STOPPING:  # a stop the last leader began
                    reason = await stop_by_operator(led, attempt, STOP_GRACE_S)
                    outcome = Outcome.STOPPED
                elif attempt.state == JS.JOB_STATE_RUNNING:
                    outcome, reason, command = await watch_attempt(
                        self.store, self._ledger, led, attempt, adopted
                    )
                else:
                    outcome, reason = Outcome.FAILED, attempt.reason
                if outcome is Outcome.PREEMPTED:
                    # Waits as PREEMPTED; no restart spent (the policy is for failures).
                    self.store.attempt_ended(name, attempt, outcome, reason)
                    command = await self._wait_back(led)
                    if command is not None and command.kind == "stop":
                        return self._stopped(led, command)
                    continue
                if outcome is not Outcome.FAILED:
                    self.store.attempt_ended(name, attempt, outcome, reason)
                    if command is not None:
                        command.resolve()
                    if outcome is Outcome.RESTART:
                        continue
                    return
                decision = after_failure(
                    reason, self.store.restarts_used(name), self.store.spec(name).restart
                )
                if not decision.restart:
                    told = (EK.JOB_EVENT_KIND_FAILED, decision.message)
                    self.store.job_edge(name, JobEdge.FAIL, decision.message, told)
                    return
                self.store.job_edge(
                    name,
                    JobEdge.RESTART_AFTER_FAILURE,
                    told=(EK.JOB_EVENT_KIND_RESTARTING, decision.message),
                    restarts_used=decision.restarts_used,
                )
                # A node that keeps failing, is lost or shows a fatal XID: a spare runs its
                # ranks from the next attempt (agent.jobs.leader.spares).
                spare = await spare_after_failure(self.store, led)
                command = await self._backoff(led, decision.backoff_s)
                if command is not None and command.kind == "stop":
                    return self._stopped(led, command)
                if command is None and spare is not None:
                    command = Command("restart", replace=spare.replace, reason=spare.why)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a leader bug must not leave ranks running unsupervised
            log.exception("job %s: leader failed", name)
            await self._leader_failed(led, exc)

    async def _leader_failed(self, led: LedJob, exc: Exception) -> None:
        job = self.store.job(led.name)
        if job.attempts:
            live = led.live if led.live is not None else job.attempts[-1]
            await stop_attempt(led, live, STOP_GRACE_S)
        why = f"leader error: {exc}"
        try:
            self.store.job_edge(led.name, JobEdge.FAIL, why, (EK.JOB_EVENT_KIND_FAILED, why))
        except Exception:
            log.exception("job %s: recording the leader's failure", led.name)

    def _stopped(self, led: LedJob, command: Command) -> None:
        """An operator's stop while no attempt runs (backing off, or preempted)."""
        told = (EK.JOB_EVENT_KIND_STOPPED, BY_OPERATOR)
        self.store.job_edge(led.name, JobEdge.STOP, BY_OPERATOR, told)
        command.resolve()

    async def _wait_back(self, led: LedJob, recovered: bool = False) -> Command | None:
        """A preempted job's wait for its nodes (``preemption.wait_until_back``)."""
        spec = self.store.spec(led.name)
        last = self.store.last_attempt(led.name)
        excluded = set(last.excluded_nodes) if last is not None else set()
        nodes = [n for n in dict.fromkeys(e.node for e in spec.nodes) if n not in excluded]
        away = set(nodes) if recovered else set()
        preempted = nodes if recovered else led.preempted_nodes
        settle_until = led.preempt_deadline + self._settle_s
        return await wait_until_back(
            led,
            nodes,
            preempted,
            settle_until,
            self.store.clock,
            lambda seconds: self._backoff(led, seconds),
            went_away=away,
        )

    async def _backoff(self, led: LedJob, seconds: float) -> Command | None:
        """The policy's pause before the next attempt, or the command that cut it short."""
        getter = asyncio.ensure_future(led.commands.get())
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            getter.cancel()  # a queue's get that is cancelled leaves its item in the queue
        return getter.result() if getter.done() and not getter.cancelled() else None

    # -- helpers ----------------------------------------------------------------
    def _job_pb(self, led: LedJob) -> job_pb2.Job:
        """The job from the journal, its watched attempt's ranks as their events say now."""
        job = self.store.job(led.name)
        live = led.live
        for attempt in job.attempts:
            if live is not None and attempt.number == live.number:
                del attempt.ranks[:]
                attempt.ranks.extend(live.ranks)
        return job

    async def _check(
        self,
        led: LedJob,
        spec: job_pb2.JobSpec,
        resume: str,
        excluded: set[str] | None = None,
        swaps: dict[str, str] | None = None,
    ) -> None:
        try:
            await check_nodes(led, spec, resume, self.node_name, excluded, swaps)
        except NodeCheckFailed as exc:
            raise JobError(str(exc), code="unavailable" if exc.unreachable else "invalid") from None

    def _node(self, peer: agent_service_pb2.PeerAgent) -> NodeApi:
        if peer.name == self.node_name:
            return self.local
        return self._make_remote(peer)

    def _get(self, name: str) -> LedJob:
        led = self._jobs.get(name)
        if led is None:
            raise JobError(f"no job named {name} on {self.node_name}", code="not_found")
        return led

    async def _command(self, led: LedJob, command: Command) -> None:
        command.done = asyncio.get_running_loop().create_future()
        await led.commands.put(command)
        await command.done
