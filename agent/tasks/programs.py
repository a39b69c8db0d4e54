"""The task programs and their command lines: which module runs each kind of task, the
argv it gets from a task's spec, and the checks that refuse a spec before anything starts.

Pure apart from the input checks' look at the files a spec names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gantry.v1 import task_pb2

from agent.tasks.loadtest_task import LOADTEST_PROGRAM, loadtest_argv, loadtest_problem

TK = task_pb2.TaskKind
# A serve task drains within the runner's stop grace (runner.STOP_GRACE_S), so a stop never
# has to SIGKILL a server.
SERVE_DRAIN_S = 8.0
PROGRAMS = {
    TK.TASK_KIND_EVAL: "agent.tasks.eval",
    TK.TASK_KIND_QUANTIZE: "agent.tasks.quantize",
    TK.TASK_KIND_SERVE: "agent.serve",
    TK.TASK_KIND_LOADTEST: LOADTEST_PROGRAM,  # a console program, run as a process
}


class TaskError(ValueError):
    """A task refused before it starts: one line naming what to fix."""


def task_argv(task: task_pb2.Task, task_dir: Path) -> list[str]:
    """The task program's command line (pure)."""
    program = [sys.executable, "-m", PROGRAMS[task.kind]]
    which = task.WhichOneof("spec")
    if which == "eval":
        e = task.eval
        argv = [*program, "--model", e.model_dir, "--data", e.data_path]
        argv += ["--out", str(task_dir / "report.json")]
        if e.max_samples:
            argv += ["--max-samples", str(e.max_samples)]
        targets = {
            name: getattr(e.targets, name)
            for name in ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min")
            if e.targets.HasField(name)
        }
        if targets:
            argv += ["--targets", json.dumps(targets)]
        if e.job_name:
            argv += ["--checkpoint", f"{e.job_name}:{Path(e.model_dir).name}"]
        return argv
    if which == "quantize":
        q = task.quantize
        argv = [*program, "--model", q.model_dir, "--out", q.output_dir]
        if q.eval_data_path:
            argv += ["--eval", q.eval_data_path]
            if q.eval_max_samples:
                argv += ["--max-samples", str(q.eval_max_samples)]
        return argv + (["--weight-only"] if q.weight_only else [])
    if which == "serve":
        return serve_command(task.serve, task_dir)
    if which == "loadtest":
        return loadtest_argv(program, task_dir)
    raise TaskError("the task has no spec (eval, quantize or serve)")


def serve_command(spec: task_pb2.ServeTaskSpec, task_dir: Path) -> list[str]:
    """The inference server's command line (pure): the one place its flags are built."""
    argv = [sys.executable, "-m", PROGRAMS[TK.TASK_KIND_SERVE]]
    argv += ["--model", spec.model_dir, "--listen", f"127.0.0.1:{spec.port}"]
    argv += ["--ready-file", str(task_dir / "ready.json")]
    # Drain within the agent's stop grace, so a stop never has to SIGKILL a server.
    argv += ["--drain-s", f"{SERVE_DRAIN_S:g}"]
    if spec.max_batch_size:
        argv += ["--max-batch-size", str(spec.max_batch_size)]
    if spec.HasField("max_queue_delay_ms"):  # 0 too: a request that none be held
        argv += ["--max-queue-delay-ms", f"{spec.max_queue_delay_ms:g}"]
    if spec.http_port:  # 0: gRPC only
        argv += ["--http-port", str(spec.http_port)]
    if spec.engine_cpus:
        argv += ["--engine-cpus", spec.engine_cpus]
    if spec.stream_interval > 1:  # 0 or 1: each token as decoded
        argv += ["--stream-interval", str(spec.stream_interval)]
    if spec.HasField("prefix_cache_mb"):  # 0 too: no prefix cache
        argv += ["--prefix-cache-mb", str(spec.prefix_cache_mb)]
    return argv


def check_spec(task: task_pb2.Task) -> None:
    """Refuses a task whose inputs are not there, before anything starts."""
    which = task.WhichOneof("spec")
    if which == "eval":
        _model_dir(task.eval.model_dir)
        if not task.eval.data_path:
            raise TaskError("eval: give the held-out data (--data HELDOUT.jsonl)")
        if not Path(task.eval.data_path).is_file():
            raise TaskError(f"eval: data {task.eval.data_path} does not exist on this node")
    elif which == "quantize":
        _model_dir(task.quantize.model_dir)
        if not task.quantize.output_dir:
            raise TaskError("quantize: give an output directory")
        if not task.quantize.int8:
            raise TaskError("quantize: only --int8 is supported")
        data = task.quantize.eval_data_path
        if data and not Path(data).is_file():
            raise TaskError(f"quantize: eval data {data} does not exist on this node")
    elif which == "serve":
        _model_dir(task.serve.model_dir)
        if task.serve.port > 65535:
            raise TaskError(f"serve: port {task.serve.port} is not a port")
        if task.serve.http_port > 65535:
            raise TaskError(f"serve: --http-port {task.serve.http_port} is not a port")
        if task.serve.http_port and task.serve.http_port == task.serve.port:
            raise TaskError(
                f"serve: --http-port {task.serve.http_port} is the gRPC --port too; "
                "give each its own"
            )
    elif which == "loadtest":
        problem = loadtest_problem(task.loadtest)
        if problem:
            raise TaskError(problem)
    else:
        raise TaskError("the task has no spec (eval, quantize or serve)")


def _model_dir(path: str) -> None:
    if not path:
        raise TaskError("give a model directory")
    if not (Path(path) / "config.json").is_file():
        raise TaskError(f"model {path} is not a model directory on this node (no config.json)")
