"""DeepSpeed's comms-logger summary table (``deepspeed.comm.log_summary()``) read into the
time each collective took per step. Pure: no I/O, no clock of its own.

What DeepSpeed prints (``deepspeed/utils/comms_logging.py`` ``CommsLogger.log_all``, the same
from 0.7 to 0.19; rank 0 only, with ``print``, so no logger prefix)::

    Comm. Op            Message Size        Count               Total Latency(ms)   Avg ...
    all_reduce                                  <- the op, or "all_reduce | [Caller Func: f]"
                        8.0 B               40                  100.00              0.58 ...
    ...
    _______________________________             <- show_straggler=True: a second table
    Breakdown with straggler effect                (min-across-ranks latencies), not read

The totals are running sums since the process started (or since ``deepspeed.comm.reset_log()``);
the table carries no step number. Per-step figures are therefore differences between successive
tables divided by the steps between them, each table belonging to the last step seen before it.
A table whose counts went down was printed after a reset: its totals are taken as the time since
the table before it (the usual ``log_summary(); reset_log()`` pattern). The first table is
divided by the steps since the run's start (``base_step``: 0, or the step it resumed from);
when that start is unknown (a resume whose step was not printed) the first table only sets the
baseline. Latencies are DeepSpeed's own (host-side, so asynchronous ops look short and waits
for other ranks look long): read them as "time in collectives", not as bandwidth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

__all__ = ["TABLE_HEADER", "CommsPerStep", "CommsTables", "Totals"]

Totals = dict[str, tuple[int, float]]  # op -> (calls, total latency in ms), since the start

TABLE_HEADER = _HEADER = "Comm. Op"
_LATENCY_HEADER = "Total Latency(ms)"
_ROW = re.compile(
    r"(?P<size>\d+(?:\.\d+)? ?[KMGTPEZY]?B)\s+(?P<count>\d{1,15})\s+"
    r"(?P<total>\d+(?:\.\d+)?|inf|nan)\s+\S+\s+\S+\s+\S+\s*$"
)
_OP = re.compile(r"(?P<op>[a-z][a-z0-9_]{0,63})(?: \| \[Caller Func: [^\]]{0,200}\])?\s*")
_PREFIX = re.compile(r"^(?:\[[^\]]{0,64}\]:?\s?|[\w.-]{1,64}:\s)*")  # [rank0]: worker-0:
_OWN_BARRIER = "log_summary_barrier"  # log_summary's own barrier, not training's
_MAX_OPS = 64
_MAX_ROWS = 4096


@dataclass
class _Table:
    prefix: str
    step: int | None  # the last step seen before the table
    last_s: float
    totals: Totals = field(default_factory=dict)
    op: str | None = None
    op_rows: int = 0  # rows under ``op`` so far
    rows: int = 0


class CommsTables:
    """Finds comms-logger summary tables in one rank's output, one table per stream at a time.

    A table ends at the first line that is neither an op nor a row (that line is not consumed
    and goes on to the other readers), or when no line followed for ``wait_s`` (``flush``).
    """

    def __init__(self, wait_s: float = 2.0) -> None:
        self._wait_s = wait_s
        self._open: dict[str, _Table] = {}

    @property
    def busy(self) -> bool:
        """A table is open on some stream: its next line may be a row."""
        return bool(self._open)

    def feed(
        self, stream: str, text: str, now: float, step: int | None
    ) -> tuple[bool, list[tuple[int | None, Totals]]]:
        """(whether ``text`` is only a table's, the tables it ended with their step)."""
        done: list[tuple[int | None, Totals]] = []
        table = self._open.get(stream)
        if table is not None:
            row = self._row(table, text)
            if row is not None:
                table.last_s = now
                return row, done
            done.append(self._close(stream))
        at = text.find(_HEADER)
        if at >= 0 and _LATENCY_HEADER in text:
            if len(self._open) < 8 or stream in self._open:
                self._open[stream] = _Table(text[:at], step, now)
            return True, done
        return False, done

    def flush(self, now: float) -> list[tuple[str, int | None, Totals]]:
        """Tables no line has followed for ``wait_s``: (stream, step, totals)."""
        return [
            (stream, *self._close(stream))
            for stream, table in list(self._open.items())
            if now - table.last_s >= self._wait_s
        ]

    def _close(self, stream: str) -> tuple[int | None, Totals]:
        table = self._open.pop(stream)
        return table.step, table.totals

    def _row(self, table: _Table, text: str) -> bool | None:
        """True: a row; False: an op's name (others may read it too); None: not the table's."""
        if table.rows >= _MAX_ROWS:
            return None
        if table.prefix and text.startswith(table.prefix):
            text = text[len(table.prefix) :]
        rest = text.strip()
        if rest[-1:].isdigit():  # a row ends with its bus bandwidth
            row = _ROW.search(rest)
            if row is not None and table.op is not None:
                table.rows += 1
                table.op_rows += 1
                if table.op != _OWN_BARRIER:
                    calls, total_ms = table.totals.get(table.op, (0, 0.0))
                    table.totals[table.op] = (calls + int(row["count"]), total_ms + _ms(row))
                return True
        op = _OP.fullmatch(_PREFIX.sub("", rest, count=1))
        if op is None or (op["op"] not in table.totals and len(table.totals) >= _MAX_OPS):
            return None
        if table.op is not None and not table.op_rows:
            return None  # every op has a row: the word before this one was not an op either
        table.op, table.op_rows = op["op"], 0
        return False


def _ms(row: re.Match[str]) -> float:
    value = float(row["total"])
    return value if value == value and value != float("inf") else 0.0


class CommsPerStep:
    """Turns successive tables into each window's collective time per step."""

    def __init__(self) -> None:
        self.base_step: int | None = 0  # where this process's counts started; None: unknown
        self._last: tuple[int, Totals] | None = None

    def metrics(self, step: int | None, totals: Totals) -> job_pb2.RankMetrics | None:
        """Collective time per step for the window ending with this table, else None."""
        if step is None:
            if self.base_step is not None and self._last is None:
                self._last = (self.base_step, totals)  # printed before any step
            return None
        last = self._last
        if last is None and self.base_step is not None and step > self.base_step:
            last = (self.base_step, {})
        self._last = (step, totals)
        if last is None or step <= last[0]:
            return None
        steps = step - last[0]
        before = last[1]
        if any(op not in totals or totals[op][0] < calls for op, (calls, _) in before.items()):
            before = {}  # reset since the last table: these totals are this window's
        m = job_pb2.RankMetrics(step=step)
        for op, (calls, total_ms) in totals.items():
            calls_before, ms_before = before.get(op, (0, 0.0))
            if calls > calls_before:
                m.collective_time_by_op_s[op] = max(total_ms - ms_before, 0.0) / 1000.0 / steps
        if not m.collective_time_by_op_s:
            return None
        m.collective_time_s = sum(m.collective_time_by_op_s.values())
        return m
