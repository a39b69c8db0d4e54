"""Follows the node's kernel log on one daemon thread and hands parsed facts to a callback.

The source is picked once, on ``start()``: ``/dev/kmsg`` when it opens for reading (read from
its end: only new records), else ``journalctl -k -f`` when journalctl exists and can read the
kernel's journal, else none, and ``why`` says what was missing (the agent then has only
NVML's XID events). ``follow_file`` reads a plain file being appended to, like ``tail -f``,
so tests can feed real lines without root.

Never raises into the agent: a failing callback is logged and kept; a source that breaks ends
the thread with a warning. Memory is bounded: one record or line at a time, a partial line
at most ``MAX_LINE_BYTES`` long.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

from agent.telemetry.kernel_log import KernelItem, KernelLogParser

__all__ = ["KernelLogFollower"]

log = logging.getLogger("gantry.agent")

MAX_LINE_BYTES = 16 * 1024
IDLE_WAIT_S = 0.5
# A line held back for its partner (the oom-killer's pair) is handed out alone after this.
IDLE_FLUSH_S = 1.0
KMSG_PATH = "/dev/kmsg"
JOURNALCTL_ARGS = ("-k", "-f", "-o", "short-precise", "-n", "0", "-q", "--no-pager")

Callback = Callable[[KernelItem], None]


class KernelLogFollower:
    """Reads the kernel log and calls ``callback(item)`` for each XID, oom-kill or GPU failure.

    Args:
        callback: called on the follower's thread; must be cheap and must not block.
        kmsg_path: the kmsg device (a test may point it elsewhere).
        journalctl: the journalctl program; "" never uses it.
    """

    def __init__(
        self,
        callback: Callback,
        *,
        kmsg_path: str = KMSG_PATH,
        journalctl: str = "journalctl",
    ) -> None:
        self._callback = callback
        self._kmsg_path = kmsg_path
        self._journalctl = journalctl
        self._file_path = ""
        self.source = "none"
        self.why = "not started"
        self._parser = KernelLogParser()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._proc: subprocess.Popen[bytes] | None = None
        self._callback_failures = 0
        self._last_data_s = 0.0
        self.items_seen = 0
        self.records_lost = 0

    @classmethod
    def follow_file(cls, path: str, callback: Callback) -> KernelLogFollower:
        """A follower of a plain file's lines, from its start, as they are appended."""
        follower = cls(callback, kmsg_path="", journalctl="")
        follower._file_path = path
        return follower

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> str:
        """Pick the source and start the thread; returns the source ("none" starts nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return self.source
        self._stop.clear()
        self._pick_source()
        if self.source == "none":
            log.info("kernel log not followed (%s); XID events come from NVML only", self.why)
            return self.source
        log.info("following the kernel log from %s", self.source)
        self._thread = threading.Thread(
            target=self._run, name=f"gantry-kernel-log-{self.source}", daemon=True
        )
        self._thread.start()
        return self.source

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and release the source. Safe to call more than once."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            self._thread = None
        self._close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _pick_source(self) -> None:
        if self._file_path:
            try:
                self._fd = os.open(self._file_path, os.O_RDONLY)
            except OSError as exc:
                self.source, self.why = "none", f"cannot open {self._file_path}: {exc.strerror}"
                return
            self.source, self.why = "file", ""
            return
        reasons = []
        if self._kmsg_path:
            try:
                fd = os.open(self._kmsg_path, os.O_RDONLY | os.O_NONBLOCK)
            except OSError as exc:
                reasons.append(f"{self._kmsg_path}: {exc.strerror}")
            else:
                os.lseek(fd, 0, os.SEEK_END)
                self._fd = fd
                self.source, self.why = "kmsg", ""
                return
        if self._journalctl:
            problem = self._journalctl_problem()
            if not problem:
                self._proc = subprocess.Popen(
                    [self._journalctl, *JOURNALCTL_ARGS],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                assert self._proc.stdout is not None
                self._fd = self._proc.stdout.fileno()
                self.source, self.why = "journalctl", ""
                return
            reasons.append(problem)
        self.source = "none"
        self.why = "; ".join(reasons) or "no kernel log source configured"

    def _journalctl_problem(self) -> str:
        """Why journalctl cannot follow the kernel's journal here, or ""."""
        program = shutil.which(self._journalctl)
        if program is None:
            return f"{self._journalctl} not found"
        try:
            done = subprocess.run(
                [program, "-k", "-n", "1", "-q", "--no-pager"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"journalctl failed: {exc}"
        said = done.stderr.decode(errors="replace").strip().splitlines()
        if done.returncode != 0:
            return f"journalctl -k exited {done.returncode}" + (f": {said[0]}" if said else "")
        if not done.stdout.strip():
            # e.g. "No journal files were found." in a container without a journal
            return "journalctl has no kernel messages" + (f": {said[0]}" if said else "")
        return ""

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            self._fd = -1
        elif self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            if self.source == "kmsg":
                self._run_kmsg()
            else:
                self._run_lines()
        except Exception:
            log.exception("kernel log follower (%s) stopped", self.source)

    def _emit(self, items: list[KernelItem]) -> None:
        for item in items:
            self.items_seen += 1
            try:
                self._callback(item)
            except Exception:
                self._callback_failures += 1
                if self._callback_failures == 1 or self._callback_failures % 1000 == 0:
                    log.exception(
                        "kernel log callback failed (%d time(s))", self._callback_failures
                    )

    def _flush_if_idle(self) -> None:
        if time.monotonic() - self._last_data_s >= IDLE_FLUSH_S:
            self._emit(self._parser.flush())

    def _wait_readable(self) -> bool:
        ready, _, _ = select.select([self._fd], [], [], IDLE_WAIT_S)
        return bool(ready)

    def _run_kmsg(self) -> None:
        parser = self._parser
        while not self._stop.is_set():
            if not self._wait_readable():
                self._flush_if_idle()
                continue
            try:
                record = os.read(self._fd, MAX_LINE_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them
                    self.records_lost += 1
                    continue
                raise
            if not record:
                continue
            self._last_data_s = time.monotonic()
            self._emit(parser.feed_kmsg(record.decode(errors="replace")))

    def _run_lines(self) -> None:
        parser = self._parser
        partial = b""
        is_file = self.source == "file"
        while not self._stop.is_set():
            if is_file:
                chunk = os.read(self._fd, 64 * 1024)
                if not chunk:
                    if not partial:
                        self._flush_if_idle()
                    self._stop.wait(0.05)
                    continue
            else:
                if not self._wait_readable():
                    if not partial:
                        self._flush_if_idle()
                    continue
                chunk = os.read(self._fd, 64 * 1024)
                if not chunk:
                    if not self._stop.is_set():
                        log.warning("journalctl stopped: kernel log no longer followed")
                    return
            self._last_data_s = time.monotonic()
            *lines, partial = (partial + chunk).split(b"\n")
            if len(partial) > MAX_LINE_BYTES:
                partial = b""  # an overlong line is dropped, not buffered
            for raw in lines:
                self._emit(parser.feed_line(raw[:MAX_LINE_BYTES].decode(errors="replace")))
