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


# PyTorch's CUDA allocator: 1.x "CUDA out of memory. Tried to allocate 978.00 MiB (GPU 0;
# 4.00 GiB total capacity; 1.68 GiB already allocated; 0 bytes free; ...)", 2.x "... Tried
# to allocate 1.97 GiB. GPU 2 has a total capacty of 39.43 GiB of which 982.31 MiB is free."
_CUDA_OOM = re.compile(r"CUDA out of memory\. Tried to allocate (?P<tried>[\d.]+ \w+)")
_OOM_GPU_1X = re.compile(
    r"\(GPU (?P<gpu>\d+); (?P<total>[\d.]+ \w+) total capacity;.*?; (?P<free>[\d.]+ \w+) free"
)
_OOM_GPU_2X = re.compile(
    r"GPU ?(?P<gpu>\d*) has a total capac\w* of (?P<total>[\d.]+ \w+)"
    r" of which (?P<free>[\d.]+ \w+) is free"
)
# NCCL's "Last error:" line under ncclUnhandledCudaError: "Cuda failure 1 'invalid argument'"
# (older: "Cuda failure 'out of memory'").
_NCCL_CUDA = re.compile(r"Cuda failure (?:\d+ )?'(?P<what>[^']+)'")


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
    cause = _last_error(cleaned)
    return None if cause is None else _short(_plain_cuda(cause, cleaned))


def _last_error(cleaned: Sequence[str]) -> str | None:
    for i in range(len(cleaned) - 1, -1, -1):
        if cleaned[i].strip() == _TRACEBACK:
            cause = _exception_after(cleaned, i)
            if cause is not None:
                return cause
    for line in reversed(cleaned):
        for pattern in (_WHAT, _ARGPARSE, _GANTRY):
            match = pattern.match(line)
            if match is not None:
                return str(match["message"])
    return None


def _plain_cuda(cause: str, cleaned: Sequence[str]) -> str:
    """A CUDA out-of-memory cause as its figures; NCCL's unhandled CUDA error with the CUDA
    failure it names on a later line (the exception's own text says only "Call to CUDA
    function failed")."""
    oom = _CUDA_OOM.search(cause)
    if oom is not None:
        gpu = _OOM_GPU_1X.search(cause) or _OOM_GPU_2X.search(cause)
        where = f" on GPU {gpu['gpu']}" if gpu is not None and gpu["gpu"] else ""
        text = f"CUDA out of memory{where}: tried {oom['tried']}"
        if gpu is not None:
            text += f", {gpu['free']} free of {gpu['total']}"
        return text
    if "ncclUnhandledCudaError" in cause or "unhandled cuda error" in cause:
        for line in reversed(cleaned):
            failure = _NCCL_CUDA.search(line)
            if failure is not None:
                what = failure["what"]
                if what == "out of memory":
                    return f"CUDA out of memory in NCCL ({failure[0]})"
                return f"NCCL: unhandled CUDA error: {failure[0]}"
    return cause
