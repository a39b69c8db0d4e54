"""Re-adoption after an agent restart: the ranks the journal says are alive on this node,
found again (by pid and start time, or by their wrapper) and watched from the offsets
journaled with their last events, so nothing is lost or repeated."""

from __future__ import annotations

import signal
from collections.abc import Callable, Container
from dataclasses import replace
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import Journal, RankRow
from agent.jobs.node import rank_process
from agent.jobs.node.hangs import ask_for_stacks
from agent.jobs.node.launch_checks import resolve_argv
from agent.jobs.node.live_rank import EventBatch, LiveRank
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_start import rank_nccl_parser
from agent.jobs.node.rank_states import TERMINAL_RANK_STATES, RankEdge, RankState
from agent.jobs.node.script_logs import ScriptLogParser

__all__ = ["readopt_ranks"]

_K = job_pb2.JobEventKind


def readopt_ranks(
    rj: RankJournal,
    node: str,
    *,
    watched: Container[tuple[str, int, int]],
    clock: Callable[[], float],
    stop_grace_s: float,
    ib_present: bool,
) -> list[LiveRank]:
    """This node's ranks the journal says are alive (but those ``watched`` already), found
    again; the ones with nothing left to watch are settled in the journal and left out.

    Ranks that ended while the agent was away get their exit code from the exit file (and
    are settled on the next poll, after their last records are read).
    """
    journal = rj.journal
    terminal = [int(s) for s in TERMINAL_RANK_STATES]
    found: list[LiveRank] = []
    for row in journal.live_ranks(node, terminal):
        if row.key in watched:
            continue
        job = journal.get_job(row.job)
        spec = job.spec if job is not None else None
        live = LiveRank(
            row,
            None,
            spec.hang_timeout_s if spec is not None else 0.0,
            clock(),
            _files(journal, row, spec, ib_present),
        )
        if _reattach(rj, live, clock(), stop_grace_s):
            found.append(live)
    return found


def _files(
    journal: Journal, row: RankRow, spec: job_pb2.JobSpec | None, ib_present: bool
) -> RankFiles:
    return RankFiles(
        row.metrics_path,
        row.stdout_path,
        row.stderr_path,
        journal.get_offset(row.metrics_path),
        journal.get_offset(row.stdout_path),
        journal.get_offset(row.stderr_path),
        nccl=rank_nccl_parser(row, spec, ib_present),
        script=ScriptLogParser(resolve_argv(spec) if spec is not None else ()),
    )


def _reattach(rj: RankJournal, live: LiveRank, now: float, stop_grace_s: float) -> bool:
    """Finds the rank's process again; False when there is nothing to watch."""
    row = live.row
    exit_path = Path(row.exit_path)
    if row.pid <= 0 and RankState(row.state) == RankState.PENDING:
        # The agent died between journaling the rank and recording its pid.
        found = rank_process.find_wrapper(exit_path)
        if found is None:
            live.row = _never_started(rj, row)
            return False
        pid, create_time = found
        row = rj.edge(row, RankEdge.SPAWN, pid=pid, create_time=create_time)
        live.row = row
        rj.commit(row, EventBatch())
    live.handle = rank_process.adopt(row.pid, row.create_time, exit_path)
    if live.handle is None:
        code = rank_process.read_exit_file(exit_path)
        live.exit_code = code if code is not None else rank_process.LOST_EXIT_CODE
        return True
    state = RankState(row.state)
    if state == RankState.HUNG:
        ask_for_stacks(live, now)  # the first dump may have been cut short by the restart
    elif state == RankState.STOPPING:
        live.handle.signal_group(signal.SIGTERM)
        live.stop_deadline = now + stop_grace_s
    elif state in TERMINAL_RANK_STATES:
        live.handle.kill()  # FAILED after a hang but not yet gone
    return True


def _never_started(rj: RankJournal, row: RankRow) -> RankRow:
    batch = EventBatch()
    reason = "the agent stopped before the rank was started"
    row = rj.edge(row, RankEdge.SPAWN_FAILED, reason=reason)
    row = replace(row, ended=rj.wall_clock())
    rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, reason)
    rj.commit(row, batch)
    return row
