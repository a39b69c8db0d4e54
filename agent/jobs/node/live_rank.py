"""What the node supervisor keeps in memory about a rank it watches, and one poll's changes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

from agent.jobs.journal import RankRow
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.rank_process import RankHandle
from agent.jobs.node.rank_states import RankState

__all__ = ["EventBatch", "Launch", "LiveRank", "file_size"]


@dataclass(frozen=True)
class Launch:
    """What a rank was started with: what its standby for the next attempt needs."""

    argv: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class LiveRank:
    """A rank the supervisor watches: its journal row and what only memory holds."""

    row: RankRow
    handle: RankHandle | None  # None: no process (gone while the agent was away)
    hang_timeout_s: float
    last_progress: float  # supervisor clock
    files: RankFiles
    exit_code: int | None = None  # the code, once known (``poll_exit``; readopt, no handle)
    hung_at: float | None = None
    stacks_asked: bool = True  # a process of the hung rank handles SIGUSR1 (was signalled)
    joining_told: bool = False  # its slow join was warned of (hangs.tell_slow_join)
    beats: bool = False  # it has sent a heartbeat (else its CPU time tells its progress)
    cpu_seen: tuple[float, float] | None = None  # (supervisor clock, its CPU seconds)
    stack_offset: int = 0
    stack_size: int = -1  # stderr's size at the last poll while the stacks are written
    stack_size_since: float = 0.0  # when stderr last grew (or was first looked at)
    stop_owned: bool = False  # stop_ranks is stopping it: poll leaves it alone
    stop_deadline: float | None = None  # a STOPPING rank re-adopted: SIGKILL at this time
    launch: Launch | None = None  # how it was started (None: re-adopted)
    reads_after_exit: int = 0  # reads since its exit was known (a bounded drain)

    @property
    def state(self) -> RankState:
        return RankState(self.row.state)

    def poll_exit(self) -> int | None:
        """The exit code once the rank has ended, else None; kept in ``exit_code``, so a
        read that follows knows the rank had ended before it (``read_progress``)."""
        if self.exit_code is None and self.handle is not None:
            self.exit_code = self.handle.poll()
        return self.exit_code


@dataclass
class EventBatch:
    """One rank's changes from one poll: journaled in one transaction, then announced."""

    events: list[job_pb2.JobEvent] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)


def file_size(path: str) -> int:
    """The file's size in bytes; 0 when it cannot be read."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
