"""Job verbs over gRPC: the console finds each job's leader and talks to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2
from gantry.v1.job_tokens import scoped_for

from console.net.agent_client import unreachable_reason
from console.net.agent_link import (
    CONNECT_DEADLINE_S,
    AgentLinks,
    Metadata,
    describe_rpc_error,
    lost_reason,
)
from console.net.cluster_file import ClusterFileError, NodeTarget
from console.net.follow import until_ended

RPC_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
ENDED_JOB_STATES = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_STOPPED}
)


class JobCommandError(Exception):
    """One line for the operator."""


class AgentUnreachable(JobCommandError):
    """An agent the verb needs did not answer: nothing wrong with the input (exit 1)."""


class NotConfirmed(JobCommandError):
    """The operator answered no: nothing was done (exit 1)."""


@dataclass
class LedJob:
    leader: NodeTarget
    job: job_pb2.Job


def _fail(target: NodeTarget, exc: grpc.aio.AioRpcError) -> JobCommandError:
    if exc.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return JobCommandError(exc.details() or exc.code().name)
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return AgentUnreachable(f"{target.name}: {describe_rpc_error(exc)}")
    return JobCommandError(f"{target.name}: {describe_rpc_error(exc)}")


class AgentCalls:
    """Calls to the cluster's agents over `links` (without, its own: `close` it, or use it
    as `async with`), each error one line for the operator; the job and task clients are
    built on it."""

    def __init__(self, targets: list[NodeTarget], links: AgentLinks | None = None) -> None:
        self.targets = {t.name: t for t in targets}
        self._owns_links = links is None
        self.links = links if links is not None else AgentLinks()

    async def close(self) -> None:
        """Closes the client's own links (those it was given stay open)."""
        if self._owns_links:
            await self.links.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def target(self, name: str) -> NodeTarget:
        target = self.targets.get(name)
        if target is None:
            raise JobCommandError(
                f"unknown node {name} (the cluster has {', '.join(sorted(self.targets))})"
            )
        return target

    async def _stub(
        self, target: NodeTarget
    ) -> tuple[agent_service_pb2_grpc.AgentServiceStub, Metadata]:
        """The target's stub and call metadata; a file that cannot be read: JobCommandError,
        unless the agent cannot be reached anyway (AgentUnreachable: that comes first). An
        agent not connected within the connect deadline: AgentUnreachable, once waited for
        per client (its calls would each wait out their timeouts)."""
        link = self.links.link(target)
        try:
            metadata = link.metadata()
            stub = await link.stub()
            if not await link.reachable(CONNECT_DEADLINE_S):
                raise AgentUnreachable(f"{target.name}: {lost_reason(CONNECT_DEADLINE_S)}")
            return stub, metadata
        except ClusterFileError as exc:
            why = await unreachable_reason(link, PROBE_TIMEOUT_S)
            if why:
                raise AgentUnreachable(f"{target.name}: {why}") from None
            raise JobCommandError(str(exc)) from None

    async def _call(self, target: NodeTarget, method: str, request: object) -> object:
        stub, metadata = await self._stub(target)
        try:
            return await getattr(stub, method)(request, metadata=metadata, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise _fail(target, exc) from None


class JobsClient(AgentCalls):
    async def launch(self, spec: job_pb2.JobSpec) -> LedJob:
        leader = self.target(spec.nodes[0].node)
        peers = []
        # The spares too: the leader starts a replaced node's ranks on one of them.
        for name in sorted({n.node for n in spec.nodes} | set(spec.spares)):
            target = self.target(name)
            try:
                token = target.read_token()
            except ClusterFileError as exc:
                raise JobCommandError(str(exc)) from None
            peers.append(
                agent_service_pb2.PeerAgent(
                    name=name,
                    address=target.peer_address,
                    token=scoped_for(token, spec.name),  # the leader keeps a job token, not ours
                    ssh=target.ssh,
                    token_file=target.node_token_file,
                )
            )
        request = agent_service_pb2.SubmitJobRequest(spec=spec, peers=peers)
        reply = await self._call(leader, "SubmitJob", request)
        assert isinstance(reply, agent_service_pb2.SubmitJobResponse)
        return LedJob(leader, reply.job)

    async def list_jobs(self) -> tuple[list[LedJob], list[str]]:
        """Every job any agent leads, and one line per agent that could not answer."""

        async def ask(target: NodeTarget) -> list[LedJob] | str:
            try:
                reply = await self._call(target, "ListJobs", agent_service_pb2.ListJobsRequest())
            except (JobCommandError, ClusterFileError) as exc:
                text = str(exc)
                return text if text.startswith(f"{target.name}:") else f"{target.name}: {text}"
            assert isinstance(reply, agent_service_pb2.ListJobsResponse)
            return [LedJob(target, job) for job in reply.jobs]

        results = await asyncio.gather(*(ask(t) for t in self.targets.values()))
        jobs = [job for r in results if isinstance(r, list) for job in r]
        errors = [r for r in results if isinstance(r, str)]
        jobs.sort(key=lambda j: (j.job.created.seconds, j.job.spec.name))
        return jobs, errors

    async def find(self, name: str) -> LedJob:
        jobs, errors = await self.list_jobs()
        for led in jobs:
            if led.job.spec.name == name:
                return led
        if errors and len(errors) == len(self.targets):
            raise AgentUnreachable(f"no agent answered: {'; '.join(errors)}")
        if errors:
            # Its leader may be the one that did not answer: no reason to doubt the name.
            raise AgentUnreachable(
                f"{'; '.join(errors)}; job {name} is on none of the agents that answered"
            )
        raise JobCommandError(f"no job named {name} on any agent")

    async def describe(self, name: str) -> tuple[LedJob, list[job_pb2.Checkpoint]]:
        led = await self.find(name)
        reply = await self._call(
            led.leader, "DescribeJob", agent_service_pb2.DescribeJobRequest(name=name)
        )
        assert isinstance(reply, agent_service_pb2.DescribeJobResponse)
        return LedJob(led.leader, reply.job), list(reply.checkpoints)

    async def stop(self, name: str, grace_s: float) -> LedJob:
        led = await self.find(name)
        request = agent_service_pb2.StopJobRequest(name=name, grace_s=grace_s)
        reply = await self._call(led.leader, "StopJob", request)
        assert isinstance(reply, agent_service_pb2.StopJobResponse)
        return LedJob(led.leader, reply.job)

    async def restart(
        self,
        name: str,
        node: str,
        exclude: list[str],
        from_checkpoint: str,
        *,
        spec: job_pb2.JobSpec | None = None,
        include: list[str] | None = None,
        replace: dict[str, str] | None = None,
    ) -> LedJob:
        """A new attempt now; with ``spec`` (same name and nodes), the job runs it from then on;
        ``include``: excluded nodes to bring back; ``replace``: node -> the spare to run its
        ranks (a spare -> its node: the ranks go back)."""
        led = await self.find(name)
        request = agent_service_pb2.RestartJobRequest(
            name=name,
            node=node,
            exclude_nodes=exclude,
            from_checkpoint=from_checkpoint,
            spec=spec,
            include_nodes=include or [],
            replace_nodes=replace or {},
        )
        reply = await self._call(led.leader, "RestartJob", request)
        assert isinstance(reply, agent_service_pb2.RestartJobResponse)
        return LedJob(led.leader, reply.job)

    async def forget(self, name: str) -> str:
        """Removes a finished job from its leader's journal (a live one is refused: its
        leader says why); one line saying what was done."""
        led = await self.find(name)
        reply = await self._call(
            led.leader, "ForgetJob", agent_service_pb2.ForgetJobRequest(name=name)
        )
        assert isinstance(reply, agent_service_pb2.ForgetJobResponse)
        return f"forgot {reply.name or name} on {led.leader.name} (checkpoints and logs stay)"

    async def wait_ended(self, name: str, timeout_s: float, poll_s: float = 0.3) -> LedJob:
        """The job once it has ended, or as it is after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            led = await self.find(name)
            if led.job.state in ENDED_JOB_STATES or asyncio.get_running_loop().time() > deadline:
                return led
            await asyncio.sleep(poll_s)

    async def job_ended(self, name: str) -> bool:
        """Whether the job has succeeded, failed or been stopped (or is no more)."""
        try:
            led = await self.find(name)
        except AgentUnreachable:
            return False
        except JobCommandError:
            return True  # forgotten meanwhile
        return led.job.state in ENDED_JOB_STATES

    async def events(
        self, name: str, follow: bool, *, after_seq: int = 0
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """The job's events; ``follow``: then the new ones, until the job has ended and
        every event is read."""
        if not follow:
            async for event in self._events(name, False, after_seq):
                yield event
            return
        last = after_seq
        async for event in until_ended(
            self._events(name, True, after_seq), lambda: self.job_ended(name)
        ):
            last = max(last, event.seq)
            yield event
        async for event in self._events(name, False, last):  # what came as it ended
            yield event

    async def _events(
        self, name: str, follow: bool, after_seq: int
    ) -> AsyncIterator[job_pb2.JobEvent]:
        led = await self.find(name)
        request = agent_service_pb2.WatchJobEventsRequest(
            job_name=name, follow=follow, after_seq=after_seq
        )
        stub, metadata = await self._stub(led.leader)
        call = stub.WatchJobEvents(request, metadata=metadata)
        try:
            async for message in call:
                yield message.event
        except grpc.aio.AioRpcError as exc:
            raise _fail(led.leader, exc) from None
        finally:
            call.cancel()  # the caller stopped reading: the channel stays, the stream ends

    async def logs(
        self, name: str, rank: int, attempt: int, stream: str, tail: int, follow: bool
    ) -> AsyncIterator[job_pb2.LogLine]:
        """A rank's log lines (``attempt`` 0: the latest); ``follow``: then the new ones, until
        the attempt has ended and every line is read."""
        led, _ = await self.describe(name)
        chosen = choose_attempt(led.job, attempt)
        nodes = [r.node for r in chosen.ranks if r.rank == rank]
        if not nodes:
            ranks = ", ".join(str(r.rank) for r in chosen.ranks)
            raise JobCommandError(f"attempt {chosen.number} of {name} has no rank {rank} ({ranks})")
        target = self.target(nodes[0])
        request = agent_service_pb2.TailRankLogRequest(
            job_name=name,
            attempt=chosen.number,
            rank=rank,
            stream=stream,
            tail_lines=tail,
            follow=follow,
        )
        if not follow:
            async for line in self._tail(target, request):
                yield line
            return
        last: int | None = None
        lines = until_ended(
            self._tail(target, request), lambda: self.attempt_ended(name, chosen.number)
        )
        async for line in lines:
            last = line.offset
            yield line
        # What was written as it ended: read on from the last line (itself skipped).
        request.follow = False
        while True:
            if last is not None:
                request.from_offset = last  # 0 reads as unset: the tail, filtered below
            more = [
                line
                async for line in self._tail(target, request)
                if last is None or line.offset > last
            ]
            if not more:
                return
            for line in more:
                yield line
            last = more[-1].offset

    async def attempt_ended(self, name: str, number: int) -> bool:
        """Whether the job has ended, or gone on to an attempt after ``number``."""
        try:
            led = await self.find(name)
        except AgentUnreachable:
            return False
        except JobCommandError:
            return True
        attempts = led.job.attempts
        return led.job.state in ENDED_JOB_STATES or (
            bool(attempts) and attempts[-1].number > number
        )

    async def _tail(
        self, target: NodeTarget, request: agent_service_pb2.TailRankLogRequest
    ) -> AsyncIterator[job_pb2.LogLine]:
        stub, metadata = await self._stub(target)
        call = stub.TailRankLog(request, metadata=metadata)
        try:
            async for message in call:
                for line in message.lines:
                    yield line
        except grpc.aio.AioRpcError as exc:
            raise _fail(target, exc) from None
        finally:
            call.cancel()


def choose_attempt(job: job_pb2.Job, number: int) -> job_pb2.Attempt:
    """The job's attempt ``number`` (0: the latest); JobCommandError naming those it has."""
    attempts = list(job.attempts)
    name = job.spec.name
    if not attempts:
        raise JobCommandError(f"job {name} has no attempt yet")
    if number == 0:
        return attempts[-1]
    for attempt in attempts:
        if attempt.number == number:
            return attempt
    have = ", ".join(str(a.number) for a in attempts)
    raise JobCommandError(
        f"job {name} has no attempt {number} (its attempts: {have}; --attempt 0 is the latest)"
    )
