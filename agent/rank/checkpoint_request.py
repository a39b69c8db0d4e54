"""A checkpoint asked for from outside a rank (a preemption notice), the contract between the
agent and the code inside ranks.

The agent writes a request id (one line, e.g. ``preempt-3``) to the file named by
``$GANTRY_CHECKPOINT_REQUEST_FILE`` (beside the rank's metrics file). Gantry's trainer and the
shipped Hugging Face callback (``agent.hf_callback``) ask ``CheckpointRequests.pending()`` at
each step's end: one ``stat`` while nothing changed. When it returns an id they save a
checkpoint at once, report it (``report_checkpoint``) and call ``done(id)``; the agent sees the
checkpoint record of that step and the id in ``answered_file`` (the same path + ``.done``).
Runs inside ranks: standard library only, no agent service code.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["ENV", "CheckpointRequests", "answered_path"]

ENV = "GANTRY_CHECKPOINT_REQUEST_FILE"
MAX_ID_CHARS = 64


def answered_path(request_file: str | os.PathLike[str]) -> Path:
    """Where a rank writes the id of the last request it saved a checkpoint for."""
    return Path(f"{os.fspath(request_file)}.done")


class CheckpointRequests:
    """Polls the request file; ``path`` defaults to ``$GANTRY_CHECKPOINT_REQUEST_FILE``
    (unset: never a request)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        given = path if path is not None else os.environ.get(ENV)
        self.path = Path(given) if given else None
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) last read
        self._request: str | None = None
        self._answered: set[str] = set()

    def pending(self) -> str | None:
        """The id of a request not yet answered, else None."""
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        seen = (st.st_mtime_ns, st.st_size)
        if seen != self._seen:
            self._seen = seen
            try:
                text = self.path.read_text(errors="replace").strip()
            except OSError:
                return None
            self._request = text[:MAX_ID_CHARS] or None
        if self._request is None or self._request in self._answered:
            return None
        return self._request

    def done(self, request_id: str) -> None:
        """The checkpoint for ``request_id`` is saved (and reported)."""
        self._answered.add(request_id)
        if self.path is not None:
            # Unwritable: the checkpoint record in the metrics file says it too.
            with contextlib.suppress(OSError):
                answered_path(self.path).write_text(request_id + "\n")
