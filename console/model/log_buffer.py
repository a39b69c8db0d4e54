"""The lines of one rank's log, as the console holds them: a ring with absolute indices.

Every line ever appended keeps its absolute index (0 for the first line), so a position
(the top of a view, a search match, the first error) stays valid while the oldest lines
drop out of the ring; a dropped index is simply below `first_index`.

Lines are stored as they are drawn: ANSI escapes removed, tabs expanded, other control
characters shown as U+FFFD, a carriage-return progress line reduced to what a terminal
would show last. Search spans are therefore offsets in the shown text.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

DEFAULT_MAX_LINES = 100_000
# Longer lines are cut: one pasted tensor must not cost megabytes per line drawn.
MAX_LINE_CHARS = 8192
REGEX_PREFIX = "re:"


class Severity(IntEnum):
    NORMAL = 0
    WARNING = 1
    ERROR = 2


# Case-sensitive on purpose: "Error"/"ERROR" mark failures, while lower-case "error"
# shows up in ordinary words and config keys (error_rate, ignore_errors). Every branch
# starts with a literal, so the regex engine skips ahead on first characters: these
# run on every appended line.
_ERROR = re.compile(
    r"Traceback \(most recent call last\)"
    r"|Error(?=:|\s*$)"  # RuntimeError: ..., torch.OutOfMemoryError: ..., AssertionError
    r"|ERROR|CRITICAL|FATAL"
    r"|CUDA out of memory"
    r"|NCCL WARN"
    r"|CUDA error\b|NCCL error\b|cuDNN error\b|cuBLAS error\b|CUBLAS error\b|NVML error\b"
    r"|: error: "  # argparse and compilers: "train.py: error: ..."
    r"|Segmentation fault|core dumped"
    r"|Exception(?::| in )"
    r"|\]:\[E\d* "  # c10d behind torchrun's prefix: "[rank0]:[E1023 12:00:00.1 ..."
)
_WARNING = re.compile(
    r"WARN"
    r"|Warning\b"  # UserWarning, FutureWarning, "Warning:"
    r"|warn(?:s|ing|ings)?\b"  # "  warnings.warn(", "warning: ..."
    r"|\]:\[W\d* "
)
# Either of them, in one pass: most lines are neither.
_ANY = re.compile(f"{_ERROR.pattern}|{_WARNING.pattern}")
# Matched at the start of a line: c10d/glog "[E ProcessGroupNCCL.cpp:..]", "E1023 12:00:00",
# "[W socket.cpp:663]", and a compiler's "error: ...".
_LEADING_ERROR = re.compile(r"\[E\d* |E\d{4} \d\d:\d\d|error: ")
_LEADING_WARNING = re.compile(r"\[W\d* |W\d{4} \d\d:\d\d")
_TRACEBACK = "Traceback (most recent call last)"
# torchrun's --tee/--local-ranks-filter prefix: "[rank1]: ", "[default0]:".
_RANK_PREFIX = re.compile(r"^\[[a-z]+\d+\]: ?")

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def clean_line(text: str) -> str:
    """A raw log line as it is stored and drawn (no newline in it)."""
    if text.isprintable():
        return text[:MAX_LINE_CHARS]
    if "\r" in text:
        # A progress bar redraws its line after each \r: keep what was shown last.
        parts = [part for part in text.split("\r") if part]
        text = parts[-1] if parts else ""
    if "\x1b" in text:
        text = _ANSI.sub("", text)
    if "\t" in text:
        text = text.expandtabs()
    text = _CONTROL.sub("\ufffd", text)
    return text[:MAX_LINE_CHARS]


def classify(line: str) -> Severity:
    """The severity of one line on its own (no traceback context)."""
    if not _ANY.search(line):
        if _LEADING_ERROR.match(line):
            return Severity.ERROR
        return Severity.WARNING if _LEADING_WARNING.match(line) else Severity.NORMAL
    if _ERROR.search(line) or _LEADING_ERROR.match(line):
        return Severity.ERROR
    if _WARNING.search(line) or _LEADING_WARNING.match(line):
        return Severity.WARNING
    return Severity.NORMAL


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled search: `test` says whether a line matches, `pattern` finds spans."""

    text: str
    pattern: re.Pattern[str]
    test: Callable[[str], bool]


