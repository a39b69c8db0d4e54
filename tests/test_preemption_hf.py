"""The shipped Hugging Face callback honours a checkpoint request (a preemption notice):
the Trainer saves at the step's end, the checkpoint is reported, then the request is
answered; with no request it saves only on its own schedule."""

from __future__ import annotations

from pathlib import Path

from agent.jobs.metrics_records import RecordKind
from agent.rank.checkpoint_request import CheckpointRequests, answered_path
from agent.rank.report import Reporter
from tests.test_hf_callback import parsed, tiny_trainer


def train_with_requests(tmp_path: Path, request: str | None, max_steps: int) -> list[int]:
    """Trains; returns the steps whose checkpoints were reported."""
    from agent.rank.hf_callback import GantryCallback

    request_file = tmp_path / "checkpoint_request"
    if request is not None:
        request_file.write_text(request + "\n")
    metrics = tmp_path / "metrics.jsonl"
    with Reporter(metrics, rank=0, heartbeat_s=60) as reporter:  # closed: no thread left
        trainer = tiny_trainer(tmp_path / "out", max_steps=max_steps, reporter=reporter)
        trainer.remove_callback(GantryCallback)
        trainer.add_callback(GantryCallback(reporter, CheckpointRequests(request_file)))
        trainer.train()
    return [r.step or 0 for r in parsed(metrics) if r.kind == RecordKind.CHECKPOINT]


def test_a_request_saves_at_the_steps_end_then_is_answered(tmp_path: Path) -> None:
    saved = train_with_requests(tmp_path, "preempt-node-b-1", max_steps=2)
    # At once, and once (the request is answered after the save); 2: the Trainer's last step.
    assert saved == [1, 2]
    assert (tmp_path / "out" / "checkpoint-1").is_dir()
    done = answered_path(tmp_path / "checkpoint_request")
    assert done.read_text().strip() == "preempt-node-b-1"


def test_no_request_no_extra_save(tmp_path: Path) -> None:
    assert train_with_requests(tmp_path, None, max_steps=2) == [2]  # the last step's only
    assert not answered_path(tmp_path / "checkpoint_request").exists()
