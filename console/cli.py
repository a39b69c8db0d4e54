"""`gantry`: the console (no verb) and its CLI verbs, each with --json where it reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from console.net.cluster_file import (
    ClusterFileError,
    NodeTarget,
    load_cluster_file,
    parse_agent_flags,
)
from console.ssh.cli_args import SSH_VERBS
from console.ui.forked import without_grpc_fork_handlers

if TYPE_CHECKING:
    from console.ssh.mode import SshMode

JOB_VERBS = ("launch", "jobs", "job", "stop", "restart", "forget", "logs", "events", "advise")
TASK_VERBS = ("eval", "quantize", "serve", "tasks", "task", "stop-task")
LOADTEST_VERBS = ("loadtest",)  # need no cluster
DEFAULT_CLUSTER_FILES = (Path(".gantry/cluster.yaml"), Path(".gantry/demo/cluster.yaml"))


def add_connection_args(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Under a verb the defaults are suppressed, so `gantry --cluster F status` and
    # `gantry status --cluster F` both work.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--cluster", type=Path, default=default, help="cluster file (YAML)")
    parser.add_argument(
        "--agent",
        action="append",
        default=default,
        metavar="NAME=HOST:PORT",
        help="an agent to reach (repeatable), instead of a cluster file",
    )
    parser.add_argument(
        "--token-file", type=Path, default=default, help="token file for the --agent nodes"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gantry", description="Operate large-model training from one console."
    )
    add_connection_args(parser, suppress=False)
    parser.add_argument(
        "--ssh",
        type=Path,
        metavar="HOSTFILE",
        help="reach the agents `gantry up HOSTFILE` started, through SSH tunnels",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    status = verbs.add_parser("status", help="every node's state; exits 1 if any is unreachable")
    add_connection_args(status, suppress=True)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")

    launch = verbs.add_parser("launch", help="send a job spec (YAML) to its first node's agent")
    launch.add_argument("spec", type=Path, metavar="JOB.yaml")
    jobs = verbs.add_parser("jobs", help="every job the cluster's agents lead")
    job = verbs.add_parser("job", help="one job: attempts, ranks, checkpoints")
    job.add_argument("name")
    stop = verbs.add_parser("stop", help="stop a job's ranks on every node")
    stop.add_argument("name")
    stop.add_argument("--grace", type=float, default=10.0, metavar="SECONDS")
    restart = verbs.add_parser("restart", help="a new attempt now, from the latest checkpoint")
    restart.add_argument("name")
    restart.add_argument("--node", default="", help="the node with the fault (for the record)")
    restart.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NODE",
        help="go on without NODE (resumes from a universal checkpoint at the smaller size)",
    )
    restart.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="NODE",
        help="bring NODE back into the job (undoes an earlier --exclude; repeatable)",
    )
    restart.add_argument(
        "--replace",
        action="append",
        default=[],
        metavar="NODE=SPARE",
        help="run NODE's ranks on SPARE, one of the spec's spares (same ranks, same world);"
        " SPARE=NODE gives them back (repeatable)",
    )
    restart.add_argument(
        "--from",
        dest="from_checkpoint",
        default="",
        metavar="CHECKPOINT",
        help="a checkpoint tag (step200) or folder; a bad one is refused, the job untouched",
    )
    forget = verbs.add_parser(
        "forget", help="remove a finished job from its leader (checkpoints and logs stay)"
    )
    forget.add_argument("name")
    logs = verbs.add_parser("logs", help="a rank's log")
    logs.add_argument("name")
    logs.add_argument("--rank", type=int, default=0)
    logs.add_argument("--attempt", type=int, default=0, help="default: the latest")
    logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    logs.add_argument("--tail", type=int, default=200, metavar="LINES")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="then new lines, until the attempt has ended"
    )
    logs.add_argument(
        "--raw", action="store_true", help="pass terminal escapes and control characters through"
    )
    events = verbs.add_parser("events", help="a job's timeline: attempts, failures, restarts")
    events.add_argument("name")
    events.add_argument(
        "-f", "--follow", action="store_true", help="then new events, until the job has ended"
    )
    advise = verbs.add_parser(
        "advise", help="why a job is slow or broken, with the fix (the console's advisor)"
    )
    advise.add_argument("name")
    advise.add_argument(
        "--apply", default="", metavar="RULE", help="apply that finding's remedy (restarts)"
    )
    advise.add_argument(
        "--yes", action="store_true", help="apply without asking (needed without a terminal)"
    )
    from console.ssh.cli_args import add_ssh_verbs
    from console.verbs.init import add_init_verb
    from console.verbs.loadtest import add_loadtest_verb
    from console.verbs.tasks import add_task_verbs

    task_parsers = add_task_verbs(verbs)
    add_loadtest_verb(verbs)
    add_init_verb(verbs)
    add_ssh_verbs(verbs)
    for verb in (launch, jobs, job, stop, restart, forget, logs, events, advise, *task_parsers):
        add_connection_args(verb, suppress=True)
        verb.add_argument("--json", action="store_true", help="print JSON")
    return parser


def resolve_targets(args: argparse.Namespace) -> list[NodeTarget]:
    if args.agent:
        if args.cluster is not None:
            raise ClusterFileError("give either --cluster or --agent, not both")
        return parse_agent_flags(args.agent, args.token_file)
    path = args.cluster
    if path is None and os.environ.get("GANTRY_CLUSTER"):
        path = Path(os.environ["GANTRY_CLUSTER"])
    if path is None:
        path = next((p for p in DEFAULT_CLUSTER_FILES if p.exists()), None)
    if path is None:
        raise ClusterFileError(
            "no cluster given: pass --cluster FILE or --agent NAME=HOST:PORT --token-file F"
        )
    targets = load_cluster_file(path)
    if not targets:
        raise ClusterFileError(f"{path}: the cluster has no nodes")
    return targets


def cmd_status(args: argparse.Namespace, targets: list[NodeTarget]) -> int:
    from console.verbs.status import gather_status, to_json, to_table

    statuses = asyncio.run(gather_status(targets, args.timeout))
    if args.json:
        print(json.dumps(to_json(statuses), indent=2))
    else:
        print(to_table(statuses))
    return 0 if all(s.state == "live" for s in statuses) else 1


def cmd_console(targets: list[NodeTarget], ssh: SshMode | None = None) -> int:
    from console.net.operator import Operator
    from console.ui.app import GantryApp, tune_gc

    tune_gc()
    if ssh is None:
        GantryApp(targets).run()
    else:
        operator = Operator(targets, agents=ssh.agents)
        GantryApp(targets, operator=operator, background=ssh.background).run()
    return 0


def main(argv: list[str] | None = None) -> None:
    without_grpc_fork_handlers()
    try:
        code = run(argv)
        sys.stdout.flush()  # inside the try: a reader gone by now is no error either
    except BrokenPipeError:
        sys.exit(reader_gone())
    sys.exit(code)


def reader_gone() -> int:
    """The exit status once the reader of stdout went away (`gantry logs ... | head`): quiet,
    as `git log | head` is (128 + SIGPIPE), and nothing left to flush into the closed pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def run(argv: list[str] | None = None) -> int:
    """The verb's exit status (argparse's own exits pass through as SystemExit)."""
    args = build_parser().parse_args(argv)
    if args.verb in LOADTEST_VERBS:
        from console.verbs.loadtest import run_loadtest_verb

        return run_loadtest_verb(args)
    if args.verb == "init":
        from console.verbs.init import run_init_verb

        return run_init_verb(args)
    if args.verb in SSH_VERBS:
        from console.ssh.up_verb import run_ssh_verb

        return run_ssh_verb(args)
    ssh: SshMode | None = None
    try:
        if getattr(args, "ssh", None) is not None:
            if args.cluster is not None or args.agent:
                raise ClusterFileError("give either --ssh or --cluster/--agent, not both")
            from console.ssh.mode import open_ssh

            ssh = open_ssh(args.ssh)  # one line on stderr per node not connected
            targets = ssh.targets
        else:
            targets = resolve_targets(args)
    except ValueError as exc:  # ClusterFileError, HostfileError, StateError
        print(f"gantry: {exc}", file=sys.stderr)
        return 2
    try:
        return dispatch(args, targets, ssh)
    finally:
        if ssh is not None:
            ssh.close()


def dispatch(args: argparse.Namespace, targets: list[NodeTarget], ssh: SshMode | None) -> int:
    if args.verb == "status":
        return cmd_status(args, targets)
    if args.verb in JOB_VERBS:
        from console.verbs.jobs import run_job_verb

        return run_job_verb(args, targets)
    if args.verb in TASK_VERBS:
        from console.verbs.tasks import run_task_verb

        return run_task_verb(args, targets)
    return cmd_console(targets, ssh)


if __name__ == "__main__":
    main()
