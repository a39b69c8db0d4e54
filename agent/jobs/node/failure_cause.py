"""The cause of a rank's failure in one line, from the end of what it wrote. Pure.

A rank that exits non-zero usually says why last: a Python traceback's final
``Type: message`` line (``deepspeed.runtime.zero.utils.ZeRORuntimeException: The
checkpoint being loaded used a DP world size of 1 but the current world size is 2 ...``),
argparse's ``prog: error: ...``, Gantry's own ``gantry: ...``, or C++'s ``terminate called
after throwing ...`` with its ``what():`` line. Lines may carry the prefixes torch and its
launchers add (``[rank1]:``, ``[default0]:``).

An NCCL watchdog timeout comes first, wherever it is in the lines: PyTorch then aborts the
process (no traceback at all in 1.x; in 2.x a ``DistBackendError`` whose ``what()`` repeats
it after pages of C++ frames), and the timeout, not the abort, is the cause:
``NCCL watchdog timeout: ALLREDUCE (SeqNum 1580) ran 600060 ms, timeout 600000 ms; last
enqueued 1582, last completed 1579``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_CAUSE_CHARS = 300

_PREFIX = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s?)+")
# The line that ends a traceback: an exception type (CamelCase, perhaps dotted), then its
# message.
_EXCEPTION = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z][A-Za-z0-9_]*)(?::\s*(?P<message>.*))?$"
)
# argparse: "PROG: error: ...", where PROG may be "python -m agent.train".
_ARGPARSE = re.compile(r"^[^:\s][^:]{0,200}: error: (?P<message>.+)$")
_GANTRY = re.compile(r"^gantry: (?P<message>.+)$")
_WHAT = re.compile(r"^\s*what\(\):\s*(?P<message>.+)$")
_TRACEBACK = "Traceback (most recent call last):"
# PyTorch's ProcessGroupNCCL, 1.x to 2.x: "[Rank 1] Watchdog caught collective operation
# timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000)
# ran for 600013 milliseconds before timing out." (older: no SeqNum, no Numel*).
_WATCHDOG = re.compile(
    r"Watchdog caught collective operation timeout: WorkNCCL\((?P<fields>.*?)\)"
    r" ran for (?P<ran>\d+) milliseconds before timing out"
)
_WORK_FIELD = re.compile(r"(?P<key>\w+)(?:\(ms\))?=(?P<value>[^,]*)")
# 2.x, the next line: "... detected by watchdog at work: 1580, last enqueued NCCL work:
# 1582, last completed NCCL work: 1579."
_WATCHDOG_WORK = re.compile(
    r"last enqueued NCCL work: (?P<enqueued>-?\d+), last completed NCCL work: (?P<completed>-?\d+)"
)


def _clean(line: str) -> str:
    return _PREFIX.sub("", line.rstrip())


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 3] + "..."


def _exception_after(lines: Sequence[str], start: int) -> str | None:
    """The exception line that ends the traceback starting at ``start``. Frames and their
    source lines are indented; other ranks' or libraries' log lines may come between."""
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        if line.strip() == _TRACEBACK:
            return None  # a later traceback: the caller looks at that one
        match = _EXCEPTION.match(line)
        if match is not None:
            name = match["type"].rsplit(".", 1)[-1]
            message = (match["message"] or "").strip()
            return f"{name}: {message}" if message else name
    return None


def watchdog_timeout(lines: Sequence[str]) -> str | None:
    """An NCCL watchdog timeout in ``lines``, in one line (its first report), or None."""
    for i, line in enumerate(lines):
        match = _WATCHDOG.search(line)
        if match is None:
            continue
        fields = {m["key"]: m["value"].strip() for m in _WORK_FIELD.finditer(match["fields"])}
        op = fields.get("OpType", "collective")
        seq = f" (SeqNum {fields['SeqNum']})" if "SeqNum" in fields else ""
        cause = f"NCCL watchdog timeout: {op}{seq} ran {match['ran']} ms"
        if "Timeout" in fields:
            cause += f", timeout {fields['Timeout']} ms"
        for later in lines[i + 1 : i + 4]:
            work = _WATCHDOG_WORK.search(later)
            if work is not None:
                cause += f"; last enqueued {work['enqueued']}, last completed {work['completed']}"
                break
        return cause
    return None


def failure_cause(lines: Sequence[str]) -> str | None:
    """The one-line cause in the last lines a rank wrote (stderr, then stdout), or None."""
    cleaned = [_clean(line) for line in lines]
    timeout = watchdog_timeout(cleaned)
    if timeout is not None:
        return _short(timeout)
    for i in range(len(cleaned) - 1, -1, -1):
        line = cleaned[i]
        if line.strip() == _TRACEBACK:
            cause = _exception_after(cleaned, i)
            if cause is not None:
                return _short(cause)
    for line in reversed(cleaned):
        for pattern in (_WHAT, _ARGPARSE, _GANTRY):
            match = pattern.match(line)
            if match is not None:
                return _short(match["message"])
    return None
