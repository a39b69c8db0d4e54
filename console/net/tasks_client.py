"""Task verbs over gRPC: start, stop, list and watch an agent's eval, quantize and serve
tasks; and the start requests the CLI and the console both send."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from gantry.v1 import agent_service_pb2, job_pb2, task_pb2

from console.model.cost import arg_value
from console.model.serve_form import ServeSettings, checked
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import AgentCalls, JobCommandError, JobsClient, _fail


@dataclass
class NodeTask:
    node: NodeTarget
    task: task_pb2.Task


def completions_url(found: NodeTask) -> str:
    """A serve task's OpenAI-compatible completions URL ("" without HTTP): https where its
    agent uses mutual TLS, as its server then does."""
    if not found.task.http_endpoint:
        return ""
    scheme = "https" if found.node.tls is not None else "http"
    return f"{scheme}://{found.task.http_endpoint}/v1/completions"


def job_paths(spec: job_pb2.JobSpec) -> tuple[str, str]:
    """(final model dir, held-out data) of a job trained by agent.train."""
    args = list(spec.args)
    base = Path(spec.working_dir or ".")
    out = arg_value(args, "--output_dir")
    data = arg_value(args, "--data")
    model = str(base / out / "final") if out else ""
    heldout = ""
    if data:
        data_path = base / data
        heldout = str(data_path.parent / "heldout.jsonl") if data_path.suffix else ""
    return os.path.normpath(model) if model else "", os.path.normpath(heldout) if heldout else ""


def quantize_request(
    model_dir: str,
    out: str = "",
    *,
    weight_only: bool = False,
    eval_data: str = "",
    max_samples: int = 0,
) -> agent_service_pb2.StartTaskRequest:
    """int8 of `model_dir` into `out` (default MODEL_DIR-int8)."""
    request = agent_service_pb2.StartTaskRequest()
    q = request.quantize
    q.model_dir = os.path.abspath(model_dir)
    q.output_dir = os.path.abspath(out or model_dir.rstrip("/") + "-int8")
    q.int8, q.weight_only = True, weight_only
    q.eval_data_path = os.path.abspath(eval_data) if eval_data else ""
    q.eval_max_samples = max(0, max_samples)
    return request


def serve_request(settings: ServeSettings) -> agent_service_pb2.StartTaskRequest:
    """The serve task `gantry serve` and the tasks screen's dialog ask for, once the
    settings pass console.model.serve_form.checked (ServeFormError else). Defaults left
    unset are the server's: its queue delay, and its batch size (8 on CPU, from free
    memory on a GPU)."""
    checked(settings)
    request = agent_service_pb2.StartTaskRequest()
    s = request.serve
    s.model_dir = os.path.abspath(settings.model_dir)
    s.port, s.max_batch_size = settings.port, settings.max_batch_size
    if settings.max_queue_delay_ms is not None:  # else the server's default
        s.max_queue_delay_ms = settings.max_queue_delay_ms
    s.http_port, s.engine_cpus = settings.http_port, settings.engine_cpus
    s.stream_interval = settings.stream_interval if settings.stream_interval > 1 else 0
    if settings.prefix_cache_mb is not None:  # else the server's default
        s.prefix_cache_mb = settings.prefix_cache_mb
    return request


class TasksClient(AgentCalls):
    async def eval_request(
        self, job: str = "", model: str = "", data: str = "", node: str = "", max_samples: int = 0
    ) -> tuple[str, agent_service_pb2.StartTaskRequest]:
        """(node, request) evaluating a job's final model on its held-out data, on its
        leader (or `model` on `data`, on the first node); one line naming what is missing."""
        request = agent_service_pb2.StartTaskRequest()
        spec = request.eval
        if job:
            led, _ = await JobsClient(list(self.targets.values()), self.links).describe(job)
            final, heldout = job_paths(led.job.spec)
            spec.job_name = job
            spec.model_dir = model or final
            spec.data_path = data or heldout
            spec.targets.CopyFrom(led.job.spec.eval_targets)
            node = node or led.leader.name
        elif model:
            spec.model_dir = os.path.abspath(model)
            spec.data_path = os.path.abspath(data) if data else ""
        else:
            raise JobCommandError("give a job name or --model DIR")
        if not spec.data_path:
            raise JobCommandError("give the held-out data: --data HELDOUT.jsonl")
        spec.max_samples = max(0, max_samples)
        return node or next(iter(self.targets)), request

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
