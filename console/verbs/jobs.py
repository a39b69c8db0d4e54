"""The job verbs of the CLI: launch, jobs, job, stop, restart, forget, logs, events, advise."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from gantry.v1 import job_pb2

from console.model.job_spec import JobSpecError, load_job_spec
from console.model.safe_text import safe_line
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import (
    ENDED_JOB_STATES,
    AgentUnreachable,
    JobCommandError,
    JobsClient,
    LedJob,
    NotConfirmed,
)
from console.verbs.jobs_format import (
    event_json,
    event_line,
    job_json,
    job_text,
    jobs_table,
    state_name,
)

STOP_WAIT_EXTRA_S = 30.0  # beyond the grace: the ranks' nodes answer, the leader records it


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
        return await _stop(args, client)
    if verb == "restart":
        led = await client.restart(
            args.name,
            args.node,
            args.exclude,
            args.from_checkpoint,
            include=args.include,
            replace=parse_replace(args.replace),
        )
        # Printed only now: the leader has accepted it (a refusal raised, exit 2).
        if args.json:
            _print_json(job_json(led))
        else:
            print(f"{args.name}: restart accepted{_restart_what(args)}; {_after(led)}")
        return 0
    if verb == "forget":
        said = await client.forget(args.name)
        if args.json:
            _print_json({"forgotten": args.name})
        else:
            print(said)
        return 0
    if verb == "logs":
        stream = "stderr" if args.stderr else "stdout"
        async for line in client.logs(
            args.name, args.rank, args.attempt, stream, args.tail, args.follow
        ):
            text = line.text if args.raw else safe_line(line.text)
            if args.json:
                print(json.dumps({"offset": line.offset, "stream": line.stream, "text": text}))
            else:
                print(text, flush=args.follow)
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

        advice, applied = await advise(
            client, targets, args.name, args.apply, confirm=_confirmer(args.yes)
        )
        if args.json:
            _print_json({"job": args.name, "findings": advice_json(advice), "applied": applied})
        else:
            print(advice_text(args.name, advice))
            if applied:
                print(applied)
        return 0
    raise AssertionError(verb)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _ranks_on_nodes(led: LedJob) -> str:
    ranks = led.job.attempts[-1].ranks if led.job.attempts else []
    return f"{_plural(len(ranks), 'rank')} on {_plural(len({r.node for r in ranks}), 'node')}"


async def _stop(args: argparse.Namespace, client: JobsClient) -> int:
    """Stops the job and says what happened: stopped, already ended, or still stopping."""
    before = await client.find(args.name)
    if before.job.state in ENDED_JOB_STATES:
        if args.json:
            _print_json(job_json(before))
        else:
            print(f"{args.name} was already {state_name(before.job.state)}: nothing to stop")
        return 0
    await client.stop(args.name, args.grace)
    led = await client.wait_ended(args.name, args.grace + STOP_WAIT_EXTRA_S)
    if args.json:
        _print_json(job_json(led))
    state = led.job.state
    if state == job_pb2.JOB_STATE_STOPPED:
        if not args.json:
            print(f"stopped {args.name} ({_ranks_on_nodes(led)})")
        return 0
    if state in ENDED_JOB_STATES:
        if not args.json:
            print(f"{args.name} {state_name(state)} before the stop took effect")
        return 0
    print(f"gantry: {args.name}: stop requested, still {state_name(state)}", file=sys.stderr)
    return 1


def parse_replace(values: list[str]) -> dict[str, str]:
    """``--replace NODE=SPARE`` values as {node: spare}; JobCommandError names a bad one."""
    replace: dict[str, str] = {}
    for value in values:
        node, _, spare = value.partition("=")
        node, spare = node.strip(), spare.strip()
        if not node or not spare:
            raise JobCommandError(f"--replace {value}: write NODE=SPARE, e.g. node-b=node-c")
        if node in replace:
            raise JobCommandError(f"--replace names {node} twice; replace each node once")
        replace[node] = spare
    return replace


def replace_text(replace: dict[str, str]) -> str:
    """ " replacing node-b with node-c" (empty for none)."""
    pairs = ", ".join(f"{node} with {spare}" for node, spare in replace.items())
    return f" replacing {pairs}" if pairs else ""


def _restart_what(args: argparse.Namespace) -> str:
    what = f" without {', '.join(args.exclude)}" if args.exclude else ""
    what += f" with {', '.join(args.include)} back" if args.include else ""
    what += replace_text(parse_replace(args.replace))
    return what + (f" from {args.from_checkpoint}" if args.from_checkpoint else "")


def _after(led: LedJob) -> str:
    attempts = len(led.job.attempts)
    return f"attempt {attempts + 1} starts" if attempts else "its first attempt starts"


def _confirmer(yes: bool) -> Callable[[str], bool]:
    """Asks on the terminal (with --yes: no question); no terminal and no --yes: refused."""

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise JobCommandError(f"no terminal to ask {question!r}: pass --yes to go ahead")
        print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes")

    return confirm


def run_job_verb(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    try:
        return asyncio.run(_run(args, targets))
    except AgentUnreachable as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 1
    except NotConfirmed as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 1
    except (JobSpecError, JobCommandError) as exc:
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
