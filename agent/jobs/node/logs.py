"""A rank's log files as lines for a reader: a bounded tail or a follow-up read, and the
thread stacks a hung rank's faulthandler dumped into them. Reads files; no state."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.jobs.node.failure_cause import failure_cause
from agent.jobs.node.tailer import MAX_READ_BYTES, last_lines, read_lines

__all__ = [
    "MAX_LOG_LINES",
    "STREAMS",
    "LogChunk",
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


def tail_log(
    path: str,
    stream: str,
    tail_lines: int = 100,
    from_offset: int | None = None,
    max_bytes: int = MAX_READ_BYTES,
) -> LogChunk:
    """Lines of ``path``: from ``from_offset`` on, else the last ``tail_lines``; bounded by
    ``max_bytes`` and ``MAX_LOG_LINES``."""
    max_bytes = min(max_bytes, MAX_READ_BYTES)
    if from_offset is not None:
        chunk = read_lines(path, from_offset, max_bytes)
        lines, next_offset = chunk.lines, chunk.offset
        if len(lines) > MAX_LOG_LINES:
            lines, next_offset = lines[:MAX_LOG_LINES], lines[MAX_LOG_LINES].offset
    else:
        count = min(tail_lines, MAX_LOG_LINES) if tail_lines > 0 else MAX_LOG_LINES
        chunk = last_lines(path, count, max_bytes)
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
