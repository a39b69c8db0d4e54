"""The checkpoints this node asked its ranks for (a preemption notice): the request id
written to each rank's request file (``agent.rank.checkpoint_request``), and the answer
seen: the rank's checkpoint record after the request, and the id in its ``.done`` file.

A node writes the request for its own ranks, on its own notice or when the job's leader
asks (the leader's own node, on another node's notice); the answer of each rank is one
PREEMPTION_NOTICE event with ``answered`` in its details, which the leader counts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import RankRow
from agent.jobs.metrics_records import Record
from agent.jobs.node.launch import CHECKPOINT_REQUEST_FILE
from agent.jobs.node.live_rank import EventBatch, LiveRank
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_states import TERMINAL_RANK_STATES, RankState

__all__ = [
    "ANSWERED",
    "REQUEST",
    "CheckpointAsks",
    "announce",
    "ask_job",
    "notice_details",
    "request_file",
    "running",
]

Key = tuple[str, int, int]  # (job, attempt, rank)
REQUEST = "request"  # the details key holding the request id
ANSWERED = "answered"  # ... and the one marking a rank's answer
MAX_DONE_BYTES = 256


def request_file(row: RankRow) -> Path:
    """The rank's request file: beside its metrics file, as its launch named it."""
    return Path(row.metrics_path).with_name(CHECKPOINT_REQUEST_FILE)


def notice_details(source: str, request_id: str, deadline: float | None) -> dict[str, str]:
    """A node's PREEMPTION_NOTICE details: where the notice came from and what it asked."""
    details = {"source": source, REQUEST: request_id}
    if deadline is not None:
        details["deadline"] = f"{deadline:.3f}"
    return details


@dataclass
class _Asked:
    request_id: str
    checkpoint: Record | None = None  # the rank's last checkpoint record since the ask


class CheckpointAsks:
    """The open requests of this node's ranks."""

    def __init__(self) -> None:
        self._open: dict[Key, _Asked] = {}

    def ask(self, row: RankRow, request_id: str) -> bool:
        """Writes ``request_id`` to the rank's request file (atomically); False when it
        could not be written. Asking again for the same id changes nothing."""
        current = self._open.get(row.key)
        if current is not None and current.request_id == request_id:
            return True
        path = request_file(row)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(request_id + "\n")
            os.replace(tmp, path)
        except OSError:
            return False
        self._open[row.key] = _Asked(request_id)
        return True

    def asked(self, key: Key) -> str | None:
        """The open request of the rank, if any."""
        found = self._open.get(key)
        return found.request_id if found is not None else None

    def answered_id(self, row: RankRow) -> str | None:
        """The id the rank says it saved a checkpoint for (read before its records: the
        rank writes the record first, so a record read after this is never missed)."""
        if row.key not in self._open:
            return None
        done = request_file(row).with_name(CHECKPOINT_REQUEST_FILE + ".done")
        with contextlib.suppress(OSError), done.open("rb") as handle:
            return handle.read(MAX_DONE_BYTES).decode(errors="replace").strip() or None
        return None

    def settle(
        self,
        rj: RankJournal,
        batch: EventBatch,
        row: RankRow,
        checkpoints: list[Record],
        answered: str | None,
    ) -> None:
        """The checkpoint records just read; once the rank answered its request after one,
        its answer event goes into ``batch`` and the request is closed."""
        asked = self._open.get(row.key)
        if asked is None:
            return
        if checkpoints:
            asked.checkpoint = checkpoints[-1]
        if asked.checkpoint is None or answered != asked.request_id:
            return
        record = asked.checkpoint
        details = {REQUEST: asked.request_id, ANSWERED: "true", "tag": record.tag}
        details["path"] = record.path
        if record.step is not None:
            details["step"] = str(record.step)
        rj.emit(
            batch,
            row,
            job_pb2.JOB_EVENT_KIND_PREEMPTION_NOTICE,
            f"rank {row.rank}: checkpoint {record.tag or record.path} saved for {asked.request_id}",
            details=details,
        )
        del self._open[row.key]

    def forget(self, key: Key) -> None:
        self._open.pop(key, None)


def running(live: LiveRank) -> bool:
    """Neither ended nor being stopped: a rank that can still save a checkpoint."""
    return live.state not in TERMINAL_RANK_STATES and live.state != RankState.STOPPING


def ask_job(
    asks: CheckpointAsks, lives: Iterable[LiveRank], job: str, request_id: str, attempt: int = 0
) -> int:
    """Asks the job's running ranks (of ``attempt``; 0: any) for a checkpoint; how many."""
    asked = 0
    for live in list(lives):
        row = live.row
        if row.job == job and attempt in (0, row.attempt) and running(live):
            asked += asks.ask(row, request_id)
    return asked


def announce(
    rj: RankJournal,
    asks: CheckpointAsks,
    lives: Iterable[LiveRank],
    node: str,
    source: str,
    deadline: float | None,
) -> list[str]:
    """A node's preemption notice: every job's running ranks asked for a checkpoint, one
    PREEMPTION_NOTICE event per job (on its first rank here: the leader reads rank events);
    returns the jobs."""
    request_id = f"preempt-{node}-{int(rj.wall_clock())}"
    watched = sorted(lives, key=lambda x: x.row.key)
    firsts: dict[str, LiveRank] = {}
    for live in watched:
        if running(live):
            firsts.setdefault(live.row.job, live)
    for job in firsts:
        ask_job(asks, watched, job, request_id)
    return _tell(rj, firsts, node, source, request_id, deadline)


def _tell(
    rj: RankJournal,
    firsts: dict[str, LiveRank],
    node: str,
    source: str,
    request_id: str,
    deadline: float | None,
) -> list[str]:
    for live in firsts.values():
        batch = EventBatch()
        rj.emit(
            batch,
            live.row,
            job_pb2.JOB_EVENT_KIND_PREEMPTION_NOTICE,
            f"{node} is being preempted ({source}): checkpoint {request_id} requested",
            notice_details(source, request_id, deadline),
        )
        rj.commit(live.row, batch)
    return sorted(firsts)
