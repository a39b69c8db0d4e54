"""The job half of AgentService: operator verbs (answered by a job's leader) and the
agent-to-agent calls that start and stop this node's ranks."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from gantry.v1 import agent_service_pb2
from gantry.v1.spec_diff import spec_changes

from agent.jobs.checkpoints import list_checkpoints
from agent.jobs.event_bus import EventBus
from agent.jobs.leader.leader import UNKNOWN_OPERATOR, JobError, JobLeader
from agent.jobs.leader.peers import NodeRefused
from agent.jobs.node.launch_checks import LaunchCheckError, check_launch
from agent.jobs.node.logs import rank_log_path, tail_log
from agent.jobs.node.supervisor import LocalSupervisor
from agent.security.tls import verified_identity
from agent.tasks.runner import TaskRunner

log = logging.getLogger("gantry.agent")

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
FOLLOW_POLL_S = 0.25
STATUS_FOR = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "unavailable": grpc.StatusCode.FAILED_PRECONDITION,
}
# Who asked for a job verb: set by the console; only recorded, never trusted for access.
OPERATOR_METADATA_KEY = "x-gantry-operator"
MAX_OPERATOR_CHARS = 64
_NOT_OPERATOR_CHAR = re.compile(r"[^A-Za-z0-9._@-]")


def sanitize_operator(raw: str | bytes | None) -> str:
    """At most 64 characters of ``[A-Za-z0-9._@-]``, others as ``?``; "unknown" if empty."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not raw:
        return UNKNOWN_OPERATOR
    return _NOT_OPERATOR_CHAR.sub("?", raw[:MAX_OPERATOR_CHARS])


def operator_of(context: Context) -> str:
    """The name the operator gives, with the certificate the handshake verified (mTLS)."""
    name = UNKNOWN_OPERATOR
    for key, value in context.invocation_metadata() or ():
        if key == OPERATOR_METADATA_KEY:
            name = sanitize_operator(value)
            break
    cert = verified_identity(context)
    return name if cert is None else f"{name} ({cert})"


async def event_responses(
    bus: EventBus, request: agent_service_pb2.WatchJobEventsRequest
) -> AsyncIterator[agent_service_pb2.WatchJobEventsResponse]:
    """WatchJobEvents' answer from `bus`: batched when asked, else one event a message."""
    batches = bus.follow_batches(
        request.job_name,
        request.after_seq,
        follow=request.follow,
        metrics_tail=request.metrics_tail,
    )
    async for batch in batches:
        if request.batched:
            # What is at hand in one message: a thousand ranks' metrics a second
            # would otherwise be a thousand messages for the console to read.
            yield agent_service_pb2.WatchJobEventsResponse(events=batch)
        else:
            for event in batch:
                yield agent_service_pb2.WatchJobEventsResponse(event=event)


class JobService:
    def __init__(
        self,
        node_name: str,
        supervisor: LocalSupervisor,
        bus: EventBus,
        gpus: list[int],
    ) -> None:
        self.node_name = node_name
        self.supervisor = supervisor
        self.bus = bus
        self.gpus = gpus
        self.leader: JobLeader | None = None
        self.tasks = TaskRunner(supervisor.data_dir, node_name)

    # -- this node's ranks (called by the leader, locally or over gRPC) -------------
    async def start_ranks(
        self, request: agent_service_pb2.StartRanksRequest
    ) -> agent_service_pb2.StartRanksResponse:
        try:
            # The module check runs an interpreter: keep it off the event loop.
            await asyncio.to_thread(check_launch, request.spec, request.resume_from)
        except LaunchCheckError as exc:
            raise NodeRefused(f"{self.node_name}: {exc}") from None
        if request.validate_only:
            return agent_service_pb2.StartRanksResponse()
        try:
            ranks = self.supervisor.start_ranks(
                request.spec,
                request.attempt,
                list(request.ranks),
                request.world_size,
                request.master_addr,
                request.master_port,
                request.resume_from,
                gpus=self.gpus,
                leader=request.leader,
            )
        except ValueError as exc:
            raise NodeRefused(f"{self.node_name}: {exc}") from None
        return agent_service_pb2.StartRanksResponse(ranks=ranks)

    async def stop_ranks(
        self, request: agent_service_pb2.StopRanksRequest
    ) -> agent_service_pb2.StopRanksResponse:
        grace = request.grace_s if request.grace_s > 0 else None
        ranks = await self.supervisor.stop_ranks(request.job_name, request.attempt, grace)
        return agent_service_pb2.StopRanksResponse(ranks=ranks)

    async def request_checkpoint(
        self, request: agent_service_pb2.RequestCheckpointRequest
    ) -> agent_service_pb2.RequestCheckpointResponse:
        asked = self.supervisor.request_checkpoint(
            request.job_name, request.request_id, request.attempt
        )
        return agent_service_pb2.RequestCheckpointResponse(asked=asked)

    def _leader(self) -> JobLeader:
        assert self.leader is not None, "JobService used before its leader was set"
        return self.leader

    def audit(self, operator: str, verb: str, details: dict[str, str]) -> None:
        """One line of this agent's audit trail; a journal error never fails the verb."""
        try:
            self.supervisor.journal.audit(operator, verb, details)
        except Exception:
            log.exception("could not record %s by %s in the audit trail", verb, operator)


