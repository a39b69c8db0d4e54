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
from collections import deque
from collections.abc import Iterable

from console.model.log_lines import (
    MAX_LINE_CHARS,
    RANK_PREFIX,
    REGEX_PREFIX,
    TRACEBACK,
    Query,
    Severity,
    classify,
    clean_line,
    compile_query,
    spans_of,
)

__all__ = [
    "DEFAULT_MAX_LINES",
    "MAX_LINE_CHARS",
    "REGEX_PREFIX",
    "LogBuffer",
    "LogSearch",
    "Query",
    "Severity",
    "classify",
    "clean_line",
    "compile_query",
    "spans_of",
]

DEFAULT_MAX_LINES = 100_000


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
        self._tags = bytearray()  # per line: which stream it came from (0 unless told)
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

    def tag(self, index: int) -> int:
        """The tag the line was appended with (a merged log's stream)."""
        self._check(index)
        return self._tags[index % self.max_lines]

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
    def append(self, text: str, tag: int = 0) -> None:
        """Appends one line; text with newlines in it is several lines."""
        if self._add(text, tag):
            self.version += 1

    def extend(self, lines: Iterable[str], tag: int = 0) -> None:
        """Appends many lines with one version bump."""
        added = False
        for text in lines:
            added = self._add(text, tag) or added
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

    def _add(self, text: str, tag: int) -> bool:
        if "\n" in text:
            parts = text.split("\n")
            if parts[-1] == "":
                parts.pop()
            for part in parts:
                self._add_line(clean_line(part), tag)
            return bool(parts)
        self._add_line(clean_line(text), tag)
        return True

    def _add_line(self, line: str, tag: int) -> None:
        severity = self._classify(line)
        index, cap = self._end, self.max_lines
        if index - self._first == cap:
            self._drop_oldest()
        slot = index % cap
        if slot == len(self._lines):  # the ring is still growing
            self._lines.append(line)
            self._severity.append(severity)
            self._tags.append(tag)
        else:
            self._lines[slot] = line
            self._severity[slot] = severity
            self._tags[slot] = tag
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
            body = RANK_PREFIX.sub("", line, count=1)
            if not body.strip():
                self._in_traceback = False
            elif body[0].isspace():
                return Severity.ERROR
            else:
                self._in_traceback = False
                return Severity.ERROR
        if TRACEBACK in line:
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
