"""Spawning, watching and stopping one rank (its wrapper, the rank and the rank's children).

Each rank runs under ``agent/jobs/node/rank_wrapper.py`` in a session of its own, so its
process group id is the wrapper's pid and one ``killpg`` reaches everything it started.
A handle is either
the parent of the wrapper (it holds the ``Popen``) or *adopted* after an agent restart (it
knows only pid + create_time and reads the exit code from the exit file the wrapper writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from agent.jobs.node import rank_wrapper

__all__ = [
    "CREATE_TIME_TOLERANCE_S",
    "LOST_EXIT_CODE",
    "RankHandle",
    "adopt",
    "describe_exit",
    "find_wrapper",
    "read_exit_file",
    "spawn",
    "wrapper_argv",
]

# Only SIGKILL (or a crash of the wrapper itself) keeps the wrapper from writing the exit file.
LOST_EXIT_CODE = -int(signal.SIGKILL)
# create_time comes from /proc in clock ticks (10 ms); two processes on one pid are further apart.
CREATE_TIME_TOLERANCE_S = 0.01
KILL_WAIT_S = 5.0
_POLL_S = 0.02
_GROUP_REUSE_SAFE_S = 60.0

_Descendant = tuple[int, float]


_WRAPPER_NAME = Path(rank_wrapper.__file__).name


def wrapper_argv(argv: Sequence[str], exit_file: Path) -> list[str]:
    # By file path with -I -S: independent of the rank's cwd and PYTHONPATH, and quick to start.
    wrapper = str(Path(rank_wrapper.__file__).resolve())
    return [sys.executable, "-I", "-S", wrapper, "--exit-file", str(exit_file), "--", *argv]


def read_exit_file(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}"


def _identity(proc: psutil.Process, create_time: float) -> str:
    """ "live", "zombie" (ours, dead, not reaped) or "gone" (no such process, or pid reused)."""
    try:
        if abs(proc.create_time() - create_time) >= CREATE_TIME_TOLERANCE_S:
            return "gone"
        return "zombie" if proc.status() == psutil.STATUS_ZOMBIE else "live"
    except psutil.Error:
        return "gone"


def _caught_signals(pid: int) -> int | None:
    """The signals ``pid`` has handlers for (/proc's SigCgt mask), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reap(pid: int) -> None:
    # A dead wrapper may still be our child (a supervisor object was replaced within the
    # same process): reap the zombie. Anyone else's child is reaped by its own parent.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class RankHandle:
    """One running (or finished) rank wrapper and its process group."""

    def __init__(
        self,
        pid: int,
        create_time: float,
        exit_file: Path,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self.exit_file = exit_file
        self._popen = popen
        self._proc: psutil.Process | None = None
        self._code: int | None = None
        self._gone_at = -math.inf

    @property
    def adopted(self) -> bool:
        return self._popen is None

    def poll(self) -> int | None:
        """The rank's exit code once the wrapper is gone, else ``None``."""
        if self._code is not None:
            return self._code
        if self._popen is not None:
            wrapper_code = self._popen.poll()
            if wrapper_code is None:
                return None
        else:
            if self._alive():
                return None
            wrapper_code = LOST_EXIT_CODE
        recorded = read_exit_file(self.exit_file)
        self._code = recorded if recorded is not None else wrapper_code
        self._gone_at = time.monotonic()
        return self._code

    def _alive(self) -> bool:
        if self._proc is None:
            try:
                self._proc = psutil.Process(self.pid)
            except psutil.Error:
                return False
        state = _identity(self._proc, self.create_time)
        if state == "zombie" and self._popen is None:
            _reap(self.pid)  # with a Popen, only Popen may reap, or it loses the status
        return state == "live"

    def signal_group(self, sig: int) -> bool:
        """Sends ``sig`` to the rank's process group; False when there was nobody to signal."""
        if self._code is not None or self.poll() is not None:
            # The wrapper is gone; its pid (= the group id) may belong to someone else now.
            return False
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def signal_catchers(self, sig: int) -> int:
        """Sends ``sig`` to each process under the wrapper that catches it (a rank whose
        faulthandler is registered for it); how many. A process that does not would die of
        it (SIGUSR1's default action), so it is spared. Where /proc cannot tell, the whole
        group is signalled (1 when anyone was)."""
        caught, readable = [], False
        for pid, _ in self.descendants():
            mask = _caught_signals(pid)
            if mask is None:
                continue
            readable = True
            if mask >> (sig - 1) & 1:
                caught.append(pid)
        if not readable:
            return int(self.signal_group(sig))
        sent = 0
        for pid in caught:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                sent += 1
        return sent

    def _children(self) -> list[psutil.Process] | None:
        """Every process below the wrapper, even what left the group (None: it is gone)."""
        if self.poll() is not None or not self._alive() or self._proc is None:
            return None
        try:
            return self._proc.children(recursive=True)
        except psutil.Error:
            return None

    def cpu_seconds(self) -> float | None:
        """User and system CPU seconds of the processes under the wrapper (None: gone)."""
        children = self._children()
        if children is None:
            return None
        total = 0.0
        for child in children:
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total

    def descendants(self) -> list[_Descendant]:
        """(pid, create_time) of everything below the wrapper, even what left the group."""
        out: list[_Descendant] = []
        for child in self._children() or []:
            with contextlib.suppress(psutil.Error):
                out.append((child.pid, child.create_time()))
        return out

    def kill(self, known: Sequence[_Descendant] = ()) -> None:
        """SIGKILL to the group and to any descendant that moved to another group."""
        seen = {*known, *self.descendants()}
        # Also shortly after the wrapper is gone: the kernel keeps a pid reserved while it
        # names a live process group, so this reaches the rank's leftovers. Much later, an
        # empty group's number could have been reused by a new session.
        if self.poll() is None or time.monotonic() - self._gone_at < _GROUP_REUSE_SAFE_S:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        for pid, create_time in seen:
            with contextlib.suppress(psutil.Error, OSError):
                proc = psutil.Process(pid)
                if _identity(proc, create_time) == "live":
                    proc.kill()

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM to the group, up to ``grace_s`` for it to exit, then SIGKILL. Blocks."""
        known = self.descendants()
        if not self.signal_group(signal.SIGTERM):
            self.kill(known)
            return self.poll()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.poll() is not None:
                break
            time.sleep(_POLL_S)
        self.kill(known)
        deadline = time.monotonic() + KILL_WAIT_S
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return self.poll()

    async def stop_async(self, grace_s: float) -> int | None:
        """``stop`` without blocking the event loop."""
        known = self.descendants()
        if not self.signal_group(signal.SIGTERM):
            self.kill(known)
            return self.poll()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while loop.time() < deadline:
            if self.poll() is not None:
                break
            await asyncio.sleep(_POLL_S)
        self.kill(known)
        deadline = loop.time() + KILL_WAIT_S
        while self.poll() is None and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
        return self.poll()


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | str | None,
    stdout_path: Path,
    stderr_path: Path,
    exit_file: Path,
) -> RankHandle:
    """Starts ``argv`` under the wrapper in a new session; output is appended to the files.

    Raises ``OSError`` when the wrapper itself cannot be started (bad ``cwd``, no memory); a
    rank executable that does not exist is reported by the wrapper as exit code 127.
    """
    if not argv:
        raise ValueError("empty rank command")
    for path in (stdout_path, stderr_path, exit_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        exit_file.unlink()  # a stale code must never be taken for this run's
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        popen = subprocess.Popen(
            wrapper_argv(argv, exit_file),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
        )
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        # Gone already (and not reaped, so the pid is still ours): the time is only used to
        # recognise a live process, which this one is not.
        create_time = 0.0
    return RankHandle(popen.pid, create_time, exit_file, popen)


def adopt(pid: int, create_time: float, exit_file: Path) -> RankHandle | None:
    """Re-attaches to a live wrapper; ``None`` if it is gone or ``pid`` now is someone else."""
    if pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    state = _identity(proc, create_time)
    if state == "zombie":
        _reap(pid)
    if state != "live":
        return None
    handle = RankHandle(pid, create_time, exit_file)
    handle._proc = proc
    return handle


def find_wrapper(exit_file: Path) -> tuple[int, float] | None:
    """(pid, create_time) of a live wrapper writing ``exit_file``, found by its command line.

    For the agent that died between starting a rank and journaling its pid.
    """
    wanted = str(exit_file)
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = proc.info["cmdline"] or []
        ours = "--exit-file" in cmdline and wanted in cmdline
        if (
            ours
            and _WRAPPER_NAME in " ".join(cmdline)
            and _identity(proc, proc.info["create_time"]) == "live"
        ):
            return proc.pid, float(proc.info["create_time"])
    return None
