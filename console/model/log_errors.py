"""Where each error in a log begins, for the log screen's `e`: the first line of a
traceback, a CUDA out-of-memory, an NCCL warning or watchdog timeout, an `error:` line.

`error_kind` reads one line on its own. `ErrorStarts` reads lines in order and says
which of them *start* an error: a traceback's frames, its exception line and the
exceptions chained to it belong to the traceback's start, and a run of error lines
(NCCL's warning followed by its own) is one error. Interleaved torchrun ranks
(`[rank3]: ...`) and a merged log's streams are followed apart. `ErrorIndex` keeps the
starts of a `LogBuffer` up to date on demand, as `LogSearch` does for a query.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from enum import Enum

from console.model.log_buffer import LogBuffer
from console.model.log_lines import RANK_PREFIX, TRACEBACK, clean_line

# In order of precedence: the first that matches names the error ("RuntimeError: CUDA
# out of memory" is an OOM). Case-sensitive on purpose, as in log_lines: lower-case
# "error" is in ordinary words and config keys.
_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("traceback", r"Traceback \(most recent call last\)"),
        (
            "nccl_timeout",
            r"Watchdog caught collective operation timeout|[Cc]ollective operation timeout"
            r"|NCCL timeout|Timed out waiting \d+ms",
        ),
        (
            "cuda_oom",
            r"CUDA out of memory|OutOfMemoryError|Cuda failure 'out of memory'"
            r"|CUDA error: out of memory",
        ),
        ("nccl_warn", r"NCCL WARN"),
        (
            "nccl_error",
            r"NCCL error\b|ncclSystemError|ncclInternalError|ncclUnhandledCudaError"
            r"|ncclRemoteError|ncclInvalidUsage",
        ),
        ("cuda_error", r"CUDA error\b|cuDNN error\b|CUBLAS_STATUS_\w+|CUDNN_STATUS_\w+"),
        (
            "crash",
            r"Segmentation fault|core dumped|terminate called (?:after throwing|without an active)"
            r"|Fatal Python error|[Kk]illed by signal|exitcode\s*: -\d+",
        ),
        ("exception", r"\b\w*(?:Error|Exception)(?::|$)"),
        ("error", r": error: |\bERROR\b|\bFATAL\b|\bCRITICAL\b"),
    )
)
# Any of them, in one pass: most lines are none.
_ANY = re.compile("|".join(pattern.pattern for _, pattern in _KINDS))
# At the start of the line (after a torchrun prefix): glog/c10d's "[E ...", "E1023 12:00",
# argparse's and compilers' "error: ...".
_LEADING = re.compile(r"\[E\d* |E\d{4} \d\d:\d\d|error: ")
# Lines that join a traceback to the one chained after it.
_CHAINED = (
    "During handling of the above exception",
    "The above exception was the direct cause",
)


def error_kind(line: str) -> str | None:
    """What error `line` reports on its own (`traceback`, `cuda_oom`, ...), or None."""
    if _ANY.search(line) is not None:
        return next(kind for kind, pattern in _KINDS if pattern.search(line))
    body = RANK_PREFIX.sub("", line, count=1)
    return "error" if _LEADING.match(body) else None


class _State(Enum):
    FRAMES = 1  # inside a traceback: frames until the exception line
    ERROR = 2  # the last line with text was (part of) an error
    CHAINED = 3  # "During handling of the above exception...": a traceback follows


class ErrorStarts:
    """Reads a log line by line (`feed`) and names the lines where an error starts."""

    def __init__(self) -> None:
        # Per stream, per torchrun prefix ("" for none): where its lines stand.
        self._states: dict[int, dict[str, _State]] = {}

    def feed(self, line: str, stream: int = 0) -> str | None:
        """The kind of error `line` starts, or None (no error, or one going on)."""
        prefix_match = RANK_PREFIX.match(line)
        prefix = prefix_match.group().rstrip() if prefix_match else ""
        body = line[prefix_match.end() :] if prefix_match else line
        if not body.strip():
            return None  # blank lines neither start nor end anything
        states = self._states.setdefault(stream, {})
        state = states.get(prefix)
        if state is _State.FRAMES:
            if not body[0].isspace():  # the exception line ends the traceback
                states[prefix] = _State.ERROR
            return None
        if state is _State.ERROR and body.startswith(_CHAINED):
            states[prefix] = _State.CHAINED
            return None
        kind = error_kind(line)
        if kind is None:
            # Ordinary output: whatever was going on in this stream is over.
            states.clear()
            return None
        states[prefix] = _State.FRAMES if TRACEBACK in body else _State.ERROR
        return None if state is not None else kind


def error_starts(lines: Iterable[str]) -> list[tuple[int, str]]:
    """(index, kind) of every line of `lines` that starts an error."""
    starts = ErrorStarts()
    found: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        kind = starts.feed(line)
        if kind is not None:
            found.append((index, kind))
    return found


class ErrorIndex:
    """The error starts of a buffer, by absolute index; `update()` reads only the lines
    appended since the last call (streams told apart by the buffer's line tags)."""

    def __init__(self, buffer: LogBuffer) -> None:
        self.buffer = buffer
        self._starts = ErrorStarts()
        self._indices: list[int] = []
        self._kinds: list[str] = []
        self._head = 0  # starts before it were dropped from the buffer
        self._scanned = buffer.first_index
        self.update()

    def __len__(self) -> int:
        return len(self._indices) - self._head

    def update(self) -> None:
        buffer = self.buffer
        first, end = buffer.first_index, buffer.end_index
        self._head = bisect.bisect_left(self._indices, first, self._head)
        feed = self._starts.feed
        for index in range(max(self._scanned, first), end):
            kind = feed(buffer.line(index), buffer.tag(index))
            if kind is not None:
                self._indices.append(index)
                self._kinds.append(kind)
        self._scanned = end

    def first(self) -> int | None:
        return self._indices[self._head] if len(self) else None

    def last(self) -> int | None:
        return self._indices[-1] if len(self) else None

    def after(self, index: int) -> int | None:
        """The first start past `index`, or None."""
        at = bisect.bisect_right(self._indices, index, self._head)
        return self._indices[at] if at < len(self._indices) else None

    def before(self, index: int) -> int | None:
        """The last start before `index`, or None."""
        at = bisect.bisect_left(self._indices, index, self._head) - 1
        return self._indices[at] if at >= self._head else None

    def ordinal(self, index: int) -> int | None:
        """1-based position of `index` among the starts, or None if it is not one."""
        at = bisect.bisect_left(self._indices, index, self._head)
        if at < len(self._indices) and self._indices[at] == index:
            return at - self._head + 1
        return None

    def kind(self, index: int) -> str | None:
        """The kind of the error starting at `index`, or None."""
        ordinal = self.ordinal(index)
        return self._kinds[self._head + ordinal - 1] if ordinal is not None else None


class ErrorJumps:
    """Where `e` (and `E`, backwards) goes next in whichever buffer is shown: the first
    error, or the one after the error the view is on, wrapping at the ends."""

    def __init__(self) -> None:
        self._indices: list[ErrorIndex] = []

    def index(self, buffer: LogBuffer) -> ErrorIndex:
        """The buffer's error starts, brought up to date."""
        for errors in self._indices:
            if errors.buffer is buffer:
                errors.update()
                return errors
        errors = ErrorIndex(buffer)
        self._indices.append(errors)
        return errors

    def step(self, buffer: LogBuffer, current: int | None, backwards: bool) -> int | None:
        """The error start to show from line `current` (None: no line marked)."""
        errors = self.index(buffer)
        if not len(errors):
            return None
        index = None
        if current is not None and errors.ordinal(current) is not None:
            index = errors.before(current) if backwards else errors.after(current)
        if index is None:
            index = errors.last() if backwards else errors.first()
        return index

    def describe(self, buffer: LogBuffer, index: int) -> str:
        """`error 2 of 5: cuda oom` for the start at `index`."""
        errors = self.index(buffer)
        kind = (errors.kind(index) or "error").replace("_", " ")
        return f"error {errors.ordinal(index) or 0:,} of {len(errors):,}: {kind}"


class LineSeek:
    """Where a log opened from an event lands: the latest line that reads as the event's
    line (the agent cuts it at 2,000 characters), once it arrives; else, once the
    backlog is in, the last error start."""

    def __init__(self, line: str = "") -> None:
        self.target = clean_line(line).strip()
        self._scanned = 0  # lines below it were looked at already

    def find(self, buffer: LogBuffer, errors: ErrorIndex, settled: bool) -> tuple[bool, int | None]:
        """(done, the line to show): not done while the line may still come; done with
        None when there is nothing to show."""
        target = self.target
        if target:
            start = max(buffer.first_index, self._scanned)
            for index in range(buffer.last_index, start - 1, -1):
                if buffer.line(index).strip().startswith(target):
                    return True, index
            self._scanned = buffer.end_index
        if not settled:
            return False, None
        return True, errors.last()
