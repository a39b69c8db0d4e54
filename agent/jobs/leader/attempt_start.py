"""How the leader starts an attempt: what it resumes from (converted for the new world
size when needed), where its ranks go (a replaced node's on its spare), and every node asked
at once; the checks every node makes before a job (or a restart's new spec) is accepted;
and, after a failure, which nodes a spare should replace."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import LATEST, spec_args_resume

from agent.jobs.checkpoints import latest_checkpoint, resolve_reference
from agent.jobs.leader.batch_keep import batch_for_world
from agent.jobs.leader.led_job import STOP_GRACE_S, Command, LedJob
from agent.jobs.leader.peers import NodeRefused, NodeUnreachable, RemoteNode
from agent.jobs.leader.policy import excluded_after
from agent.jobs.leader.rank_layout import assign_ranks
from agent.jobs.leader.spares import (
    Replacement,
    fatal_alerts,
    nodes_to_lead,
    placed,
    replacement_for,
    swaps_after,
)
from agent.jobs.leader.states import AttemptEdge, JobEdge
from agent.jobs.leader.store import LeaderStore
from agent.jobs.leader.universal import (
    UniversalError,
    checkpoint_world_size,
    convert_to_universal,
    nested_deepspeed_tag,
)

EK = job_pb2.JobEventKind
JS = job_pb2.JobState


class NodeCheckFailed(Exception):
    """A node refused (or could not be asked about) the job; ``unreachable`` says which."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def start_attempt(
    store: LeaderStore, led: LedJob, command: Command | None
) -> job_pb2.Attempt:
    """The job's next attempt, RUNNING with its ranks, or FAILED with the reason."""
    name = led.name
    if command is not None:
        command.resolve()  # a restart picked up while backing off is answered here
    previous = store.last_attempt(name)
    new_spec = command.spec if command is not None else None
    spec = new_spec if new_spec is not None else store.spec(name)
    excluded = excluded_after(
        previous.excluded_nodes if previous is not None else (),
        command.exclude if command is not None else (),
        command.include if command is not None else (),
    )
    kept = dict(previous.replaced_nodes) if previous is not None else {}
    swaps = swaps_after(kept, command.replace if command is not None else {})
    resume = latest_path(spec) if previous is not None else ""
    resume = resume or first_resume(spec)
    if command is not None and command.from_checkpoint:
        resume = command.from_checkpoint
    port = free_port()
    number = store.new_attempt(name, port, excluded, new_spec, swaps)
    attempt = job_pb2.Attempt(
        number=number,
        state=JS.JOB_STATE_STARTING,
        master_port=port,
        excluded_nodes=excluded,
        replaced_nodes=swaps,
    )
    spec_layout, world = assign_ranks(list(spec.nodes), set(excluded))
    layout = placed(spec_layout, swaps)
    if swaps != kept:
        _tell_replaced(store, name, number, spec_layout, kept, swaps, command)
    # The job's spec is written for its whole world; without some nodes, the ranks run it
    # with the gradient accumulation that keeps the global batch.
    batch = batch_for_world(spec, set(excluded))
    if resume:
        try:
            resume = await loadable_at(Path(resume), world)
        except UniversalError as exc:
            return _start_failed(store, attempt, name, str(exc))
        store.set_resumed_from(name, number, resume)
    addr = await master_addr(led, [n for n, _ in layout])
    store.event(
        name,
        EK.JOB_EVENT_KIND_ATTEMPT_STARTED,
        f"attempt {number}: {world} ranks on {', '.join(n for n, _ in layout)}"
        + (f", resuming from {resume}" if resume else _no_resume(spec, number))
        + (f"; {batch.message}" if batch.message else ""),
        attempt=number,
        details=batch.details,
    )
    requests = {
        node: agent_service_pb2.StartRanksRequest(
            spec=batch.spec,
            attempt=number,
            master_addr=addr,
            master_port=port,
            world_size=world,
            ranks=ranks,
            resume_from=resume,
            leader=store.node_name,
        )
        for node, ranks in layout
    }
    # Every node at once: a restart should not wait on the nodes one by one.
    replies = await asyncio.gather(
        *(led.nodes[node].start_ranks(request) for node, request in requests.items()),
        return_exceptions=True,
    )
    answers = list(zip(requests, replies, strict=True))
    failures = [(node, reply) for node, reply in answers if isinstance(reply, BaseException)]
    if failures:
        stop = agent_service_pb2.StopRanksRequest(
            job_name=name, attempt=number, grace_s=STOP_GRACE_S
        )
        for node, reply in answers:
            if not isinstance(reply, BaseException):
                with contextlib.suppress(NodeUnreachable, NodeRefused):
                    await led.nodes[node].stop_ranks(stop)
        node, error = failures[0]
        if not isinstance(error, NodeUnreachable | NodeRefused):
            raise error
        return _start_failed(store, attempt, name, f"could not start ranks on {node}: {error}")
    for _, reply in answers:
        assert isinstance(reply, agent_service_pb2.StartRanksResponse)
        attempt.ranks.extend(reply.ranks)
    attempt.state = JS.JOB_STATE_RUNNING
    with store.journal.transaction():
        store.attempt_edge(name, number, AttemptEdge.RANKS_STARTED, ranks=attempt.ranks)
        store.job_edge(name, JobEdge.ATTEMPT_RUNNING)
    return attempt


