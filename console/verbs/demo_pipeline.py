"""What the demo does after training, each step a task the agents run and the console
shows (`T`): evaluate the demo model against its targets, quantize it to int8, serve the
int8 model. Runs inside the console's loop; says where it is through `say`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from gantry.v1 import agent_service_pb2, job_pb2, task_pb2

from console.model.task_view import outcome, result_summary
from console.net.agent_link import AgentLinks
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobCommandError, JobsClient
from console.net.tasks_client import NodeTask, TasksClient
from console.verbs.tasks import job_paths

JS = job_pb2.JobState
TS = task_pb2.TaskState
POLL_S = 2.0
QUANTIZE_EVAL_SAMPLES = 50


@dataclass
class PipelineResult:
    eval_task: NodeTask | None = None
    quantize_task: NodeTask | None = None
    serve_task: NodeTask | None = None
    stopped_at: str = ""


async def _wait_task(client: TasksClient, started: NodeTask, serving: bool = False) -> NodeTask:
    while True:
        found = await client.find(started.task.id)
        if found.task.state in (
            TS.TASK_STATE_SUCCEEDED,
            TS.TASK_STATE_FAILED,
            TS.TASK_STATE_STOPPED,
        ):
            return found
        if serving and found.task.state == TS.TASK_STATE_RUNNING and found.task.endpoint:
            return found
        await asyncio.sleep(POLL_S)


async def run_pipeline(
    targets: list[NodeTarget],
    job: str,
    say: Callable[[str], None],
    links: AgentLinks | None = None,
) -> PipelineResult:
    """`links`: the console's (without, the pipeline's own, closed as it ends)."""
    if links is None:
        async with AgentLinks() as own:
            return await run_pipeline(targets, job, say, own)
    jobs, tasks = JobsClient(targets, links), TasksClient(targets, links)
    result = PipelineResult()
    while True:
        try:
            led, _ = await jobs.describe(job)
        except JobCommandError:
            await asyncio.sleep(POLL_S)
            continue
        if led.job.state == JS.JOB_STATE_SUCCEEDED:
            break
        if led.job.state in (JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED):
            result.stopped_at = f"{job} ended {JS.Name(led.job.state).lower()}: {led.job.reason}"
            say(result.stopped_at)
            return result
        await asyncio.sleep(POLL_S)
    node = led.leader.name
    model, heldout = job_paths(led.job.spec)
    say(f"{job} trained: evaluating {model}")
    request = agent_service_pb2.StartTaskRequest()
    request.eval.job_name, request.eval.model_dir, request.eval.data_path = job, model, heldout
    request.eval.targets.CopyFrom(led.job.spec.eval_targets)
    result.eval_task = await _wait_task(tasks, await tasks.start(node, request))
    say(f"eval {outcome(result.eval_task.task)}: {result_summary(result.eval_task.task)}")
    request = agent_service_pb2.StartTaskRequest()
    request.quantize.model_dir, request.quantize.output_dir = model, model + "-int8"
    request.quantize.int8 = True
    request.quantize.weight_only = True  # faster than dynamic int8 on CPUs without VNNI
    request.quantize.eval_data_path = heldout  # BLEU-4 and ROUGE-L before and after
    request.quantize.eval_max_samples = QUANTIZE_EVAL_SAMPLES
    result.quantize_task = await _wait_task(tasks, await tasks.start(node, request))
    if result.quantize_task.task.state != TS.TASK_STATE_SUCCEEDED:
        result.stopped_at = f"quantize failed: {result.quantize_task.task.error}"
        say(result.stopped_at)
        return result
    say(f"quantized to {model}-int8: serving it")
    request = agent_service_pb2.StartTaskRequest()
    request.serve.model_dir = model + "-int8"
    result.serve_task = await _wait_task(tasks, await tasks.start(node, request), serving=True)
    say(f"serving on {result.serve_task.task.endpoint or result.serve_task.task.error}")
    return result
