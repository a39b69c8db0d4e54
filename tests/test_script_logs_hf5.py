"""Reading a Hugging Face Trainer script's output, transformers 5: log dicts as strings,
tqdm bars redrawn around them, evaluation bars, from real runs.

Each fixture line is copied from the source named beside it (a public issue thread, a public
repository's file, or a run of the installed libraries on this machine); only runs of fill
characters in progress bars and very long paths were shortened.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.metrics_records import Record
from agent.jobs.node.script_logs import ScriptLogParser
from agent.jobs.node.tailer import read_lines
from tests.script_log_helpers import feed, losses, merged, metrics, phases

P = job_pb2.RankPhase

# --- Hugging Face Trainer, transformers 5 -----------------------------------------------------

# A real run on this machine: transformers 5.25 Trainer + DeepSpeed 0.19.8 ZeRO-2 on CPU,
# `--max_steps 20 --logging_steps 2 --save_steps 10`, rank 0's stdout and stderr files as
# written (/tmp/hf/r0.out, /tmp/hf/r0.err; the site-packages path shortened). Its stderr, one
# tqdm write per string: each log is "clear" (\r + spaces + \r), the dict on stdout, "redraw".
_WARN = (
    ".../site-packages/torch/distributed/c10d_logger.py:83: FutureWarning: "
    "`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
    "`torch.distributed.all_gather_single` instead.\n  return func(*args, **kwargs)\n"
)
_CLEAR = "\r" + " " * 46
_CLEAR2 = "\r" + " " * 47
HF5_STDERR = (
    "\r  0%|          | 0/20 [00:00<?, ?it/s]" + _WARN,
    "\r  5%|▌         | 1/20 [00:00<00:06,  2.81it/s]",
    _CLEAR,
    "\r",
    "\r 10%|█         | 2/20 [00:00<00:06,  2.81it/s]",
    "\r 15%|█▌        | 3/20 [00:00<00:02,  7.50it/s]",
    _CLEAR,
    "\r",
    "\r 20%|██        | 4/20 [00:00<00:02,  7.50it/s]",
    "\r 30%|███       | 6/20 [00:00<00:01, 13.75it/s]",
    _CLEAR,
    "\r",
    "\r 30%|███       | 6/20 [00:00<00:01, 13.75it/s]",
    "\r 40%|████      | 8/20 [00:00<00:00, 15.49it/s]",
    _CLEAR,
    "\r",
    "\r 40%|████      | 8/20 [00:00<00:00, 15.49it/s]",
    _CLEAR,
    "\r",
    "\r 50%|█████     | 10/20 [00:00<00:00, 15.49it/s]\n",
    "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A",
    "\rWriting model shards: 100%|██████████| 1/1 [00:00<00:00, 281.16it/s]\n" + _WARN,
    "\r 55%|█████▌    | 11/20 [00:00<00:00, 13.43it/s]",
    _CLEAR2,
    "\r",
    "\r 60%|██████    | 12/20 [00:00<00:00, 13.43it/s]",
    "\r 70%|███████   | 14/20 [00:01<00:00, 16.47it/s]",
    _CLEAR2,
    "\r",
    "\r 70%|███████   | 14/20 [00:01<00:00, 16.47it/s]",
    _CLEAR2,
    "\r",
    "\r 80%|████████  | 16/20 [00:01<00:00, 16.47it/s]",
    "\r 85%|████████▌ | 17/20 [00:01<00:00, 18.55it/s]",
    _CLEAR2,
    "\r",
    "\r 90%|█████████ | 18/20 [00:01<00:00, 18.55it/s]",
    "\r100%|██████████| 20/20 [00:01<00:00, 19.39it/s]",
    _CLEAR2,
    "\r",
    "\r100%|██████████| 20/20 [00:01<00:00, 19.39it/s]\n",
    "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A",
    "\rWriting model shards: 100%|██████████| 1/1 [00:00<00:00, 863.38it/s]\n",
    _CLEAR2,
    "\r",
    "\r100%|██████████| 20/20 [00:01<00:00, 19.39it/s]",
    "\r100%|██████████| 20/20 [00:01<00:00, 14.88it/s]\n",
)
# The same run's stdout: transformers 5 prints floats as strings (f"{v:.4g}").
HF5_STDOUT = (
    "{'loss': '4.112', 'grad_norm': '6.665', 'learning_rate': '4.75e-05', 'epoch': '0.04'}",
    "{'loss': '4.083', 'grad_norm': '6.348', 'learning_rate': '4.25e-05', 'epoch': '0.08'}",
    "{'loss': '4.042', 'grad_norm': '6.676', 'learning_rate': '3.75e-05', 'epoch': '0.12'}",
    "{'loss': '4.014', 'grad_norm': '6.808', 'learning_rate': '3.25e-05', 'epoch': '0.16'}",
    "{'loss': '3.973', 'grad_norm': '6.609', 'learning_rate': '2.75e-05', 'epoch': '0.2'}",
    "{'loss': '3.958', 'grad_norm': '6.496', 'learning_rate': '2.25e-05', 'epoch': '0.24'}",
    "{'loss': '3.927', 'grad_norm': '6.591', 'learning_rate': '1.75e-05', 'epoch': '0.28'}",
    "{'loss': '3.919', 'grad_norm': '6.669', 'learning_rate': '1.25e-05', 'epoch': '0.32'}",
    "{'loss': '3.911', 'grad_norm': '6.215', 'learning_rate': '7.5e-06', 'epoch': '0.36'}",
    "{'loss': '3.9', 'grad_norm': '6.399', 'learning_rate': '2.5e-06', 'epoch': '0.4'}",
    "{'train_runtime': '1.341', 'train_samples_per_second': '119.3', "
    "'train_steps_per_second': '14.91', 'train_loss': '3.984', 'epoch': '0.4'}",
)
HF5_LOSSES = [4.112, 4.083, 4.042, 4.014, 3.973, 3.958, 3.927, 3.919, 3.911, 3.9]
HF5_STEPS = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


def _hf5_writes() -> list[tuple[str, str]]:
    """The run's writes in the order they happened: each dict right after its clear."""
    writes: list[tuple[str, str]] = []
    dicts = iter(HF5_STDOUT)
    previous = ""
    for piece in HF5_STDERR:
        writes.append(("stderr", piece))
        if piece == "\r" and previous.startswith(_CLEAR[:10]):
            writes.append(("stdout", next(dicts) + "\n"))
        previous = piece
    assert next(dicts, None) is None
    return writes


