"""The trainer's --logging_dir gets TensorBoard event files, as HF Trainer's does: rank 0
only, one run folder per attempt, the scalars at the optimizer step; without the
tensorboard package one line says logging is off and training goes on.

The runs are real DeepSpeed ranks on the CPU (tiny-dense, ZeRO-1, fp32, a few steps): about
10 s each on idle cores. Event files are read back with tensorboard's EventAccumulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
    EventAccumulator,
)

from agent.rank import demo_data
from agent.rank.checkpoint_request import ENV as REQUEST_ENV
from agent.rank.checkpoint_request import answered_path
from agent.rank.ds_config import BF16_ENV
from agent.rank.tensorboard_log import (
    ATTEMPT_ENV,
    BoardLog,
    board_scalars,
    free_run_dir,
    open_board,
    run_name,
)
from tests.deepspeed_env import ROOT, free_port
from tests.ds_runs import LOADED_TIMEOUT_S, RUN_TIMEOUT_S, train_two_ranks

STEP_TAGS = {
    "train/loss",
    "train/learning_rate",
    "train/grad_norm",
    "train/epoch",
    "train/tokens_per_s",
    "train/samples_per_s",
    "time/step_s",
    "time/forward_s",
    "time/backward_s",
    "time/optimizer_s",
    "time/comm_s",
}
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "steps_per_print": 1,
    "zero_optimization": {"stage": 1},
}


# --- pure rules -------------------------------------------------------------------------


def test_scalars_use_hf_tags_and_job_rates() -> None:
    record = {
        "epoch": 0.5,
        "loss": 2.5,
        "grad_norm": None,  # not measured: left out
        "lr": 1e-3,
        "loss_scale": None,
        "step_time_s": 0.2,
        "samples_per_s": 10.0,
        "tokens_per_s": 300.0,
        "collective_s": {"all_gather": 0.01, "reduce_scatter": 0.02},
        "collective_total_s": 0.03,
        "forward_s": 0.05,
        "backward_s": 0.1,
        "optimizer_step_s": 0.04,
        "memory_bytes": 123,
    }
    assert board_scalars(record, world_size=4) == {
        "train/loss": 2.5,
        "train/learning_rate": 1e-3,
        "train/epoch": 0.5,
        "train/tokens_per_s": 1200.0,
        "train/samples_per_s": 40.0,
        "time/step_s": 0.2,
        "time/forward_s": 0.05,
        "time/backward_s": 0.1,
        "time/optimizer_s": 0.04,
        "time/comm_s": 0.03,
        "time/comm/all_gather_s": 0.01,
        "time/comm/reduce_scatter_s": 0.02,
    }


def test_each_attempt_gets_its_own_run_folder(tmp_path: Path) -> None:
    at = datetime(2026, 12, 6, 6, 30, 5)
    assert run_name("2", at, "node-a") == "2026-12-06_06-30-05_attempt2"
    assert run_name(None, at, "node-a") == "2026-12-06_06-30-05_node-a"
    assert free_run_dir(tmp_path, "run") == tmp_path / "run"
    (tmp_path / "run").mkdir()
    (tmp_path / "run-2").mkdir()
    assert free_run_dir(tmp_path, "run") == tmp_path / "run-3"


def test_two_boards_of_one_second_do_not_share_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ATTEMPT_ENV, "1")
    at = datetime(2026, 12, 6, 6, 30, 5)
    lines: list[str] = []
    boards = [open_board(tmp_path, 1, lines.append, now=at) for _ in range(2)]
    dirs = []
    for board in boards:
        assert board is not None
        board.step(1, {"loss": 1.0})
        board.close()
        dirs.append(board.run_dir)
    assert dirs == [
        tmp_path / "2026-12-06_06-30-05_attempt1",
        tmp_path / "2026-12-06_06-30-05_attempt1-2",
    ]
    assert lines == [f"TensorBoard events in {d}" for d in dirs]


def test_a_step_reaches_the_file_within_seconds_before_close(tmp_path: Path) -> None:
    board = open_board(tmp_path, 1, lambda line: None)
    assert board is not None
    try:
        board.step(7, {"loss": 3.0})
        deadline = time.monotonic() + 60  # FLUSH_S is 5: a bound for a loaded machine
        while "train/loss" not in scalars(board.run_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert scalars(board.run_dir)["train/loss"] == [(7, 3.0)]
    finally:
        board.close()


class FullDisk:
    def __init__(self) -> None:
        self.closed = False

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.closed = True


def test_a_failing_writer_says_so_once_and_steps_go_on(tmp_path: Path) -> None:
    lines: list[str] = []
    writer = FullDisk()
    board = BoardLog(writer, tmp_path, 1, lines.append)
    for step in (1, 2, 3):
        board.step(step, {"loss": 1.0})
    board.close()
    assert lines == ["TensorBoard logging stopped at step 1: [Errno 28] No space left on device"]
    assert writer.closed


def test_without_tensorboard_one_line_says_logging_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    lines: list[str] = []
    assert open_board(tmp_path, 1, lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("TensorBoard logging is off: ")
    assert list(tmp_path.iterdir()) == []


# --- real runs --------------------------------------------------------------------------


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tb-data")
    demo_data.write_demo(base, n_train=40, n_heldout=2, seed=1)
    (base / "ds.json").write_text(json.dumps(DS_CONFIG))
    return base


def trainer_args(data: Path, out: Path, logs: Path, max_steps: int) -> list[str]:
    return [
        "--deepspeed_config", str(data / "ds.json"),
        "--model_name_or_path", "tiny-dense",
        "--data", str(data / "train.jsonl"),
        "--output_dir", str(out),
        "--logging_dir", str(logs),
        "--max_steps", str(max_steps),
        "--max_length", "64",
        "--save_steps", "100",
    ]  # fmt: skip


def train_one_rank(env: Mapping[str, str], args: list[str]) -> str:
    """`python -m agent.train` as one rank; its output. It must exit 0."""
    rank_env = {
        **env,
        BF16_ENV: "0",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent.train", *args],
        env=rank_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_trainer_writes_scalars_per_step_and_a_run_per_attempt(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    out = train_one_rank(
        {**deepspeed_warm, ATTEMPT_ENV: "2"}, trainer_args(data, tmp_path / "a", logs, 4)
    )
    (first,) = [p for p in logs.iterdir() if p.is_dir()]
    assert first.name.endswith("_attempt2")
    assert f"gantry: TensorBoard events in {first}" in out
    got = scalars(first)
    assert set(got) >= STEP_TAGS, sorted(got)
    for tag in STEP_TAGS:
        assert [step for step, _ in got[tag]] == [1, 2, 3, 4], tag
    lrs = [v for _, v in got["train/learning_rate"]]
    assert lrs[-1] == 0.0 and lrs[0] > 0  # linear decay to 0 at the last step
    assert all(v > 0 for _, v in got["train/loss"] + got["train/tokens_per_s"])
    assert (logs / "ds_config.rank0.json").is_file()  # what the folder held before

    # The next attempt, on two ranks, into the same folder: a run of its own, rank 0's only.
    env = {**deepspeed_warm, BF16_ENV: "0", ATTEMPT_ENV: "3"}
    (tmp_path / "b").mkdir()
    train_two_ranks(env, tmp_path / "b", "b", trainer_args(data, tmp_path / "b", logs, 3))
    runs = sorted(p for p in logs.iterdir() if p.is_dir())
    assert runs[0] == first and runs[1].name.endswith("_attempt3") and len(runs) == 2
    assert len(list(runs[1].glob("events.out.tfevents.*"))) == 1
    assert [step for step, _ in scalars(runs[1])["train/loss"]] == [1, 2, 3]
    assert [step for step, _ in scalars(first)["train/loss"]] == [1, 2, 3, 4]


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_trainer_without_tensorboard_says_so_and_trains(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()  # a `tensorboard` that is not there, ahead of the installed one
    (hide / "tensorboard.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorboard'\", name='tensorboard')\n"
    )
    logs = tmp_path / "logs"
    env = {**deepspeed_warm, "PYTHONPATH": str(hide)}
    out = train_one_rank(env, trainer_args(data, tmp_path / "out", logs, 2))
    off = [line for line in out.splitlines() if "TensorBoard" in line]
    assert off == [
        "gantry: TensorBoard logging is off: the tensorboard package is not installed "
        "(pip install tensorboard)"
    ]
    assert (tmp_path / "out" / "final" / "config.json").is_file()
    assert [p.name for p in logs.iterdir()] == ["ds_config.rank0.json"]


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_trainer_saves_at_once_when_asked_and_answers(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:
    """A checkpoint request (a preemption notice) is honoured at the next step's end,
    whatever --save_steps says, and answered after the checkpoint is written."""
    request = tmp_path / "checkpoint_request"
    request.write_text("preempt-7\n")
    out_dir = tmp_path / "out"
    train_one_rank(
        {**deepspeed_warm, REQUEST_ENV: str(request)},
        trainer_args(data, out_dir, tmp_path / "logs", 3),
    )
    saved = sorted(p.name for p in (out_dir / "checkpoints").glob("step*"))
    assert saved == ["step1", "step3"]  # asked at step 1; the last step as always
    assert answered_path(request).read_text().strip() == "preempt-7"
