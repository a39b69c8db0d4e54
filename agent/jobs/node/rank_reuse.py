"""A rank's place taken by an earlier job of the same name.

A job resubmitted after it ended begins its attempts again at 1 on its leader, which
forgets the earlier job's records; the other nodes still hold the earlier job's rank rows
and folders under the same (job, attempt, rank) keys. A StartRanks for such a key is not a
second start of a live rank: the earlier rank ended. Its row goes and its folder is kept
beside the new one (``rank-R.earlier-TIME``), so its logs stay readable and the new rank
starts clean. A rank that has not ended keeps its place: a true double start is refused."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from pathlib import Path

from agent.jobs.journal import Journal
from agent.jobs.node.live_rank import LiveRank
from agent.jobs.node.rank_states import TERMINAL_RANK_STATES

__all__ = ["free_ended_place"]

Key = tuple[str, int, int]


def free_ended_place(
    journal: Journal,
    live: MutableMapping[Key, LiveRank],
    key: Key,
    rank_dir: Path,
    clock: float | None = None,
) -> bool:
    """True when ``key`` is free now (nothing there, or an ended rank moved aside); False
    when a rank that has not ended holds it."""
    row = journal.get_rank(*key)
    if row is None:
        return True
    watched = live.get(key)
    if int(row.state) not in TERMINAL_RANK_STATES:
        return False
    if watched is not None and watched.state not in TERMINAL_RANK_STATES:
        return False
    journal.delete_rank(*key)
    live.pop(key, None)
    if rank_dir.exists():
        stamp = int(time.time() if clock is None else clock)
        rank_dir.rename(rank_dir.with_name(f"{rank_dir.name}.earlier-{stamp}"))
    return True
