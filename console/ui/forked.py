"""Running a pure-Python computation in a forked child, for the console's UI loop's sake.

A thread would share the GIL with the UI: the advisor's second of pure Python over a
thousand ranks' histories then doubled every frame drawn meanwhile (the UI held the GIL
half the time), and a key waited 100-200 ms. A forked child sees the parent's data as
it is, without copying or pickling it; only the (small) result comes back, pickled,
through a pipe. The child runs `fn` and nothing else: no gRPC, no I/O but the pipe.

Call it from a worker thread (it blocks until the child is done); POSIX only.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def without_grpc_fork_handlers() -> None:
    """For a process that forks while gRPC runs (the console): gRPC's own fork handlers
    would pause its threads around each fork, or write a line on the terminal saying
    they were skipped. The child never calls gRPC. Before gRPC is first imported."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


class ForkedError(Exception):
    """The child failed, died or ran out of time; the message says which."""


def call_forked(fn: Callable[[], T], timeout_s: float) -> T:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(read_fd)
            try:
                outcome: tuple[str, Any] = ("ok", fn())
            except BaseException as exc:  # reported to the parent, which raises
                outcome = ("error", f"{type(exc).__name__}: {exc}")
            data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        except BaseException:
            code = 1
        finally:
            os._exit(code)  # no atexit handlers, no flushing of the parent's buffers
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise ForkedError(f"the forked computation took over {timeout_s:g} s")
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not chunks:
        raise ForkedError("the forked computation died without an answer")
    status, value = pickle.loads(b"".join(chunks))
    if status != "ok":
        raise ForkedError(str(value))
    return cast(T, value)
