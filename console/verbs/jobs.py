"""The job verbs of the CLI: launch, jobs, job, stop, restart, logs, events, advise."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gantry.v1 import job_pb2

from console.model.job_spec import JobSpecError, load_job_spec
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import AgentUnreachable, JobCommandError, JobsClient
from console.verbs.jobs_format import (
    event_json,
    event_line,
    job_json,
    job_text,
    jobs_table,
    state_name,
)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


async def _run(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    async with JobsClient(targets) as client:  # its channels close as the verb ends
        return await _verb(args, targets, client)


async def _verb(args: argparse.Namespace, targets: list[NodeTarget], client: JobsClient) -> int:
    verb = args.verb
    if verb == "launch":
        spec = load_job_spec(args.spec, known_nodes={t.name for t in targets})
        led = await client.launch(spec)
        if args.json:
            _print_json(job_json(led))
        else:
            print(f"job {spec.name} submitted to {led.leader.name}: {state_name(led.job.state)}")
        return 0
    if verb == "jobs":
        jobs, errors = await client.list_jobs()
        if args.json:
            _print_json({"jobs": [job_json(j) for j in jobs], "errors": errors})
        else:
            print(jobs_table(jobs) if jobs else "no jobs")
            for error in errors:
                print(f"gantry: {error}", file=sys.stderr)
        return 1 if errors else 0
    if verb == "job":
        led, checkpoints = await client.describe(args.name)
        events = [event async for event in client.events(args.name, follow=False)]
        if args.json:
            _print_json(job_json(led, checkpoints, events))
        else:
            print(job_text(led, checkpoints, events))
        return 0
    if verb == "stop":
        led = await client.stop(args.name, args.grace)
        if args.json:
            _print_json(job_json(led))
        else:
            print(f"job {args.name}: {state_name(led.job.state)}")
        return 0
    if verb == "restart":
        led = await client.restart(args.name, args.node, args.exclude, args.from_checkpoint)
        if args.json:
            _print_json(job_json(led))
        else:
            print(f"job {args.name}: restarting (attempt {len(led.job.attempts)} was the last)")
        return 0
    if verb == "logs":
        stream = "stderr" if args.stderr else "stdout"
        async for line in client.logs(
            args.name, args.rank, args.attempt, stream, args.tail, args.follow
        ):
            if args.json:
                print(json.dumps({"offset": line.offset, "stream": line.stream, "text": line.text}))
            else:
                print(line.text, flush=args.follow)
        return 0
    if verb == "events":
        async for event in client.events(args.name, args.follow):
            if event.kind == job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS:
                continue  # one per rank and step: the job view shows them
            if args.json:
                print(json.dumps(event_json(event)), flush=args.follow)
            else:
                print(event_line(event), flush=args.follow)
        return 0
    if verb == "advise":
        from console.verbs.advise import advice_json, advice_text, advise

        advice, applied = await advise(client, targets, args.name, args.apply)
        if args.json:
            _print_json({"job": args.name, "findings": advice_json(advice), "applied": applied})
        else:
            print(advice_text(args.name, advice))
            if applied:
                print(applied)
        return 0
    raise AssertionError(verb)


def run_job_verb(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    try:
        return asyncio.run(_run(args, targets))
    except AgentUnreachable as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 1
    except (JobSpecError, JobCommandError) as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
