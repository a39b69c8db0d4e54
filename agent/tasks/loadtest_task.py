"""Load test tasks (`gantry loadtest --from-nodes`): one load worker toward a target the
console names, run as `python -m console.loadtest.node_main` (a process: the agent never
imports console code; the program ships in the same package as the agent).

The spec travels to the program in a file of the task's directory, readable by the agent's
user only, which the program deletes once read: it holds the target's bearer token, the
requests, the metadata and the client's TLS key. The task's record (what ListTasks shows
and the agent keeps) drops the token, the requests, the metadata's values and the key.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from gantry.v1 import task_pb2

LOADTEST_PROGRAM = "console.loadtest.node_main"
SPEC_FILE = "spec.pb"


def keep_spec(task: task_pb2.Task, task_dir: Path) -> Path:
    """Writes the whole spec for the program (mode 0600) and strips the token and the
    requests from the task's record; returns the file's path."""
    spec = task.loadtest
    path = task_dir / SPEC_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(spec.SerializeToString())
    spec.body_count = len(spec.bodies)
    del spec.bodies[:]
    spec.token = ""
    for pair in spec.metadata:
        pair.value = ""
    if spec.HasField("tls"):
        spec.tls.key_pem = b""
    return path


def loadtest_argv(program: list[str], task_dir: Path) -> list[str]:
    """The program's command line (pure): `program` is how to run LOADTEST_PROGRAM."""
    return [*program, "--spec", str(task_dir / SPEC_FILE)]


def loadtest_problem(spec: task_pb2.LoadTestTaskSpec) -> str | None:
    """Why this node cannot run the load test (one line), or None; the contract's checks
    (agent.rpc.validation) are done already."""
    if not spec.target:
        return "loadtest: give the target (HOST:PORT or an http(s) URL)"
    # The top-level package only: finding it imports nothing of it.
    if importlib.util.find_spec(LOADTEST_PROGRAM.partition(".")[0]) is None:
        return "loadtest: this node's Gantry has no console package to run the load workers"
    return None


def audit_line(spec: task_pb2.LoadTestTaskSpec) -> str:
    """The spec as the audit trail keeps it: no token, bodies, metadata values or TLS."""
    mode = "open" if spec.open_loop else f"closed c{spec.concurrency}"
    return (
        f"target {spec.target} {spec.kind} {spec.method} worker {spec.worker}/{spec.workers} "
        f"{mode} start {spec.start_unix_s:.3f} requests {len(spec.bodies)} bodies"
        + (" token set" if spec.token else "")
        + (f" metadata {','.join(m.key for m in spec.metadata)}" if spec.metadata else "")
        + (" tls" if spec.HasField("tls") else "")
    )
