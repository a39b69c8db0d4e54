"""The agent's journal: jobs, attempts, ranks, events, tail offsets and an audit trail.
(Over 400 lines: one connection's API, each table's reads and writes beside its schema.)

One SQLite file (``<data_dir>/journal.sqlite3``) in WAL mode, one connection, used from the
agent's event-loop thread; the API is synchronous and each call is a small transaction.
``transaction()`` groups calls (nested uses join the outer one): the supervisor appends a
batch of events and saves the offset it read them up to *together*, so a restart neither
loses nor repeats a record. Times are wall-clock seconds (floats).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantry.v1 import job_pb2
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

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

FILE_NAME = "journal.sqlite3"

_SCHEMA_V1 = """
CREATE TABLE jobs (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,                     -- serialized gantry.v1.JobSpec
    state INTEGER NOT NULL,                 -- gantry.v1.JobState
    reason TEXT NOT NULL DEFAULT '',
    leader TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    restarts_used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE attempts (
    job TEXT NOT NULL REFERENCES jobs(name) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    state INTEGER NOT NULL,                 -- gantry.v1.JobState
    reason TEXT NOT NULL DEFAULT '',
    started REAL,
    ended REAL,
    resumed_from TEXT NOT NULL DEFAULT '',
    master_port INTEGER NOT NULL DEFAULT 0,
    excluded_nodes TEXT NOT NULL DEFAULT '[]',  -- JSON list of node names
    PRIMARY KEY (job, number)
);
CREATE TABLE ranks (
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    local_rank INTEGER NOT NULL,
    node TEXT NOT NULL,
    gpu_indices TEXT NOT NULL DEFAULT '[]', -- JSON list
    pid INTEGER NOT NULL DEFAULT 0,         -- the rank wrapper's pid (= process group id)
    create_time REAL NOT NULL DEFAULT 0,    -- psutil create_time of that pid
    state INTEGER NOT NULL,                 -- gantry.v1.RankState
    exit_code INTEGER,                      -- NULL until known; -N: killed by signal N
    reason TEXT NOT NULL DEFAULT '',
    stdout_path TEXT NOT NULL,
    stderr_path TEXT NOT NULL,
    metrics_path TEXT NOT NULL,
    exit_path TEXT NOT NULL,
    started REAL,
    ended REAL,
    last_heartbeat REAL,
    last_metrics TEXT,                      -- gantry.v1.RankMetrics as JSON
    metrics_source TEXT NOT NULL DEFAULT '',-- '', 'file' or 'stdout'
    PRIMARY KEY (job, attempt, rank),
    FOREIGN KEY (job, attempt) REFERENCES attempts(job, number) ON DELETE CASCADE
);
CREATE INDEX ranks_node_state ON ranks(node, state);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    kind INTEGER NOT NULL,                  -- gantry.v1.JobEventKind
    time REAL NOT NULL,
    node TEXT NOT NULL DEFAULT '',
    rank INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}',     -- JSON object of strings
    metrics BLOB                            -- serialized gantry.v1.RankMetrics, METRICS only
);
CREATE INDEX events_job_seq ON events(job, seq);
CREATE TABLE offsets (
    path TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    time REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
"""

# Where each rank is on its way to training (gantry.v1.RankPhase) and since when.
_SCHEMA_V2 = """
ALTER TABLE ranks ADD COLUMN phase INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ranks ADD COLUMN phase_since REAL;
"""

# How far a job's leader has read each peer's events (the peer's own seq), written in the
# same transaction as its copies of them: a restarted leader neither loses nor repeats one.
_SCHEMA_V3 = """
CREATE TABLE peer_positions (
    job TEXT NOT NULL,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (job, node)
);
"""

# Index i upgrades the schema from version i to i + 1.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(_MIGRATIONS)


def _statements(script: str) -> Iterator[str]:
    # Not executescript(): it commits on its own, outside our transaction.
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        raise JournalError(f"incomplete SQL statement in the schema: {pending!r}")


class JournalError(RuntimeError):
    pass


@dataclass(frozen=True)
class JobRow:
    name: str
    spec: job_pb2.JobSpec
    state: int
    reason: str
    leader: str
    created: float
    restarts_used: int


@dataclass(frozen=True)
class AttemptRow:
    job: str
    number: int
    state: int
    reason: str = ""
    started: float | None = None
    ended: float | None = None
    resumed_from: str = ""
    master_port: int = 0
    excluded_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankRow:
    job: str
    attempt: int
    rank: int
    local_rank: int
    node: str
    state: int
    stdout_path: str
    stderr_path: str
    metrics_path: str
    exit_path: str
    gpu_indices: tuple[int, ...] = ()
    pid: int = 0
    create_time: float = 0.0
    exit_code: int | None = None
    reason: str = ""
    started: float | None = None
    ended: float | None = None
    last_heartbeat: float | None = None
    last_metrics: job_pb2.RankMetrics | None = field(default=None, compare=False)
    metrics_source: str = ""
    phase: int = 0  # gantry.v1.RankPhase
    phase_since: float | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job, self.attempt, self.rank)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    who: str
    what: str
    time: float
    details: dict[str, str]


_RANK_COLUMNS = (
    "job, attempt, rank, local_rank, node, gpu_indices, pid, create_time, state, exit_code, "
    "reason, stdout_path, stderr_path, metrics_path, exit_path, started, ended, "
    "last_heartbeat, last_metrics, metrics_source, phase, phase_since"
)
_EVENT_COLUMNS = "seq, job, attempt, kind, time, node, rank, message, details, metrics"
_ATTEMPT_COLUMNS = (
    "job, number, state, reason, started, ended, resumed_from, master_port, excluded_nodes"
)


def _ts(t: float | None, out: Timestamp) -> None:
    if t is not None:
        out.FromNanoseconds(int(t * 1e9))


def _metrics_json(m: job_pb2.RankMetrics | None) -> str | None:
    if m is None:
        return None
    return json_format.MessageToJson(m, indent=None, preserving_proto_field_name=True)


def _metrics_from_json(text: str | None) -> job_pb2.RankMetrics | None:
    if not text:
        return None
    m = job_pb2.RankMetrics()
    try:
        json_format.Parse(text, m)
    except json_format.ParseError:
        return None
    return m


class Journal:
    """The journal file and its single connection."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (see ``transaction``).
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._depth = 0
        self._db.execute("PRAGMA journal_mode=WAL")
        # In WAL mode NORMAL loses nothing when the agent dies, only on power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    @classmethod
    def open(cls, data_dir: Path | str) -> Journal:
        return cls(Path(data_dir) / FILE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        row = self._db.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path} has schema version {version}; this agent knows up to "
                f"{SCHEMA_VERSION} (was it written by a newer agent?)"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in _statements(_MIGRATIONS[target - 1]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={target}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Groups calls into one commit; a nested use joins the outer transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

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

    def job_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM jobs ORDER BY created, name")]

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
                f"INSERT OR IGNORE INTO attempts ({_ATTEMPT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attempt.job,
                    attempt.number,
                    attempt.state,
                    attempt.reason,
                    attempt.started,
                    attempt.ended,
                    attempt.resumed_from,
                    attempt.master_port,
                    json.dumps(list(attempt.excluded_nodes)),
                ),
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

    def attempts(self, job: str) -> list[AttemptRow]:
        rows = self._db.execute(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE job=? ORDER BY number", (job,)
        )
        return [
            AttemptRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])))
            for r in rows
        ]

    def get_attempt(self, job: str, number: int) -> AttemptRow | None:
        return next((a for a in self.attempts(job) if a.number == number), None)

    def latest_attempt(self, job: str) -> int | None:
        row = self._db.execute("SELECT MAX(number) FROM attempts WHERE job=?", (job,)).fetchone()
        return None if row[0] is None else int(row[0])

    # --- ranks ------------------------------------------------------------------------------

    def upsert_rank(self, rank: RankRow) -> None:
        with self.transaction():
            self._db.execute(
                f"INSERT OR REPLACE INTO ranks ({_RANK_COLUMNS}) "
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
                    _metrics_json(rank.last_metrics),
                    rank.metrics_source,
                    rank.phase,
                    rank.phase_since,
                ),
            )

    @staticmethod
    def _rank_row(r: tuple[Any, ...]) -> RankRow:
        return RankRow(
            job=r[0],
            attempt=r[1],
            rank=r[2],
            local_rank=r[3],
            node=r[4],
            gpu_indices=tuple(json.loads(r[5])),
            pid=r[6],
            create_time=r[7],
            state=r[8],
            exit_code=r[9],
            reason=r[10],
            stdout_path=r[11],
            stderr_path=r[12],
            metrics_path=r[13],
            exit_path=r[14],
            started=r[15],
            ended=r[16],
            last_heartbeat=r[17],
            last_metrics=_metrics_from_json(r[18]),
            metrics_source=r[19],
            phase=r[20],
            phase_since=r[21],
        )

    def get_rank(self, job: str, attempt: int, rank: int) -> RankRow | None:
        row = self._db.execute(
            f"SELECT {_RANK_COLUMNS} FROM ranks WHERE job=? AND attempt=? AND rank=?",
            (job, attempt, rank),
        ).fetchone()
        return None if row is None else self._rank_row(row)

    def ranks(self, job: str, attempt: int | None = None) -> list[RankRow]:
        """The job's ranks known here (one attempt's, or all attempts'), by attempt and rank."""
        if attempt is None:
            rows = self._db.execute(
                f"SELECT {_RANK_COLUMNS} FROM ranks WHERE job=? ORDER BY attempt, rank", (job,)
            )
        else:
            rows = self._db.execute(
                f"SELECT {_RANK_COLUMNS} FROM ranks WHERE job=? AND attempt=? ORDER BY rank",
                (job, attempt),
            )
        return [self._rank_row(r) for r in rows]

    def live_ranks(self, node: str | None = None, terminal: Sequence[int] = ()) -> list[RankRow]:
        """Ranks to re-adopt: not in a ``terminal`` state, or their exit code not yet known."""
        marks = ", ".join("?" for _ in terminal) or "NULL"
        query = (
            f"SELECT {_RANK_COLUMNS} FROM ranks "
            f"WHERE (state NOT IN ({marks}) OR (exit_code IS NULL AND pid > 0))"
        )
        params: list[object] = list(terminal)
        if node is not None:
            query += " AND node=?"
            params.append(node)
        rows = self._db.execute(query + " ORDER BY job, attempt, rank", params)
        return [self._rank_row(r) for r in rows]

    # --- events -----------------------------------------------------------------------------

    def append_event(self, event: job_pb2.JobEvent) -> int:
        """Stores ``event`` (its ``seq`` is ignored) and returns the new seq; sets it too."""
        when = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else time.time()
        metrics = event.metrics.SerializeToString() if event.HasField("metrics") else None
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO events (job, attempt, kind, time, node, rank, message, details, "
                "metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.job_name,
                    event.attempt,
                    event.kind,
                    when,
                    event.node,
                    event.rank,
                    event.message,
                    json.dumps(dict(event.details), sort_keys=True),
                    metrics,
                ),
            )
        seq = cur.lastrowid
        assert seq is not None
        event.seq = seq
        if not event.HasField("time"):
            _ts(when, event.time)
        return seq

    @staticmethod
    def _event(r: tuple[Any, ...]) -> job_pb2.JobEvent:
        event = job_pb2.JobEvent(
            seq=r[0],
            job_name=r[1],
            attempt=r[2],
            kind=r[3],
            node=r[5],
            rank=r[6],
            message=r[7],
        )
        _ts(r[4], event.time)
        event.details.update(json.loads(r[8]))
        if r[9] is not None:
            event.metrics.ParseFromString(r[9])
        return event

    def events_after(
        self,
        seq: int,
        job: str | None = None,
        limit: int | None = None,
        kinds: Sequence[int] = (),
        up_to: int | None = None,
    ) -> list[job_pb2.JobEvent]:
        """Events with a seq above ``seq`` (and at most ``up_to``), oldest first: of one job
        (None or "": all), of some ``kinds`` (empty: all), at most ``limit`` (None: all)."""
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq>?"
        params: list[object] = [seq]
        if up_to is not None:
            query += " AND seq<=?"
            params.append(up_to)
        if job:
            query += " AND job=?"
            params.append(job)
        if kinds:
            query += f" AND kind IN ({', '.join('?' for _ in kinds)})"
            params.extend(kinds)
        query += " ORDER BY seq"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        return [self._event(r) for r in self._db.execute(query, params)]

    def metrics_tail_start(self, seq: int, job: str | None, metrics_tail: int) -> int:
        """Where a replay after ``seq`` keeping only the last ``metrics_tail`` metric events
        starts them: the seq of the newest metric event it leaves out (``seq`` when it
        leaves none out)."""
        if not metrics_tail:
            return seq
        query = "SELECT seq FROM events WHERE kind=?"
        params: list[object] = [job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS]
        if job:
            query += " AND job=?"
            params.append(job)
        query += " ORDER BY seq DESC LIMIT 1 OFFSET ?"
        params.append(metrics_tail)
        row = self._db.execute(query, params).fetchone()
        return seq if row is None else max(seq, int(row[0]))

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])

    # --- offsets ----------------------------------------------------------------------------

    def set_offset(self, path: str | Path, offset: int) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO offsets (path, offset) VALUES (?, ?) "
                "ON CONFLICT(path) DO UPDATE SET offset=excluded.offset",
                (str(path), offset),
            )

    def get_offset(self, path: str | Path) -> int:
        row = self._db.execute("SELECT offset FROM offsets WHERE path=?", (str(path),)).fetchone()
        return 0 if row is None else int(row[0])

    # --- peer positions (a leader's) -------------------------------------------------------

    def set_peer_position(self, job: str, node: str, seq: int) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO peer_positions (job, node, seq) VALUES (?, ?, ?) "
                "ON CONFLICT(job, node) DO UPDATE SET seq=excluded.seq",
                (job, node, seq),
            )

    def peer_positions(self, job: str) -> dict[str, int]:
        rows = self._db.execute("SELECT node, seq FROM peer_positions WHERE job=?", (job,))
        return {node: int(seq) for node, seq in rows}

    # --- audit ------------------------------------------------------------------------------

    def audit(
        self, who: str, what: str, details: dict[str, str] | None = None, when: float | None = None
    ) -> int:
        with self.transaction():
            cur = self._db.execute(
                "INSERT INTO audit (who, what, time, details) VALUES (?, ?, ?, ?)",
                (who, what, time.time() if when is None else when, json.dumps(details or {})),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        rows = self._db.execute(
            "SELECT id, who, what, time, details FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [AuditEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    # --- protos -----------------------------------------------------------------------------

    def job_pb(self, name: str) -> job_pb2.Job | None:
        """The job as this node knows it: spec, state, attempts and the ranks run here."""
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
        _ts(row.created, job.created)
        ranks = self.ranks(name)
        for attempt in self.attempts(name):
            pb = job.attempts.add()
            pb.CopyFrom(attempt_to_pb(attempt))
            pb.ranks.extend(rank_to_pb(r) for r in ranks if r.attempt == attempt.number)
        return job


def attempt_to_pb(row: AttemptRow) -> job_pb2.Attempt:
    pb = job_pb2.Attempt(
        number=row.number,
        state=row.state,  # type: ignore[arg-type]
        reason=row.reason,
        resumed_from=row.resumed_from,
        master_port=row.master_port,
        excluded_nodes=row.excluded_nodes,
    )
    _ts(row.started, pb.started)
    _ts(row.ended, pb.ended)
    return pb


def rank_to_pb(row: RankRow) -> job_pb2.Rank:
    pb = job_pb2.Rank(
        rank=row.rank,
        local_rank=row.local_rank,
        node=row.node,
        pid=row.pid,
        state=row.state,  # type: ignore[arg-type]
        exit_code=row.exit_code or 0,
        reason=row.reason,
        gpu_indices=row.gpu_indices,
    )
    _ts(row.last_heartbeat, pb.last_heartbeat)
    pb.phase = row.phase  # type: ignore[assignment]
    _ts(row.phase_since, pb.phase_since)
    if row.last_metrics is not None:
        pb.metrics.CopyFrom(row.last_metrics)
    return pb
