"""Where the engines run: in this event loop, or one child process each (`--workers N`).

A child process has its own event loop and channels. Parent and child speak over the
child's stdin/stdout pipes in length-prefixed pickle frames:
  parent -> child: ("setup", spec, plan, index, config), ("start", at), ("stop",)
  child -> parent: ("ready",), ("error", message), ("snap", Snapshot)
Children start in their own session, so a Ctrl-C at the terminal reaches only the parent,
which stops them through the pipe; a child whose stdin closes stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import gantry.v1

import console
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.engine import Engine
from console.loadtest.plan import Plan
from console.loadtest.recorder import Recorder, Snapshot
from console.loadtest.targets import TargetSpec, make_client

READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 5.0
_HEADER = struct.Struct(">I")


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at the end of the stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
        body = await reader.readexactly(_HEADER.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


class Workers(Protocol):
    snapshots: asyncio.Queue[Snapshot]
    notes: list[str]

    async def start(self) -> None:
        """Every worker connected and waiting; LoadTestError if one cannot be."""
        ...

    def begin(self, start_at: float) -> None: ...

    def stop(self) -> None: ...

    async def close(self) -> None: ...


def make_recorder(spec: TargetSpec, plan: Plan, config: LoadTestConfig, index: int) -> Recorder:
    return Recorder(
        index,
        plan.open_loop,
        config.slo_ttft_ms,
        config.slo_latency_ms,
        streaming=spec.streaming,
        warmup=plan.warmup_s > 0,
    )


class LocalWorkers:
    """Engines in the caller's event loop (the default for one worker)."""

    def __init__(self, spec: TargetSpec, plan: Plan, config: LoadTestConfig) -> None:
        self.spec, self.plan, self.config = spec, plan, config
        self.snapshots: asyncio.Queue[Snapshot] = asyncio.Queue()
        self.notes: list[str] = []
        self._engines: list[Engine] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for index in range(self.plan.workers):
            client = make_client(self.spec)
            try:
                await client.open()
            except Exception as exc:
                await client.close()
                raise LoadTestError(f"cannot connect to {self.spec.address}: {exc}") from None
            self._engines.append(
                Engine(
                    client,
                    self.plan,
                    index,
                    make_recorder(self.spec, self.plan, self.config, index),
                    self.snapshots.put_nowait,
                    self.spec.timeout_s,
                )
            )

    def begin(self, start_at: float) -> None:
        self._tasks = [asyncio.create_task(self._run(e, start_at)) for e in self._engines]

    async def _run(self, engine: Engine, start_at: float) -> None:
        try:
            await engine.run(start_at)
        finally:
            await engine.client.close()

    def stop(self) -> None:
        for engine in self._engines:
            engine.stop()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self._engines:
            await engine.client.close()


def _child_env() -> dict[str, str]:
    # The children import the same console and gantry.v1 as this process, installed or not.
    roots = [str(Path(console.__file__).resolve().parent.parent)]
    roots.append(str(Path(gantry.v1.__file__).resolve().parent.parent.parent))
    if os.environ.get("PYTHONPATH"):
        roots.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(roots)}


class ProcessWorkers:
    """One child process per worker."""

    def __init__(self, spec: TargetSpec, plan: Plan, config: LoadTestConfig) -> None:
        self.spec, self.plan, self.config = spec, plan, config
        self.snapshots: asyncio.Queue[Snapshot] = asyncio.Queue()
        self.notes: list[str] = []
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []
        self._stderr: dict[int, bytearray] = {}
        self._finished: set[int] = set()

    async def start(self) -> None:
        env = _child_env()
        for index in range(self.plan.workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "console.loadtest.worker_main",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                env=env,
            )
            self._procs.append(proc)
            self._stderr[index] = bytearray()
            self._readers.append(asyncio.create_task(self._keep_stderr(index, proc)))
            self._send(proc, ("setup", self.spec, self.plan, index, self.config))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(self._ready(i, p) for i, p in enumerate(self._procs))),
                READY_TIMEOUT_S,
            )
        except TimeoutError:
            raise LoadTestError(f"the workers did not start in {READY_TIMEOUT_S:g} s") from None
        for index, proc in enumerate(self._procs):
            self._readers.append(asyncio.create_task(self._read(index, proc)))

    async def _ready(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        message = await read_frame(proc.stdout)
        if message is None:
            await asyncio.sleep(0.2)  # let the stderr reader catch the traceback
            raise LoadTestError(f"worker {index} exited while starting: {self._last_error(index)}")
        if message[0] == "error":
            raise LoadTestError(str(message[1]))

    async def _keep_stderr(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            kept = self._stderr[index]
            kept += chunk
            del kept[:-4000]

    def _last_error(self, index: int) -> str:
        lines = bytes(self._stderr.get(index, b"")).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    async def _read(self, index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while (message := await read_frame(proc.stdout)) is not None:
            if message[0] == "snap":
                snap: Snapshot = message[1]
                if snap.final:
                    self._finished.add(index)
                self.snapshots.put_nowait(snap)
        if index not in self._finished:
            await proc.wait()
            self.notes.append(
                f"worker {index} exited early ({proc.returncode}): {self._last_error(index)}"
            )
            self.snapshots.put_nowait(Snapshot(index, time.monotonic(), final=True, stopped=True))

    @staticmethod
    def _send(proc: asyncio.subprocess.Process, message: tuple[Any, ...]) -> None:
        if proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(frame(message))

    def begin(self, start_at: float) -> None:
        for proc in self._procs:
            self._send(proc, ("start", start_at))

    def stop(self) -> None:
        for proc in self._procs:
            self._send(proc, ("stop",))

    async def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
