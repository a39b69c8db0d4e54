"""A rank's log files as lines for a reader: a bounded tail or a follow-up read, and the
thread stacks a hung rank's faulthandler dumped into them. Reads files; no state."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.jobs.node.failure_cause import failure_cause
from agent.jobs.node.tailer import MAX_READ_BYTES, Chunk, Line, last_lines, read_lines

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_LOG_LINES",
    "STREAMS",
    "LogChunk",
    "cut_text",
    "extract_stacks",
    "failure_tail",
    "rank_log_path",
    "tail_log",
]

MAX_LOG_LINES = 10_000
# The end of a failed rank's stderr kept with its failure event.
FAILURE_TAIL_LINES = 20
FAILURE_TAIL_BYTES = 16_384
# Read to find the cause: a traceback's header may lie well above its last line.
CAUSE_LINES = 400
CAUSE_BYTES = 65_536
STREAMS = ("stdout", "stderr")
# A longer line reaches readers as its first MAX_LINE_BYTES and a marker saying how much
# was cut: never dropped, never split into pieces that read as lines of their own.
MAX_LINE_BYTES = 16_384
SCAN_BLOCK_BYTES = 1 << 16

_THREAD_HEADER = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-fA-F]+")


def extract_stacks(text: str) -> str:
    """The faulthandler dump(s) in ``text``: thread headers and their frame lines."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if _THREAD_HEADER.match(line):
            inside = True
            out.append(line)
        elif inside and (line.startswith("  ") or not line.strip()):
            out.append(line)
        else:
            inside = False
    return "\n".join(out).strip("\n")


@dataclass(frozen=True)
class LogChunk:
    lines: list[job_pb2.LogLine]
    next_offset: int  # where a follow-up read starts


def cut_text(head: bytes, length_bytes: int) -> str:
    """A line of ``length_bytes`` as its first bytes ``head`` and a visible marker."""
    kept = head[:MAX_LINE_BYTES].decode("utf-8", "ignore")  # no half a character at the cut
    return f"{kept}… [cut: {length_bytes - len(kept.encode()):,} bytes]"


def _cut_long(line: Line) -> Line:
    if len(line.text) * 4 <= MAX_LINE_BYTES:  # cannot be too long, whatever it holds
        return line
    raw = line.text.encode()
    return line if len(raw) <= MAX_LINE_BYTES else Line(line.offset, cut_text(raw, len(raw)))


def _read_at(path: str, start: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def _line_start(path: str, before: int) -> int:
    """Where the line holding byte ``before - 1`` starts, scanning back block by block."""
    end = before
    while end > 0:
        start = max(0, end - SCAN_BLOCK_BYTES)
        found = _read_at(path, start, end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _line_end(path: str, start: int, size: int) -> int | None:
    """The offset of the newline ending the line at ``start`` (None: not written yet)."""
    pos = start
    while pos < size:
        found = _read_at(path, pos, SCAN_BLOCK_BYTES).find(b"\n")
        if found >= 0:
            return pos + found
        pos += SCAN_BLOCK_BYTES
    return None


def _long_line(path: str, start: int, end: int) -> Line:
    """The line from ``start`` to its newline at ``end``, cut."""
    head = _read_at(path, start, MAX_LINE_BYTES + 4)
    length = end - start - (1 if _read_at(path, end - 1, 1) == b"\r" else 0)
    if length <= MAX_LINE_BYTES:
        return Line(start, head[:length].decode("utf-8", "replace"))
    return Line(start, cut_text(head, length))


def _tail(path: str, count: int, max_bytes: int) -> Chunk:
    """The last ``count`` lines; a line that began before the bytes read is not dropped:
    it comes first, cut."""
    chunk = last_lines(path, count, max_bytes)
    chunk = Chunk([_cut_long(line) for line in chunk.lines], chunk.offset)
    try:
        size = os.stat(path).st_size
    except OSError:
        return chunk
    window = max(0, size - max_bytes)
    first = chunk.lines[0].offset if chunk.lines else chunk.offset
    if window == 0 or first <= window or (0 < count <= len(chunk.lines)):
        return chunk
    start = _line_start(path, window)
    return Chunk([_long_line(path, start, first - 1), *chunk.lines], chunk.offset)


def _follow(path: str, offset: int, max_bytes: int) -> Chunk:
    """Lines from ``offset``; a line longer than a read comes whole once its newline is
    written, cut (until then, nothing)."""
    chunk = read_lines(path, offset, max_bytes)
    if not (chunk.more and len(chunk.lines) == 1 and not chunk.restarted):
        lines = [_cut_long(line) for line in chunk.lines]
        return Chunk(lines, chunk.offset, chunk.restarted, chunk.more)
    start = chunk.lines[0].offset
    end = _line_end(path, start, os.stat(path).st_size)
    if end is None:
        return Chunk(offset=start)
    return Chunk([_long_line(path, start, end)], end + 1, more=True)


def tail_log(
    path: str,
    stream: str,
    tail_lines: int = 100,
    from_offset: int | None = None,
    max_bytes: int = MAX_READ_BYTES,
) -> LogChunk:
    """Lines of ``path``: from ``from_offset`` on, else the last ``tail_lines``; bounded by
    ``max_bytes`` and ``MAX_LOG_LINES``; a line over MAX_LINE_BYTES cut, with a marker."""
    max_bytes = min(max_bytes, MAX_READ_BYTES)
    if from_offset is not None:
        chunk = _follow(path, from_offset, max_bytes)
        lines, next_offset = chunk.lines, chunk.offset
        if len(lines) > MAX_LOG_LINES:
            lines, next_offset = lines[:MAX_LOG_LINES], lines[MAX_LOG_LINES].offset
    else:
        count = min(tail_lines, MAX_LOG_LINES) if tail_lines > 0 else MAX_LOG_LINES
        chunk = _tail(path, count, max_bytes)
        lines, next_offset = chunk.lines, chunk.offset
    return LogChunk(
        [job_pb2.LogLine(offset=line.offset, text=line.text, stream=stream) for line in lines],
        next_offset,
    )


def failure_tail(stderr_path: str, stdout_path: str) -> tuple[str, str | None]:
    """A failed rank's last stderr lines, and the cause they (or, failing them, the end of
    stdout) give in one line."""
    tail = [line.text for line in last_lines(stderr_path, CAUSE_LINES, CAUSE_BYTES).lines]
    cause = failure_cause(tail) if tail else None
    if tail and cause is None:
        out = last_lines(stdout_path, FAILURE_TAIL_LINES, FAILURE_TAIL_BYTES).lines
        cause = failure_cause([line.text for line in out])
    return "\n".join(tail[-FAILURE_TAIL_LINES:]), cause


def rank_log_path(
    journal: Journal, node_name: str, job: str, attempt: int, rank: int, stream: str
) -> str:
    """The file of a rank's ``stream`` (attempt 0: the latest); ValueError for a stream that
    is none, KeyError for a rank the journal does not know."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, not {stream!r}")
    if not attempt:
        attempt = journal.latest_attempt(job) or 0
    row = journal.get_rank(job, attempt, rank)
    if row is None:
        raise KeyError(f"{job} attempt {attempt} has no rank {rank} on {node_name}")
    return row.stdout_path if stream == "stdout" else row.stderr_path
