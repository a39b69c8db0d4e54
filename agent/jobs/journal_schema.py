"""The journal's schema: one SQL script per version, applied in order to upgrade a file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "JournalError", "statements"]


class JournalError(RuntimeError):
    pass


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

# A leader's view of each attempt's ranks on every node: where they run (the nodes' answers
# to StartRanks) and what their events last said. The nodes' own rank tables write rank
# state; this is the leader's copy, saved with each attempt edge. Jobs a leader kept in
# job.pb files before version 4 are imported once when it recovers (agent.jobs.leader.store).
_SCHEMA_V4 = """
CREATE TABLE attempt_ranks (
    job TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ranks BLOB NOT NULL,                    -- serialized gantry.v1.Attempt: its ranks only
    PRIMARY KEY (job, attempt),
    FOREIGN KEY (job, attempt) REFERENCES attempts(job, number) ON DELETE CASCADE
);
"""

# A job's events of one kind without a scan of all its events: whether a checkpoint was
# already told (one CHECKPOINT_SAVED per checkpoint, not one per rank).
_SCHEMA_V5 = """
CREATE INDEX events_job_kind ON events(job, kind, attempt);
"""

# Each attempt's hot spares: the nodes of the spec whose ranks ran on a spare.
_SCHEMA_V6 = """
ALTER TABLE attempts ADD COLUMN replaced_nodes TEXT NOT NULL DEFAULT '{}';  -- JSON node -> spare
"""

# Index i upgrades the schema from version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _SCHEMA_V3,
    _SCHEMA_V4,
    _SCHEMA_V5,
    _SCHEMA_V6,
)
SCHEMA_VERSION = len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """The statements of ``script`` one by one (not executescript(): it commits on its own,
    outside the caller's transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        raise JournalError(f"incomplete SQL statement in the schema: {pending!r}")
