"""The journal's SQLite file and its one connection: open, upgrade, transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from agent.jobs.journal_schema import MIGRATIONS, SCHEMA_VERSION, JournalError, statements

__all__ = ["FILE_NAME", "JournalDb", "JournalWriteError"]

FILE_NAME = "journal.sqlite3"


class JournalWriteError(JournalError):
    """A transaction could not be written (a full disk): rolled back, nothing of it kept."""


class JournalDb:
    """The journal file and its single connection (the tables' API is in subclasses)."""

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
    def open(cls, data_dir: Path | str) -> Self:
        return cls(Path(data_dir) / FILE_NAME)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
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
                for statement in statements(MIGRATIONS[target - 1]):
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
        except sqlite3.Error as exc:
            self._depth = 0
            self._db.execute("ROLLBACK")
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise JournalWriteError(f"journal {self.path}: {exc}: nothing of it saved") from exc
            raise
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            # SQLite may leave the transaction open after a failed COMMIT (a full disk): end
            # it, or every later BEGIN fails even once there is space again.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalWriteError(f"journal {self.path}: {exc}: nothing of it saved") from exc