class _Rank:
    """Two log files being written, polled like the supervisor does."""

    def __init__(self, tmp_path: Path, parser: ScriptLogParser) -> None:
        self.paths = {s: tmp_path / f"r0.{s[3:]}" for s in ("stdout", "stderr")}
        self.offsets = dict.fromkeys(self.paths, 0)
        self.parser = parser
        self.records: list[Record] = []

    def write(self, stream: str, text: str) -> None:
        with self.paths[stream].open("ab") as f:
            f.write(text.encode())

    def poll(self, now: float, order: Sequence[str] = ("stderr", "stdout")) -> None:
        for stream in order:
            chunk = read_lines(self.paths[stream], self.offsets[stream], split_cr=True)
            self.offsets[stream] = chunk.offset
            for line in chunk.lines:
                self.records += self.parser.feed(stream, line.text, now)
        self.records += self.parser.flush(now)


@pytest.mark.parametrize("order", [("stderr", "stdout"), ("stdout", "stderr")])
def test_hf5_dicts_take_the_steps_of_their_redraws(tmp_path: Path, order: Sequence[str]) -> None:
    rank = _Rank(tmp_path, ScriptLogParser(["--max_steps", "20", "--logging_steps", "2"]))
    for stream, text in _hf5_writes():
        rank.write(stream, text)
    rank.poll(0.0, order)
    rank.poll(10.0, order)
    assert losses(rank.records) == list(zip(HF5_STEPS, HF5_LOSSES, strict=True))
    step6 = merged(rank.records, 6)
    assert (step6.grad_norm, step6.learning_rate, step6.epoch) == (6.676, 3.75e-05, 0.12)
    assert step6.total_steps == 20
    assert step6.step_time_s == pytest.approx(1 / 13.75)  # from the bar: 13.75it/s
    end = metrics(rank.records)[-1]
    assert (end.step, end.samples_per_s, end.HasField("loss")) == (20, 119.3, False)
    assert all(r.source == "stdout" for r in rank.records if r.metrics and r.metrics.loss)
    assert phases(rank.records) == [P.RANK_PHASE_FIRST_STEP, P.RANK_PHASE_TRAINING]
    bar_steps = [m.step for m in metrics(rank.records) if m.HasField("step_time_s")]
    assert bar_steps == [1, 2, 3, 4, 6, 8, 10, 11, 12, 14, 16, 17, 18, 20]  # "Writing ..." not


@pytest.mark.parametrize("seed", range(12))
def test_hf5_interleaved_writes_and_polls(tmp_path: Path, seed: int) -> None:
    """Polls land anywhere between writes, files in either order: the steps stay exact."""
    rng = random.Random(seed)
    rank = _Rank(tmp_path, ScriptLogParser())
    now = 0.0
    for stream, text in _hf5_writes():
        rank.write(stream, text)
        now += 0.01
        if rng.random() < 0.4:
            rank.poll(now, rng.choice([("stderr", "stdout"), ("stdout", "stderr")]))
    rank.poll(now + 0.01)
    rank.poll(now + 5.0)
    assert losses(rank.records) == list(zip(HF5_STEPS, HF5_LOSSES, strict=True))


