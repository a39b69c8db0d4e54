"""The decode engine as the server's event loop sees it: a process of its own
(agent.serve.engine_worker, where the model lives and why), behind the interface the gRPC
and HTTP front ends use (submit, cancel, load, now).

The server starts the process first, loads the tokenizer while it loads the model, then
waits for it to be ready (`wait_ready`, in a worker thread). Once `start`ed on the event
loop, the process's messages are read on that loop (one per decode iteration) and each
request's events go to its sink; the figures go to the server's ServerStats. A process
that exits unasked fails the requests it had and calls `on_lost`, so the server stops
with an error instead of hanging its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.serve.cpu_binding import format_cpus
from agent.serve.engine_wire import event_from_wire
from agent.serve.events import Done, Failed, Request, Sink, held_wakeups
from agent.serve.stats import ServerStats

log = logging.getLogger("gantry.serve")

STOP_WAIT_S = 10.0


class EngineLoadError(RuntimeError):
    """The engine process could not load the model; the message says why."""


class EngineProcess:
    def __init__(
        self,
        model: Path,
        *,
        device: str,
        threads: int,
        max_batch_size: int | None,
        max_queue_delay_ms: float,
        stats: ServerStats,
        cpus: frozenset[int] | None = None,
        stream_interval: int = 1,
        prefix_cache_mb: int = 0,
    ) -> None:
        ours, theirs = socket.socketpair()
        argv = [sys.executable, "-m", "agent.serve.engine_worker", "--fd", str(theirs.fileno())]
        argv += ["--server-pid", str(os.getpid())]
        argv += ["--model", str(model), "--device", device, "--threads", str(threads)]
        argv += ["--max-batch-size", str(max_batch_size or 0)]
        argv += ["--max-queue-delay-ms", str(max_queue_delay_ms)]
        argv += ["--stream-interval", str(stream_interval)]
        argv += ["--prefix-cache-mb", str(prefix_cache_mb)]
        argv += ["--cpus", format_cpus(cpus)] if cpus else []
        # Its stdout is the server's stderr: the server's stdout carries the task protocol.
        self._process = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=sys.stderr
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._stats = stats
        self._ids = itertools.count(1)
        self._sinks: dict[int, Sink] = {}
        self._load = (0, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.max_batch_size = max_batch_size or 0
        self.context_tokens = 0
        self.on_lost: Callable[[str], None] = lambda why: None

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self) -> None:
        """Blocks until the model is loaded and warmed up; EngineLoadError says why not."""
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            code = self._process.wait()
            raise EngineLoadError(
                f"the engine process exited with code {code} while loading"
            ) from None
        if message[0] == "failed":
            self._process.wait()
            raise EngineLoadError(str(message[1]))
        _, self.max_batch_size, self.context_tokens = message

    def start(self) -> None:
        """Reads the process's messages on the running event loop from now on."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._readable)

    def now(self) -> float:
        return time.monotonic()  # the engine process's clock too (CLOCK_MONOTONIC)

    def load(self) -> tuple[int, int]:
        """(requests queued, requests running), as of the process's last message."""
        return self._load

    def submit(self, request: Request, sink: Sink, *, ignore_eos: bool = False) -> int:
        if self._stopping or self._process.poll() is not None:
            raise RuntimeError("the engine is stopped")
        key = next(self._ids)
        self._sinks[key] = sink
        try:
            self._conn.send(("submit", key, request, ignore_eos))
        except OSError:
            del self._sinks[key]
            raise RuntimeError("the engine is stopped") from None
        return key

    def cancel(self, key: int) -> None:
        """Nobody waits for the request's events any more; its place is freed."""
        if self._sinks.pop(key, None) is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("cancel", key))

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Asks the process to stop (requests still there fail) and waits for it (from a
        worker thread: the event loop goes on reading the failures)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._conn.send(("stop",))
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the engine process did not stop in %gs: killing it", timeout)
            self.kill()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._gone)

    def kill(self) -> None:
        self._stopping = True
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        self._process.wait()

    # -- on the event loop ---------------------------------------------------------

    def _readable(self) -> None:
        try:
            with held_wakeups():  # the queues' loop is woken once a message
                while self._conn.poll():
                    self._handle(self._conn.recv())
        except (EOFError, OSError):
            self._gone()

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] != "iteration":
            return  # "stopped": the end of the stream follows
        _, events, figures, self._load = message
        for wire in events:
            key, event = event_from_wire(wire)
            sink = self._sinks.get(key)
            if sink is None:  # cancelled: nobody listens
                continue
            if isinstance(event, Done | Failed):
                del self._sinks[key]
            sink(event)
        for figure in figures:
            if figure[0] == "step":
                self._stats.step(figure[1], figure[2])
            else:
                self._stats.request_completed(*figure[1:])

    def _gone(self) -> None:
        """The process ended (asked to or not): the requests it had fail."""
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self._conn.fileno())
        code = self._process.poll()
        why = (
            "the server stopped before the request finished"
            if self._stopping
            else f"the engine process exited unexpectedly (code {code})"
        )
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            sink(Failed(why))
        if not self._stopping:
            self._stopping = True
            log.error("%s", why)
            self.on_lost(why)
        with contextlib.suppress(OSError):
            self._conn.close()
