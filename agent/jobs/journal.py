"""The agent's journal: jobs, attempts, ranks, events, tail offsets and an audit trail.

One SQLite file (``<data_dir>/journal.sqlite3``) in WAL mode, one connection, used from the
agent's event-loop thread; the API is synchronous and each call is a small transaction.
``transaction()`` groups calls (nested uses join the outer one): the supervisor appends a
batch of events and saves the offset it read them up to *together*, so a restart neither
loses nor repeats a record. Times are wall-clock seconds (floats).

Here: the job, attempt and rank tables and the job's proto; the schema is in
``journal_schema``, the connection in ``journal_db``, the event side in ``journal_events``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from gantry.v1 import job_pb2
from gantry.v1.parallelism import coordinates

from agent.jobs.journal_clock import ranks_not_after
from agent.jobs.journal_db import FILE_NAME
from agent.jobs.journal_events import EventTables
from agent.jobs.journal_rows import (
    ATTEMPT_COLUMNS,
    RANK_COLUMNS,
    AttemptRow,
    AuditEntry,
    JobRow,
    RankRow,
    attempt_from_db,
    attempt_to_pb,
    metrics_json,
    rank_from_db,
    rank_to_pb,
    set_ts,
)
from agent.jobs.journal_schema import SCHEMA_VERSION, JournalError

__all__ = [
    "FILE_NAME",
    "SCHEMA_VERSION",
    "AttemptRow",
    "AuditEntry",
    "JobRow",
    "Journal",
    "JournalError",
    "RankRow",
    "attempt_to_pb",
    "rank_to_pb",
]


class Journal(EventTables):
    """The journal file and its single connection."""

    # --- jobs -------------------------------------------------------------------------------

    def upsert_job(
        self,
        spec: job_pb2.JobSpec,
        state: int = job_pb2.JOB_STATE_PENDING,
        reason: str = "",
        leader: str = "",
        created: float | None = None,
        restarts_used: int = 0,
    ) -> None:
        """Inserts the job, or replaces its spec, state, reason, leader and restarts_used."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO jobs (name, spec, state, reason, leader, created, restarts_used) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "spec=excluded.spec, state=excluded.state, reason=excluded.reason, "
                "leader=excluded.leader, restarts_used=excluded.restarts_used",
                (
                    spec.name,
                    spec.SerializeToString(),
                    state,
                    reason,
                    leader,
                    time.time() if created is None else created,
                    restarts_used,
                ),
            )

    def ensure_job(
        self,
        spec: job_pb2.JobSpec,
        state: int = job_pb2.JOB_STATE_STARTING,
        leader: str = "",
        created: float | None = None,
    ) -> bool:
        """Inserts the job unless it exists (then only its spec is refreshed); True if new."""
        with self.transaction():
            if self.get_job(spec.name) is not None:
                self._db.execute(
                    "UPDATE jobs SET spec=? WHERE name=?", (spec.SerializeToString(), spec.name)
                )
                return False
            self.upsert_job(spec, state, leader=leader, created=created)
            return True

    def set_job_state(self, name: str, state: int, reason: str = "") -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE jobs SET state=?, reason=? WHERE name=?", (state, reason, name)
            )

    def set_job_spec(self, spec: job_pb2.JobSpec) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE jobs SET spec=? WHERE name=?", (spec.SerializeToString(), spec.name)
            )

    def set_restarts_used(self, name: str, restarts_used: int) -> None:
        with self.transaction():
            self._db.execute("UPDATE jobs SET restarts_used=? WHERE name=?", (restarts_used, name))

    def get_job(self, name: str) -> JobRow | None:
        row = self._db.execute(
            "SELECT name, spec, state, reason, leader, created, restarts_used FROM jobs "
            "WHERE name=?",
            (name,),
        ).fetchone()
        if row is None:
            return None
        spec = job_pb2.JobSpec()
        spec.ParseFromString(row[1])
        return JobRow(row[0], spec, row[2], row[3], row[4], row[5], row[6])

    def job_names(self, leader: str | None = None) -> list[str]:
        """Every job's name (or those led by ``leader``), oldest first."""
        if leader is None:
            rows = self._db.execute("SELECT name FROM jobs ORDER BY created, name")
        else:
            rows = self._db.execute(
                "SELECT name FROM jobs WHERE leader=? ORDER BY created, name", (leader,)
            )
        return [r[0] for r in rows]

    def delete_job(self, name: str) -> None:
        """Removes the job with its attempts and ranks (events and offsets stay)."""
        with self.transaction():
            self._db.execute("DELETE FROM ranks WHERE job=?", (name,))
            self._db.execute("DELETE FROM attempts WHERE job=?", (name,))
            self._db.execute("DELETE FROM jobs WHERE name=?", (name,))

    # --- attempts ---------------------------------------------------------------------------

    def add_attempt(self, attempt: AttemptRow) -> bool:
        """Inserts the attempt unless it exists; True if it was new."""
        with self.transaction():
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO attempts ({ATTEMPT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _attempt_values(attempt),
            )
            return cur.rowcount > 0

    def set_attempt_state(
        self, job: str, number: int, state: int, reason: str = "", ended: float | None = None
    ) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE attempts SET state=?, reason=?, ended=COALESCE(?, ended) "
                "WHERE job=? AND number=?",
                (state, reason, ended, job, number),
            )

    def save_attempt(self, attempt: AttemptRow) -> None:
        """Inserts the attempt or overwrites every field of it (its ranks stay)."""
        with self.transaction():
            self._db.execute(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(job, number) DO UPDATE SET state=excluded.state, "
                "reason=excluded.reason, started=excluded.started, ended=excluded.ended, "
                "resumed_from=excluded.resumed_from, master_port=excluded.master_port, "
                "excluded_nodes=excluded.excluded_nodes, replaced_nodes=excluded.replaced_nodes",
                _attempt_values(attempt),
            )

    def set_attempt_resumed_from(self, job: str, number: int, resumed_from: str) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE attempts SET resumed_from=? WHERE job=? AND number=?",
                (resumed_from, job, number),
            )

    def attempts(self, job: str) -> list[AttemptRow]:
        rows = self._db.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job=? ORDER BY number", (job,)
        )
        return [attempt_from_db(r) for r in rows]

    def get_attempt(self, job: str, number: int) -> AttemptRow | None:
        return next((a for a in self.attempts(job) if a.number == number), None)

    def latest_attempt(self, job: str) -> int | None:
        row = self._db.execute("SELECT MAX(number) FROM attempts WHERE job=?", (job,)).fetchone()
        return None if row[0] is None else int(row[0])

    # --- ranks ------------------------------------------------------------------------------

    def upsert_rank(self, rank: RankRow) -> None:
        with self.transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO ranks ({RANK_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rank.job,
                    rank.attempt,
                    rank.rank,
                    rank.local_rank,
                    rank.node,
                    json.dumps(list(rank.gpu_indices)),
                    rank.pid,
                    rank.create_time,
                    rank.state,
                    rank.exit_code,
                    rank.reason,
                    rank.stdout_path,
                    rank.stderr_path,
                    rank.metrics_path,
                    rank.exit_path,
                    rank.started,
                    rank.ended,
                    rank.last_heartbeat,
                    metrics_json(rank.last_metrics),
                    rank.metrics_source,
                    rank.phase,
                    rank.phase_since,
                ),
            )

    def delete_rank(self, job: str, attempt: int, rank: int) -> None:
        """Removes one rank's row (agent.jobs.node.rank_reuse: an earlier job's)."""
        with self.transaction():
            self._db.execute(
                "DELETE FROM ranks WHERE job=? AND attempt=? AND rank=?", (job, attempt, rank)
            )

    def get_rank(self, job: str, attempt: int, rank: int) -> RankRow | None:
        row = self._db.execute(
            f"SELECT {RANK_COLUMNS} FROM ranks WHERE job=? AND attempt=? AND rank=?",
            (job, attempt, rank),
        ).fetchone()
        return None if row is None else rank_from_db(row)

    def ranks(self, job: str, attempt: int | None = None) -> list[RankRow]:
        """The job's ranks known here (one attempt's, or all attempts'), by attempt and rank."""
        if attempt is None:
            rows = self._db.execute(
                f"SELECT {RANK_COLUMNS} FROM ranks WHERE job=? ORDER BY attempt, rank", (job,)
            )
        else:
            rows = self._db.execute(
                f"SELECT {RANK_COLUMNS} FROM ranks WHERE job=? AND attempt=? ORDER BY rank",
                (job, attempt),
            )
        return [rank_from_db(r) for r in rows]

    def live_ranks(self, node: str | None = None, terminal: Sequence[int] = ()) -> list[RankRow]:
        """Ranks to re-adopt: not in a ``terminal`` state, or their exit code not yet known."""
        marks = ", ".join("?" for _ in terminal) or "NULL"
        query = (
            f"SELECT {RANK_COLUMNS} FROM ranks "
            f"WHERE (state NOT IN ({marks}) OR (exit_code IS NULL AND pid > 0))"
        )
        params: list[object] = list(terminal)
        if node is not None:
            query += " AND node=?"
            params.append(node)
        rows = self._db.execute(query + " ORDER BY job, attempt, rank", params)
        return [rank_from_db(r) for r in rows]

    # --- a leader's view of its attempts' ranks ---------------------------------------------

    def set_attempt_ranks(self, job: str, number: int, ranks: Sequence[job_pb2.Rank]) -> None:
        """The leader's view of the attempt's ranks on every node (replacing the last); a
        peer's time ahead of this node's clock is kept to it (``journal_clock``)."""
        ranks = ranks_not_after(ranks, time.time())
        blob = job_pb2.Attempt(ranks=ranks).SerializeToString()
        with self.transaction():
            self._db.execute(
                "INSERT INTO attempt_ranks (job, attempt, ranks) VALUES (?, ?, ?) "
                "ON CONFLICT(job, attempt) DO UPDATE SET ranks=excluded.ranks",
                (job, number, blob),
            )

    def attempt_ranks(self, job: str) -> dict[int, list[job_pb2.Rank]]:
        """The leader's view of the ranks of each attempt of ``job`` it leads, by attempt."""
        rows = self._db.execute("SELECT attempt, ranks FROM attempt_ranks WHERE job=?", (job,))
        return {int(n): list(job_pb2.Attempt.FromString(blob).ranks) for n, blob in rows}

    # --- protos -----------------------------------------------------------------------------

    def job_pb(self, name: str) -> job_pb2.Job | None:
        """The job as this node knows it: spec, state, attempts and their ranks (every
        node's as its leader saw them, on the leader; else the ranks run here)."""
        row = self.get_job(name)
        if row is None:
            return None
        job = job_pb2.Job(
            spec=row.spec,
            state=row.state,  # type: ignore[arg-type]
            reason=row.reason,
            leader=row.leader,
            restarts_used=row.restarts_used,
        )
        set_ts(row.created, job.created)
        ranks = self.ranks(name)
        led = self.attempt_ranks(name)
        for attempt in self.attempts(name):
            pb = job.attempts.add()
            pb.CopyFrom(attempt_to_pb(attempt))
            if attempt.number in led:
                pb.ranks.extend(led[attempt.number])
            else:
                pb.ranks.extend(rank_to_pb(r) for r in ranks if r.attempt == attempt.number)
        _place_ranks(job)
        return job


def _place_ranks(job: job_pb2.Job) -> None:
    """Each rank's (data, tensor, expert) coordinates, for a job with tensor or expert
    parallelism: they follow from its rank number and the spec."""
    sizes = job.spec.parallelism
    if (sizes.tensor or 1) == 1 and (sizes.expert or 1) == 1:
        return
    for attempt in job.attempts:
        for rank in attempt.ranks:
            at = coordinates(rank.rank, sizes.tensor, sizes.expert)
            rank.coordinates.data, rank.coordinates.tensor = at.data, at.tensor
            rank.coordinates.expert = at.expert


def _attempt_values(a: AttemptRow) -> tuple[object, ...]:
    excluded = json.dumps(list(a.excluded_nodes))
    return (
        a.job,
        a.number,
        a.state,
        a.reason,
        a.started,
        a.ended,
        a.resumed_from,
        a.master_port,
        excluded,
        json.dumps(dict(a.replaced_nodes)),
    )