def test_hf5_slow_polls_fall_back_to_the_bar_and_stay_aligned(tmp_path: Path) -> None:
    """A dict whose redraw is not there after 2 s takes the bar's latest step; the late
    redraw is then skipped, so later dicts do not drift."""
    rank = _Rank(tmp_path, ScriptLogParser())
    now = 0.0
    for stream, text in _hf5_writes():
        rank.write(stream, text)
        now += 3.0
        rank.poll(now, ("stdout", "stderr"))
    rank.poll(now + 3.0)
    got = losses(rank.records)
    assert [loss for _, loss in got] == HF5_LOSSES
    steps = [step for step, _ in got]
    assert steps == sorted(steps)
    assert all(0 <= truth - step <= 2 for step, truth in zip(steps, HF5_STEPS, strict=True))


def test_lines_that_still_hold_carriage_returns() -> None:
    """Without split_cr a whole bar's life is one line: the draws are split here."""
    parser = ScriptLogParser()
    stderr = "".join(HF5_STDERR).split("\n")
    records = feed(parser, "stdout", HF5_STDOUT[:3])  # read first: they wait
    records += feed(parser, "stderr", stderr)
    assert losses(records) == list(zip(HF5_STEPS[:3], HF5_LOSSES[:3], strict=True))


# A second real run on this machine (transformers 5.25 Trainer alone, CPU, `--max_steps 12
# --logging_steps 2 --eval_strategy steps --eval_steps 4 --save_steps 6`): the evaluation's
# bar is drawn below the Trainer's ("\n" ... "\x1b[A"), and each dict logged during it clears
# and redraws both bars.
HF5_EVAL_STDERR = (
    "\r  0%|          | 0/12 [00:00<?, ?it/s]"
    "\r  8%|▊         | 1/12 [00:01<00:11,  1.04s/it]"
    "\r 17%|█▋        | 2/12 [00:02<00:10,  1.02s/it]"
    "\r                                              "
    "\r"
    "\r 17%|█▋        | 2/12 [00:02<00:10,  1.02s/it]"
    "\r 25%|██▌       | 3/12 [00:02<00:07,  1.13it/s]"
    "\r 33%|███▎      | 4/12 [00:03<00:07,  1.11it/s]"
    "\r                                              "
    "\r"
    "\r 33%|███▎      | 4/12 [00:03<00:07,  1.11it/s]\n"
    "\r  0%|          | 0/8 [00:00<?, ?it/s]\x1b[A\n"
    "\r 25%|██▌       | 2/8 [00:00<00:00,  7.61it/s]\x1b[A"
    "\r                                              "
    "\r\n"
    "\r                                             "
    "\r\x1b[A"
    "\r 33%|███▎      | 4/12 [00:04<00:07,  1.11it/s]\n"
    "\r100%|██████████| 8/8 [00:00<00:00,  7.61it/s]\x1b[A\n"
    "\r                                             \x1b[A"
    "\r 42%|████▏     | 5/12 [00:04<00:06,  1.02it/s]"
    "\r 50%|█████     | 6/12 [00:04<00:04,  1.43it/s]"
    "\r                                              "
    "\r"
    "\r 50%|█████     | 6/12 [00:04<00:04,  1.43it/s]\n"
    "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A"
    "\rWriting model shards: 100%|██████████| 1/1 [00:00<00:00, 34.95it/s]\n"
    "\r 58%|█████▊    | 7/12 [00:05<00:03,  1.59it/s]"
    "\r 67%|██████▋   | 8/12 [00:05<00:01,  2.07it/s]"
    "\r                                              "
    "\r"
    "\r 67%|██████▋   | 8/12 [00:05<00:01,  2.07it/s]\n"
    "\r  0%|          | 0/8 [00:00<?, ?it/s]\x1b[A\n"
    "\r 50%|█████     | 4/8 [00:00<00:00, 16.54it/s]\x1b[A\n"
    "\r 88%|████████▊ | 7/8 [00:00<00:00, 19.37it/s]\x1b[A"
    "\r                                              "
    "\r\n"
    "\r                                             "
    "\r\x1b[A"
    "\r 67%|██████▋   | 8/12 [00:06<00:01,  2.07it/s]\n"
    "\r100%|██████████| 8/8 [00:00<00:00, 19.37it/s]\x1b[A\n"
    "\r                                             \x1b[A"
    "\r 75%|███████▌  | 9/12 [00:06<00:01,  1.70it/s]"
    "\r                                              "
    "\r"
    "\r 83%|████████▎ | 10/12 [00:06<00:01,  1.70it/s]"
    "\r100%|██████████| 12/12 [00:06<00:00,  3.48it/s]"
    "\r                                               "
    "\r"
    "\r100%|██████████| 12/12 [00:06<00:00,  3.48it/s]\n"
    "\r  0%|          | 0/8 [00:00<?, ?it/s]\x1b[A\n"
    "\r 25%|██▌       | 2/8 [00:00<00:00, 17.06it/s]\x1b[A\n"
    "\r 50%|█████     | 4/8 [00:00<00:00, 14.22it/s]\x1b[A\n"
    "\r 75%|███████▌  | 6/8 [00:00<00:00, 15.87it/s]\x1b[A\n"
    "\r100%|██████████| 8/8 [00:00<00:00,  7.06it/s]\x1b[A"
    "\r                                               "
    "\r\n"
    "\r                                             "
    "\r\x1b[A"
    "\r100%|██████████| 12/12 [00:07<00:00,  3.48it/s]\n"
    "\r100%|██████████| 8/8 [00:00<00:00,  7.06it/s]\x1b[A\n"
    "\r                                             \x1b[A\n"
    "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A"
    "\rWriting model shards: 100%|██████████| 1/1 [00:00<00:00, 635.79it/s]\n"
    "\r                                               "
    "\r"
    "\r100%|██████████| 12/12 [00:07<00:00,  3.48it/s]"
    "\r100%|██████████| 12/12 [00:07<00:00,  1.56it/s]\n"
)
HF5_EVAL_STDOUT = (
    "{'loss': '4.259', 'grad_norm': '7.621', 'learning_rate': '4.583e-05', 'epoch': '0.04'}",
    "{'loss': '4.188', 'grad_norm': '8.333', 'learning_rate': '3.75e-05', 'epoch': '0.08'}",
    "{'eval_loss': '4.167', 'eval_runtime': '0.7496', "
    "'eval_samples_per_second': '85.37', 'eval_steps_per_second': '10.67', 'epoch': '0.08'}",
    "{'loss': '4.161', 'grad_norm': '8.342', 'learning_rate': '2.917e-05', 'epoch': '0.12'}",
    "{'loss': '4.136', 'grad_norm': '8.355', 'learning_rate': '2.083e-05', 'epoch': '0.16'}",
    "{'eval_loss': '4.103', 'eval_runtime': '0.4148', "
    "'eval_samples_per_second': '154.3', 'eval_steps_per_second': '19.29', 'epoch': '0.16'}",
    "{'loss': '4.082', 'grad_norm': '7.808', 'learning_rate': '1.25e-05', 'epoch': '0.2'}",
    "{'loss': '4.069', 'grad_norm': '8.459', 'learning_rate': '4.167e-06', 'epoch': '0.24'}",
    "{'eval_loss': '4.078', 'eval_runtime': '0.9476', "
    "'eval_samples_per_second': '67.54', 'eval_steps_per_second': '8.443', 'epoch': '0.24'}",
    "{'train_runtime': '7.685', 'train_samples_per_second': '12.49', "
    "'train_steps_per_second': '1.562', 'train_loss': '4.149', 'epoch': '0.24'}",
)
HF5_EVAL_LOSSES = [(2, 4.259), (4, 4.188), (6, 4.161), (8, 4.136), (10, 4.082), (12, 4.069)]


