"""The task half of AgentService: evaluation, quantization, serving and load test tasks on
this node (`agent.tasks.runner.TaskRunner`), every start and stop audited with its operator
(a load test's spec without its token and requests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from gantry.v1 import agent_service_pb2

from agent.rpc.jobs import Context, JobService, operator_of
from agent.tasks.loadtest_task import audit_line
from agent.tasks.runner import TaskError


def spec_details(request: agent_service_pb2.StartTaskRequest) -> dict[str, str]:
    """A start request as the audit trail keeps it."""
    which = request.WhichOneof("spec") or "none"
    if which == "loadtest":
        return {"kind": which, "spec": audit_line(request.loadtest)}
    return {"kind": which, "spec": str(getattr(request, which, "")).replace("\n", " ")}


class TaskRpcs:
    """Mixed into AgentServicer: the task RPCs, delegating to `self.jobs.tasks`."""

    jobs: JobService

    async def StartTask(
        self, request: agent_service_pb2.StartTaskRequest, context: Context
    ) -> agent_service_pb2.StartTaskResponse:
        operator = operator_of(context)
        details = spec_details(request)
        try:
            task = await self.jobs.tasks.start(request)
        except TaskError as exc:
            self.jobs.audit(operator, "task-start", {**details, "outcome": f"refused: {exc}"})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        self.jobs.audit(operator, "task-start", {**details, "task": task.id, "outcome": "ok"})
        return agent_service_pb2.StartTaskResponse(task=task)

    async def StopTask(
        self, request: agent_service_pb2.StopTaskRequest, context: Context
    ) -> agent_service_pb2.StopTaskResponse:
        operator = operator_of(context)
        try:
            task = await self.jobs.tasks.stop(request.task_id, request.grace_s)
        except KeyError as exc:
            reason = str(exc).strip("'\"")
            details = {"task": request.task_id, "outcome": f"refused: {reason}"}
            self.jobs.audit(operator, "task-stop", details)
            await context.abort(grpc.StatusCode.NOT_FOUND, reason)
            raise
        self.jobs.audit(operator, "task-stop", {"task": request.task_id, "outcome": "ok"})
        return agent_service_pb2.StopTaskResponse(task=task)

    async def ListTasks(
        self, request: agent_service_pb2.ListTasksRequest, context: Context
    ) -> agent_service_pb2.ListTasksResponse:
        return agent_service_pb2.ListTasksResponse(tasks=self.jobs.tasks.all())

    async def WatchTask(
        self, request: agent_service_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchTaskResponse]:
        try:
            updates = self.jobs.tasks.watch(request.task_id)
            async for progress, task in updates:
                reply = agent_service_pb2.WatchTaskResponse()
                if progress is not None:
                    reply.progress.CopyFrom(progress)
                if task is not None:
                    reply.task.CopyFrom(task)
                yield reply
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc).strip("'\""))
