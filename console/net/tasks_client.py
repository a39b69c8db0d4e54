"""Task verbs over gRPC: start, stop, list and watch an agent's eval, quantize and serve
tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from gantry.v1 import agent_service_pb2, task_pb2

from console.net.cluster_file import NodeTarget
from console.net.jobs_client import AgentCalls, JobCommandError, _fail


@dataclass
class NodeTask:
    node: NodeTarget
    task: task_pb2.Task


class TasksClient(AgentCalls):
    async def start(self, node: str, request: agent_service_pb2.StartTaskRequest) -> NodeTask:
        target = self.target(node)
        reply = await self._call(target, "StartTask", request)
        assert isinstance(reply, agent_service_pb2.StartTaskResponse)
        return NodeTask(target, reply.task)

    async def list(self) -> tuple[list[NodeTask], list[str]]:
        async def ask(target: NodeTarget) -> list[NodeTask] | str:
            try:
                reply = await self._call(target, "ListTasks", agent_service_pb2.ListTasksRequest())
            except JobCommandError as exc:
                return f"{target.name}: {exc}"
            assert isinstance(reply, agent_service_pb2.ListTasksResponse)
            return [NodeTask(target, t) for t in reply.tasks]

        results = await asyncio.gather(*(ask(t) for t in self.targets.values()))
        tasks = [t for r in results if isinstance(r, list) for t in r]
        tasks.sort(key=lambda t: (t.task.created.ToNanoseconds(), t.task.id))
        return tasks, [r for r in results if isinstance(r, str)]

    async def find(self, task_id: str) -> NodeTask:
        tasks, errors = await self.list()
        for found in tasks:
            if found.task.id == task_id:
                return found
        hint = f" ({'; '.join(errors)})" if errors else ""
        raise JobCommandError(f"no task {task_id} on any reachable agent{hint}")

    async def stop(self, task_id: str, grace_s: float = 10.0) -> NodeTask:
        found = await self.find(task_id)
        request = agent_service_pb2.StopTaskRequest(task_id=task_id, grace_s=grace_s)
        reply = await self._call(found.node, "StopTask", request)
        assert isinstance(reply, agent_service_pb2.StopTaskResponse)
        return NodeTask(found.node, reply.task)

    async def watch(
        self, node: NodeTarget, task_id: str
    ) -> AsyncIterator[agent_service_pb2.WatchTaskResponse]:
        stub, metadata = await self._stub(node)
        call = stub.WatchTask(
            agent_service_pb2.WatchTaskRequest(task_id=task_id), metadata=metadata
        )
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _fail(node, exc) from None
        finally:
            call.cancel()  # the caller stopped reading: the channel stays, the stream ends
