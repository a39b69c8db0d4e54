"""Hung ranks: noticing one (no new record for ``hang_timeout_s``), asking it for its thread
stacks (SIGUSR1, for the faulthandler it registered), knowing when the dump is complete,
then killing it and counting it FAILED with the stacks in its event."""

from __future__ import annotations

import signal

from gantry.v1 import job_pb2

from agent.jobs.journal import RankRow
from agent.jobs.node.live_rank import EventBatch, LiveRank, file_size
from agent.jobs.node.logs import extract_stacks
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_states import RankEdge, RankState
from agent.jobs.node.tailer import read_lines

__all__ = [
    "BUSY_CPU_SHARE",
    "JOIN_WARN_DEFAULT_S",
    "JOIN_WARN_S",
    "MAX_STACK_BYTES",
    "NO_HANDLER",
    "STACK_QUIET_S",
    "STACK_WAIT_DONE_S",
    "STACK_WAIT_MAX_S",
    "STACK_WAIT_S",
    "ask_for_stacks",
    "busy_without_heartbeats",
    "dump_stacks_and_fail",
    "hang_detected",
    "is_silent",
    "read_stacks",
    "silent_by_now",
    "stacks_dumped",
    "tell_slow_join",
]

_K = job_pb2.JobEventKind
STACK_WAIT_S = 2.0
STACK_WAIT_MAX_S = 10.0
STACK_QUIET_S = 1.0  # stderr unchanged this long: the stack dump is complete
STACK_WAIT_DONE_S = 5.0  # quiet this late, a dump without a <module> frame is all there is
MAX_STACK_BYTES = 256 * 1024
BUSY_CPU_SHARE = 0.1  # of one core, for a rank without heartbeats to count as working
JOIN_WARN_S = 60.0  # a join is not called slow before this, whatever the hang timeout
JOIN_WARN_DEFAULT_S = 300.0  # without a hang timeout
NO_HANDLER = (
    "(no stack dump: no process of the rank handles SIGUSR1; Gantry's start-up hook is off"
    " (GANTRY_INSTRUMENT=0) or the rank is not Python)"
)
_OUTERMOST = " in <module>"  # the main thread's first frame, the last line faulthandler writes


def is_silent(live: LiveRank, now: float) -> bool:
    """A starting or running rank with a hang timeout, and no progress for longer."""
    return (
        live.state in (RankState.STARTING, RankState.RUNNING)
        and live.hang_timeout_s > 0
        and now - live.last_progress > live.hang_timeout_s
    )


def busy_without_heartbeats(live: LiveRank, now: float) -> None:
    """A rank that sends no heartbeat (its start-up hook off: GANTRY_INSTRUMENT=0) and
    prints nothing, as every rank but 0 of many scripts, shows no progress but its CPU
    time: its processes using BUSY_CPU_SHARE of the time since the last look count as
    progress. A rank blocked in a collective uses none."""
    if (
        live.beats
        or live.handle is None
        or live.state not in (RankState.STARTING, RankState.RUNNING)
    ):
        return
    cpu = live.handle.cpu_seconds()
    if cpu is None:
        return
    if live.cpu_seen is not None:
        then, used = live.cpu_seen
        if now > then and cpu - used >= BUSY_CPU_SHARE * (now - then):
            live.last_progress = now
    live.cpu_seen = (now, cpu)


def silent_by_now(live: LiveRank, now: float) -> bool:
    """``is_silent``, once a rank without heartbeats has had its CPU time looked at."""
    busy_without_heartbeats(live, now)
    return is_silent(live, now)


