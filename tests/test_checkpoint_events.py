"""Checkpoints on a node: one CHECKPOINT_SAVED per checkpoint (not one per rank), folded
again by the leader across nodes; and retention (keep_last) while the ranks run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import AttemptRow, Journal
from agent.jobs.node.checkpoint_retention import CheckpointRetention
from agent.jobs.node.supervisor import LocalSupervisor
from tests.test_local_supervisor import (
    all_done,
    events,
    fake_rank,
    journal,
    poll_until,
    spec,
    supervisors,
)

__all__ = ["events", "fake_rank", "journal", "supervisors"]

K = job_pb2.JobEventKind


async def test_four_ranks_saving_one_checkpoint_make_one_event(
    supervisors: Callable[..., LocalSupervisor],
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    job = spec(fake_rank, "steps=1", "checkpoint=step99", "linger=0.3")
    sup.start_ranks(job, 1, [0, 1, 2, 3], 4, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup))
    saved = [e for e in events if e.kind == K.JOB_EVENT_KIND_CHECKPOINT_SAVED]
    assert len(saved) == 1, saved
    assert saved[0].details["tag"] == "step99" and saved[0].message == "checkpoint step99 saved"
    told = sup.journal.events_after(0, "moe", kinds=[K.JOB_EVENT_KIND_CHECKPOINT_SAVED])
    assert len(told) == 1
    # The next attempt's save of the same tag is news again.
    sup.start_ranks(job, 2, [0, 1], 2, "127.0.0.1", 29501)
    await poll_until(sup, all_done(sup))
    saved = [e for e in events if e.kind == K.JOB_EVENT_KIND_CHECKPOINT_SAVED]
    assert [e.attempt for e in saved] == [1, 2]


def ds_save(root: Path, step: int) -> Path:
    folder = root / f"step{step}"
    folder.mkdir(parents=True)
    (folder / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"m")
    (root / "latest").write_text(folder.name)
    return folder


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_twelve_saves_with_keep_last_3_leave_3_and_what_is_in_use(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    journal = Journal.open(tmp_path / "agent")
    job = job_pb2.JobSpec(name="moe", checkpoint_dir=str(ckpt), keep_checkpoints=3)
    journal.upsert_job(job)
    # The running attempt resumed from the universal conversion of step 20.
    ds_save(ckpt, 20)
    universal = ckpt / "step20_universal"
    shutil.copytree(ckpt / "step20", universal)
    (universal / "zero").mkdir()
    journal.add_attempt(
        AttemptRow("moe", 1, job_pb2.JOB_STATE_RUNNING, resumed_from=str(universal))
    )
    clock = Clock()
    retention = CheckpointRetention(journal, clock, every_s=10)
    for step in range(30, 30 + 12 * 10, 10):
        ds_save(ckpt, step)
        clock.now += 10
        retention.keep("moe")
    left = sorted(
        (p.name for p in ckpt.iterdir() if p.is_dir()), key=lambda n: int(n[4:].split("_")[0])
    )
    assert left == ["step20_universal", "step120", "step130", "step140"]
    assert (ckpt / "latest").read_text() == "step140"
    journal.close()
