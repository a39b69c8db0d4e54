"""AgentService: node info and telemetry here; jobs and tasks from their mixins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, telemetry_pb2

from agent.rpc.jobs import JobRpcs, JobService
from agent.rpc.tasks import TaskRpcs
from agent.telemetry.sampler import Sampler

RECENT_XID_EVENTS = 100
# A watcher that falls this far behind loses its oldest queued samples, not the
# newest: a console wants the present.
WATCH_QUEUE_LIMIT = 120


class AgentServicer(JobRpcs, TaskRpcs, agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    def __init__(self, sampler: Sampler, jobs: JobService) -> None:
        self.sampler = sampler
        self.jobs = jobs

    async def GetNodeInfo(
        self,
        request: agent_service_pb2.GetNodeInfoRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_service_pb2.GetNodeInfoResponse:
        reply = agent_service_pb2.GetNodeInfoResponse(info=self.sampler.node_info())
        latest = self.sampler.latest()
        if latest is not None:
            reply.latest.CopyFrom(latest)
        reply.xid_events.extend(self.sampler.xid_events()[-RECENT_XID_EVENTS:])
        return reply

    async def WatchNode(
        self,
        request: agent_service_pb2.WatchNodeRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[agent_service_pb2.WatchNodeResponse]:
        if request.history_s < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "history_s must be >= 0")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[telemetry_pb2.NodeSample] = asyncio.Queue()

        def enqueue(sample: telemetry_pb2.NodeSample) -> None:
            if queue.qsize() >= WATCH_QUEUE_LIMIT:
                queue.get_nowait()
            queue.put_nowait(sample)

        def on_sample(sample: telemetry_pb2.NodeSample) -> None:
            loop.call_soon_threadsafe(enqueue, sample)

        # Subscribe before reading the history, so no sample falls between them.
        unsubscribe = self.sampler.subscribe(on_sample)
        try:
            last_seq = -1
            if request.replay_history:
                for sample in self.sampler.history(request.history_s or None):
                    yield agent_service_pb2.WatchNodeResponse(sample=sample, replayed=True)
                    last_seq = sample.seq
            while True:
                sample = await queue.get()
                if sample.seq <= last_seq:
                    continue
                last_seq = sample.seq
                yield agent_service_pb2.WatchNodeResponse(sample=sample)
        finally:
            unsubscribe()