@functools.lru_cache(maxsize=64)
def compile_query(query: str) -> Query:
    """A search query: a case-insensitive substring, or a regex after "re:".

    A regex is used as written (case-sensitive unless it says `(?i)`). Raises
    ValueError with a one-line message for an empty query or a bad regex.
    """
    if query.startswith(REGEX_PREFIX):
        source = query[len(REGEX_PREFIX) :]
        if not source:
            raise ValueError("empty regex after 're:'")
        try:
            pattern = re.compile(source)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise ValueError(f"bad regex {source!r}: {exc.msg}{where}") from None
        search = pattern.search
        return Query(query, pattern, lambda line: search(line) is not None)
    if not query:
        raise ValueError("empty search")
    # `in` on a lowered line is several times faster than a case-insensitive regex.
    needle = query.lower()
    return Query(
        query, re.compile(re.escape(query), re.IGNORECASE), lambda line: needle in line.lower()
    )


def spans_of(pattern: re.Pattern[str], line: str) -> list[tuple[int, int]]:
    """Non-empty match spans of `pattern` in `line`, in order."""
    return [m.span() for m in pattern.finditer(line) if m.end() > m.start()]


class LogBuffer:
    """One rank's log lines, at most `max_lines` of them (the oldest drop out).

    A feeder calls `append(line)` or `extend(lines)` from the event loop; a view polls
    `version` and redraws when it moved. Indices are absolute: the lines held are
    `first_index` .. `last_index` inclusive (`last_index == first_index - 1` when empty).
    """

    def __init__(self, max_lines: int = DEFAULT_MAX_LINES) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {max_lines}")
        self.max_lines = max_lines
        self.version = 0
        # Slot `i % max_lines` holds line `i`; the lists grow until the ring is full.
        self._lines: list[str] = []
        self._severity = bytearray()
        self._first = 0
        self._end = 0
        self._errors: deque[int] = deque()
        self._error_count = 0
        self._warning_count = 0
        self._in_traceback = False
        self.max_line_length = 0

    # -- reading ---------------------------------------------------------------
    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._end - 1

    @property
    def end_index(self) -> int:
        """The index the next appended line gets (= lines ever appended)."""
        return self._end

    @property
    def dropped(self) -> int:
        """Lines that fell out of the ring (or were cleared)."""
        return self._first

    def __len__(self) -> int:
        return self._end - self._first

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self._first <= index < self._end

    def line(self, index: int) -> str:
        """The line at absolute `index`; IndexError if it was dropped or never came."""
        self._check(index)
        return self._lines[index % self.max_lines]

    __getitem__ = line

    def severity(self, index: int) -> Severity:
        self._check(index)
        return Severity(self._severity[index % self.max_lines])

    @property
    def error_count(self) -> int:
        """Error lines still held."""
        return self._error_count

    @property
    def warning_count(self) -> int:
        return self._warning_count

    def first_error(self) -> int | None:
        """The absolute index of the oldest error line still held, or None."""
        return self._errors[0] if self._errors else None

    # -- writing ---------------------------------------------------------------
    def append(self, text: str) -> None:
        """Appends one line; text with newlines in it is several lines."""
        if self._add(text):
            self.version += 1

    def extend(self, lines: Iterable[str]) -> None:
        """Appends many lines with one version bump."""
        added = False
        for text in lines:
            added = self._add(text) or added
        if added:
            self.version += 1

    def clear(self) -> None:
        """Drops every line; indices go on from where they were."""
        if self._first == self._end:
            return
        self._first = self._end
        # Slots keep their places (line i lives in slot i % max_lines); free the text.
        self._lines = [""] * len(self._lines)
        self._errors.clear()
        self._error_count = self._warning_count = 0
        self._in_traceback = False
        self.version += 1

    # -- search ----------------------------------------------------------------
    def find(
        self, query: str, start: int, backwards: bool = False, wrap: bool = True
    ) -> int | None:
        """The first line matching `query` from `start` (inclusive) on, or None.

        Forward scans `start` .. `last_index`, then (with `wrap`) `first_index` ..
        `start - 1`; backwards the other way. One linear pass at most; `start` out
        of range is clamped. Raises ValueError for a bad query (see `compile_query`).
        """
        test = compile_query(query).test
        first, last = self._first, self._end - 1
        if last < first:
            return None
        start = min(max(start, first), last)
        if backwards:
            ranges = [range(start, first - 1, -1)]
            if wrap:
                ranges.append(range(last, start, -1))
        else:
            ranges = [range(start, last + 1)]
            if wrap:
                ranges.append(range(first, start))
        lines, cap = self._lines, self.max_lines
        for indices in ranges:
            for index in indices:
                if test(lines[index % cap]):
                    return index
        return None

    def matches_in(self, line_index: int, query: str) -> list[tuple[int, int]]:
        """Spans (start, end) of `query` in a line, for highlighting; [] if dropped."""
        if line_index not in self:
            return []
        return spans_of(compile_query(query).pattern, self._lines[line_index % self.max_lines])

    # -- internals -------------------------------------------------------------
    def _check(self, index: int) -> None:
        if not self._first <= index < self._end:
            raise IndexError(f"line {index} is not held (lines {self._first}..{self._end - 1})")

    def _add(self, text: str) -> bool:
        if "\n" in text:
            parts = text.split("\n")
            if parts[-1] == "":
                parts.pop()
            for part in parts:
                self._add_line(clean_line(part))
            return bool(parts)
        self._add_line(clean_line(text))
        return True

    def _add_line(self, line: str) -> None:
        severity = self._classify(line)
        index, cap = self._end, self.max_lines
        if index - self._first == cap:
            self._drop_oldest()
        slot = index % cap
        if slot == len(self._lines):  # the ring is still growing
            self._lines.append(line)
            self._severity.append(severity)
        else:
            self._lines[slot] = line
            self._severity[slot] = severity
        self._end = index + 1
        if severity == Severity.ERROR:
            self._errors.append(index)
            self._error_count += 1
        elif severity == Severity.WARNING:
            self._warning_count += 1
        if len(line) > self.max_line_length:
            self.max_line_length = len(line)

    def _drop_oldest(self) -> None:
        dropped = self._severity[self._first % self.max_lines]
        if dropped == Severity.ERROR:
            self._errors.popleft()
            self._error_count -= 1
        elif dropped == Severity.WARNING:
            self._warning_count -= 1
        self._first += 1

    def _classify(self, line: str) -> Severity:
        # A traceback is red from its header to its exception line, frames included.
        if self._in_traceback:
            body = _RANK_PREFIX.sub("", line, count=1)
            if not body.strip():
                self._in_traceback = False
            elif body[0].isspace():
                return Severity.ERROR
            else:
                self._in_traceback = False
                return Severity.ERROR
        if _TRACEBACK in line:
            self._in_traceback = True
            return Severity.ERROR
        return classify(line)


