"""Which edge and event a rank's exit is, without processes: the rule ``rank_exits`` holds."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal, RankRow
from agent.jobs.node.live_rank import EventBatch, LiveRank
from agent.jobs.node.rank_exits import KILLED_EVENT_KIND, settle_exit
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.rank_journal import RankJournal
from agent.jobs.node.rank_states import IllegalTransition, RankState

K = job_pb2.JobEventKind
WALL = 1_700_000_000.0


@pytest.fixture
def rj(tmp_path: Path) -> Iterator[RankJournal]:
    journal = Journal.open(tmp_path / "agent")
    yield RankJournal(journal, lambda: WALL, None)
    journal.close()


def ended_rank(tmp_path: Path, state: RankState, code: int) -> LiveRank:
    """A rank in ``state`` whose process is gone with ``code`` (no handle: nothing runs)."""
    paths = [str(tmp_path / name) for name in ("stdout.log", "stderr.log", "metrics.jsonl")]
    row = RankRow("moe", 1, 3, 0, "n1", int(state), paths[0], paths[1], paths[2], "x")
    files = RankFiles(paths[2], paths[0], paths[1])
    return LiveRank(row, None, 0.0, 0.0, files, exit_code=code)


def settle(rj: RankJournal, live: LiveRank) -> tuple[RankRow, list[job_pb2.JobEvent]]:
    batch = EventBatch()
    code = live.poll_exit()
    assert code is not None
    row = settle_exit(rj, live, live.row, code, batch)
    return row, batch.events


@pytest.mark.parametrize("code", [-signal.SIGKILL, -signal.SIGTERM, 143, 1])
def test_a_rank_that_did_not_exit_0_while_stopping_is_killed(
    rj: RankJournal, tmp_path: Path, code: int
) -> None:
    row, [event] = settle(rj, ended_rank(tmp_path, RankState.STOPPING, code))
    assert (row.state, row.exit_code, row.ended) == (job_pb2.RANK_STATE_KILLED, code, WALL)
    assert event.kind == KILLED_EVENT_KIND == K.JOB_EVENT_KIND_RANK_KILLED
    assert event.kind != K.JOB_EVENT_KIND_RANK_EXITED
    assert (event.rank, event.node, event.attempt) == (3, "n1", 1)
    assert dict(event.details) == {"exit_code": str(code), "state": "KILLED"}


def test_a_rank_that_exits_0_while_stopping_exited(rj: RankJournal, tmp_path: Path) -> None:
    row, [event] = settle(rj, ended_rank(tmp_path, RankState.STOPPING, 0))
    assert (row.state, row.exit_code) == (job_pb2.RANK_STATE_EXITED, 0)
    assert event.kind == K.JOB_EVENT_KIND_RANK_EXITED and event.details["state"] == "EXITED"


@pytest.mark.parametrize("state", [RankState.STARTING, RankState.RUNNING, RankState.HUNG])
def test_exit_0_outside_a_stop_exited(rj: RankJournal, tmp_path: Path, state: RankState) -> None:
    row, [event] = settle(rj, ended_rank(tmp_path, state, 0))
    assert (row.state, row.reason) == (job_pb2.RANK_STATE_EXITED, "")
    assert event.kind == K.JOB_EVENT_KIND_RANK_EXITED and event.message == "rank 3 exited"


def test_a_killed_running_rank_failed_with_its_stderr(rj: RankJournal, tmp_path: Path) -> None:
    """Killed, but not by a stop (the OOM killer, an operator's kill -9): a failure."""
    live = ended_rank(tmp_path, RankState.RUNNING, -signal.SIGKILL)
    Path(live.row.stderr_path).write_text("loading shard 3\n")
    row, [event] = settle(rj, live)
    assert (row.state, row.reason) == (job_pb2.RANK_STATE_FAILED, "killed by SIGKILL")
    assert event.kind == K.JOB_EVENT_KIND_RANK_FAILED
    assert event.details["state"] == "FAILED" and "loading shard 3" in event.details["last_lines"]


def test_an_ended_rank_cannot_end_again(rj: RankJournal, tmp_path: Path) -> None:
    with pytest.raises(IllegalTransition):
        settle(rj, ended_rank(tmp_path, RankState.KILLED, 0))
