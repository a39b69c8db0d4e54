"""The cause of a rank's failure in one line, from the end of what it wrote. Pure.

A rank that exits non-zero usually says why last: a Python traceback's final
``Type: message`` line (``deepspeed.runtime.zero.utils.ZeRORuntimeException: The
checkpoint being loaded used a DP world size of 1 but the current world size is 2 ...``),
argparse's ``prog: error: ...``, Gantry's own ``gantry: ...``, or C++'s ``terminate called
after throwing ...`` with its ``what():`` line. Lines may carry the prefixes torch and its
launchers add (``[rank1]:``, ``[default0]:``).
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


def failure_cause(lines: Sequence[str]) -> str | None:
    """The one-line cause in the last lines a rank wrote (stderr, then stdout), or None."""
    cleaned = [_clean(line) for line in lines]
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
