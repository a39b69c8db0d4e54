"""The task verbs of the CLI: eval, quantize, serve (each a task run by an agent), tasks,
task and stop-task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from gantry.v1 import agent_service_pb2, job_pb2, task_pb2
from google.protobuf import json_format

from console.model.cost import arg_value
from console.net.agent_link import AgentLinks
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobCommandError, JobsClient
from console.net.tasks_client import NodeTask, TasksClient

TS = task_pb2.TaskState
TERMINAL = (TS.TASK_STATE_SUCCEEDED, TS.TASK_STATE_FAILED, TS.TASK_STATE_STOPPED)


def add_task_verbs(verbs: Any) -> list[argparse.ArgumentParser]:
    ev = verbs.add_parser("eval", help="evaluate a job's final model (or --model DIR) on an agent")
    ev.add_argument("job", nargs="?", default="", help="the job whose final model to evaluate")
    ev.add_argument("--model", default="", metavar="DIR")
    ev.add_argument("--data", default="", metavar="HELDOUT.jsonl")
    ev.add_argument("--node", default="", help="default: the job's leader, else the first node")
    ev.add_argument("--max-samples", type=int, default=0)
    ev.add_argument("--no-wait", action="store_true", help="start it and return")
    qu = verbs.add_parser("quantize", help="int8 with torchao, on an agent")
    qu.add_argument("model", metavar="MODEL_DIR")
    qu.add_argument("--int8", action="store_true", required=True)
    qu.add_argument("--weight-only", action="store_true")
    qu.add_argument("--out", default="", metavar="DIR", help="default: MODEL_DIR-int8")
    qu.add_argument("--node", default="")
    qu.add_argument(
        "--eval", default="", metavar="HELDOUT.jsonl", help="BLEU-4 and ROUGE-L before and after"
    )
    qu.add_argument("--max-samples", type=int, default=0)
    qu.add_argument("--no-wait", action="store_true")
    se = verbs.add_parser("serve", help="start the gRPC inference server on an agent")
    se.add_argument("model", metavar="MODEL_DIR")
    se.add_argument("--node", default="")
    se.add_argument("--port", type=int, default=0, help="0: any free port")
    se.add_argument("--max-batch-size", type=int, default=8)
    se.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    tasks = verbs.add_parser("tasks", help="every agent's eval, quantize and serve tasks")
    task = verbs.add_parser("task", help="one task: state, results, report")
    task.add_argument("id")
    stop = verbs.add_parser("stop-task", help="stop a task (a server drains first)")
    stop.add_argument("id")
    stop.add_argument("--grace", type=float, default=10.0, metavar="SECONDS")
    return [ev, qu, se, tasks, task, stop]


def task_json(found: NodeTask) -> dict[str, Any]:
    out: dict[str, Any] = {"node": found.node.name}
    out["task"] = json_format.MessageToDict(found.task)
    if found.task.report_json:
        with contextlib.suppress(ValueError):
            out["report"] = json.loads(found.task.report_json)
    return out


def state_name(value: int) -> str:
    return task_pb2.TaskState.Name(value).removeprefix("TASK_STATE_").lower()


def task_line(found: NodeTask) -> str:
    t = found.task
    kind = task_pb2.TaskKind.Name(t.kind).removeprefix("TASK_KIND_").lower()
    which = t.WhichOneof("spec")
    model = getattr(t, which).model_dir if which else ""
    extra = f" {t.endpoint}" if t.endpoint else ""
    extra += f" ({t.error})" if t.error else ""
    return f"{t.id:<20} {kind:<9} {state_name(t.state):<10} {found.node.name:<10} {model}{extra}"


def results_text(task: task_pb2.Task) -> str:
    lines = [f"{key:<24} {value:g}" for key, value in sorted(task.results.items())]
    if task.report_json:
        try:
            report = json.loads(task.report_json)
        except ValueError:
            report = {}
        for name, target in (report.get("targets") or {}).items():
            verdict = "pass" if target.get("pass") else "FAIL"
            lines.append(
                f"target {name:<17} {target.get('value')} vs {target.get('target')}: {verdict}"
            )
    return "\n".join(lines)


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


async def _eval_request(
    args: argparse.Namespace, targets: list[NodeTarget], links: AgentLinks
) -> tuple[str, agent_service_pb2.StartTaskRequest]:
    request = agent_service_pb2.StartTaskRequest()
    spec = request.eval
    node = args.node
    if args.job:
        led, _ = await JobsClient(targets, links).describe(args.job)
        model, heldout = job_paths(led.job.spec)
        spec.job_name = args.job
        spec.model_dir = args.model or model
        spec.data_path = args.data or heldout
        spec.targets.CopyFrom(led.job.spec.eval_targets)
        node = node or led.leader.name
    elif args.model:
        spec.model_dir = os.path.abspath(args.model)
        spec.data_path = os.path.abspath(args.data) if args.data else ""
    else:
        raise JobCommandError("give a job name or --model DIR")
    if not spec.data_path:
        raise JobCommandError("give the held-out data: --data HELDOUT.jsonl")
    spec.max_samples = max(0, args.max_samples)
    return node or targets[0].name, request


async def _follow(client: TasksClient, started: NodeTask, as_json: bool) -> NodeTask:
    """Prints progress until the task ends (or, for a server, serves)."""
    final = started.task
    serve = started.task.kind == task_pb2.TaskKind.TASK_KIND_SERVE
    async for message in client.watch(started.node, started.task.id):
        if message.HasField("task"):
            final = message.task
            break
        progress = message.progress
        if not as_json:
            figures = " ".join(f"{k}={v:.4g}" for k, v in sorted(progress.figures.items()))
            print(
                f"  {100 * progress.fraction:3.0f}% {progress.message} {figures}".rstrip(),
                flush=True,
            )
        if serve and progress.state == TS.TASK_STATE_RUNNING:
            break  # the agent saw the server's ready file: it serves
    if serve and final.state not in TERMINAL:
        return await client.find(started.task.id)
    return NodeTask(started.node, final)


async def _run(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    async with TasksClient(targets) as client:  # its channels close as the verb ends
        return await _verb(args, targets, client)


async def _verb(args: argparse.Namespace, targets: list[NodeTarget], client: TasksClient) -> int:
    verb = args.verb
    if verb == "tasks":
        tasks, errors = await client.list()
        if args.json:
            print(json.dumps({"tasks": [task_json(t) for t in tasks], "errors": errors}, indent=2))
        else:
            print("\n".join(task_line(t) for t in tasks) if tasks else "no tasks")
            for error in errors:
                print(f"gantry: {error}", file=sys.stderr)
        return 1 if errors else 0
    if verb == "task":
        found = await client.find(args.id)
        if args.json:
            print(json.dumps(task_json(found), indent=2))
        else:
            print(task_line(found))
            print(results_text(found.task))
        return 0
    if verb == "stop-task":
        found = await client.stop(args.id, args.grace)
        print(json.dumps(task_json(found), indent=2) if args.json else task_line(found))
        return 0
    if verb == "eval":
        node, request = await _eval_request(args, targets, client.links)
    elif verb == "quantize":
        node = args.node or targets[0].name
        request = agent_service_pb2.StartTaskRequest()
        q = request.quantize
        q.model_dir = os.path.abspath(args.model)
        q.output_dir = os.path.abspath(args.out or args.model.rstrip("/") + "-int8")
        q.int8, q.weight_only = True, args.weight_only
        q.eval_data_path = os.path.abspath(args.eval) if args.eval else ""
        q.eval_max_samples = max(0, args.max_samples)
    else:  # serve
        node = args.node or targets[0].name
        request = agent_service_pb2.StartTaskRequest()
        s = request.serve
        s.model_dir = os.path.abspath(args.model)
        s.port, s.max_batch_size = args.port, args.max_batch_size
        s.max_queue_delay_ms = args.max_queue_delay_ms
    started = await client.start(node, request)
    if not args.json:
        print(f"task {started.task.id} started on {started.node.name}", flush=True)
    if getattr(args, "no_wait", False):
        if args.json:
            print(json.dumps(task_json(started), indent=2))
        return 0
    final = await _follow(client, started, args.json)
    if args.json:
        print(json.dumps(task_json(final), indent=2))
    else:
        print(task_line(final))
        if final.task.results or final.task.report_json:
            print(results_text(final.task))
    if final.task.state == TS.TASK_STATE_FAILED:
        return 1
    if verb == "eval" and final.task.results.get("passed", 1.0) < 1.0:
        return 1  # a target was missed
    return 0


def run_task_verb(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    try:
        return asyncio.run(_run(args, targets))
    except JobCommandError as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
