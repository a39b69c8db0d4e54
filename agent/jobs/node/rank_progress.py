"""What a watched rank wrote since the last poll, applied to its row: its phase, metrics,
checkpoints, NCCL findings and diagnoses (failure signatures), as events in the poll's batch."""

from __future__ import annotations

from dataclasses import replace

from gantry.v1 import job_pb2
from gantry.v1.figures import latest_metrics

from agent.jobs.journal import RankRow
from agent.jobs.metrics_records import Record, RecordKind, merge_metrics, phase_name
from agent.jobs.node.live_rank import EventBatch, LiveRank
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_states import RankEdge, RankState

__all__ = ["MAX_READS_AFTER_EXIT", "NCCL_EVENT_KINDS", "read_progress"]

_K = job_pb2.JobEventKind
# NCCL findings worth an event; per-channel transport news stays in the log.
NCCL_EVENT_KINDS = ("version", "network", "interfaces", "ib_fallback", "warn", "transport")
# A rank that has exited is read until its files are drained, at most this many more reads
# (each bounded by rank_files' budget): a leftover child writing on cannot keep it watched.
MAX_READS_AFTER_EXIT = 16


def read_progress(
    rj: RankJournal,
    live: LiveRank,
    batch: EventBatch,
    now: float,
    checkpoints: list[Record] | None = None,
) -> bool:
    """Applies what the rank wrote since the last poll; True if all of it was read. The
    checkpoint records read are also added to ``checkpoints`` (a requested one's answer).

    Once its exit is known (``live.poll_exit``, called before), all it wrote is in the
    files: their partial last lines and the records its parser held back are read too, and
    after ``MAX_READS_AFTER_EXIT`` such reads it counts as read, drained or not."""
    exited = live.exit_code is not None
    # A rank reporting through its own file and training: its printing adds nothing.
    trained = live.row.phase == job_pb2.RANK_PHASE_TRAINING
    script_lines = not (trained and live.row.metrics_source == "file")
    reading = live.files.read(now, script_lines=script_lines, final=exited)
    if exited:
        live.reads_after_exit += 1
    batch.offsets.update(reading.offsets)
    if reading.records:
        _apply_records(rj, live, reading.records, batch, now)
        if checkpoints is not None:
            checkpoints += [r for r in reading.records if r.kind == RecordKind.CHECKPOINT]
    for found in reading.diagnoses:
        rj.emit(
            batch,
            live.row,
            _K.JOB_EVENT_KIND_ALERT,
            f"rank {live.row.rank}: {found.cause}",
            details=found.details(),
        )
    for finding in reading.findings:
        if finding.kind in NCCL_EVENT_KINDS:
            rj.emit(
                batch,
                live.row,
                _K.JOB_EVENT_KIND_NCCL,
                finding.message,
                details={
                    **finding.fields,
                    "finding": finding.kind,
                    "severity": finding.severity,
                    "line": finding.line,
                },
            )
    return reading.drained or (exited and live.reads_after_exit >= MAX_READS_AFTER_EXIT)


def _apply_records(
    rj: RankJournal, live: LiveRank, records: list[Record], batch: EventBatch, now: float
) -> None:
    row = live.row
    if any(_progress(record, row.phase) for record in records):
        live.last_progress = now
    live.beats = live.beats or any(r.kind == RecordKind.HEARTBEAT for r in records)
    heartbeat = row.last_heartbeat
    metrics = row.last_metrics
    source = row.metrics_source
    pending: job_pb2.RankMetrics | None = None  # consecutive records of one step
    for record in records:
        when = record.time if record.time is not None else rj.wall_clock()
        heartbeat = when if heartbeat is None else max(heartbeat, when)
        if record.kind == RecordKind.PHASE and record.phase:
            # The rank's own hooks say exactly where it is; what it prints only moves
            # it on (a late line must not send it back).
            if record.source == "file" or record.phase > row.phase:
                row = _phase(rj, row, record.phase, when, batch)
        elif record.kind == RecordKind.METRICS and record.metrics is not None:
            row = _phase(rj, row, job_pb2.RANK_PHASE_TRAINING, when, batch)
            if record.source != "file" and source == "file":
                continue  # the rank reports itself; what it prints adds nothing
            source = "file" if record.source == "file" else (source or record.source)
            if pending is not None and pending.step != record.metrics.step:
                _metrics_event(rj, batch, row, pending)
                pending = None
            pending = merge_metrics(pending, record.metrics)
            metrics = latest_metrics(metrics, record.metrics)
        elif record.kind == RecordKind.CHECKPOINT:
            _checkpoint_saved(rj, batch, row, record, when)
    if pending is not None:
        _metrics_event(rj, batch, row, pending)
    row = replace(row, last_heartbeat=heartbeat, last_metrics=metrics, metrics_source=source)
    if RankState(row.state) == RankState.STARTING:
        row = rj.edge(row, RankEdge.FIRST_REPORT)
    live.row = row


def _progress(record: Record, phase: int) -> bool:
    """Whether ``record`` shows the rank moving on. A training rank's heartbeat that says it
    has not (no step, no optimizer step, its main thread in the same call since the last
    one: blocked in a collective, a lock, a read) is only alive: a rank hung in a
    collective beats on from its heartbeat thread. Before training, start-up (compiling
    ops, loading a checkpoint) blocks in one call for long: any record is progress."""
    return not (
        record.kind == RecordKind.HEARTBEAT
        and record.moved is False
        and phase == job_pb2.RANK_PHASE_TRAINING
    )


def _checkpoint_saved(
    rj: RankJournal, batch: EventBatch, row: RankRow, record: Record, when: float
) -> None:
    """One event per checkpoint, not one per rank: every rank of a DeepSpeed job saves its
    part and reports it; the first report is the event (the leader folds the nodes')."""
    details = {"tag": record.tag, "path": record.path}
    if record.step is not None:
        details["step"] = str(record.step)
    rj.emit(
        batch,
        row,
        _K.JOB_EVENT_KIND_CHECKPOINT_SAVED,
        f"checkpoint {record.tag or record.path} saved",
        details=details,
        when=when,
    )
    event = batch.events[-1]
    told = any(
        e.kind == event.kind and dict(e.details) == details for e in batch.events[:-1]
    ) or rj.journal.checkpoint_told(event)
    if told:
        batch.events.pop()


def _phase(rj: RankJournal, row: RankRow, phase: int, when: float, batch: EventBatch) -> RankRow:
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
    rj.emit(batch, row, _K.JOB_EVENT_KIND_RANK_PHASE, message, details=details, when=when)
    return replace(row, phase=phase, phase_since=when)


def _metrics_event(
    rj: RankJournal, batch: EventBatch, row: RankRow, metrics: job_pb2.RankMetrics
) -> None:
    when = metrics.time.ToNanoseconds() / 1e9 if metrics.HasField("time") else None
    rj.emit(batch, row, _K.JOB_EVENT_KIND_METRICS, "", metrics=metrics, when=when)
