"""A rank's stdout and stderr, scanned line by line as they arrive, against the catalogue of
failure signatures (``log_signatures``). Pure: the supervisor feeds lines and the time; the
scanner returns ``Diagnosis`` findings to journal as events, and keeps the best cause for
the rank's failure.

Some signatures need more than one line, and the scanner keeps that state per stream:
- a Python traceback: its header, then frames, then the exception line that becomes the
  cause (any prefix a launcher or collector puts before the header is taken off the lines
  that follow);
- follow-up lines: PyTorch's "last enqueued/completed NCCL work" after a watchdog timeout,
  NCCL's "Last error:" after an NCCL error;
- a storm: fp16 overflows counted over a window of time.

Cost is bounded: a line holding none of the catalogue's texts costs one regular-expression
search; lines are cut at ``MAX_LINE``; a finding already made is not made again, and an
alert makes at most ``MAX_PER_ALERT`` findings in ``RATE_WINDOW_S``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from agent.jobs.node.gpu_split import SplitGpuMessage
from agent.jobs.node.log_findings import (
    Diagnosis,
    Hit,
    any_in,
    launcher_prefix,
    short,
    strip_prefix,
)
from agent.jobs.node.log_signatures import SIGNATURES, overflow_scale
from agent.jobs.node.nccl_signatures import (
    TAKEDOWN_KEY,
    watchdog_hit,
    with_last_error,
    with_work,
)
from agent.jobs.node.torchrun_summary import CHILD_FAILED, ChildFailedSummary

__all__ = ["CAUSE_PRIORITY", "LogScanner"]

MAX_LINE = 8192
MAX_TRACEBACK_LINES = 400
FOLLOW_UP_LINES = 4
MAX_PER_ALERT = 5
RATE_WINDOW_S = 60.0
STORM_OVERFLOWS = 4  # skipped fp16 steps within STORM_WINDOW_S make a storm
STORM_WINDOW_S = 60.0
STORM_QUIET_S = 300.0  # a storm is reported again only after this long without one
MAX_SEEN_KEYS = 1000
# Found and kept for the cause, not announced: NCCL's WARN lines are NCCL events already.
QUIET_ALERTS = frozenset({"nccl_warn"})
# Which finding is the rank's failure cause, first first: the root causes (a timeout, memory)
# before what follows from them (a traceback, a lost peer).
CAUSE_PRIORITY = (
    "nccl_watchdog_timeout",
    "cuda_oom",
    "nccl_cuda_oom",
    "zero_alloc",
    "host_oom",
    "xid",
    "gpu_missing",
    "nccl_cuda_error",
    "nccl_system_error",
    "nccl_internal_error",
    "disk_full",
    "dataloader_worker",
    "socket_ifname",
    "rendezvous",
    "gloo_timeout",
    "loss_scale_storm",
    "traceback",
    "nccl_remote_exited",
    "gloo_reset",
)
# Findings whose next lines may complete them: PyTorch's "last enqueued/completed NCCL work"
# after a watchdog timeout; NCCL's "Last error:" after its errors.
_FOLLOWED = frozenset(
    {
        "nccl_watchdog_timeout",
        "nccl_system_error",
        "nccl_cuda_error",
        "nccl_internal_error",
        "nccl_remote_exited",
    }
)
_SEVERITY = {"info": 0, "warning": 1, "critical": 2}  # a graver finding of an alert is kept
_LATEST_WINS = frozenset({"traceback"})  # a later traceback says more than an earlier one

_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z][A-Za-z0-9_]*)(?::\s*(?P<message>.*))?$"
)
_FRAME = re.compile(r'^(?P<prefix>.*?)\s+File "[^"]*", line \d+')
_LAST_ERROR = "Last error:"
_LOWER = re.compile("[a-z]")  # INFO: or WARNING: lines are a logger's, not an exception


# Whether a line may hold any signature; then each rule's own needles, unrolled alike.
_may_match = any_in(
    [n for s in SIGNATURES for n in s.needles] + ["Traceback", "verflow", "OVERFLOW", _LAST_ERROR]
)
_RULES = tuple((any_in(s.needles), s) for s in SIGNATURES)


def _told(found: Diagnosis, hit: Hit) -> Diagnosis:
    """``found`` (its line, stream and time) telling what ``hit`` now says."""
    fields = dict(hit.fields)
    return replace(
        found, alert=hit.alert, severity=hit.severity, cause=hit.cause, fields=fields, key=hit.key
    )


@dataclass
class _Stream:
    prefix: str | None = None  # inside a traceback: what came before its header
    traceback_lines: int = 0
    pending: Diagnosis | None = None  # waiting for its follow-up line
    pending_left: int = 0
    last_error: bool = False  # NCCL's "Last error:" was seen: the next line says it
    child: ChildFailedSummary | None = None  # torchrun's summary after its ChildFailedError
    tail_prefix: str = ""  # the last traceback's prefix, taken off its exception's follow-ups
    gpu: SplitGpuMessage = field(default_factory=SplitGpuMessage)  # a driver message's address


class LogScanner:
    """One rank's scanner (one per attempt)."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._seen: set[tuple[str, str]] = set()
        self._emitted: dict[str, deque[float]] = {}
        self._overflows: deque[float] = deque()
        self._storm_at: float | None = None
        self._last_scale: str | None = None
        self._out: list[Diagnosis] = []
        self.found: dict[str, Diagnosis] = {}  # alert -> the one kept for the cause
        self.suppressed = 0  # findings over the rate limit

    # --- feeding ------------------------------------------------------------------------------

    def feed(self, stream: str, line: str, now: float) -> list[Diagnosis]:
        """The findings ``line`` completes (often none)."""
        self._feed(stream, line, now)
        out, self._out = self._out, []
        return out

    def feed_lines(self, stream: str, lines: Iterable[str], now: float) -> list[Diagnosis]:
        for line in lines:
            self._feed(stream, line, now)
        return self.flush()

    def flush(self) -> list[Diagnosis]:
        """Everything found so far, with findings still waiting for a follow-up line given
        up on (call once the lines read so far are all fed)."""
        for state in self._streams.values():
            if state.pending is not None:
                self._emit(state.pending)
                state.pending = None
            if state.child is not None:
                self._emit(state.child.completed())
                state.child = None
        out, self._out = self._out, []
        return out

    def _feed(self, stream: str, line: str, now: float) -> None:
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE]
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream()
        if "NVRM" in line or state.gpu.pci:
            state.gpu.see(line)
        if state.pending is not None and self._follow_up(state, line):
            return  # the line completed the finding it followed (a watchdog's work counters)
        if state.child is not None and state.child.feed(line):
            self._emit(state.child.completed())
            state.child = None
        if state.prefix is not None:
            self._in_traceback(state, stream, line, now)
            return
        if 'File "' in line and _FRAME.match(line) is not None:
            # A traceback whose header is not in the log (cut above, or another stream's): its
            # prefix is what comes before the frame's own two-space indent ("[rank0]: ",
            # "(RayWorkerWrapper pid=335) ERROR 01-29 07:44:33 worker_base.py:467] ").
            head = line[: line.index('File "')]
            state.prefix = head[:-2] if head.endswith("  ") else head
            state.traceback_lines = 0
            return
        if not _may_match(line):
            return
        if _TRACEBACK in line:
            state.prefix = line[: line.index(_TRACEBACK)]
            state.traceback_lines = 0
            return
        self._match(state, stream, line, now)

    def _match(self, state: _Stream, stream: str, line: str, now: float) -> Hit | None:
        overflow, scale = (
            overflow_scale(line) if "verflow" in line or "OVERFLOW" in line else (False, None)
        )
        if overflow:
            self._overflow(stream, line, now, scale)
            return None
        for may_hold, signature in _RULES:
            if not may_hold(line):
                continue
            hit = signature.read(line)
            if hit is None:
                continue
            hit = state.gpu.carry(hit)
            found = Diagnosis(
                hit.alert,
                hit.severity,
                hit.cause,
                line.strip(),
                stream,
                dict(hit.fields),
                now,
                hit.key,
            )
            if hit.alert not in _FOLLOWED:
                self._emit(found)
            elif _LAST_ERROR not in line:
                self._wait(state, found)
            elif after := line.split(_LAST_ERROR, 1)[1].strip():
                # A message flattened onto one line: its "Last error:" text is here.
                self._emit(_told(found, with_last_error(hit, after)))
            else:
                self._wait(state, found)
                state.last_error = True
            return hit
        return None

    # --- multi-line state ---------------------------------------------------------------------

    def _wait(self, state: _Stream, found: Diagnosis) -> None:
        if state.pending is not None:
            if state.pending.alert == found.alert:
                # The same error told again (NCCL's own name for it on the next line).
                state.pending_left = FOLLOW_UP_LINES
                return
            self._emit(state.pending)
        state.pending, state.pending_left, state.last_error = found, FOLLOW_UP_LINES, False

    def _follow_up(self, state: _Stream, line: str) -> bool:
        """Whether ``line`` belonged to the pending watchdog finding (the rest of its wrapped
        line, or its work counters): then nothing else is read in it."""
        pending = state.pending
        assert pending is not None
        if state.tail_prefix and line.startswith(state.tail_prefix):
            line = line[len(state.tail_prefix) :]  # the traceback's wrapper, on its follow-ups
        # A launcher's prefix (srun -l's "12: " only if the line followed up had one).
        numbered = launcher_prefix(pending.line) != launcher_prefix(pending.line, numbered=False)
        line = strip_prefix(line, numbered)
        hit = Hit(pending.alert, pending.severity, pending.cause, pending.fields, pending.key)
        done: Hit | None = None
        text = line.strip()
        if pending.alert == "nccl_watchdog_timeout" and "ran_ms" not in pending.fields:
            # A line cut by a terminal's wrap: read it with the next one.
            joined = watchdog_hit(pending.line + text)
            if joined is not None and "ran_ms" in joined.fields:
                state.pending = replace(_told(pending, joined), line=pending.line + text)
                return True
        if pending.alert == "nccl_watchdog_timeout":
            done = with_work(hit, line)
        elif _LAST_ERROR in text:
            after = text.split(_LAST_ERROR, 1)[1].strip()
            if after:
                done = with_last_error(hit, after)
            else:
                state.last_error = True
                return False
        elif state.last_error and text:
            done = with_last_error(hit, text)
        if done is not None:
            self._emit(_told(pending, done))
            state.pending = None
            return pending.alert == "nccl_watchdog_timeout"
        state.pending_left -= 1
        if state.pending_left <= 0:
            self._emit(pending)
            state.pending = None
        return False

    def _in_traceback(self, state: _Stream, stream: str, line: str, now: float) -> None:
        prefix = state.prefix or ""
        text = line[len(prefix) :] if prefix and line.startswith(prefix) else strip_prefix(line)
        state.traceback_lines += 1
        if state.traceback_lines > MAX_TRACEBACK_LINES:
            state.prefix = None
        if not text.strip() or text.startswith((" ", "\t")):
            return
        text = text.rstrip()
        if _TRACEBACK in text:  # a chained exception's own traceback
            state.traceback_lines = 0
            return
        match = _EXCEPTION.match(text)
        if match is None or not _LOWER.search(match["type"].rsplit(".", 1)[-1]):
            # Another writer's line between the frames (a library's log line): read it as
            # any line, and wait on for the exception.
            if _may_match(line):
                self._match(state, stream, line, now)
            return
        state.prefix, state.tail_prefix = None, prefix
        hit = self._match(state, stream, text, now) if _may_match(text) else None
        if hit is not None:
            return  # the exception line itself is a signature (an OOM, NCCL, gloo)
        name = match["type"].rsplit(".", 1)[-1]
        message = (match["message"] or "").strip()
        cause = f"{name}: {message}" if message else name
        found = Diagnosis(
            "traceback", "warning", short(cause), text, stream, {"exception": name}, now, cause
        )
        if name == CHILD_FAILED and not message:
            state.child = ChildFailedSummary(found)  # its summary follows: told once read
        else:
            self._emit(found)

    def _overflow(self, stream: str, line: str, now: float, scale: str | None) -> None:
        if scale is not None:
            self._last_scale = scale
        self._overflows.append(now)
        while self._overflows and self._overflows[0] < now - STORM_WINDOW_S:
            self._overflows.popleft()
        if len(self._overflows) < STORM_OVERFLOWS:
            return
        if self._storm_at is not None and now - self._storm_at < STORM_QUIET_S:
            self._storm_at = now
            return
        self._storm_at = now
        cause = (
            f"fp16 loss-scale overflow storm: {len(self._overflows)} skipped steps in "
            f"{STORM_WINDOW_S:.0f} s"
        )
        if self._last_scale is not None:
            cause += f", loss scale now {self._last_scale}"
        fields = {"overflows": str(len(self._overflows))}
        if self._last_scale is not None:
            fields["loss_scale"] = self._last_scale
        self._emit(
            Diagnosis(
                "loss_scale_storm",
                "warning",
                cause,
                line.strip(),
                stream,
                fields,
                now,
                f"storm@{now:.0f}",
            )
        )

    # --- findings -----------------------------------------------------------------------------

    def _emit(self, found: Diagnosis) -> None:
        seen_key = (found.alert, found.key or found.cause)
        if seen_key in self._seen:
            return
        if len(self._seen) < MAX_SEEN_KEYS:
            self._seen.add(seen_key)
        kept = self.found.get(found.alert)
        if (
            kept is None
            or found.alert in _LATEST_WINS
            or (kept.key == TAKEDOWN_KEY and found.key != TAKEDOWN_KEY)
            or _SEVERITY[found.severity] > _SEVERITY[kept.severity]  # a later Xid 94 over a 43
            or (
                found.alert == "nccl_watchdog_timeout"
                and "last_completed" in found.fields
                and "last_completed" not in kept.fields
            )
        ):
            self.found[found.alert] = found
        if found.alert in QUIET_ALERTS:
            return
        times = self._emitted.setdefault(found.alert, deque())
        while times and times[0] < found.time - RATE_WINDOW_S:
            times.popleft()
        if len(times) >= MAX_PER_ALERT:
            self.suppressed += 1
            return
        times.append(found.time)
        self._out.append(found)

    def cause(self) -> Diagnosis | None:
        """The finding that best says why the rank failed, or None. PyTorch's bare abort
        message (an NCCL failure, which one unsaid) comes after every other finding."""
        takedown = None
        for alert in CAUSE_PRIORITY:
            found = self.found.get(alert)
            if found is not None and found.key == TAKEDOWN_KEY:
                takedown = found
            elif found is not None:
                return found
        return takedown