def _eval_writes() -> list[tuple[str, str]]:
    """The eval run's writes in order: each dict right after the clears of both bars."""
    writes: list[tuple[str, str]] = []
    start = 0
    dicts = iter(HF5_EVAL_STDOUT)
    for clear in re.finditer(r"\r {40,}\r(?:\n\r {40,}\r\x1b\[A)?", HF5_EVAL_STDERR):
        writes += [("stderr", HF5_EVAL_STDERR[start : clear.end()]), ("stdout", next(dicts) + "\n")]
        start = clear.end()
    assert next(dicts, None) is None
    return [*writes, ("stderr", HF5_EVAL_STDERR[start:])]


@pytest.mark.parametrize("seed", range(8))
def test_hf5_run_with_evaluation_bars(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    rank = _Rank(tmp_path, ScriptLogParser())
    now = 0.0
    for stream, text in _eval_writes():
        for piece in re.split(r"(?<=[\r\n])", text):  # tqdm writes a draw at a time
            rank.write(stream, piece)
            now += 0.005
            if rng.random() < 0.3:
                rank.poll(now, rng.choice([("stderr", "stdout"), ("stdout", "stderr")]))
    rank.poll(now + 0.01)
    rank.poll(now + 5.0)
    assert losses(rank.records) == HF5_EVAL_LOSSES
    assert [m.step for m in metrics(rank.records) if m.HasField("samples_per_s")] == [12]
    bars = [m.step for m in metrics(rank.records) if m.HasField("step_time_s")]
    assert bars == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]  # not the evaluation's 2/8, 4/8, ...
