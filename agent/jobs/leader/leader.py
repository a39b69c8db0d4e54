"""The job leader: the agent of a job's first node starts every rank of every node,
watches them all, and on any failure stops them all and starts a new attempt from
the latest checkpoint, within the job's restart policy.

(Over 400 lines: one attempt loop and the operator verbs share each job's in-memory state;
issue 14 moves that state onto the journal's state tables, and the verbs out.)"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.spec_diff import spec_changes

from agent.jobs.checkpoints import latest_checkpoint, resolve_reference
from agent.jobs.event_bus import MAX_BATCH, EventBus
from agent.jobs.journal import Journal
from agent.jobs.leader.peer_events import PeerLedger, Tally, with_unknown_ranks
from agent.jobs.leader.peers import LocalNode, NodeApi, NodeRefused, NodeUnreachable, RemoteNode
from agent.jobs.leader.rank_layout import assign_ranks
from agent.jobs.leader.universal import (
    UniversalError,
    checkpoint_world_size,
    convert_to_universal,
    nested_deepspeed_tag,
)
from agent.jobs.resume_args import LATEST, spec_args_resume

log = logging.getLogger("gantry.agent")

JS = job_pb2.JobState
EK = job_pb2.JobEventKind
ACTIVE = (
    JS.JOB_STATE_PENDING,
    JS.JOB_STATE_STARTING,
    JS.JOB_STATE_RUNNING,
    JS.JOB_STATE_RESTARTING,
)
STOP_GRACE_S = 10.0
UNKNOWN_OPERATOR = "unknown"


class JobError(Exception):
    """A request the leader refuses; the message is one line naming what to fix."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code  # "invalid", "not_found", "exists", "unavailable"


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    RESTART = "restart"


@dataclass
class Command:
    kind: str  # "stop" or "restart"
    grace_s: float = STOP_GRACE_S
    exclude: tuple[str, ...] = ()
    from_checkpoint: str = ""
    spec: job_pb2.JobSpec | None = None  # restart: the job's spec from the new attempt on
    done: asyncio.Future[None] | None = None


@dataclass
class LedJob:
    job: job_pb2.Job
    peers: dict[str, agent_service_pb2.PeerAgent]
    nodes: dict[str, NodeApi] = field(default_factory=dict)
    commands: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)
    # The last event seq read from each node (its own seq), so a new attempt does not
    # re-read history; a peer's is journaled with the copies of its events (PeerLedger).
    seen: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


