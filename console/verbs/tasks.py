"""The task verbs of the CLI: eval, quantize, serve (each a task run by an agent), tasks,
task and stop-task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from gantry.v1 import task_pb2

from console.model import task_view
from console.model.proto_json import message_json
from console.model.serve_form import ServeFormError, ServeSettings
from console.model.task_view import detail_lines, figures_text, result_summary, verdict_json
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobCommandError
from console.net.tasks_client import (
    NodeTask,
    TasksClient,
    completions_url,
    job_paths,
    quantize_request,
    serve_request,
)

__all__ = ["add_task_verbs", "job_paths", "run_task_verb", "task_json", "task_line"]

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
    se = verbs.add_parser(
        "serve", help="start the inference server on an agent (gRPC; with --http-port also HTTP)"
    )
    se.add_argument("model", metavar="MODEL_DIR")
    se.add_argument("--node", default="")
    se.add_argument("--port", type=int, default=0, help="0: any free port")
    se.add_argument(
        "--http-port",
        type=int,
        default=0,
        metavar="P",
        help="also serve the OpenAI-compatible HTTP API (/v1/completions...) on P (0: gRPC only)",
    )
    se.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="default: the server's (8 on CPU; on a GPU sized from free memory, 64-256)",
    )
    se.add_argument("--max-queue-delay-ms", type=float, default=None, help="default: 10")
    se.add_argument(
        "--engine-cpus",
        default="",
        metavar="CPUS",
        help="the engine on these CPUs of the node (e.g. 3, 2-3; auto: the last one), the "
        "front end on the others (default: not bound)",
    )
    se.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        metavar="N",
        help="stream tokens N at a time after the first (default 1: each as decoded)",
    )
    se.add_argument(
        "--prefix-cache-mb",
        type=int,
        metavar="MB",
        help="keep prompts' keys and values, up to MB, for prompts starting the same way "
        "(default: the server's, 256; 0: off)",
    )
    tasks = verbs.add_parser("tasks", help="every agent's eval, quantize and serve tasks")
    task = verbs.add_parser("task", help="one task: state, results, report")
    task.add_argument("id")
    stop = verbs.add_parser("stop-task", help="stop a task (a server drains first)")
    stop.add_argument("id")
    stop.add_argument("--grace", type=float, default=10.0, metavar="SECONDS")
    return [ev, qu, se, tasks, task, stop]


def task_json(found: NodeTask) -> dict[str, Any]:
    """A task as JSON: its record (numbers at full precision), its outcome and, for an
    evaluation that ran, `targets_met` and the `misses`."""
    out: dict[str, Any] = {"node": found.node.name}
    out["task"] = message_json(found.task)
    out.update(verdict_json(found.task))
    if found.task.report_json:
        with contextlib.suppress(ValueError):
            out["report"] = json.loads(found.task.report_json)
    return out


def task_line(found: NodeTask) -> str:
    """`ID KIND NODE OUTCOME: RESULT  MODEL`, the verdict, progress or error before the
    model's path (`missed: bleu4 0.21 < 0.25`, `running: 37% 12/48 samples`)."""
    t = found.task
    line = f"{t.id:<20} {task_view.kind_name(t.kind):<9} {found.node.name:<10} "
    line += task_view.outcome(t)
    summary = result_summary(t)
    if summary:
        line += f": {summary}"
    model = task_view.model_of(t)
    return f"{line}  {model}" if model else line


def results_text(task: task_pb2.Task) -> str:
    """The task's detail after its line: verdict, each target, results with units."""
    return "\n".join(detail_lines(task)[1:])


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
            figures = figures_text(dict(progress.figures))
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
            if found.task.http_endpoint:
                print(f"HTTP (OpenAI-compatible): {completions_url(found)}")
        return 0
    if verb == "stop-task":
        found = await client.stop(args.id, args.grace)
        print(json.dumps(task_json(found), indent=2) if args.json else task_line(found))
        return 0
    if verb == "eval":
        node, request = await client.eval_request(
            args.job, args.model, args.data, args.node, args.max_samples
        )
    elif verb == "quantize":
        node = args.node or targets[0].name
        request = quantize_request(
            args.model,
            args.out,
            weight_only=args.weight_only,
            eval_data=args.eval,
            max_samples=args.max_samples,
        )
    else:  # serve
        node = args.node or targets[0].name
        settings = ServeSettings(
            model_dir=args.model,
            port=args.port,
            http_port=args.http_port,
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            engine_cpus=args.engine_cpus,
            stream_interval=args.stream_interval,
            prefix_cache_mb=args.prefix_cache_mb,
        )
        try:
            request = serve_request(settings)
        except ServeFormError as exc:
            raise JobCommandError(exc.as_flag()) from None
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
        if final.task.http_endpoint:
            print(f"HTTP (OpenAI-compatible): {completions_url(final)}")
        if final.task.results or final.task.report_json:
            print(results_text(final.task))
    if final.task.state == TS.TASK_STATE_FAILED:
        return 1
    if verb == "eval" and task_view.targets_met(final.task) is False:
        return 1  # it ran, but missed a target
    return 0


def run_task_verb(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    try:
        return asyncio.run(_run(args, targets))
    except JobCommandError as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