def _start_failed(
    store: LeaderStore, attempt: job_pb2.Attempt, name: str, reason: str
) -> job_pb2.Attempt:
    told = (EK.JOB_EVENT_KIND_ATTEMPT_FAILED, reason)
    store.attempt_edge(name, attempt.number, AttemptEdge.START_FAILED, reason, told)
    attempt.state = JS.JOB_STATE_FAILED
    attempt.reason = reason
    return attempt


async def check_nodes(
    led: LedJob,
    spec: job_pb2.JobSpec,
    resume: str,
    leader: str,
    excluded: set[str] | None = None,
    swaps: Mapping[str, str] | None = None,
) -> None:
    """Every node (but ``excluded``; a replaced node's spare in its place) agrees to run
    ``spec``; raises NodeCheckFailed."""
    spec_layout, world = assign_ranks(list(spec.nodes), excluded or set())
    layout = placed(spec_layout, swaps or {})
    spares = set((swaps or {}).values())

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
                    leader=leader,
                )
            )
        except NodeUnreachable as exc:
            raise NodeCheckFailed(str(exc), unreachable=True) from None
        except NodeRefused as exc:
            why = str(exc)
            if node in spares and "does not exist" in why:
                why += (
                    f" (spare {node} must see the job's checkpoint_dir"
                    f" {spec.checkpoint_dir or '(unset)'}: a node-local checkpoint_dir"
                    " cannot be resumed on a spare)"
                )
            raise NodeCheckFailed(why, unreachable=False) from None

    await asyncio.gather(*(check(n, r) for n, r in layout))


async def master_addr(led: LedJob, nodes: list[str]) -> str:
    for name in nodes:
        node = led.nodes.get(name)
        if isinstance(node, RemoteNode):
            # SSH mode: the address this node reaches that peer from.
            with contextlib.suppress(NodeUnreachable):
                ip = await node.local_ip()
                if ip is not None:
                    return "127.0.0.1" if ipaddress.ip_address(ip).is_loopback else ip
    hosts = {p.address.rpartition(":")[0] for p in led.peers.values() if p.address}
    if all(h in LOOPBACK_HOSTS for h in hosts):
        return "127.0.0.1"
    return rank0_host(led.peers, nodes) or socket.getfqdn()


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "")


def rank0_host(peers: Mapping[str, agent_service_pb2.PeerAgent], nodes: list[str]) -> str:
    """Direct mode: the host rank 0's node is reached at (the cluster file's), which its
    peers reach too; this machine's own name may resolve to an address they cannot reach
    (another interface, or 127.0.1.1). "" when there is none to use."""
    peer = peers.get(nodes[0]) if nodes else None
    if peer is None or peer.ssh or not peer.address:
        return ""
    host = peer.address.rpartition(":")[0]
    if host in LOOPBACK_HOSTS or ":" in host or host.startswith("["):
        return ""  # IPv6 literals: left to the host's name, as before
    return host