async def _abort_job_error(context: Context, exc: JobError) -> None:
    await context.abort(STATUS_FOR.get(exc.code, grpc.StatusCode.INVALID_ARGUMENT), str(exc))


def _restart_details(
    request: agent_service_pb2.RestartJobRequest, leader: JobLeader
) -> dict[str, str]:
    details = {"job": request.name}
    if request.node:
        details["node"] = request.node
    if request.exclude_nodes:
        details["exclude"] = ",".join(request.exclude_nodes)
    if request.include_nodes:
        details["include"] = ",".join(request.include_nodes)
    if request.replace_nodes:
        details["replace"] = ",".join(f"{n}={s}" for n, s in sorted(request.replace_nodes.items()))
    if request.from_checkpoint:
        details["from_checkpoint"] = request.from_checkpoint
    if request.HasField("spec"):
        try:
            changes = spec_changes(leader.spec(request.name), request.spec)
        except JobError:
            changes = []
        details["spec"] = "; ".join(changes) or "unchanged"
    return details


class JobRpcs:
    """Mixed into AgentServicer: the job RPCs, delegating to `self.jobs`."""

    jobs: JobService

    async def _audited(
        self,
        context: Context,
        operator: str,
        verb: str,
        details: dict[str, str],
        action: Awaitable[T],
    ) -> T:
        """Runs a mutating verb and records who asked, what, and how it ended."""
        try:
            result = await action
        except JobError as exc:
            self.jobs.audit(operator, verb, {**details, "outcome": f"refused: {exc}"})
            await _abort_job_error(context, exc)
            raise
        self.jobs.audit(operator, verb, {**details, "outcome": "ok"})
        return result

    async def SubmitJob(
        self, request: agent_service_pb2.SubmitJobRequest, context: Context
    ) -> agent_service_pb2.SubmitJobResponse:
        spec = request.spec
        details = {
            "job": spec.name,
            "nodes": ",".join(n.node for n in spec.nodes),
            "command": " ".join([*spec.command, *spec.args]),
        }
        operator = operator_of(context)
        action = self.jobs._leader().submit(spec, list(request.peers), operator)
        job = await self._audited(context, operator, "submit", details, action)
        return agent_service_pb2.SubmitJobResponse(job=job)

    async def StopJob(
        self, request: agent_service_pb2.StopJobRequest, context: Context
    ) -> agent_service_pb2.StopJobResponse:
        details = {"job": request.name}
        if request.grace_s:
            details["grace_s"] = f"{request.grace_s:g}"
        operator = operator_of(context)
        action = self.jobs._leader().stop(request.name, request.grace_s, operator)
        job = await self._audited(context, operator, "stop", details, action)
        return agent_service_pb2.StopJobResponse(job=job)

    async def RestartJob(
        self, request: agent_service_pb2.RestartJobRequest, context: Context
    ) -> agent_service_pb2.RestartJobResponse:
        leader = self.jobs._leader()
        operator = operator_of(context)
        # Before the restart: afterwards the job's spec may already be the new one.
        details = _restart_details(request, leader)
        action = leader.restart(
            request.name,
            request.node,
            list(request.exclude_nodes),
            request.from_checkpoint,
            operator=operator,
            spec=request.spec if request.HasField("spec") else None,
            include=list(request.include_nodes),
            replace=dict(request.replace_nodes),
        )
        job = await self._audited(context, operator, "restart", details, action)
        return agent_service_pb2.RestartJobResponse(job=job)

    async def ForgetJob(
        self, request: agent_service_pb2.ForgetJobRequest, context: Context
    ) -> agent_service_pb2.ForgetJobResponse:
        operator = operator_of(context)
        action = self.jobs._leader().forget(request.name)
        await self._audited(context, operator, "forget", {"job": request.name}, action)
        return agent_service_pb2.ForgetJobResponse(name=request.name)

    async def ListJobs(
        self, request: agent_service_pb2.ListJobsRequest, context: Context
    ) -> agent_service_pb2.ListJobsResponse:
        return agent_service_pb2.ListJobsResponse(jobs=self.jobs._leader().list_jobs())

    async def DescribeJob(
        self, request: agent_service_pb2.DescribeJobRequest, context: Context
    ) -> agent_service_pb2.DescribeJobResponse:
        try:
            job = self.jobs._leader().describe(request.name)
        except JobError as exc:
            await _abort_job_error(context, exc)
            raise
        checkpoints = await asyncio.to_thread(list_checkpoints, job.spec.checkpoint_dir)
        return agent_service_pb2.DescribeJobResponse(
            job=job,
            checkpoints=checkpoints,
            checkpoint_bytes=sum(c.size_bytes for c in checkpoints),
        )

    async def ListCheckpoints(
        self, request: agent_service_pb2.ListCheckpointsRequest, context: Context
    ) -> agent_service_pb2.ListCheckpointsResponse:
        try:
            spec = self.jobs._leader().spec(request.job_name)
        except JobError as exc:
            await _abort_job_error(context, exc)
            raise
        checkpoints = await asyncio.to_thread(list_checkpoints, spec.checkpoint_dir)
        return agent_service_pb2.ListCheckpointsResponse(checkpoints=checkpoints)

    async def WatchJobEvents(
        self, request: agent_service_pb2.WatchJobEventsRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchJobEventsResponse]:
        async for response in event_responses(self.jobs.bus, request):
            yield response

    async def TailRankLog(
        self, request: agent_service_pb2.TailRankLogRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.TailRankLogResponse]:
        supervisor = self.jobs.supervisor
        stream = request.stream or "stdout"
        try:
            # Looked up once: the follow-up reads go to the file.
            path = rank_log_path(
                supervisor.journal,
                supervisor.node_name,
                request.job_name,
                request.attempt,
                request.rank,
                stream,
            )
            chunk = tail_log(path, stream, request.tail_lines or 100, request.from_offset or None)
        except (KeyError, ValueError) as exc:
            missing = isinstance(exc, KeyError)
            code = grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc).strip("'\""))
            raise
        yield agent_service_pb2.TailRankLogResponse(lines=chunk.lines)
        while request.follow:
            await asyncio.sleep(FOLLOW_POLL_S)
            chunk = tail_log(path, stream, 0, chunk.next_offset)
            if chunk.lines:
                yield agent_service_pb2.TailRankLogResponse(lines=chunk.lines)

    async def StartRanks(
        self, request: agent_service_pb2.StartRanksRequest, context: Context
    ) -> agent_service_pb2.StartRanksResponse:
        try:
            return await self.jobs.start_ranks(request)
        except NodeRefused as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise

    async def StopRanks(
        self, request: agent_service_pb2.StopRanksRequest, context: Context
    ) -> agent_service_pb2.StopRanksResponse:
        return await self.jobs.stop_ranks(request)

    async def RequestCheckpoint(
        self, request: agent_service_pb2.RequestCheckpointRequest, context: Context
    ) -> agent_service_pb2.RequestCheckpointResponse:
        return await self.jobs.request_checkpoint(request)