def _now_ts(msg: job_pb2.Attempt | job_pb2.Job, attr: str) -> None:
    getattr(msg, attr).FromNanoseconds(time.time_ns())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class JobLeader:
    def __init__(
        self,
        node_name: str,
        data_dir: Path,
        bus: EventBus,
        local: LocalNode,
        journal: Journal,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        make_remote: Callable[[agent_service_pb2.PeerAgent], NodeApi] = RemoteNode,
    ) -> None:
        self.node_name = node_name
        self.root = data_dir / "jobs"
        self.bus = bus
        self.local = local
        self._ledger = PeerLedger(node_name, journal, bus)
        self._sleep = sleep
        self._make_remote = make_remote
        self._jobs: dict[str, LedJob] = {}

    # -- operator verbs ---------------------------------------------------------
    async def submit(
        self,
        spec: job_pb2.JobSpec,
        peers: list[agent_service_pb2.PeerAgent],
        operator: str = UNKNOWN_OPERATOR,
    ) -> job_pb2.Job:
        validate_spec(spec)
        existing = self._jobs.get(spec.name)
        if existing is not None and existing.job.state in ACTIVE:
            raise JobError(f"job {spec.name} is already running; stop it first", code="exists")
        known = {p.name: p for p in peers}
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
        led = LedJob(
            job_pb2.Job(spec=spec, state=JS.JOB_STATE_PENDING, leader=self.node_name),
            peers=known,
            seen=self._ledger.positions(spec.name),
        )
        _now_ts(led.job, "created")
        led.nodes = {name: self._node(known[name]) for name in {n.node for n in spec.nodes}}
        # Everything is checked on every node before anything starts.
        await self._check_nodes(led, _first_resume(spec))
        self._jobs[spec.name] = led
        self._event(
            led,
            EK.JOB_EVENT_KIND_SUBMITTED,
            f"submitted to {self.node_name} by {operator}",
            details={"operator": operator},
        )
        self._save(led)
        led.task = asyncio.create_task(self._run(led), name=f"job:{spec.name}")
        return led.job

    async def stop(
        self, name: str, grace_s: float, operator: str = UNKNOWN_OPERATOR
    ) -> job_pb2.Job:
        led = self._get(name)
        if led.job.state in ACTIVE and led.task is not None and not led.task.done():
            grace = grace_s or STOP_GRACE_S
            self._event(
                led,
                EK.JOB_EVENT_KIND_OPERATOR_ACTION,
                f"operator stop by {operator} (grace {grace:g}s)",
                details={"operator": operator, "action": "stop", "grace_s": f"{grace:g}"},
            )
            await self._command(led, Command("stop", grace_s=grace))
        return led.job

    async def restart(
        self,
        name: str,
        node: str,
        exclude: list[str],
        from_checkpoint: str,
        *,
        operator: str = UNKNOWN_OPERATOR,
        spec: job_pb2.JobSpec | None = None,
    ) -> job_pb2.Job:
        """A new attempt now; with ``spec``, the job runs that spec from the new attempt on."""
        led = self._get(name)
        current = led.job.spec
        if spec is not None:
            _check_replacement(current, spec)
        target = spec if spec is not None else current
        nodes = {n.node for n in current.nodes}
        for bad in [node, *exclude]:
            if bad and bad not in nodes:
                raise JobError(f"node {bad} is not part of job {name} ({', '.join(sorted(nodes))})")
        already = set(led.job.attempts[-1].excluded_nodes) if led.job.attempts else set()
        if exclude and set(exclude) | already >= nodes:
            raise JobError("cannot exclude every node of the job")
        if exclude and latest_checkpoint(target.checkpoint_dir) is None:
            where = target.checkpoint_dir or "the job's checkpoint_dir (unset)"
            raise JobError(f"--exclude needs a checkpoint to convert, and {where} has none")
        if from_checkpoint:
            # Refused now, before the running attempt (or a finished job) is touched.
            found = resolve_reference(from_checkpoint, target.checkpoint_dir, target.working_dir)
            if found is None:
                where = " or ".join(d for d in (target.checkpoint_dir, target.working_dir) if d)
                raise JobError(f"no checkpoint {from_checkpoint} in {where or 'the job'}")
            from_checkpoint = str(found)
        changes: list[str] = []
        if spec is not None:
            changes = spec_changes(current, spec)
            # Refused now, while the running attempt is still untouched.
            await self._check_nodes(led, "", spec, already | set(exclude))
        command = Command(
            "restart",
            exclude=tuple(exclude),
            from_checkpoint=from_checkpoint,
            spec=_copy(spec) if spec is not None else None,
        )
        why = f"operator restart by {operator}{f' (fault on {node})' if node else ''}"
        if exclude:
            why += f" excluding {', '.join(exclude)}"
        details = {"operator": operator, "action": "restart"}
        if spec is not None:
            details["changes"] = "; ".join(changes) or "none"
            why += f"; {details['changes']}" if changes else "; spec unchanged"
        self._event(led, EK.JOB_EVENT_KIND_OPERATOR_ACTION, why, details=details)
        if led.task is not None and not led.task.done():
            await self._command(led, command)
        else:
            led.job.state = JS.JOB_STATE_PENDING
            led.task = asyncio.create_task(self._run(led, command), name=f"job:{name}")
        return led.job

    def list_jobs(self) -> list[job_pb2.Job]:
        return [with_unknown_ranks(led.job, led.nodes) for led in self._jobs.values()]

    def describe(self, name: str) -> job_pb2.Job:
        led = self._get(name)
        return with_unknown_ranks(led.job, led.nodes)

    def spec(self, name: str) -> job_pb2.JobSpec:
        return self._get(name).job.spec

    # -- agent lifecycle --------------------------------------------------------
    async def recover(self) -> None:
        """After an agent restart: pick up the jobs this node was leading."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*/job.pb")):
            job = job_pb2.Job.FromString(path.read_bytes())
            peers = {}
            peers_file = path.parent / "peers.json"
            if peers_file.exists():
                for entry in json.loads(peers_file.read_text()):
                    peers[entry["name"]] = agent_service_pb2.PeerAgent(**entry)
            led = LedJob(job, peers, seen=self._ledger.positions(job.spec.name))
            led.nodes = {
                n: self._node(peers[n]) for n in {x.node for x in job.spec.nodes} if n in peers
            }
            self._jobs[job.spec.name] = led
            if job.state in ACTIVE:
                log.info(
                    "resuming supervision of job %s (attempt %d)", job.spec.name, len(job.attempts)
                )
                led.task = asyncio.create_task(
                    self._run(led, adopt=True), name=f"job:{job.spec.name}"
                )

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
        job = led.job
        command = first
        try:
            while True:
                adopted = (
                    adopt and bool(job.attempts) and job.attempts[-1].state == JS.JOB_STATE_RUNNING
                )
                if adopted:
                    adopt = False
                    attempt = job.attempts[-1]
                else:
                    attempt = await self._start_attempt(led, command)
                    command = None
                outcome, reason = (Outcome.FAILED, attempt.reason)
                if attempt.state == JS.JOB_STATE_RUNNING:
                    outcome, reason, command = await self._watch(led, attempt, adopted)
                if outcome is Outcome.SUCCEEDED:
                    self._finish(
                        led,
                        JS.JOB_STATE_SUCCEEDED,
                        "every rank exited 0",
                        EK.JOB_EVENT_KIND_SUCCEEDED,
                    )
                    return
                if outcome is Outcome.STOPPED:
                    self._finish(led, JS.JOB_STATE_STOPPED, reason, EK.JOB_EVENT_KIND_STOPPED)
                    return
                if outcome is Outcome.RESTART:
                    continue
                policy = job.spec.restart
                if job.restarts_used >= policy.max_restarts:
                    self._finish(
                        led,
                        JS.JOB_STATE_FAILED,
                        f"{reason}; out of restarts ({job.restarts_used}/{policy.max_restarts})",
                        EK.JOB_EVENT_KIND_FAILED,
                    )
                    return
                job.restarts_used += 1
                job.state = JS.JOB_STATE_RESTARTING
                self._event(
                    led,
                    EK.JOB_EVENT_KIND_RESTARTING,
                    f"restart {job.restarts_used}/{policy.max_restarts}"
                    f" in {policy.backoff_s:g}s after: {reason}",
                )
                self._save(led)
                command = await self._backoff(led, policy.backoff_s)
                if command is not None and command.kind == "stop":
                    self._finish(
                        led,
                        JS.JOB_STATE_STOPPED,
                        "stopped by the operator",
                        EK.JOB_EVENT_KIND_STOPPED,
                    )
                    _resolve(command)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a leader bug must not leave ranks running unsupervised
            log.exception("job %s: leader failed", job.spec.name)
            if job.attempts:
                await self._stop_attempt(led, job.attempts[-1], STOP_GRACE_S)
            self._finish(led, JS.JOB_STATE_FAILED, f"leader error: {exc}", EK.JOB_EVENT_KIND_FAILED)

    async def _backoff(self, led: LedJob, seconds: float) -> Command | None:
        try:
            return await asyncio.wait_for(led.commands.get(), timeout=seconds)
        except TimeoutError:
            return None

    async def _start_attempt(self, led: LedJob, command: Command | None) -> job_pb2.Attempt:
        job = led.job
        if command is not None:
            # A restart picked up while backing off is answered here.
            _resolve(command)
            if command.spec is not None:
                job.spec.CopyFrom(command.spec)
                self._save(led)
        spec = job.spec
        previous = job.attempts[-1] if job.attempts else None
        excluded = set(previous.excluded_nodes) if previous is not None else set()
        resume = _latest_path(spec) if previous is not None else ""
        resume = resume or _first_resume(spec)
        if command is not None:
            excluded |= set(command.exclude)
            if command.from_checkpoint:
                resume = command.from_checkpoint
        attempt = job.attempts.add(
            number=len(job.attempts) + 1,
            state=JS.JOB_STATE_STARTING,
            master_port=free_port(),
            excluded_nodes=sorted(excluded),
        )
        _now_ts(attempt, "started")
        job.state = JS.JOB_STATE_STARTING
        layout, world = assign_ranks(list(spec.nodes), excluded)
        if resume:
            try:
                resume = await _loadable_at(Path(resume), world)
            except UniversalError as exc:
                return self._attempt_failed(led, attempt, str(exc))
        attempt.resumed_from = resume
        master_addr = await self._master_addr(led, [n for n, _ in layout])
        self._event(
            led,
            EK.JOB_EVENT_KIND_ATTEMPT_STARTED,
            f"attempt {attempt.number}: {world} ranks on {', '.join(n for n, _ in layout)}"
            + (f", resuming from {resume}" if resume else ", fresh start"),
            attempt=attempt.number,
        )
        requests = {
            node: agent_service_pb2.StartRanksRequest(
                spec=spec,
                attempt=attempt.number,
                master_addr=master_addr,
                master_port=attempt.master_port,
                world_size=world,
                ranks=ranks,
                resume_from=resume,
                leader=self.node_name,
            )
            for node, ranks in layout
        }
        # Every node at once: a restart should not wait on the nodes one by one.
        replies = await asyncio.gather(
            *(led.nodes[node].start_ranks(request) for node, request in requests.items()),
            return_exceptions=True,
        )
        failures = [
            (node, reply)
            for node, reply in zip(requests, replies, strict=True)
            if isinstance(reply, BaseException)
        ]
        if failures:
            stop = agent_service_pb2.StopRanksRequest(
                job_name=spec.name, attempt=attempt.number, grace_s=STOP_GRACE_S
            )
            for node, reply in zip(requests, replies, strict=True):
                if not isinstance(reply, BaseException):
                    with contextlib.suppress(NodeUnreachable, NodeRefused):
                        await led.nodes[node].stop_ranks(stop)
            node, error = failures[0]
            if not isinstance(error, NodeUnreachable | NodeRefused):
                raise error
            return self._attempt_failed(led, attempt, f"could not start ranks on {node}: {error}")
        for reply in replies:
            assert isinstance(reply, agent_service_pb2.StartRanksResponse)
            attempt.ranks.extend(reply.ranks)
        attempt.state = JS.JOB_STATE_RUNNING
        job.state = JS.JOB_STATE_RUNNING
        self._save(led)
        return attempt

    def _attempt_failed(
        self, led: LedJob, attempt: job_pb2.Attempt, reason: str
    ) -> job_pb2.Attempt:
        attempt.state = JS.JOB_STATE_FAILED
        attempt.reason = reason
        _now_ts(attempt, "ended")
        self._event(led, EK.JOB_EVENT_KIND_ATTEMPT_FAILED, reason, attempt=attempt.number)
        self._save(led)
        return attempt

    async def _watch(
        self, led: LedJob, attempt: job_pb2.Attempt, adopted: bool = False
    ) -> tuple[Outcome, str, Command | None]:
        name = led.job.spec.name
        # Bounded: a leader busy stopping ranks holds its peers' streams back, not its memory.
        queue: asyncio.Queue[tuple[str, job_pb2.JobEvent]] = asyncio.Queue(MAX_BATCH)
        tally = Tally(attempt)
        if adopted:
            # What this leader knew before its restart: the ranks' figures, and perhaps a
            # failure or the last exit it copied but had no time to act on.
            led.seen[self.node_name] = await self._ledger.replay(name, attempt.number, tally)

        async def pump(node: str) -> None:
            events = led.nodes[node].events(name, led.seen.get(node, 0))
            async with contextlib.aclosing(events):
                async for event in events:
                    await queue.put((node, event))

        pumps = [asyncio.create_task(pump(n)) for n in sorted({r.node for r in attempt.ranks})]
        getter: asyncio.Task[tuple[str, job_pb2.JobEvent]] | None = None
        commander: asyncio.Task[Command] | None = None
        try:
            while not (tally.failure or tally.succeeded):
                getter = getter or asyncio.create_task(queue.get())
                commander = commander or asyncio.create_task(led.commands.get())
                done, _ = await asyncio.wait(
                    {getter, commander}, return_when=asyncio.FIRST_COMPLETED
                )
                if commander in done:
                    command = commander.result()
                    commander = None
                    await self._stop_attempt(led, attempt, command.grace_s)
                    if command.kind == "stop":
                        attempt.state = JS.JOB_STATE_STOPPED
                        attempt.reason = "stopped by the operator"
                        self._save(led)
                        _resolve(command)
                        return Outcome.STOPPED, "stopped by the operator", None
                    attempt.state = JS.JOB_STATE_STOPPED
                    attempt.reason = "restarted by the operator"
                    self._save(led)
                    _resolve(command)
                    return Outcome.RESTART, attempt.reason, command
                if getter not in done:
                    continue
                node, event = getter.result()
                getter = None
                led.seen[node] = max(led.seen.get(node, 0), event.seq)
                if event.attempt != attempt.number:
                    continue
                if node != self.node_name:
                    self._ledger.copy(name, node, event)
                tally.add(event)
            if not tally.failure:
                attempt.state = JS.JOB_STATE_SUCCEEDED
                _now_ts(attempt, "ended")
                return Outcome.SUCCEEDED, "", None
            await self._stop_attempt(led, attempt, STOP_GRACE_S)
            attempt.state = JS.JOB_STATE_FAILED
            attempt.reason = tally.failure
            self._event(
                led, EK.JOB_EVENT_KIND_ATTEMPT_FAILED, tally.failure, attempt=attempt.number
            )
            self._save(led)
            return Outcome.FAILED, tally.failure, None
        finally:
            for task in [*pumps, getter, commander]:
                if task is not None:
                    task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _stop_attempt(self, led: LedJob, attempt: job_pb2.Attempt, grace_s: float) -> None:
        request = agent_service_pb2.StopRanksRequest(
            job_name=led.job.spec.name, attempt=attempt.number, grace_s=grace_s
        )
        nodes = sorted({r.node for r in attempt.ranks})

        async def stop_one(node: str) -> None:
            try:
                reply = await led.nodes[node].stop_ranks(request)
            except (NodeUnreachable, NodeRefused) as exc:
                log.warning("job %s: stopping ranks on %s: %s", led.job.spec.name, node, exc)
                return
            for rank in reply.ranks:
                _merge_rank(attempt, rank)

        await asyncio.gather(*(stop_one(n) for n in nodes))
        _now_ts(attempt, "ended")

    # -- helpers ----------------------------------------------------------------
    async def _check_nodes(
        self,
        led: LedJob,
        resume: str,
        spec: job_pb2.JobSpec | None = None,
        excluded: set[str] | None = None,
    ) -> None:
        """Every node (but ``excluded``) agrees to run ``spec`` (default: the job's)."""
        spec = spec if spec is not None else led.job.spec
        layout, world = assign_ranks(list(spec.nodes), excluded or set())

        async def check(node: str, ranks: list[int]) -> None:
            api = led.nodes[node]
            try:
                await api.ping()
                await api.start_ranks(
                    agent_service_pb2.StartRanksRequest(
                        spec=spec,
                        attempt=0,
                        world_size=world,
                        ranks=ranks,
                        resume_from=resume,
                        validate_only=True,
                        leader=self.node_name,
                    )
                )
            except NodeUnreachable as exc:
                raise JobError(str(exc), code="unavailable") from None
            except NodeRefused as exc:
                raise JobError(str(exc)) from None

        await asyncio.gather(*(check(n, r) for n, r in layout))

    async def _master_addr(self, led: LedJob, nodes: list[str]) -> str:
        for name in nodes:
            node = led.nodes.get(name)
            if isinstance(node, RemoteNode):
                # SSH mode: the address this node reaches that peer from.
                with contextlib.suppress(NodeUnreachable):
                    ip = await node.local_ip()
                    if ip is not None:
                        return "127.0.0.1" if ipaddress.ip_address(ip).is_loopback else ip
        hosts = {p.address.rpartition(":")[0] for p in led.peers.values() if p.address}
        if all(h in ("127.0.0.1", "localhost", "[::1]", "") for h in hosts):
            return "127.0.0.1"
        return socket.getfqdn()

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

    def _event(
        self,
        led: LedJob,
        kind: job_pb2.JobEventKind,
        message: str,
        attempt: int = 0,
        details: dict[str, str] | None = None,
    ) -> None:
        event = job_pb2.JobEvent(
            job_name=led.job.spec.name,
            attempt=attempt or len(led.job.attempts),
            kind=kind,
            node=self.node_name,
            rank=-1,
            message=message,
            details=details or {},
        )
        event.time.FromNanoseconds(time.time_ns())
        self.bus.publish(event)
        log.info("job %s: %s", led.job.spec.name, message)

    def _finish(
        self,
        led: LedJob,
        state: job_pb2.JobState,
        reason: str,
        kind: job_pb2.JobEventKind,
    ) -> None:
        led.job.state = state
        led.job.reason = reason
        self._event(led, kind, reason)
        self._save(led)

    def _save(self, led: LedJob) -> None:
        folder = self.root / led.job.spec.name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "job.pb.tmp"
        tmp.write_bytes(led.job.SerializeToString())
        tmp.replace(folder / "job.pb")
        peers_file = folder / "peers.json"
        if not peers_file.exists():
            # Holds the peers' tokens: private to the agent's user.
            fd = os.open(peers_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            entries = [
                {
                    "name": p.name,
                    "address": p.address,
                    "token": p.token,
                    "ssh": p.ssh,
                    "token_file": p.token_file,
                }
                for p in led.peers.values()
            ]
            with os.fdopen(fd, "w") as handle:
                json.dump(entries, handle)


def _latest_path(spec: job_pb2.JobSpec) -> str:
    path = latest_checkpoint(spec.checkpoint_dir)
    return str(path) if path is not None else ""


async def _loadable_at(checkpoint: Path, world: int) -> str:
    """A checkpoint the new world can load: ``checkpoint`` itself, or its universal
    conversion when plain ZeRO partitions were written by another world size."""
    written = checkpoint_world_size(checkpoint)
    if written in (0, world):
        inner = nested_deepspeed_tag(checkpoint)
        written = checkpoint_world_size(inner) if inner is not None else 0
        if written not in (0, world):
            raise UniversalError(
                f"{checkpoint} holds DeepSpeed ZeRO states of {written} rank(s) and this attempt"
                f" has {world}; the script's own DeepSpeed resume loads them only at {written}"
                " (convert with ds_to_universal and load it with checkpoint.load_universal)"
            )
        return str(checkpoint)
    return await convert_to_universal(checkpoint)


def _first_resume(spec: job_pb2.JobSpec) -> str:
    """What a job's first attempt resumes from: the policy's checkpoint; with ``latest``,
    the job's own latest; else a checkpoint its args name (continual training from
    another job's checkpoint), so the leader can convert it for another world size."""
    policy = spec.restart.resume
    if policy and policy != LATEST:
        found = resolve_reference(policy, spec.checkpoint_dir, spec.working_dir)
        return str(found) if found is not None else policy  # the node checks refuse it
    given = spec_args_resume(spec)
    if LATEST in (policy, given) and (own := _latest_path(spec)):
        return own
    if given and given != LATEST:
        found = resolve_reference(given, spec.checkpoint_dir, spec.working_dir)
        return str(found) if found is not None else ""
    return ""


def _merge_rank(attempt: job_pb2.Attempt, rank: job_pb2.Rank) -> None:
    for existing in attempt.ranks:
        if existing.rank == rank.rank:
            metrics = job_pb2.RankMetrics()
            metrics.CopyFrom(existing.metrics)
            existing.CopyFrom(rank)
            if not rank.HasField("metrics"):
                existing.metrics.CopyFrom(metrics)
            return


def _copy(spec: job_pb2.JobSpec) -> job_pb2.JobSpec:
    copy = job_pb2.JobSpec()
    copy.CopyFrom(spec)
    return copy


def _node_list(spec: job_pb2.JobSpec) -> list[tuple[str, int]]:
    return [(n.node, n.slots or 1) for n in spec.nodes]


def _check_replacement(current: job_pb2.JobSpec, new: job_pb2.JobSpec) -> None:
    """A restart's new spec: valid, and for the same job on the same nodes."""
    if new.name != current.name:
        raise JobError(
            f"the new spec is for job {new.name or '(unnamed)'}, not {current.name};"
            " a restart keeps the job's name"
        )
    validate_spec(new)
    if _node_list(new) != _node_list(current):
        raise JobError(
            f"the new spec of job {current.name} runs on [{_show_nodes(new)}], not"
            f" [{_show_nodes(current)}]; a restart keeps the job's nodes"
            " (use --exclude to go on without one)"
        )


def _show_nodes(spec: job_pb2.JobSpec) -> str:
    return ", ".join(f"{node} slots={slots}" for node, slots in _node_list(spec)) or "none"


def _resolve(command: Command) -> None:
    if command.done is not None and not command.done.done():
        command.done.set_result(None)


def validate_spec(spec: job_pb2.JobSpec) -> None:
    """The leader's own check of what the console already validated: RPCs can come
    from anywhere."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", spec.name):
        raise JobError(f"job name {spec.name!r} must be lower-case letters, digits and '-'")
    if not spec.nodes:
        raise JobError(f"job {spec.name} names no nodes")
    if not spec.command:
        raise JobError(f"job {spec.name} has no command")
    seen: set[str] = set()
    for entry in spec.nodes:
        if entry.node in seen:
            raise JobError(f"node {entry.node} is listed twice")
        seen.add(entry.node)
    for field_name in ("hang_timeout_s", "collective_timeout_s"):
        if getattr(spec, field_name) < 0:
            raise JobError(f"{field_name} must be >= 0")
    if spec.restart.backoff_s < 0:
        raise JobError("restart.backoff_s must be >= 0")
    if spec.deepspeed_config_json:
        try:
            config = json.loads(spec.deepspeed_config_json)
        except (ValueError, RecursionError):
            raise JobError(f"job {spec.name}: deepspeed_config_json is not valid JSON") from None
        if not isinstance(config, dict):
            raise JobError(f"job {spec.name}: deepspeed_config_json must be a JSON object")