def tell_slow_join(rj: RankJournal, live: LiveRank, row: RankRow, batch: EventBatch) -> None:
    """One warning alert for a rank joining its process group for longer than its hang
    timeout (at least JOIN_WARN_S; JOIN_WARN_DEFAULT_S without one): a rendezvous that
    cannot complete (a MASTER_ADDR that does not resolve, a master that cannot be reached)
    waits silently for torch's own timeout, 30 minutes by default. The rank goes on."""
    if live.joining_told or row.phase != job_pb2.RANK_PHASE_JOINING or row.phase_since is None:
        return
    limit = max(live.hang_timeout_s, JOIN_WARN_S) if live.hang_timeout_s > 0 else None
    waited = rj.wall_clock() - row.phase_since
    if waited < (limit or JOIN_WARN_DEFAULT_S):
        return
    live.joining_told = True
    env = live.launch.env if live.launch is not None else {}
    master = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
    cause = (
        f"joining the process group for {waited:.0f} s: the master {master} does not answer "
        "(check that it resolves and is reachable from this node, and that rank 0 started)"
    )
    details = {"alert": "rendezvous", "severity": "warning", "cause": cause, "master": master}
    rj.emit(batch, row, _K.JOB_EVENT_KIND_ALERT, f"rank {row.rank}: {cause}", details)


def ask_for_stacks(live: LiveRank, now: float) -> None:
    """Signals the rank to dump its stacks; they are read from stderr past this point."""
    live.hung_at = now
    live.stack_offset = file_size(live.row.stderr_path)
    if live.handle is not None:
        # Only processes that registered a handler: SIGUSR1 kills the others.
        live.stacks_asked = live.handle.signal_catchers(signal.SIGUSR1) > 0


def hang_detected(
    rj: RankJournal, live: LiveRank, row: RankRow, batch: EventBatch, now: float
) -> RankRow:
    """``row`` HUNG, its stacks asked for, and the RANK_HUNG event in ``batch``."""
    silent = now - live.last_progress
    reason = f"no progress for {silent:.0f} s (hang timeout {live.hang_timeout_s:g} s)"
    row = rj.edge(row, RankEdge.HANG_DETECTED, reason=reason)
    ask_for_stacks(live, now)
    if live.handle is not None:
        # A stopped (SIGSTOP) rank handles the SIGUSR1 only once it runs again.
        live.handle.signal_group(signal.SIGCONT)
    details = {"silent_s": f"{silent:.1f}"}
    if row.last_metrics is not None:
        details["last_step"] = str(row.last_metrics.step)
    rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_HUNG, f"rank {row.rank} hung: {reason}", details)
    return row


def stacks_dumped(live: LiveRank, now: float, stack_wait_s: float) -> bool:
    """Whether a HUNG rank's dump is complete (or waited for long enough).

    Complete once it holds the main thread's outermost frame (faulthandler writes that
    thread last) and stderr has not grown for STACK_QUIET_S: a loaded machine may pause the
    rank mid-dump for longer than that. At the latest, after STACK_WAIT_MAX_S.
    """
    if live.hung_at is None:
        return False
    if not live.stacks_asked:
        return True  # nobody to dump them: no wait
    size = file_size(live.row.stderr_path)
    if size != live.stack_size:
        live.stack_size, live.stack_size_since = size, now
    quiet = now - live.stack_size_since >= STACK_QUIET_S
    waited = now - live.hung_at
    done = quiet and (waited >= STACK_WAIT_DONE_S or _OUTERMOST in read_stacks(live))
    return waited >= stack_wait_s and (done or waited >= STACK_WAIT_MAX_S)


def read_stacks(live: LiveRank) -> str:
    """The stacks the rank wrote to stderr since it was asked for them."""
    chunk = read_lines(live.row.stderr_path, live.stack_offset, MAX_STACK_BYTES)
    return extract_stacks("\n".join(line.text for line in chunk.lines))


def dump_stacks_and_fail(
    rj: RankJournal, live: LiveRank, row: RankRow, batch: EventBatch
) -> RankRow:
    """``row`` FAILED with its stacks in the RANK_FAILED event; the rank is killed."""
    stacks = read_stacks(live)
    reason = f"hung: {row.reason}" if row.reason else "hung"
    row = rj.edge(row, RankEdge.STACKS_DUMPED, reason=reason, ended=rj.wall_clock())
    if live.handle is not None:
        live.handle.kill()
    if not stacks and not live.stacks_asked:
        stacks = NO_HANDLER
    details = {"state": RankState(row.state).name, "stacks": stacks or "(no stack dump)"}
    rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, f"rank {row.rank} failed: {reason}", details)
    return row