def latest_path(spec: job_pb2.JobSpec) -> str:
    path = latest_checkpoint(spec.checkpoint_dir)
    return str(path) if path is not None else ""


async def loadable_at(checkpoint: Path, world: int) -> str:
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


def _no_resume(spec: job_pb2.JobSpec, number: int) -> str:
    """What an attempt that Gantry resumes from nothing says: a later attempt of a job
    without a checkpoint_dir may still resume itself (a script loading its own snapshot)."""
    if number > 1 and not spec.checkpoint_dir:
        return ", no checkpoint_dir to resume from (the script resumes itself if it does)"
    return ", fresh start"


def first_resume(spec: job_pb2.JobSpec) -> str:
    """What a job's first attempt resumes from: the policy's checkpoint; with ``latest``,
    the job's own latest; else a checkpoint its args name (continual training from
    another job's checkpoint), so the leader can convert it for another world size."""
    policy = spec.restart.resume
    if policy and policy != LATEST:
        found = resolve_reference(policy, spec.checkpoint_dir, spec.working_dir)
        return str(found) if found is not None else policy  # the node checks refuse it
    given = spec_args_resume(spec)
    if LATEST in (policy, given) and (own := latest_path(spec)):
        return own
    if given and given != LATEST:
        found = resolve_reference(given, spec.checkpoint_dir, spec.working_dir)
        return str(found) if found is not None else ""
    return ""


def _tell_replaced(
    store: LeaderStore,
    name: str,
    number: int,
    spec_layout: list[tuple[str, list[int]]],
    kept: Mapping[str, str],
    swaps: Mapping[str, str],
    command: Command | None,
) -> None:
    """One NODE_REPLACED event for the replacements this attempt changes, and why."""
    ranks = dict(spec_layout)
    moves = []
    for node in sorted(set(kept) | set(swaps)):
        was, now = kept.get(node, node), swaps.get(node, node)
        if was != now:
            which = ", ".join(str(r) for r in ranks.get(node, [])) or "none"
            instead = "" if was == node else f" instead of {was}"
            moves.append(f"{node}'s ranks ({which}) run on {now}{instead}")
    why = command.reason if command is not None and command.reason else "by the operator"
    store.event(
        name,
        EK.JOB_EVENT_KIND_NODE_REPLACED,
        f"attempt {number}: {'; '.join(moves)} ({why})",
        attempt=number,
        details={node: spare for node, spare in swaps.items()} | {"reason": why},
    )


async def unhealthy_nodes(led: LedJob, nodes: Iterable[str]) -> dict[str, str]:
    """The nodes of ``nodes`` whose agent does not answer a ping, each with why."""

    async def ping(node: str) -> str:
        api = led.nodes.get(node)
        if api is None:
            return "is not known to the leader"
        try:
            await api.ping()
        except (NodeUnreachable, NodeRefused) as exc:
            return f"failed its health check ({exc})"
        return ""

    names = sorted(set(nodes))
    answers = await asyncio.gather(*(ping(n) for n in names))
    return {n: why for n, why in zip(names, answers, strict=True) if why}


async def spare_after_failure(store: LeaderStore, led: LedJob) -> Replacement | None:
    """After a failed attempt: spares for the nodes that failed it repeatedly, lost their
    agent, or showed a fatal XID (spares.replacement_for), or None."""
    spec = store.spec(led.name)
    if not spec.spares:
        return None
    attempts = list(store.job(led.name).attempts)
    if not attempts:
        return None
    alerts = store.journal.events_after(0, led.name, kinds=[EK.JOB_EVENT_KIND_ALERT])
    unhealthy = fatal_alerts(alerts, attempts[-1].number)
    unhealthy.update(await unhealthy_nodes(led, nodes_to_lead(spec)))
    return replacement_for(spec, attempts, unhealthy)
