"""One NCCL log line, found in whatever a log collector made of it: `HOST:PID:TID [CUDADEV]
NCCL INFO MESSAGE`, with timestamps, stream names or ANSI colours in front and other output
mixed in; and the transport kind a channel line names. Pure; `nccl.NcclParser` reads them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["MAX_LINE", "NcclLine", "parse_nccl_line", "transport_kind"]

MAX_LINE = 8192  # longer lines are cut before matching

# CSI (colours, cursor), OSC (titles, links) and two-character escapes.
_ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_MARKER_RE = re.compile(r"NCCL (INFO|WARN|ABORT|TRACE)(?: |$)")
# What precedes the marker (searched in a bounded window): `HOST:PID:TID [DEV] ` for INFO,
# `HOST:PID:TID [DEV] FILE:LINE ` for WARN, `HOST:PID:TID [DEV] SECONDS FILE:LINE ` for TRACE.
_PREFIX_RE = re.compile(r"([^\s:\[\]|]+):(\d+):(\d+) \[(-?\d+)\] (?:[\d.]+ )?(?:\S+:\d+ )?\Z")
_PREFIX_WINDOW = 300
# The common line, the prefix at its start: one match instead of the marker's and the
# prefix's searches (a chatty NCCL_DEBUG=INFO rank prints thousands of them).
_WHOLE_RE = re.compile(
    r"([^\s:\[\]|]+):(\d+):(\d+) \[(-?\d+)\] (?:[\d.]+ )?(?:\S+:\d+ )?"
    r"NCCL (INFO|WARN|ABORT|TRACE)(?: |$)"
)


class NcclLine(NamedTuple):
    """One NCCL line, found in whatever a log collector made of it (a tuple: made for every
    NCCL line a rank prints, at a third of a frozen dataclass' cost)."""

    host: str
    pid: int
    tid: int
    cuda_dev: int
    level: str  # "INFO", "WARN", "ABORT" or "TRACE"
    message: str
    text: str  # the line from HOST on, without ANSI codes or a collector's prefix


def transport_kind(via: str) -> str:
    """`NET/IB/0/GDRDMA` -> NET/IB, `P2P/CUMEM/read` -> P2P/CUMEM, `SHM/direct/direct` -> SHM."""
    parts = [p.strip() for p in via.split("/")]
    head = parts[0]
    if head in ("NET", "P2P") and len(parts) > 1 and parts[1]:
        return f"{head}/{parts[1]}"
    if head == "SHM" or head.startswith("direct shared memory"):
        return "SHM"
    return head or via


def parse_nccl_line(line: str) -> NcclLine | None:
    """The NCCL line inside `line`, or None for anything else."""
    text = line[:MAX_LINE]
    if "NCCL" not in text:
        return None
    if "\x1b" in text:
        text = _ANSI_RE.sub("", text)
    text = " ".join(text.splitlines())  # one line, whatever the caller handed over
    whole = _WHOLE_RE.match(text)
    if whole is not None and whole.start(5) <= _PREFIX_WINDOW:
        host, pid, tid, dev, level = whole.groups()
        return NcclLine(
            host, int(pid), int(tid), int(dev), level, text[whole.end() :].strip(), text.strip()
        )
    for n, marker in enumerate(_MARKER_RE.finditer(text)):
        if n == 4:  # NCCL writes one marker a line; more is someone else's text
            break
        start = max(0, marker.start() - _PREFIX_WINDOW)
        prefix = _PREFIX_RE.search(text, start, marker.start())
        if prefix is None:
            continue
        return NcclLine(
            host=prefix.group(1),
            pid=int(prefix.group(2)),
            tid=int(prefix.group(3)),
            cuda_dev=int(prefix.group(4)),
            level=marker.group(1),
            message=text[marker.end() :].strip(),
            text=text[prefix.start() :].strip(),
        )
    return None
