"""A rank's files read once it has exited (``final``): the partial last line is a line, and
the reading is bounded, across polls, by the byte budget and ``MAX_READS_AFTER_EXIT``."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.node import rank_files
from agent.jobs.node.rank_progress import MAX_READS_AFTER_EXIT
from agent.jobs.node.supervisor import LocalSupervisor
from agent.jobs.node.tailer import read_lines
from tests import test_local_supervisor as local
from tests.test_local_supervisor import steps, wait_for
from tests.test_rank_tail_read import HF_RANK, hf_spec

# The fixtures shared with test_local_supervisor.
journal, events, supervisors = local.journal, local.events, local.supervisors


@pytest.mark.parametrize("split_cr", [False, True])
def test_final_read_takes_the_partial_last_line(tmp_path: Path, split_cr: bool) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"one\ntwo\r\n\xc3\xa9 no end")
    assert [line.text for line in read_lines(path, 0, split_cr=split_cr).lines] == ["one", "two"]
    chunk = read_lines(path, 0, split_cr=split_cr, final=True)
    assert [(line.offset, line.text) for line in chunk.lines] == [
        (0, "one"),
        (4, "two"),
        (9, "\xe9 no end"),
    ]
    assert chunk.offset == path.stat().st_size and not chunk.more
    assert read_lines(path, chunk.offset, split_cr=split_cr, final=True).lines == []


def test_final_read_of_a_bar_ending_in_a_lone_cr(tmp_path: Path) -> None:
    path = tmp_path / "err"
    path.write_bytes(b"\r 1%| | 3/300\r 1%| | 4/300\r")
    assert [line.text for line in read_lines(path, 0, split_cr=True).lines] == ["", " 1%| | 3/300"]
    chunk = read_lines(path, 0, split_cr=True, final=True)
    assert [line.text for line in chunk.lines] == ["", " 1%| | 3/300", " 1%| | 4/300"]
    assert chunk.offset == path.stat().st_size


def test_a_bounded_read_is_not_final_until_the_end(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(b"a\nbb\nccc")
    chunk = read_lines(path, 0, max_bytes=4, final=True)
    assert [line.text for line in chunk.lines] == ["a"] and chunk.more and chunk.offset == 2
    chunk = read_lines(path, 2, max_bytes=100, final=True)
    assert [line.text for line in chunk.lines] == ["bb", "ccc"] and chunk.offset == 8


async def poll_counting(sup: LocalSupervisor, limit: int = 400) -> int:
    polls = 0
    while sup.live_keys():
        assert polls < limit, "still watched"
        await sup.poll()
        polls += 1
    return polls


async def test_a_stopped_rank_left_unread_is_drained_by_the_polls(
    supervisors: Callable[..., LocalSupervisor],
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "hf_rank.py"
    script.write_text(HF_RANK)
    ready = tmp_path / "ready"
    sup = supervisors()
    sup.start_ranks(hf_spec(script, ready, "steps=150"), 1, [0], 1, "127.0.0.1", 29500)
    await wait_for(ready.exists)
    # Each read takes about one dict; 15 of them and the start-up line need 16 reads.
    monkeypatch.setattr(rank_files, "MAX_READ_BYTES_PER_FILE", 100)
    await sup.stop_ranks("moe", 1, grace_s=2.0)
    [rank] = sup.ranks("moe")
    assert rank.state == job_pb2.RANK_STATE_KILLED and sup.live_keys()  # not read to the end
    assert await poll_counting(sup) < MAX_READS_AFTER_EXIT
    [rank] = sup.ranks("moe")
    assert rank.metrics.step == 150 and steps(events) == list(range(10, 151, 10))


# Leaves a writer behind in a session of its own (no stop reaches it) that never stops.
ORPHAN = r"""
import os, subprocess, sys, time
code = "import sys, time\nwhile True:\n    print('x' * 50, flush=True)\n    time.sleep(0.001)\n"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(0.3)
"""


async def test_a_writer_left_behind_does_not_keep_an_exited_rank_watched(
    supervisors: Callable[..., LocalSupervisor],
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    pid_file = tmp_path / "orphan.pid"
    monkeypatch.setattr(rank_files, "MAX_READ_BYTES_PER_FILE", 64)
    sup = supervisors()
    job = job_pb2.JobSpec(
        name="moe", command=[sys.executable, str(script), str(pid_file)], working_dir=str(tmp_path)
    )
    sup.start_ranks(job, 1, [0], 1, "127.0.0.1", 29500)
    try:
        await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "")
        [started] = sup.ranks("moe")
        await wait_for(lambda: bool(sup.live_keys()) and _exited(started.pid))
        polls = await poll_counting(sup)
        assert polls <= MAX_READS_AFTER_EXIT + 1
        [rank] = sup.ranks("moe")
        assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_EXITED, 0)
    finally:
        if pid_file.exists() and pid_file.read_text():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _exited(pid: int) -> bool:
    """The wrapper is a zombie (ours, not yet reaped) or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
