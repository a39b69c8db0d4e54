"""The node-local half of the supervisor: starts, watches and stops this node's ranks.
(Over 400 lines: every rank edge reads and writes one in-memory table of live ranks;
issue 14 splits start, watch, stop and re-adoption into rooms of the jobs package.)

A job's leader calls ``start_ranks`` / ``stop_ranks`` on every node of the job; the agent
calls ``poll`` periodically (or runs ``run``). Each poll tails every live rank's metrics
file (and, for a rank that does not report, DeepSpeed's progress lines on its stdout),
applies state edges (``agent.jobs.node.rank_states``), notices exits and hangs, and journals the
resulting events together with the offsets it read up to, so an agent restart (``readopt``,
done on construction) neither loses nor repeats anything.

Hangs: a rank with no new record for ``spec.hang_timeout_s`` gets SIGUSR1 (for the
faulthandler it registered), its stacks are read from its stderr ``stack_wait_s`` later,
and it is killed and counted FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from gantry.v1 import job_pb2
from gantry.v1.figures import latest_metrics

from agent.jobs.checkpoints import prunable
from agent.jobs.journal import AttemptRow, Journal, RankRow, rank_to_pb
from agent.jobs.metrics_records import (
    Record,
    RecordKind,
    merge_metrics,
    phase_name,
)
from agent.jobs.node import rank_process
from agent.jobs.node.launch import IMPORTS_FILE, rank_argv, rank_env
from agent.jobs.node.launch_checks import resolve_argv
from agent.jobs.node.logs import STREAMS, LogChunk, extract_stacks, failure_tail, tail_log
from agent.jobs.node.nccl import NcclParser, ib_devices_present
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.rank_process import RankHandle, describe_exit
from agent.jobs.node.rank_states import TERMINAL_RANK_STATES, RankEdge, RankState, transition
from agent.jobs.node.script_logs import ScriptLogParser
from agent.jobs.node.standby import Standbys
from agent.jobs.node.tailer import MAX_READ_BYTES, read_lines

__all__ = ["LocalSupervisor"]

log = logging.getLogger(__name__)

OnEvent = Callable[[job_pb2.JobEvent], None]
Clock = Callable[[], float]

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STACK_WAIT_S = 2.0
STACK_WAIT_MAX_S = 10.0
STACK_QUIET_S = 1.0  # stderr unchanged this long: the stack dump is complete
STACK_WAIT_DONE_S = 5.0  # quiet this late, a dump without a <module> frame is all there is
_OUTERMOST = " in <module>"  # the main thread's first frame, the last line faulthandler writes
STOP_GRACE_S = 10.0
PRUNE_EVERY_S = 10.0
HEARTBEAT_S = 5.0
MAX_STACK_BYTES = 256 * 1024
# Per rank and poll: enough for any sane reporter, bounded for a runaway one.
DS_CONFIG_FILE = "ds_config.json"

_K = job_pb2.JobEventKind
# NCCL findings worth an event; per-channel transport news stays in the log.
NCCL_EVENT_KINDS = ("version", "network", "interfaces", "ib_fallback", "warn")


@dataclass(frozen=True)
class _Launch:
    """What a rank was started with: what its standby for the next attempt needs."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class _Live:
    """What the supervisor keeps in memory about a rank it watches."""

    row: RankRow
    handle: RankHandle | None  # None: no process (gone while the agent was away)
    hang_timeout_s: float
    last_progress: float  # supervisor clock
    files: RankFiles
    exit_code: int | None = None  # the code, once known without a handle
    hung_at: float | None = None
    stack_offset: int = 0
    stack_size: int = -1  # stderr's size at the last poll while the stacks are written
    stack_size_since: float = 0.0  # when stderr last grew (or was first looked at)
    stop_owned: bool = False  # stop_ranks is stopping it: poll leaves it alone
    stop_deadline: float | None = None  # a STOPPING rank re-adopted: SIGKILL at this time
    launch: _Launch | None = None  # how it was started (None: re-adopted)

    @property
    def state(self) -> RankState:
        return RankState(self.row.state)

    def poll_exit(self) -> int | None:
        return self.exit_code if self.handle is None else self.handle.poll()


