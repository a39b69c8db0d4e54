"""A watched rank's process has ended: which edge of the rank table that is, and its event.

Exit 0 is EXITED (RANK_EXITED); any other code is FAILED (RANK_FAILED, with the cause the
log scanner diagnosed, or the kernel's oom-killer, or the end of its stderr). While the rank
is being stopped, exit 0 is still EXITED, but a rank that ended any other way was killed by
the stop: KILLED, announced as RANK_KILLED, never as RANK_EXITED, which the leader counts
as a success.
"""

from __future__ import annotations

from gantry.v1 import job_pb2

from agent.jobs.journal import RankRow
from agent.jobs.node.hangs import read_stacks
from agent.jobs.node.live_rank import EventBatch, LiveRank
from agent.jobs.node.logs import failure_tail
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_process import describe_exit
from agent.jobs.node.rank_states import RankEdge, RankState

__all__ = ["KILLED_EVENT_KIND", "settle_exit"]

_K = job_pb2.JobEventKind
# The event of a rank killed by a stop; details["state"] is "KILLED".
KILLED_EVENT_KIND = _K.JOB_EVENT_KIND_RANK_KILLED


def settle_exit(
    rj: RankJournal,
    live: LiveRank,
    row: RankRow,
    code: int,
    batch: EventBatch,
    oom_kill: str | None = None,
) -> RankRow:
    """``row`` after its process ended with ``code``, its event added to ``batch``.
    ``oom_kill``: the kernel's oom-killer line naming the rank's process, if one did."""
    ended = rj.wall_clock()
    if live.state == RankState.STOPPING:
        return _stopped(rj, row, code, ended, batch)
    if code == 0:
        row = rj.edge(row, RankEdge.EXIT_OK, exit_code=0, ended=ended, reason="")
        details = {"exit_code": "0", "state": RankState(row.state).name}
        rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_EXITED, f"rank {row.rank} exited", details)
        return row
    details = {"exit_code": str(code)}
    reason = describe_exit(code)
    if live.state == RankState.HUNG:
        reason = f"hung, then {reason}"
        stacks = read_stacks(live)
        if stacks:
            details["stacks"] = stacks
    else:
        # What the scanner diagnosed while the rank ran says why (a watchdog timeout, out
        # of memory, an NCCL error, a traceback), else the end of its stderr: the console's
        # advisor reads it from the event, and the reason names it.
        last, cause = failure_tail(row.stderr_path, row.stdout_path)
        found = live.files.scan.cause()
        if oom_kill is not None:
            cause = f"host out of memory: {oom_kill}"
            details["signature"] = "host_oom"
        elif found is not None:
            cause = found.cause
            details["signature"] = found.alert
            if found.line and found.line not in last:
                last = "\n".join(filter(None, (found.line, "...", last)))
        if last:
            details["last_lines"] = last
        if cause is not None:
            details["cause"] = cause
            reason = f"{cause} ({reason})"
    row = rj.edge(row, RankEdge.EXIT_ERROR, exit_code=code, ended=ended, reason=reason)
    details["state"] = RankState(row.state).name
    details["reason"] = reason
    message = f"rank {row.rank} failed: {reason}"
    rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, message, details=details)
    return row


def _stopped(rj: RankJournal, row: RankRow, code: int, ended: float, batch: EventBatch) -> RankRow:
    """A stopping rank ended: EXITED if it exited 0 by itself, else KILLED by the stop."""
    if code == 0:
        row = rj.edge(row, RankEdge.EXIT_DURING_STOP, exit_code=0, ended=ended, reason="stopped")
        kind = _K.JOB_EVENT_KIND_RANK_EXITED
    else:
        row = rj.edge(row, RankEdge.STOPPED, exit_code=code, ended=ended, reason="stopped")
        kind = KILLED_EVENT_KIND
    details = {"exit_code": str(code), "state": RankState(row.state).name}
    what = "killed by the stop" if kind == KILLED_EVENT_KIND else "stopped"
    rj.emit(batch, row, kind, f"rank {row.rank} {what} ({describe_exit(code)})", details)
    return row
