"""Rank log lines the operator must hear about at once, beyond NCCL's: out of memory.
Pure; the supervisor raises an ALERT event for each (the console's advisor offers the
fix)."""

from __future__ import annotations

import re

_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|out of memory|Cannot allocate memory|"
    r"oom-kill|Out of memory: Killed process"
)


def alert_for(line: str) -> str | None:
    """The alert a log line raises ("oom"), or None."""
    if _OOM.search(line):
        return "oom"
    return None