@dataclass
class _Batch:
    """One rank's changes from one poll: journaled in one transaction, then announced."""

    events: list[job_pb2.JobEvent] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)


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
        self.on_event = on_event
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.stack_wait_s = stack_wait_s
        self.stop_grace_s = stop_grace_s
        self.heartbeat_s = heartbeat_s
        self._live: dict[tuple[str, int, int], _Live] = {}
        self._ib_present = ib_devices_present()
        self.standbys = Standbys(self.data_dir / "standby")
        self._pruned: dict[str, float] = {}  # job -> when retention last looked
        if readopt:
            self.readopt()

    # --- paths ------------------------------------------------------------------------------

    def attempt_dir(self, job: str, attempt: int) -> Path:
        if not JOB_NAME.match(job):
            raise ValueError(f"job name {job!r}: use letters, digits, '.', '_' and '-'")
        return self.data_dir / "jobs" / job / f"attempt-{attempt}"

    def rank_dir(self, job: str, attempt: int, rank: int) -> Path:
        return self.attempt_dir(job, attempt) / f"rank-{rank}"

    def live_keys(self) -> list[tuple[str, int, int]]:
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
        if not spec.command:
            raise ValueError("the job spec has no command")
        if not ranks:
            raise ValueError("no ranks to start")
        locals_ = list(range(len(ranks))) if local_ranks is None else list(local_ranks)
        if len(locals_) != len(ranks) or len(set(ranks)) != len(ranks):
            raise ValueError("ranks and local_ranks must be distinct and of equal length")
        if gpus and max(locals_) >= len(gpus):
            raise ValueError(f"{len(ranks)} local ranks but only GPUs {list(gpus)}")
        for rank in ranks:
            if not 0 <= rank < world_size:
                raise ValueError(f"rank {rank} is outside world size {world_size}")
            if self.journal.get_rank(spec.name, attempt, rank) is not None:
                raise ValueError(f"{spec.name} attempt {attempt} rank {rank} was already started")
        # Before anything is journaled: a config that cannot be written refuses the start.
        ds_config = self._write_ds_config(spec, attempt)

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
                row = self._new_row(spec.name, attempt, rank, local_rank, gpus)
                self.journal.upsert_rank(row)
                rows.append(row)

        argv = rank_argv(spec, resume_from, ds_config)
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
            )
            started.append(self._spawn(row, argv, env, spec))
        return started

    def _write_ds_config(self, spec: job_pb2.JobSpec, attempt: int) -> Path | None:
        """The job's embedded DeepSpeed config as this attempt's ``ds_config.json``."""
        if not spec.deepspeed_config_json:
            return None
        path = self.attempt_dir(spec.name, attempt) / DS_CONFIG_FILE
        tmp = path.with_name(DS_CONFIG_FILE + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(spec.deepspeed_config_json)
            tmp.replace(path)
        except OSError as exc:
            raise ValueError(f"cannot write the job's DeepSpeed config to {path}: {exc}") from None
        return path

    def _new_row(
        self, job: str, attempt: int, rank: int, local_rank: int, gpus: Sequence[int]
    ) -> RankRow:
        rank_dir = self.rank_dir(job, attempt, rank)
        paths = {
            name: rank_dir / name
            for name in ("stdout.log", "stderr.log", "metrics.jsonl", "exit_code")
        }
        # Left over from a deleted job of the same name: never read as this run's.
        for path in paths.values():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            self.journal.set_offset(path, 0)
        return RankRow(
            job=job,
            attempt=attempt,
            rank=rank,
            local_rank=local_rank,
            node=self.node_name,
            state=RankState.PENDING,
            stdout_path=str(paths["stdout.log"]),
            stderr_path=str(paths["stderr.log"]),
            metrics_path=str(paths["metrics.jsonl"]),
            exit_path=str(paths["exit_code"]),
            gpu_indices=(gpus[local_rank],) if gpus else (),
        )

    def _spawn(
        self, row: RankRow, argv: list[str], env: dict[str, str], spec: job_pb2.JobSpec
    ) -> job_pb2.Rank:
        batch = _Batch()
        cwd = spec.working_dir or os.getcwd()
        details = {"argv": " ".join(argv)}
        try:
            handle = self.standbys.take(
                row.job,
                row.local_rank,
                argv,
                env,
                cwd,
                Path(row.stdout_path),
                Path(row.stderr_path),
            )
            if handle is not None:
                # Its wrapper records the exit code in the standby's own exit file.
                row = replace(row, exit_path=str(handle.exit_file))
                details["standby"] = "yes"
            else:
                handle = rank_process.spawn(
                    argv,
                    env,
                    cwd,
                    Path(row.stdout_path),
                    Path(row.stderr_path),
                    Path(row.exit_path),
                )
        except OSError as e:
            reason = f"could not start: {e}"
            row = self._edge(row, RankEdge.SPAWN_FAILED, reason=reason, ended=self.wall_clock())
            self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, reason)
            self._commit(row, batch)
            return rank_to_pb(row)
        started = self.wall_clock()
        row = self._edge(
            row,
            RankEdge.SPAWN,
            pid=handle.pid,
            create_time=handle.create_time,
            started=started,
            phase=job_pb2.RANK_PHASE_STARTED,
            phase_since=started,
        )
        self._emit(
            batch,
            row,
            _K.JOB_EVENT_KIND_RANK_STARTED,
            f"rank {row.rank} started, pid {handle.pid}"
            + (" (from its standby)" if "standby" in details else ""),
            details={"pid": str(handle.pid), **details},
        )
        self._live[row.key] = _Live(
            row,
            handle,
            spec.hang_timeout_s,
            self.clock(),
            RankFiles(
                row.metrics_path,
                row.stdout_path,
                row.stderr_path,
                nccl=self._nccl_parser(row, spec),
                script=ScriptLogParser(argv),
            ),
            launch=_Launch(argv, env, cwd),
        )
        self._commit(row, batch)
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
        jobs = {live.row.job for live in self._live.values()}
        for job in jobs:
            try:
                self._keep_checkpoints(job)
            except Exception:
                log.exception("checkpoint retention of %s failed", job)

    def _keep_checkpoints(self, job: str) -> None:
        """A job's ``keep_checkpoints``, applied to this node's view of its checkpoint_dir
        while its ranks run here (every PRUNE_EVERY_S at most)."""
        now = self.clock()
        if now - self._pruned.get(job, -PRUNE_EVERY_S) < PRUNE_EVERY_S:
            return
        self._pruned[job] = now
        row = self.journal.get_job(job)
        if row is None or not row.spec.keep_checkpoints or not row.spec.checkpoint_dir:
            return
        protect = {Path(a.resumed_from) for a in self.journal.attempts(job)[-1:] if a.resumed_from}
        doomed = prunable(row.spec.checkpoint_dir, row.spec.keep_checkpoints, protect)
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        if doomed:
            log.info(
                "job %s: keep_checkpoints %d removed %s",
                job,
                row.spec.keep_checkpoints,
                ", ".join(p.name for p in doomed),
            )

    def _poll_rank(self, live: _Live) -> bool:
        """Returns True when nothing is left to watch for this rank."""
        now = self.clock()
        before = live.row
        code = live.poll_exit()  # before reading: all the rank wrote is then in the files
        batch = _Batch()
        drained = self._read_records(live, batch, now)
        row = live.row
        state = live.state
        if state in TERMINAL_RANK_STATES:
            # FAILED after a hang, or KILLED: only the exit code was still missing.
            if code is not None and row.exit_code is None:
                row = replace(row, exit_code=code, ended=row.ended or self.wall_clock())
        elif code is not None and drained:
            row = self._exited(live, row, code, batch)
        elif state == RankState.HUNG and live.hung_at is not None:
            # The dump is complete once it holds the main thread's outermost frame (faulthandler
            # writes that thread last) and stderr has not grown for STACK_QUIET_S: a loaded
            # machine may pause the rank mid-dump for longer than that. At the latest, after
            # STACK_WAIT_MAX_S.
            size = _size(row.stderr_path)
            if size != live.stack_size:
                live.stack_size, live.stack_size_since = size, now
            quiet = now - live.stack_size_since >= STACK_QUIET_S
            waited = now - live.hung_at
            done = quiet and (waited >= STACK_WAIT_DONE_S or _OUTERMOST in self._stacks(live))
            if waited >= self.stack_wait_s and (done or waited >= STACK_WAIT_MAX_S):
                row = self._dump_stacks_and_fail(live, row, batch)
        elif state == RankState.STOPPING:
            if live.stop_deadline is not None and now >= live.stop_deadline and live.handle:
                live.handle.kill()
        elif (
            state in (RankState.STARTING, RankState.RUNNING)
            and live.hang_timeout_s > 0
            and now - live.last_progress > live.hang_timeout_s
        ):
            row = self._hang_detected(live, row, batch, now)
        live.row = row
        if row != before or batch.events or batch.offsets:
            self._commit(row, batch)
        return RankState(row.state) in TERMINAL_RANK_STATES and row.exit_code is not None

    def _read_records(self, live: _Live, batch: _Batch, now: float) -> bool:
        """Applies what the rank wrote since the last poll; True if all of it was read."""
        # A rank reporting through its own file and training: its printing adds nothing.
        trained = live.row.phase == job_pb2.RANK_PHASE_TRAINING
        reading = live.files.read(
            now, script_lines=not (trained and live.row.metrics_source == "file")
        )
        batch.offsets.update(reading.offsets)
        if reading.records:
            self._apply_records(live, reading.records, batch, now)
        for alert, text in reading.alerts:
            self._emit(
                batch,
                live.row,
                _K.JOB_EVENT_KIND_ALERT,
                f"rank {live.row.rank}: {alert}: {text[:200]}",
                details={"alert": alert, "line": text[:2000]},
            )
        for finding in reading.findings:
            if finding.kind in NCCL_EVENT_KINDS:
                self._emit(
                    batch,
                    live.row,
                    _K.JOB_EVENT_KIND_NCCL,
                    finding.message,
                    details={
                        "finding": finding.kind,
                        "severity": finding.severity,
                        "line": finding.line,
                    },
                )
        return reading.drained

    def _apply_records(self, live: _Live, records: list[Record], batch: _Batch, now: float) -> None:
        row = live.row
        live.last_progress = now
        heartbeat = row.last_heartbeat
        metrics = row.last_metrics
        source = row.metrics_source
        pending: job_pb2.RankMetrics | None = None  # consecutive records of one step
        for record in records:
            when = record.time if record.time is not None else self.wall_clock()
            heartbeat = when if heartbeat is None else max(heartbeat, when)
            if record.kind == RecordKind.PHASE and record.phase:
                # The rank's own hooks say exactly where it is; what it prints only moves
                # it on (a late line must not send it back).
                if record.source == "file" or record.phase > row.phase:
                    row = self._phase(row, record.phase, when, batch)
            elif record.kind == RecordKind.METRICS and record.metrics is not None:
                row = self._phase(row, job_pb2.RANK_PHASE_TRAINING, when, batch)
                if record.source != "file" and source == "file":
                    continue  # the rank reports itself; what it prints adds nothing
                source = "file" if record.source == "file" else (source or record.source)
                if pending is not None and pending.step != record.metrics.step:
                    self._metrics_event(batch, row, pending)
                    pending = None
                pending = merge_metrics(pending, record.metrics)
                metrics = latest_metrics(metrics, record.metrics)
            elif record.kind == RecordKind.CHECKPOINT:
                details = {"tag": record.tag, "path": record.path}
                if record.step is not None:
                    details["step"] = str(record.step)
                self._emit(
                    batch,
                    row,
                    _K.JOB_EVENT_KIND_CHECKPOINT_SAVED,
                    f"checkpoint {record.tag or record.path} saved",
                    details=details,
                    when=when,
                )
        if pending is not None:
            self._metrics_event(batch, row, pending)
        row = replace(row, last_heartbeat=heartbeat, last_metrics=metrics, metrics_source=source)
        if live.row.phase != row.phase == job_pb2.RANK_PHASE_TRAINING and live.launch is not None:
            # Trained once: the next attempt of this slot can start from a standby.
            launch = live.launch
            self.standbys.prepare(
                row.job,
                row.local_rank,
                launch.argv,
                launch.env,
                launch.cwd,
                Path(row.metrics_path).with_name(IMPORTS_FILE),
            )
        if RankState(row.state) == RankState.STARTING:
            row = self._edge(row, RankEdge.FIRST_REPORT)
        live.row = row

    def _phase(self, row: RankRow, phase: int, when: float, batch: _Batch) -> RankRow:
        """The rank's new phase, with an event saying how long the last one took. A rank
        that trains has no phases left (a late start-up line changes nothing)."""
        if phase == row.phase or row.phase == job_pb2.RANK_PHASE_TRAINING:
            return row
        name = phase_name(phase)
        details = {"phase": name}
        message = f"rank {row.rank}: {name.replace('_', ' ')}"
        if row.phase:
            details["previous"] = phase_name(row.phase)
            if row.phase_since is not None:
                took = max(0.0, when - row.phase_since)
                details["previous_s"] = f"{took:.1f}"
                message += f" ({details['previous'].replace('_', ' ')} took {took:.1f} s)"
        self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_PHASE, message, details=details, when=when)
        return replace(row, phase=phase, phase_since=when)

    def _metrics_event(self, batch: _Batch, row: RankRow, metrics: job_pb2.RankMetrics) -> None:
        when = metrics.time.ToNanoseconds() / 1e9 if metrics.HasField("time") else None
        self._emit(batch, row, _K.JOB_EVENT_KIND_METRICS, "", metrics=metrics, when=when)

    def _exited(self, live: _Live, row: RankRow, code: int, batch: _Batch) -> RankRow:
        state = live.state
        ended = self.wall_clock()
        details = {"exit_code": str(code)}
        if state == RankState.STOPPING:
            # Re-adopted while being stopped: the stop completes now.
            edge = RankEdge.EXIT_DURING_STOP if code == 0 else RankEdge.STOPPED
            row = self._edge(row, edge, exit_code=code, ended=ended, reason="stopped")
            details["state"] = RankState(row.state).name
            message = f"rank {row.rank} stopped ({describe_exit(code)})"
            self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_EXITED, message, details=details)
            return row
        if code == 0:
            row = self._edge(row, RankEdge.EXIT_OK, exit_code=0, ended=ended, reason="")
            if not any(
                other.row.job == row.job
                and other.row.rank != row.rank
                and other.state not in TERMINAL_RANK_STATES
                for other in self._live.values()
            ):
                self.standbys.discard_job(row.job)  # done here: no attempt will follow
            details["state"] = RankState(row.state).name
            message = f"rank {row.rank} exited"
            self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_EXITED, message, details=details)
            return row
        reason = describe_exit(code)
        if state == RankState.HUNG:
            reason = f"hung, then {reason}"
            stacks = self._stacks(live)
            if stacks:
                details["stacks"] = stacks
        else:
            # The end of stderr says why (a traceback, CUDA out of memory, an NCCL error):
            # the console's advisor reads it from the event, and the reason names it.
            last, cause = failure_tail(row.stderr_path, row.stdout_path)
            if last:
                details["last_lines"] = last
            if cause is not None:
                details["cause"] = cause
                reason = f"{cause} ({reason})"
        row = self._edge(row, RankEdge.EXIT_ERROR, exit_code=code, ended=ended, reason=reason)
        details["state"] = RankState(row.state).name
        details["reason"] = reason
        message = f"rank {row.rank} failed: {reason}"
        self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, message, details=details)
        return row

    def _hang_detected(self, live: _Live, row: RankRow, batch: _Batch, now: float) -> RankRow:
        silent = now - live.last_progress
        reason = f"no progress for {silent:.0f} s (hang timeout {live.hang_timeout_s:g} s)"
        row = self._edge(row, RankEdge.HANG_DETECTED, reason=reason)
        live.hung_at = now
        live.stack_offset = _size(row.stderr_path)
        if live.handle is not None:
            live.handle.signal_group(signal.SIGUSR1)
            # A stopped (SIGSTOP) rank handles the SIGUSR1 only once it runs again.
            live.handle.signal_group(signal.SIGCONT)
        details = {"silent_s": f"{silent:.1f}"}
        if row.last_metrics is not None:
            details["last_step"] = str(row.last_metrics.step)
        self._emit(
            batch, row, _K.JOB_EVENT_KIND_RANK_HUNG, f"rank {row.rank} hung: {reason}", details
        )
        return row

    def _stacks(self, live: _Live) -> str:
        chunk = read_lines(live.row.stderr_path, live.stack_offset, MAX_STACK_BYTES)
        return extract_stacks("\n".join(line.text for line in chunk.lines))

    def _dump_stacks_and_fail(self, live: _Live, row: RankRow, batch: _Batch) -> RankRow:
        stacks = self._stacks(live)
        reason = f"hung: {row.reason}" if row.reason else "hung"
        row = self._edge(row, RankEdge.STACKS_DUMPED, reason=reason, ended=self.wall_clock())
        if live.handle is not None:
            live.handle.kill()
        details = {"state": RankState(row.state).name, "stacks": stacks or "(no stack dump)"}
        self._emit(
            batch,
            row,
            _K.JOB_EVENT_KIND_RANK_FAILED,
            f"rank {row.rank} failed: {reason}",
            details=details,
        )
        return row

    # --- stop -------------------------------------------------------------------------------

    async def stop_ranks(
        self, job: str, attempt: int, grace_s: float | None = None
    ) -> list[job_pb2.Rank]:
        """SIGTERM, ``grace_s``, SIGKILL for every rank of the attempt on this node.

        Ranks that exit 0 within the grace end EXITED, the others KILLED; ranks that had
        already ended keep their state. Returns all the attempt's ranks here.
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
                live.row = self._edge(live.row, RankEdge.STOP, reason="stopping")
                self._commit(live.row, _Batch())
        try:
            await asyncio.gather(*(self._stop_one(live, grace) for live in targets))
        finally:
            for live in targets:
                live.stop_owned = False
        return [rank_to_pb(r) for r in self.journal.ranks(job, attempt)]

    async def _stop_one(self, live: _Live, grace_s: float) -> None:
        if live.handle is not None:
            await live.handle.stop_async(grace_s)
        code = live.poll_exit()
        batch = _Batch()
        self._read_records(live, batch, self.clock())
        row = live.row
        if code is not None and RankState(row.state) == RankState.STOPPING:
            row = self._exited(live, row, code, batch)
        elif code is not None and row.exit_code is None:
            row = replace(row, exit_code=code, ended=row.ended or self.wall_clock())
        elif code is None:
            live.stop_deadline = self.clock()  # survived SIGKILL so far: poll kills again
        live.row = row
        self._commit(row, batch)
        if row.exit_code is not None and RankState(row.state) in TERMINAL_RANK_STATES:
            self._live.pop(row.key, None)

    def close(self) -> None:
        """The agent stops: its standbys go (ranks go on, to be re-adopted)."""
        self.standbys.close()

    # --- re-adoption ------------------------------------------------------------------------

    def readopt(self) -> int:
        """Re-attaches to this node's ranks the journal says are alive; returns how many.

        Ranks that ended while the agent was away get their exit code from the exit file
        (and are settled on the next poll, after their last records are read).
        """
        count = 0
        terminal = [int(s) for s in TERMINAL_RANK_STATES]
        for row in self.journal.live_ranks(self.node_name, terminal):
            if row.key in self._live:
                continue
            job = self.journal.get_job(row.job)
            hang_timeout = job.spec.hang_timeout_s if job is not None else 0.0
            live = _Live(
                row,
                None,
                hang_timeout,
                self.clock(),
                RankFiles(
                    row.metrics_path,
                    row.stdout_path,
                    row.stderr_path,
                    self.journal.get_offset(row.metrics_path),
                    self.journal.get_offset(row.stdout_path),
                    self.journal.get_offset(row.stderr_path),
                    nccl=self._nccl_parser(row, job.spec if job is not None else None),
                    script=ScriptLogParser(resolve_argv(job.spec) if job is not None else ()),
                ),
            )
            if self._reattach(live):
                self._live[row.key] = live
                count += 1
        return count

    def _nccl_parser(self, row: RankRow, spec: job_pb2.JobSpec | None) -> NcclParser:
        env = dict(spec.env) if spec is not None else {}
        return NcclParser(row.rank, env=env, ib_present=self._ib_present)

    def _reattach(self, live: _Live) -> bool:
        """Finds the rank's process again; False when there is nothing to watch."""
        row = live.row
        exit_path = Path(row.exit_path)
        if row.pid <= 0 and RankState(row.state) == RankState.PENDING:
            # The agent died between journaling the rank and recording its pid.
            found = rank_process.find_wrapper(exit_path)
            if found is None:
                batch = _Batch()
                reason = "the agent stopped before the rank was started"
                row = self._edge(row, RankEdge.SPAWN_FAILED, reason=reason)
                row = replace(row, ended=self.wall_clock())
                self._emit(batch, row, _K.JOB_EVENT_KIND_RANK_FAILED, reason)
                live.row = row
                self._commit(row, batch)
                return False
            pid, create_time = found
            row = self._edge(row, RankEdge.SPAWN, pid=pid, create_time=create_time)
            live.row = row
            self._commit(row, _Batch())
        live.handle = rank_process.adopt(row.pid, row.create_time, exit_path)
        if live.handle is None:
            code = rank_process.read_exit_file(exit_path)
            live.exit_code = code if code is not None else rank_process.LOST_EXIT_CODE
            return True
        state = RankState(row.state)
        now = self.clock()
        if state == RankState.HUNG:
            # The first dump may have been interrupted by the restart: ask again.
            live.hung_at = now
            live.stack_offset = _size(row.stderr_path)
            live.handle.signal_group(signal.SIGUSR1)
        elif state == RankState.STOPPING:
            live.handle.signal_group(signal.SIGTERM)
            live.stop_deadline = now + self.stop_grace_s
        elif state in TERMINAL_RANK_STATES:
            live.handle.kill()  # FAILED after a hang but not yet gone
        return True

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
        """A rank's log lines (``rank_logs.tail_log``); KeyError for an unknown rank."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {stream!r}")
        if not attempt:
            attempt = self.journal.latest_attempt(job) or 0
        row = self.journal.get_rank(job, attempt, rank)
        if row is None:
            raise KeyError(f"{job} attempt {attempt} has no rank {rank} on {self.node_name}")
        path = row.stdout_path if stream == "stdout" else row.stderr_path
        return tail_log(path, stream, tail_lines, from_offset, max_bytes)

    # --- journal & events -------------------------------------------------------------------

    def _edge(self, row: RankRow, edge: RankEdge, **changes: object) -> RankRow:
        state = transition(RankState(row.state), edge)
        return replace(row, state=int(state), **changes)  # type: ignore[arg-type]

    def _emit(
        self,
        batch: _Batch,
        row: RankRow,
        kind: job_pb2.JobEventKind,
        message: str,
        details: Mapping[str, str] | None = None,
        metrics: job_pb2.RankMetrics | None = None,
        when: float | None = None,
    ) -> None:
        event = job_pb2.JobEvent(
            job_name=row.job,
            attempt=row.attempt,
            kind=kind,
            node=row.node,
            rank=row.rank,
            message=message,
            details=dict(details or {}),
        )
        event.time.FromNanoseconds(int((self.wall_clock() if when is None else when) * 1e9))
        if metrics is not None:
            event.metrics.CopyFrom(metrics)
        batch.events.append(event)

    def _commit(self, row: RankRow, batch: _Batch) -> None:
        """Journals the rank, its new events and the offsets they were read up to, at once."""
        with self.journal.transaction():
            self.journal.upsert_rank(row)
            for event in batch.events:
                self.journal.append_event(event)
            for path, offset in batch.offsets.items():
                self.journal.set_offset(path, offset)
        if self.on_event is None:
            return
        for event in batch.events:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event failed for %s", event.kind)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
