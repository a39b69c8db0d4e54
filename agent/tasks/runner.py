"""Tasks: evaluation, quantization, serving and load test workers, each a supervised child
process of the agent (`python -m agent.tasks.eval | agent.tasks.quantize | agent.serve |
console.loadtest.node_main`; the last's spec file and record: `agent.tasks.loadtest_task`).

A task program reports on stdout, one JSON object a line: `{"progress": 0.4,
"message": "...", "figures": {...}}` while it works and `{"done": true, "results":
{...}}` at the end; a serve task writes a ready file (its address) once it serves. The
agent keeps each task's record in DATA/tasks/ID/task.pb (and its stderr beside it),
so `ListTasks` still knows a task after the agent restarts; a task still running then
is re-adopted by pid (its progress stream is not: it shows as running until it ends).
A task's latest progress line rides on its record (`Task.progress`), so a listing shows
how far each running task has got; a load test's line carries its worker's interval figures
(`TaskProgress.load`), which a watcher must read from its first line on. A server's ready
file gives `Task.endpoint` (gRPC) and, when it serves HTTP too, `Task.http_endpoint`.
Stop is SIGTERM to the task's process group, a grace period, then SIGKILL. Which program
runs a task, and with what command line, is `agent.tasks.programs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from gantry.v1 import agent_service_pb2, task_pb2
from google.protobuf import json_format

from agent.tasks.loadtest_task import keep_spec
from agent.tasks.programs import PROGRAMS, SERVE_DRAIN_S, TaskError, check_spec, task_argv

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_TASKS_KEPT",
    "PROGRAMS",
    "READY_POLL_S",
    "SERVE_DRAIN_S",
    "STOP_GRACE_S",
    "TERMINAL",
    "TK",
    "TS",
    "TaskError",
    "TaskRunner",
    "check_spec",
    "task_argv",
]

log = logging.getLogger("gantry.agent")

TK = task_pb2.TaskKind
TS = task_pb2.TaskState
TERMINAL = frozenset({TS.TASK_STATE_SUCCEEDED, TS.TASK_STATE_FAILED, TS.TASK_STATE_STOPPED})
STOP_GRACE_S = 10.0
READY_POLL_S = 0.2
MAX_LINE_BYTES = 1 << 20
MAX_TASKS_KEPT = 200


def _now(stamp: object) -> None:
    stamp.FromNanoseconds(time.time_ns())  # type: ignore[attr-defined]


@dataclass
class _Running:
    task: task_pb2.Task
    dir: Path
    pid: int = 0
    process: asyncio.subprocess.Process | None = None
    watchers: list[asyncio.Queue[task_pb2.TaskProgress | None]] = field(default_factory=list)
    last: task_pb2.TaskProgress | None = None
    stop_requested: bool = False
    supervisor: asyncio.Task[None] | None = None


class TaskRunner:
    def __init__(self, data_dir: Path, node_name: str) -> None:
        self.root = data_dir / "tasks"
        self.node_name = node_name
        self._tasks: dict[str, _Running] = {}

    # -- records -------------------------------------------------------------------

    def recover(self) -> None:
        """Loads the records of earlier tasks; re-adopts those still running."""
        if not self.root.is_dir():
            return
        for record in sorted(self.root.glob("*/task.pb")):
            task = task_pb2.Task()
            try:
                task.ParseFromString(record.read_bytes())
            except Exception:
                log.warning("task record %s is unreadable; skipped", record)
                continue
            running = _Running(task, record.parent)
            pid_file = record.parent / "pid"
            if task.state not in TERMINAL:
                pid = int(pid_file.read_text()) if pid_file.is_file() else 0
                if pid and psutil.pid_exists(pid):
                    running.pid = pid
                    running.supervisor = asyncio.create_task(self._watch_pid(running))
                else:
                    self._finish(running, TS.TASK_STATE_FAILED, "the agent restarted while it ran")
            self._tasks[task.id] = running

    def _save(self, running: _Running) -> None:
        running.dir.mkdir(parents=True, exist_ok=True)
        tmp = running.dir / "task.pb.tmp"
        tmp.write_bytes(running.task.SerializeToString())
        tmp.replace(running.dir / "task.pb")

    def all(self) -> list[task_pb2.Task]:
        return [
            r.task
            for r in sorted(self._tasks.values(), key=lambda r: r.task.created.ToNanoseconds())
        ]

    def get(self, task_id: str) -> task_pb2.Task:
        running = self._tasks.get(task_id)
        if running is None:
            raise KeyError(f"no task {task_id} on {self.node_name}")
        return running.task

    # -- starting and stopping -----------------------------------------------------

    async def start(self, request: agent_service_pb2.StartTaskRequest) -> task_pb2.Task:
        which = request.WhichOneof("spec")
        kind = {
            "eval": TK.TASK_KIND_EVAL,
            "quantize": TK.TASK_KIND_QUANTIZE,
            "serve": TK.TASK_KIND_SERVE,
            "loadtest": TK.TASK_KIND_LOADTEST,
        }.get(which or "")
        if kind is None:
            raise TaskError("the task has no spec (eval, quantize, serve or loadtest)")
        task = task_pb2.Task(
            id=f"{which}-{uuid.uuid4().hex[:8]}", kind=kind, state=TS.TASK_STATE_PENDING
        )
        task.node = self.node_name
        getattr(task, which or "").CopyFrom(getattr(request, which or ""))
        _now(task.created)
        check_spec(task)
        running = _Running(task, self.root / task.id)
        running.dir.mkdir(parents=True, exist_ok=True)
        if kind == TK.TASK_KIND_LOADTEST:
            keep_spec(task, running.dir)  # the token and requests stay out of the record
        argv = task_argv(task, running.dir)
        stderr = (running.dir / "stderr.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                limit=MAX_LINE_BYTES,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"},
            )
        finally:
            stderr.close()
        running.process, running.pid = process, process.pid
        (running.dir / "pid").write_text(str(process.pid))
        task.state = TS.TASK_STATE_RUNNING if kind != TK.TASK_KIND_SERVE else TS.TASK_STATE_PENDING
        self._tasks[task.id] = running
        self._save(running)
        running.supervisor = asyncio.create_task(self._supervise(running))
        self._prune()
        return task

    async def stop(self, task_id: str, grace_s: float = 0.0) -> task_pb2.Task:
        running = self._tasks.get(task_id)
        if running is None:
            raise KeyError(f"no task {task_id} on {self.node_name}")
        if running.task.state in TERMINAL:
            return running.task
        running.stop_requested = True
        grace = grace_s or STOP_GRACE_S
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(running.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and running.task.state not in TERMINAL:
            await asyncio.sleep(0.05)
        if running.task.state not in TERMINAL:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.pid, signal.SIGKILL)
            while running.task.state not in TERMINAL:
                await asyncio.sleep(0.05)
        return running.task

    async def close(self) -> None:
        """The agent stops: tasks go on (a restarted agent re-adopts them)."""
        for running in self._tasks.values():
            if running.supervisor is not None:
                running.supervisor.cancel()

    # -- watching ------------------------------------------------------------------

    async def watch(
        self, task_id: str
    ) -> AsyncIterator[tuple[task_pb2.TaskProgress | None, task_pb2.Task | None]]:
        """(progress, None) while the task runs, then (None, task) once it ended."""
        running = self._tasks.get(task_id)
        if running is None:
            raise KeyError(f"no task {task_id} on {self.node_name}")
        if running.task.state in TERMINAL:
            yield None, running.task
            return
        queue: asyncio.Queue[task_pb2.TaskProgress | None] = asyncio.Queue()
        running.watchers.append(queue)
        try:
            if running.last is not None:
                yield running.last, None
            while True:
                progress = await queue.get()
                if progress is None:
                    yield None, running.task
                    return
                yield progress, None
        finally:
            running.watchers.remove(queue)

    # -- supervision ---------------------------------------------------------------

    def _publish(self, running: _Running, progress: task_pb2.TaskProgress | None) -> None:
        if progress is not None:
            running.last = progress
            running.task.progress.CopyFrom(progress)  # ListTasks shows it without a stream
        for queue in running.watchers:
            queue.put_nowait(progress)

    def _progress(
        self, running: _Running, message: str, fraction: float | None = None
    ) -> task_pb2.TaskProgress:
        progress = task_pb2.TaskProgress(
            task_id=running.task.id, state=running.task.state, message=message
        )
        if fraction is not None:
            progress.fraction = fraction
        elif running.last is not None:
            progress.fraction = running.last.fraction
        _now(progress.time)
        return progress

    def _on_line(self, running: _Running, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text.startswith("{"):
            return
        try:
            doc = json.loads(text)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        task = running.task
        if doc.get("done"):
            results = doc.get("results") or {}
            for key, value in results.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    task.results[key] = float(value)
            report = running.dir / "report.json"
            if report.is_file():
                task.report_json = report.read_text()[:MAX_LINE_BYTES]
            elif isinstance(doc.get("report"), dict):
                task.report_json = json.dumps(doc["report"])
            self._save(running)
            self._publish(running, self._progress(running, "done", 1.0))
            return
        fraction = doc.get("progress")
        progress = self._progress(
            running,
            str(doc.get("message", "")),
            float(fraction) if isinstance(fraction, int | float) else None,
        )
        for key, value in (doc.get("figures") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                progress.figures[key] = float(value)
        if task.kind == TK.TASK_KIND_LOADTEST and isinstance(doc.get("load"), dict):
            try:
                json_format.ParseDict(doc["load"], progress.load)
            except json_format.ParseError:
                log.warning("task %s: an unreadable load snapshot; skipped", task.id)
                return
        self._publish(running, progress)

    async def _supervise(self, running: _Running) -> None:
        process = running.process
        assert process is not None and process.stdout is not None
        ready = (
            asyncio.create_task(self._await_ready(running))
            if running.task.kind == TK.TASK_KIND_SERVE
            else None
        )
        try:
            while True:
                try:
                    line = await process.stdout.readline()
                except ValueError:  # a line over the limit: skip it
                    continue
                if not line:
                    break
                self._on_line(running, line)
            code = await process.wait()
        finally:
            if ready is not None:
                ready.cancel()
        self._ended(running, code)

    async def _watch_pid(self, running: _Running) -> None:
        while psutil.pid_exists(running.pid):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(running.pid).status() == psutil.STATUS_ZOMBIE:
                    break
            await asyncio.sleep(0.5)
        state = TS.TASK_STATE_STOPPED if running.stop_requested else TS.TASK_STATE_SUCCEEDED
        self._finish(running, state, "")

    async def _await_ready(self, running: _Running) -> None:
        path = running.dir / "ready.json"
        while True:
            if path.is_file():
                try:
                    doc = json.loads(path.read_text())
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and doc.get("address"):
                    task = running.task
                    task.endpoint = str(doc["address"])
                    task.http_endpoint = str(doc.get("http_address") or "")
                    task.state = TS.TASK_STATE_RUNNING
                    self._save(running)
                    also = f" (HTTP {task.http_endpoint})" if task.http_endpoint else ""
                    self._publish(
                        running, self._progress(running, f"serving on {task.endpoint}{also}")
                    )
                    return
            await asyncio.sleep(READY_POLL_S)

    def _ended(self, running: _Running, code: int) -> None:
        if running.stop_requested:
            self._finish(running, TS.TASK_STATE_STOPPED, "")
        elif code == 0:
            self._finish(running, TS.TASK_STATE_SUCCEEDED, "")
        else:
            self._finish(running, TS.TASK_STATE_FAILED, self._why(running, code))

    def _why(self, running: _Running, code: int) -> str:
        lines = []
        with contextlib.suppress(OSError):
            lines = (running.dir / "stderr.log").read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else ""
        how = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        return f"{last[:300]} ({how})" if last else how  # what went wrong first

    def _finish(self, running: _Running, state: int, error: str) -> None:
        task = running.task
        task.state = state  # type: ignore[assignment]
        if task.HasField("progress"):
            task.progress.state = state  # type: ignore[assignment]
        if error:
            task.error = error
        _now(task.ended)
        self._save(running)
        self._publish(running, None)

    def _prune(self) -> None:
        ended = [r for r in self._tasks.values() if r.task.state in TERMINAL]
        for running in ended[: max(0, len(self._tasks) - MAX_TASKS_KEPT)]:
            del self._tasks[running.task.id]
