"""The cause of a rank's failure in one line, from the end of what it wrote. Pure.

The live scanner (``log_scan.LogScanner``) reads every line a rank writes and knows the
cause when the rank fails; this reads the end of a rank's files the same way, for a rank
whose lines the scanner did not see (the agent was restarted meanwhile). The signatures'
causes come first (an NCCL watchdog timeout, out of memory, NCCL's errors, a lost gloo
peer, a traceback's final ``Type: message`` line); then argparse's ``prog: error: ...``,
Gantry's own ``gantry: ...``, C++'s ``what():`` line, or C++'s abort with no exception.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.jobs.node.log_findings import MAX_CAUSE_CHARS, short, strip_prefix
from agent.jobs.node.log_scan import LogScanner

__all__ = ["MAX_CAUSE_CHARS", "TERMINATE_CAUSE", "failure_cause"]

# argparse: "PROG: error: ...", where PROG may be "python -m agent.train".
_ARGPARSE = re.compile(r"^[^:\s][^:]{0,200}: error: (?P<message>.+)$")
_GANTRY = re.compile(r"^gantry: (?P<message>.+)$")
_WHAT = re.compile(r"^\s*what\(\):\s*(?P<message>.+)$")
# std::terminate with no exception: most often a gloo or NCCL worker thread still running
# while the interpreter tears down, in a script that never destroyed its process group
# (pytorch/pytorch#190489), or whose group something still holds after it did (DeepSpeed's
# engine; pytorch/pytorch#179291).
_TERMINATE = re.compile(r"^terminate called without an active exception$")
TERMINATE_CAUSE = (
    "aborted at exit (terminate called without an active exception): a thread outlived the"
    " interpreter; call torch.distributed.destroy_process_group() when done, and if it"
    " still aborts, end with os._exit(0) after flushing output"
)


def failure_cause(lines: Sequence[str]) -> str | None:
    """The one-line cause in the last lines a rank wrote (stderr, then stdout), or None."""
    scanner = LogScanner()
    scanner.feed_lines("log", lines, 0.0)
    found = scanner.cause()
    if found is not None:
        return short(found.cause)
    for line in reversed(lines):
        cleaned = strip_prefix(line.rstrip())
        for pattern in (_WHAT, _ARGPARSE, _GANTRY):
            match = pattern.match(cleaned)
            if match is not None:
                return short(str(match["message"]))
        if _TERMINATE.match(cleaned):
            return TERMINATE_CAUSE
    return None
