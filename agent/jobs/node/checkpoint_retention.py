"""A job's retention (``checkpoint: {keep_last: N}``, ``JobSpec.keep_checkpoints``) applied
on this node while its ranks run here: the oldest checkpoints past the count removed, never
the latest nor the one the running attempt resumed from (a universal one in use)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from agent.jobs.checkpoints import prunable
from agent.jobs.journal import Journal

__all__ = ["PRUNE_EVERY_S", "CheckpointRetention"]

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 10.0


class CheckpointRetention:
    """Prunes each job's checkpoint_dir every ``every_s`` at most (``clock``: monotonic)."""

    def __init__(
        self, journal: Journal, clock: Callable[[], float], every_s: float = PRUNE_EVERY_S
    ) -> None:
        self.journal = journal
        self.clock = clock
        self.every_s = every_s
        self._pruned: dict[str, float] = {}  # job -> when retention last looked

    def keep(self, job: str) -> list[Path]:
        """Removes what ``job``'s retention no longer keeps, if it is time; returns it."""
        now = self.clock()
        if now - self._pruned.get(job, -self.every_s) < self.every_s:
            return []
        self._pruned[job] = now
        row = self.journal.get_job(job)
        if row is None or not row.spec.keep_checkpoints or not row.spec.checkpoint_dir:
            return []
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
        return doomed
