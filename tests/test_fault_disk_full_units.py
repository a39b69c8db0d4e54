"""The rules behind the disk-full fault, without servers: a checkpoint appears whole or not at
all (``agent.rank.checkpoint_save``), a ``.saving`` folder is never a checkpoint
(``agent.jobs.checkpoints``), and a journal that cannot be written holds what it could not
take and writes it later (``agent.jobs.node.rank_journal``)."""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2

from agent.jobs import checkpoints
from agent.jobs.checkpoints import find, latest_checkpoint, list_checkpoints
from agent.jobs.journal import AttemptRow, Journal, RankRow
from agent.jobs.journal_db import JournalWriteError
from agent.jobs.node.live_rank import EventBatch
from agent.jobs.node.rank_journal import RankJournal
from agent.rank import checkpoint_save
from agent.rank.checkpoint_save import SaveFailed, save_atomically

WALL = 1_700_000_000.0


class FakeEngine:
    """What DeepSpeed's save_checkpoint writes (one rank, ZeRO-3), failing when told."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.calls: list[dict[str, Any]] = []

    def save_checkpoint(
        self, save_dir: str, tag: str, client_state: dict[str, Any], save_latest: bool = True
    ) -> None:
        self.calls.append({"tag": tag, "save_latest": save_latest})
        folder = Path(save_dir) / tag
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"m")
        if self.fail is not None:
            raise self.fail
        (folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"o" * 100)
        if save_latest:  # what DeepSpeed does: straight over the old file
            (Path(save_dir) / "latest").write_text(tag)


def test_a_save_cut_by_a_full_disk_leaves_the_last_checkpoint_latest(tmp_path: Path) -> None:
    engine = FakeEngine()
    save_atomically(engine, tmp_path, "step3", {"step": 3}, local_rank=0)
    assert (tmp_path / "latest").read_text() == "step3"
    assert engine.calls == [{"tag": "step3.saving", "save_latest": False}]
    engine.fail = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(SaveFailed) as failed:
        save_atomically(engine, tmp_path, "step6", {"step": 6}, local_rank=0)
    assert str(failed.value.code).startswith(
        f"gantry: checkpoint save failed: no space left on device in {tmp_path} (step6 not saved"
    )
    assert (tmp_path / "latest").read_text() == "step3"
    assert [f.tag for f in find(tmp_path)] == ["step3"]  # step6.saving is no checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "step3"
    assert [c.tag for c in list_checkpoints(str(tmp_path))] == ["step3"]
    # The next save clears what the failed one left, then publishes whole.
    engine.fail = None
    save_atomically(engine, tmp_path, "step6", {"step": 6}, local_rank=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step3", "step6"]
    assert (tmp_path / "latest").read_text() == "step6"


def test_a_save_that_fails_otherwise_names_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    engine.fail = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 7 vs 5")
    with pytest.raises(SaveFailed) as failed:
        save_atomically(engine, tmp_path, "step3", {}, local_rank=0)
    assert "checkpoint save failed in" in str(failed.value.code)
    assert "RuntimeError: [enforce fail" in str(failed.value.code)
    # torch says "unexpected pos" for a short write: a disk with nothing left is the cause.
    monkeypatch.setattr(checkpoint_save, "free_bytes", lambda path: 0)
    with pytest.raises(SaveFailed) as failed:
        save_atomically(engine, tmp_path, "step3", {}, local_rank=0)
    assert "no space left on device" in str(failed.value.code)


def test_ranks_other_than_the_local_first_neither_clear_nor_publish(tmp_path: Path) -> None:
    (tmp_path / "step9.saving").mkdir()
    save_atomically(FakeEngine(), tmp_path, "step3", {}, local_rank=1)
    assert (tmp_path / "step9.saving").is_dir() and not (tmp_path / "latest").exists()
    checkpoint_save.publish(tmp_path, "step3")  # the node's local rank 0
    checkpoint_save.publish(tmp_path, "step3")  # another node's, on the same file system
    assert (tmp_path / "latest").read_text() == "step3" and (tmp_path / "step3").is_dir()


def test_the_saving_suffix_is_the_same_on_both_sides() -> None:
    assert checkpoints.SAVING_SUFFIX == checkpoint_save.SAVING_SUFFIX


class FullOnce:
    """A journal whose next ``fails`` commits fail as a full disk does."""

    def __init__(self, journal: Journal, fails: int) -> None:
        self.journal, self.fails = journal, fails

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)

    def append_event(self, event: job_pb2.JobEvent) -> int:
        if self.fails:
            self.fails -= 1
            raise JournalWriteError("journal J: database or disk is full: nothing of it saved")
        return self.journal.append_event(event)


def test_a_journal_that_cannot_be_written_holds_the_events_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal.open(tmp_path)
    journal.ensure_job(job_pb2.JobSpec(name="moe"))
    journal.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_RUNNING))
    announced: list[int] = []
    rj = RankJournal(FullOnce(journal, 1), lambda: WALL, lambda e: announced.append(e.seq))  # type: ignore[arg-type]
    row = RankRow("moe", 1, 0, 0, "n1", 1, "o", "e", "m", "x")
    first, second = EventBatch(), EventBatch()
    rj.emit(first, row, job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS, "step 1")
    first.offsets["m"] = 10
    rj.emit(second, row, job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS, "step 2")
    second.offsets["m"] = 20
    with caplog.at_level(logging.WARNING):
        rj.commit(row, first)  # the disk is full
        assert journal.events_after(0) == [] and announced == []
        rj.commit(row, second)  # space again: both written, in order
    assert [e.message for e in journal.events_after(0)] == ["step 1", "step 2"]
    assert journal.get_offset("m") == 20 and len(announced) == 2
    assert "database or disk is full" in caplog.text and "2 held event(s) saved" in caplog.text
    journal.close()


def test_two_ranks_saving_the_tokenizer_at_once_leave_one_whole_folder(tmp_path: Path) -> None:
    from agent.rank.checkpoint_save import save_folder

    # Tensor parallel ranks of one data-parallel rank both save it: neither fails.
    def write(folder: Path, text: str) -> None:
        folder.mkdir()
        (folder / "tokenizer.json").write_text(text)

    save_folder(tmp_path, "tokenizer", lambda d: write(d, "a"))
    save_folder(tmp_path, "tokenizer", lambda d: write(d, "b"))  # finds it in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]
    assert (tmp_path / "tokenizer" / "tokenizer.json").read_text() == "a"


def _publish_rounds(ckpt_dir: str, rounds: int, barrier: Any) -> None:
    for i in range(rounds):
        barrier.wait()
        checkpoint_save.publish(Path(ckpt_dir), f"step{i}", wait_s=10)


def test_two_nodes_publishing_one_checkpoint_at_once_keep_it(tmp_path: Path) -> None:
    """The local rank 0s of two nodes on one shared file system publish each save together
    (found by a helper: the old check-then-rename lost the checkpoint 9 times in 300)."""
    import multiprocessing

    rounds = 120
    for i in range(rounds):
        saving = tmp_path / f"step{i}.saving"
        saving.mkdir()
        (saving / "mp_rank_00_model_states.pt").write_text(f"weights {i}")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    nodes = [
        context.Process(target=_publish_rounds, args=(str(tmp_path), rounds, barrier))
        for _ in range(2)
    ]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(60)
    assert [node.exitcode for node in nodes] == [0, 0]
    for i in range(rounds):
        kept = tmp_path / f"step{i}" / "mp_rank_00_model_states.pt"
        assert kept.read_text() == f"weights {i}", f"step{i} lost"
    assert (tmp_path / "latest").read_text() == f"step{rounds - 1}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
