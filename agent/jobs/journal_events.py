"""The journal's append-only side: events (numbered by seq), tail offsets, a leader's read
positions on its peers, and the audit trail.

A peer's event copied here is kept from running ahead of this node's clock
(``journal_clock``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal_clock import event_not_after
from agent.jobs.journal_db import JournalDb
from agent.jobs.journal_rows import EVENT_COLUMNS, AuditEntry, event_from_db, set_ts


class EventTables(JournalDb):
    """Events, offsets, peer positions and audit entries of the journal."""

    # --- events -----------------------------------------------------------------------------

    def append_event(self, event: job_pb2.JobEvent) -> int:
        """Stores ``event`` (its ``seq`` is ignored) and returns the new seq; sets it too."""
        now = time.time()
        event_not_after(event, now)
        when = event.time.ToNanoseconds() / 1e9 if event.HasField("time") else now
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
            set_ts(when, event.time)
        return seq

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
        query = f"SELECT {EVENT_COLUMNS} FROM events WHERE seq>?"
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
        return [event_from_db(r) for r in self._db.execute(query, params)]

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

    def checkpoint_told(self, event: job_pb2.JobEvent) -> bool:
        """A CHECKPOINT_SAVED event of the same checkpoint (its tag, else its path) and
        attempt as ``event`` is journaled here already."""
        key = "tag" if event.details.get("tag") else "path"
        row = self._db.execute(
            "SELECT 1 FROM events WHERE job=? AND kind=? AND attempt=? "
            "AND json_extract(details, ?)=? LIMIT 1",
            (
                event.job_name,
                job_pb2.JobEventKind.JOB_EVENT_KIND_CHECKPOINT_SAVED,
                event.attempt,
                f"$.{key}",
                event.details.get(key, ""),
            ),
        ).fetchone()
        return row is not None

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
