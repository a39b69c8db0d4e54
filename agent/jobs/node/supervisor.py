"""The node-local half of the supervisor: starts, watches and stops this node's ranks (one
class, the agent's rank API; about 430 lines because each method is the thin door to its
room: rank_start, rank_progress, rank_exits, hangs, checkpoint_asks, kernel_alerts, standby).

A job's leader calls ``start_ranks`` / ``stop_ranks`` on every node of the job; the agent
calls ``poll`` periodically (or runs ``run``). Each poll tails every live rank's metrics
file and both its streams (failure signatures always; progress lines for a rank that does
not report), applies state edges (``rank_states``), notices exits and hangs, and journals
the resulting events together with the offsets it read up to, so an agent restart
(``readopt``, done on construction) neither loses nor repeats anything. The daemon hands in
what the kernel log says of this node's ranks (``journal_kernel``).

The rooms it drives: ``rank_start`` (files, row, process), ``rank_progress`` (what a rank
wrote), ``hangs`` (SIGUSR1, the stacks, then FAILED), ``rank_exits`` (which edge an exit
is), ``readopt``, ``checkpoint_retention``; every state write goes through ``rank_journal``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from gantry.v1 import job_pb2
from gantry.v1.rules import check_name

from agent.jobs.journal import AttemptRow, Journal, RankRow, rank_to_pb
from agent.jobs.metrics_records import Record
from agent.jobs.node.checkpoint_asks import CheckpointAsks, announce, ask_job, running
from agent.jobs.node.checkpoint_retention import CheckpointRetention
from agent.jobs.node.hangs import (
    STACK_WAIT_S,
    dump_stacks_and_fail,
    hang_detected,
    silent_by_now,
    stacks_dumped,
    tell_slow_join,
)
from agent.jobs.node.kernel_alerts import KernelAlert, KernelAlerts
from agent.jobs.node.launch import IMPORTS_FILE, rank_argv, rank_env
from agent.jobs.node.live_rank import EventBatch, Launch, LiveRank
from agent.jobs.node.logs import LogChunk, rank_log_path, tail_log
from agent.jobs.node.nccl import ib_devices_present
from agent.jobs.node.rank_exits import settle_exit
from agent.jobs.node.rank_journal import OnEvent, RankJournal
from agent.jobs.node.rank_progress import read_progress
from agent.jobs.node.rank_reuse import free_ended_place
from agent.jobs.node.rank_start import check_start, new_rank_row, spawn_rank, write_ds_config
from agent.jobs.node.rank_states import TERMINAL_RANK_STATES, RankEdge, RankState
from agent.jobs.node.readopt import readopt_ranks
from agent.jobs.node.route_iface import interface_to
from agent.jobs.node.standby import Standbys
from agent.jobs.node.tailer import MAX_READ_BYTES

__all__ = ["HEARTBEAT_S", "STOP_GRACE_S", "LocalSupervisor", "OnEvent"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Key = tuple[str, int, int]  # (job, attempt, rank)

STOP_GRACE_S = 10.0
HEARTBEAT_S = 5.0


class LocalSupervisor:
    """This node's ranks, for every job: spawn, watch (``poll``), stop, re-adopt."""

    def __init__(
        self,
        data_dir: Path | str,
        node_name: str,
        journal: Journal,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        on_event: OnEvent | None = None,
        base_env: Mapping[str, str] | None = None,
        stack_wait_s: float = STACK_WAIT_S,
        stop_grace_s: float = STOP_GRACE_S,
        heartbeat_s: float = HEARTBEAT_S,
        readopt: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.node_name = node_name
        self.journal = journal
        self.clock = clock
        self.wall_clock = wall_clock
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.stack_wait_s = stack_wait_s
        self.stop_grace_s = stop_grace_s
        self.heartbeat_s = heartbeat_s
        self.ranks_journal = RankJournal(journal, wall_clock, on_event)
        self._live: dict[Key, LiveRank] = {}
        self._ib_present = ib_devices_present()
        self.standbys = Standbys(self.data_dir / "standby")
        self.retention = CheckpointRetention(journal, clock)
        self.kernel = KernelAlerts()
        self.asks = CheckpointAsks()  # checkpoints asked for by a preemption notice
        if readopt:
            self.readopt()

    # --- paths ------------------------------------------------------------------------------

    def attempt_dir(self, job: str, attempt: int) -> Path:
        check_name(job, "job name")  # the contract's rule: the name is a path component here
        return self.data_dir / "jobs" / job / f"attempt-{attempt}"

    def rank_dir(self, job: str, attempt: int, rank: int) -> Path:
        return self.attempt_dir(job, attempt) / f"rank-{rank}"

    def live_keys(self) -> list[Key]:
        """(job, attempt, rank) of the ranks being watched."""
        return list(self._live)

    # --- start ------------------------------------------------------------------------------

    def start_ranks(
        self,
        spec: job_pb2.JobSpec,
        attempt: int,
        ranks: Sequence[int],
        world_size: int,
        master_addr: str,
        master_port: int,
        resume_from: str = "",
        *,
        gpus: Sequence[int] = (),
        local_ranks: Sequence[int] | None = None,
        leader: str = "",
    ) -> list[job_pb2.Rank]:
        """Starts this node's ``ranks`` (global numbers) of one attempt; returns them.

        ``local_ranks`` defaults to 0..n-1 in the order given; ``gpus`` are this node's GPU
        indices for the job (empty: a CPU node, ``DS_ACCELERATOR=cpu``). A rank whose
        process cannot be started ends FAILED (its event says why); nothing raises for that.
        """
        self.rank_dir(spec.name, attempt, 0)  # validates the job name
        locals_ = check_start(spec, ranks, local_ranks, gpus, world_size)
        for rank in ranks:
            key = (spec.name, attempt, rank)
            if not free_ended_place(self.journal, self._live, key, self.rank_dir(*key)):
                raise ValueError(f"{spec.name} attempt {attempt} rank {rank} was already started")
        # Before anything is journaled: a config that cannot be written refuses the start.
        ds_config = write_ds_config(self.attempt_dir(spec.name, attempt), spec)

        now = self.wall_clock()
        rows: list[RankRow] = []
        with self.journal.transaction():
            self.journal.ensure_job(spec, leader=leader, created=now)
            self.journal.add_attempt(
                AttemptRow(
                    spec.name,
                    attempt,
                    job_pb2.JOB_STATE_STARTING,
                    started=now,
                    resumed_from=resume_from,
                    master_port=master_port,
                )
            )
            for rank, local_rank in zip(ranks, locals_, strict=True):
                key = (spec.name, attempt, rank)
                rank_dir = self.rank_dir(*key)
                row = new_rank_row(self.journal, rank_dir, key, local_rank, self.node_name, gpus)
                self.journal.upsert_rank(row)
                rows.append(row)

        argv = rank_argv(spec, resume_from, ds_config)
        cwd = spec.working_dir or os.getcwd()
        ifname = interface_to(master_addr)
        started: list[job_pb2.Rank] = []
        for row in rows:
            env = rank_env(
                self.base_env,
                spec,
                attempt=attempt,
                rank=row.rank,
                local_rank=row.local_rank,
                local_world_size=len(rows),
                world_size=world_size,
                master_addr=master_addr,
                master_port=master_port,
                metrics_path=Path(row.metrics_path),
                gpus=gpus,
                heartbeat_s=self.heartbeat_s,
                socket_ifname=ifname,
            )
            started.append(self._spawn(row, Launch(argv, env, cwd), spec))
        return started

    def _spawn(self, row: RankRow, launch: Launch, spec: job_pb2.JobSpec) -> job_pb2.Rank:
        row, batch, live = spawn_rank(
            self.ranks_journal,
            self.standbys,
            row,
            launch,
            spec,
            now=self.clock(),
            ib_present=self._ib_present,
        )
        if live is not None:
            self._live[row.key] = live
        self.ranks_journal.commit(row, batch)
        return rank_to_pb(row)

    # --- watch ------------------------------------------------------------------------------

    async def run(self, period_s: float = 0.2) -> None:
        """Polls forever (until cancelled)."""
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("supervisor poll failed")
            await asyncio.sleep(period_s)

    async def poll(self) -> None:
        """One round over every watched rank: records, exits, hangs; then retention."""
        for key, live in list(self._live.items()):
            if live.stop_owned:
                continue
            try:
                done = self._poll_rank(live)
            except Exception:
                log.exception("polling %s failed", key)
                continue
            if done:
                del self._live[key]
                self.asks.forget(key)
        jobs = {live.row.job for live in self._live.values()}
        for job in jobs:
            try:
                self.retention.keep(job)
            except Exception:
                log.exception("checkpoint retention of %s failed", job)

    def _poll_rank(self, live: LiveRank) -> bool:
        """Returns True when nothing is left to watch for this rank."""
        rj = self.ranks_journal
        now = self.clock()
        before = live.row
        code = live.poll_exit()  # before reading: all the rank wrote is then in the files
        batch = EventBatch()
        answered = self.asks.answered_id(live.row)  # before the records (see settle)
        checkpoints: list[Record] = []
        drained = self._read_progress(live, batch, now, checkpoints)
        self.asks.settle(rj, batch, live.row, checkpoints, answered)
        row = live.row
        state = live.state
        if state in TERMINAL_RANK_STATES:
            # FAILED after a hang, or KILLED: only the exit code was still missing.
            if code is not None and row.exit_code is None:
                row = replace(row, exit_code=code, ended=row.ended or self.wall_clock())
        elif code is not None and drained:
            row = self._exited(live, row, code, batch)
        elif state == RankState.HUNG:
            if stacks_dumped(live, now, self.stack_wait_s):
                row = dump_stacks_and_fail(rj, live, row, batch)
        elif state == RankState.STOPPING:
            if live.stop_deadline is not None and now >= live.stop_deadline and live.handle:
                live.handle.kill()
        elif silent_by_now(live, now):
            row = hang_detected(rj, live, row, batch, now)
        tell_slow_join(rj, live, row, batch)
        live.row = row
        if row != before or batch.events or batch.offsets:
            rj.commit(row, batch)
        return drained and row.exit_code is not None and live.state in TERMINAL_RANK_STATES

    def _read_progress(
        self, live: LiveRank, batch: EventBatch, now: float, seen: list[Record] | None = None
    ) -> bool:
        """``read_progress``; a rank that has just begun training gets a standby prepared."""
        phase = live.row.phase
        drained = read_progress(self.ranks_journal, live, batch, now, seen)
        training = job_pb2.RANK_PHASE_TRAINING
        if phase != training and live.row.phase == training and live.launch is not None:
            # Trained once: the next attempt of this slot can start from a standby.
            row, launch = live.row, live.launch
            self.standbys.prepare(
                row.job,
                row.local_rank,
                launch.argv,
                launch.env,
                launch.cwd,
                Path(row.metrics_path).with_name(IMPORTS_FILE),
            )
        return drained

    def _exited(self, live: LiveRank, row: RankRow, code: int, batch: EventBatch) -> RankRow:
        """``settle_exit``; the last of a job's ranks here to exit 0 takes its standbys."""
        stopping = live.state == RankState.STOPPING
        oom = self.kernel.killed_by_oom(row.pid, code, self.wall_clock())
        row = settle_exit(self.ranks_journal, live, row, code, batch, oom_kill=oom)
        done_here = not any(
            other.row.job == row.job
            and other.row.rank != row.rank
            and other.state not in TERMINAL_RANK_STATES
            for other in self._live.values()
        )
        if not stopping and RankState(row.state) == RankState.EXITED and done_here:
            self.standbys.discard_job(row.job)  # no attempt will follow
        return row

    # --- the kernel log (on the loop; the daemon follows it) --------------------------------

    def journal_kernel(self, alerts_for: Callable[[list[RankRow]], list[KernelAlert]]) -> int:
        """Journals the ALERTs a kernel-log fact raises (``alerts_for``, one of
        ``self.kernel``'s readings, given the rows watched here); how many."""
        alerts = alerts_for([live.row for live in self._live.values()])
        for alert in alerts:
            live = self._live.get(alert.key)
            if live is not None:
                batch = EventBatch()
                self.ranks_journal.emit(
                    batch, live.row, job_pb2.JOB_EVENT_KIND_ALERT, alert.message, alert.details
                )
                self.ranks_journal.commit(live.row, batch)
        return len(alerts)

    # --- checkpoints asked for (a preemption notice): ``checkpoint_asks`` -------------------

    def request_checkpoint(self, job: str, request_id: str, attempt: int = 0) -> int:
        """Asks the job's running ranks here (of ``attempt``; 0: any) for a checkpoint now."""
        return ask_job(self.asks, self._live.values(), job, request_id, attempt)

    def announce_preemption(self, source: str, deadline: float | None) -> list[str]:
        """This node is being preempted: every job's ranks here are asked for a checkpoint,
        and each job's leader told (a PREEMPTION_NOTICE event); returns the jobs."""
        lives = list(self._live.values())
        return announce(self.ranks_journal, self.asks, lives, self.node_name, source, deadline)

    def holds_ranks(self) -> bool:
        """Some rank here has not ended (nor begun to stop) yet."""
        return any(running(live) for live in self._live.values())

    # --- stop -------------------------------------------------------------------------------

    async def stop_ranks(
        self, job: str, attempt: int, grace_s: float | None = None
    ) -> list[job_pb2.Rank]:
        """SIGTERM, ``grace_s``, SIGKILL for every rank of the attempt on this node.

        Ranks that exit 0 within the grace end EXITED (RANK_EXITED), the others KILLED
        (a rank STOPPED event); ranks that had already ended keep their state. Returns all
        the attempt's ranks here.
        """
        grace = self.stop_grace_s if grace_s is None else grace_s
        targets = [
            live
            for live in self._live.values()
            if live.row.job == job and live.row.attempt == attempt and not live.stop_owned
        ]
        for live in targets:
            live.stop_owned = True
            if live.state not in TERMINAL_RANK_STATES:
                live.row = self.ranks_journal.edge(live.row, RankEdge.STOP, reason="stopping")
                self.ranks_journal.commit(live.row, EventBatch())
        try:
            await asyncio.gather(*(self._stop_one(live, grace) for live in targets))
        finally:
            for live in targets:
                live.stop_owned = False
        return [rank_to_pb(r) for r in self.journal.ranks(job, attempt)]

    async def _stop_one(self, live: LiveRank, grace_s: float) -> None:
        if live.handle is not None:
            await live.handle.stop_async(grace_s)
        code = live.poll_exit()
        batch = EventBatch()
        drained = self._read_progress(live, batch, self.clock())  # else poll drains it
        row = live.row
        if code is not None and RankState(row.state) == RankState.STOPPING:
            row = self._exited(live, row, code, batch)
        elif code is not None and row.exit_code is None:
            row = replace(row, exit_code=code, ended=row.ended or self.wall_clock())
        elif code is None:
            live.stop_deadline = self.clock()  # survived SIGKILL so far: poll kills again
        live.row = row
        self.ranks_journal.commit(row, batch)
        if drained and row.exit_code is not None and live.state in TERMINAL_RANK_STATES:
            self._live.pop(row.key, None)

    def close(self) -> None:
        """The agent stops: its standbys go (ranks go on, to be re-adopted)."""
        self.standbys.close()

    # --- re-adoption ------------------------------------------------------------------------

    def readopt(self) -> int:
        """Re-attaches to this node's ranks the journal says are alive; returns how many."""
        found = readopt_ranks(
            self.ranks_journal,
            self.node_name,
            watched=self._live,
            clock=self.clock,
            stop_grace_s=self.stop_grace_s,
            ib_present=self._ib_present,
        )
        for live in found:
            self._live[live.row.key] = live
        return len(found)

    # --- describe ---------------------------------------------------------------------------

    def ranks(self, job: str, attempt: int | None = None) -> list[job_pb2.Rank]:
        """The job's ranks on this node, of ``attempt`` (None or 0: the latest)."""
        if not attempt:
            attempt = self.journal.latest_attempt(job)
            if attempt is None:
                return []
        return [rank_to_pb(r) for r in self.journal.ranks(job, attempt)]

    def tail_log(
        self,
        job: str,
        attempt: int,
        rank: int,
        stream: str = "stdout",
        tail_lines: int = 100,
        from_offset: int | None = None,
        max_bytes: int = MAX_READ_BYTES,
    ) -> LogChunk:
        """A rank's log lines (``logs.tail_log``); KeyError for an unknown rank."""
        path = rank_log_path(self.journal, self.node_name, job, attempt, rank, stream)
        return tail_log(path, stream, tail_lines, from_offset, max_bytes)