class LogSearch:
    """The lines of a buffer that match one query, kept up to date cheaply.

    Built with one linear scan of the buffer; `update()` then scans only lines
    appended since and forgets dropped ones, so stepping through matches (`nearest`)
    and counting them (`ordinal`, `len`) cost a bisect, not a scan.
    """

    def __init__(self, buffer: LogBuffer, query: str) -> None:
        self.buffer = buffer
        self.query = query
        self.compiled = compile_query(query)  # ValueError for a bad query
        self._matches: list[int] = []
        self._head = 0  # matches before it were dropped from the buffer
        self._scanned = buffer.first_index
        self.update()

    def __len__(self) -> int:
        return len(self._matches) - self._head

    def update(self) -> None:
        buffer = self.buffer
        first, end = buffer.first_index, buffer.end_index
        matches = self._matches
        head = bisect.bisect_left(matches, first, self._head)
        if head > 1024 and head * 2 > len(matches):
            del matches[:head]
            head = 0
        self._head = head
        test = self.compiled.test
        lines, cap = buffer._lines, buffer.max_lines
        for index in range(max(self._scanned, first), end):
            if test(lines[index % cap]):
                matches.append(index)
        self._scanned = end

    def nearest(self, index: int, backwards: bool = False, wrap: bool = True) -> int | None:
        """The first match at or after `index` (at or before it, `backwards`), or None."""
        matches, head = self._matches, self._head
        if head == len(matches):
            return None
        if backwards:
            at = bisect.bisect_right(matches, index, head) - 1
            if at >= head:
                return matches[at]
            return matches[-1] if wrap else None
        at = bisect.bisect_left(matches, index, head)
        if at < len(matches):
            return matches[at]
        return matches[head] if wrap else None

    def ordinal(self, index: int) -> int | None:
        """1-based position of line `index` among the matches, or None if it is not one."""
        at = bisect.bisect_left(self._matches, index, self._head)
        if at < len(self._matches) and self._matches[at] == index:
            return at - self._head + 1
        return None

    def spans(self, index: int) -> list[tuple[int, int]]:
        if index not in self.buffer:
            return []
        return spans_of(self.compiled.pattern, self.buffer.line(index))
