"""torchrun's failure summary, read after its ``ChildFailedError`` so that the rank's cause
says which worker died and how, not the launcher's exception name alone. Pure.

What torch.distributed.elastic prints (``multiprocessing/errors/__init__.py``, 1.9 to 2.x;
``${signal_name}`` after the pid since 2.5)::

    torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
    ============================================================
    train.py FAILED
    ------------------------------------------------------------
    Failures:
      <NO_OTHER_FAILURES>
    ------------------------------------------------------------
    Root Cause (first observed failure):
    [0]:
      time      : 2024-07-26_10:59:45
      host      : SH-IDC1-10-140-24-95
      rank      : 10 (local_rank: 2)
      exitcode  : -6 (pid: 214033)
      error_file: <N/A>
      traceback : Signal 6 (SIGABRT) received by PID 214033
    ============================================================

The root cause's fields are the ones kept (other failures come before it).
"""

from __future__ import annotations

import re
from dataclasses import replace

from agent.jobs.node.log_findings import Diagnosis, short, strip_prefix

__all__ = ["CHILD_FAILED", "ChildFailedSummary"]

CHILD_FAILED = "ChildFailedError"
MAX_LINES = 60  # a summary with a few other failures; past it the summary is given up

# Anywhere in the line: launchers put their own prefix first ("0: " from srun -l).
_FIELD = re.compile(r"(?:^|\s)(?P<key>host|rank|exitcode|traceback)\s*:\s*(?P<value>.*?)\s*$")
_RANK = re.compile(r"(?P<rank>-?\d+)(?: \(local_rank: (?P<local>-?\d+)\))?")
_EXITCODE = re.compile(r"(?P<code>-?\d+)")
_SIGNAL = re.compile(r"\b(?P<name>SIG[A-Z0-9]+)\b")


class ChildFailedSummary:
    """The summary lines after one ``ChildFailedError`` finding (``found``), one stream."""

    def __init__(self, found: Diagnosis) -> None:
        self.found = found
        self._fields: dict[str, str] = {}
        self._lines = 0

    def feed(self, line: str) -> bool:
        """Reads one line; True once the summary has ended (then call ``completed``)."""
        self._lines += 1
        text = strip_prefix(line).strip()
        if "Root Cause (first observed failure)" in text:
            self._fields = {}  # the other failures' fields came before
        elif "=====" in text and "exitcode" in self._fields:
            return True
        elif (field := _FIELD.search(text)) is not None:
            self._fields.setdefault(field["key"], field["value"])
        return self._lines >= MAX_LINES

    def completed(self) -> Diagnosis:
        """``found`` with what the summary said: the rank, its host, its exit code or signal."""
        fields = self._fields
        code = _EXITCODE.match(fields.get("exitcode", ""))
        if code is None:
            return self.found
        signal = _SIGNAL.search(fields.get("exitcode", "") + " " + fields.get("traceback", ""))
        rank = _RANK.match(fields.get("rank", ""))
        who = "a worker"
        out = dict(self.found.fields, exitcode=code["code"])
        if rank is not None:
            who = f"rank {rank['rank']}"
            out["rank"] = rank["rank"]
            if rank["local"] is not None:
                who += f" (local rank {rank['local']})"
        if fields.get("host"):
            who += f" on {fields['host']}"
            out["host"] = fields["host"]
        how = f"exited with code {code['code']}"
        if signal is not None:
            how = f"was killed by {signal['name']} (exit code {code['code']})"
            out["signal"] = signal["name"]
            if signal["name"] == "SIGKILL":
                how += ": often the host's oom-killer; see the node's kernel log"
        cause = short(f"{CHILD_FAILED}: {who} {how}")
        return replace(self.found, cause=cause, fields=out, key=cause)
