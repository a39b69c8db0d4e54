"""Reading what users' own training scripts print, from real lines of real runs.

Each fixture line is copied from the source named beside it (a public issue thread, a public
repository's file, or a run of the installed libraries on this machine); only runs of fill
characters in progress bars and very long paths were shortened.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from gantry.v1 import job_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.metrics_records import GIB, Record, RecordKind, merge_metrics
from agent.jobs.node.script_logs import ScriptLogParser, megatron_metrics
from agent.jobs.node.script_logs_hf import LogDict, StepMatcher, parse_bar, parse_log_dict
from agent.jobs.node.tailer import read_lines

P = job_pb2.RankPhase

# --- helpers --------------------------------------------------------------------------------


def feed(
    parser: ScriptLogParser, stream: str, lines: Iterable[str], now: float = 0.0
) -> list[Record]:
    out: list[Record] = []
    for line in lines:
        out += parser.feed(stream, line, now)
    return out


def metrics(records: Iterable[Record]) -> list[job_pb2.RankMetrics]:
    return [r.metrics for r in records if r.kind is RecordKind.METRICS and r.metrics]


def losses(records: Iterable[Record]) -> list[tuple[int, float]]:
    return [(m.step, m.loss) for m in metrics(records) if m.HasField("loss")]


def phases(records: Iterable[Record]) -> list[int]:
    return [r.phase for r in records if r.kind is RecordKind.PHASE]


def merged(records: Iterable[Record], step: int) -> job_pb2.RankMetrics:
    result = None
    for m in metrics(records):
        if m.step == step:
            result = merge_metrics(result, m)
    assert result is not None, step
    return result


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


# --- Hugging Face Trainer, transformers 4.x ---------------------------------------------------

# https://github.com/SY-Xuan/Pink/issues/6 (4.x with grad_norm; nan, which literal_eval rejects)
HF4_NAN = (
    "{'loss': 0.0, 'grad_norm': nan, 'learning_rate': 0.00012142857142857143, 'epoch': 0.0}"
    "                    ",
    "{'loss': 0.0, 'grad_norm': nan, 'learning_rate': 0.00012857142857142855, 'epoch': 0.0}"
    "                    ",
)
# https://github.com/dexmal/dexbotic/issues/41 (4.x floats, padded with spaces by the clear)
HF4_FLOATS = (
    "{'loss': 0.2065, 'grad_norm': 3.374432731302371, 'learning_rate': 2.5000000000000002e-08,"
    " 'epoch': 0.0}" + " " * 65,
    "{'loss': 0.2161, 'grad_norm': 2.35244179588803, 'learning_rate': 5.0000000000000004e-08,"
    " 'epoch': 0.0}" + " " * 66,
)
# https://github.com/huggingface/transformers/issues/14531 (4.12, no grad_norm yet), a terminal
# paste: stdout and stderr mixed, the bar and DeepSpeed's lines on one line.
HF4_MERGED = (
    "{'loss': 6.2645, 'learning_rate': 0.001, 'epoch': 0.02}" + " " * 50,
    "{'loss': 0.0, 'learning_rate': 0.001, 'epoch': 0.04}" + " " * 50,
    "  8%|█████████████" + " " * 40 + "| 1999/24128 [1:52:09<20:27:23,  3.33s/it]"
    "[2021-11-26 03:07:16,494] [INFO] [logging.py:69:log_dist] [Rank 0] step=2000, "
    "skipped=1995, lr=[0.001, 0.001], mom=[0.0, 0.0]",
    "[2021-11-26 03:07:16,494] [INFO] [timer.py:181:stop] 0/2000, SamplesPerSec=9.526738918021234",
    "{'loss': 0.0, 'learning_rate': 0.001, 'epoch': 0.08}" + " " * 50,
)


def test_hf4_float_dicts_with_nan_and_no_bar_count_steps() -> None:
    parser = ScriptLogParser(["train.py", "--logging_steps", "10"])
    records = feed(parser, "stdout", HF4_NAN + HF4_FLOATS, now=0.0)
    assert records == []  # waiting for a bar redraw that tells their step
    assert parser.flush(1.9) == []
    records = parser.flush(2.0)
    got = metrics(records)
    assert [m.step for m in got] == [10, 20, 30, 40]
    assert math.isnan(got[0].grad_norm) and got[0].loss == 0.0
    assert got[1].learning_rate == 0.00012857142857142855
    assert (got[2].loss, got[2].grad_norm) == (0.2065, 3.374432731302371)
    assert got[3].learning_rate == 5.0000000000000004e-08


def test_hf5_strings_with_nan_and_inf() -> None:
    # transformers 5 formats floats with f"{v:.4g}" (trainer_callback.py ProgressCallback.on_log)
    # so a diverged run prints 'nan' and 'inf' as strings.
    fields = parse_log_dict(
        "{'loss': 'nan', 'grad_norm': 'inf', 'learning_rate': '1e-05', 'epoch': '0.04'}"
    )
    assert fields is not None
    assert math.isnan(fields["loss"] or 0.0) and fields["grad_norm"] == math.inf


def test_value_reprs_inside_dicts() -> None:
    # Constructed, not copied: the reprs that logged values take (torch, numpy 2, booleans).
    fields = parse_log_dict(
        "{'loss': tensor(2.5, device='cuda:0'), 'eval_accuracy': np.float64(0.75),"
        " 'grad_norm': -inf, 'epoch': 1, 'flag': True, 'rewards/chosen': -0.5}"
    )
    assert fields == {
        "loss": 2.5,
        "eval_accuracy": 0.75,
        "grad_norm": -math.inf,
        "epoch": 1.0,
        "flag": None,
        "rewards/chosen": -0.5,
    }
    assert parse_log_dict("{'lr': 0.1, 'batch': 4}") is None  # a script's own dicts
    assert parse_log_dict("{'learning_rate': 5e-05, 'warmup_steps': 10}") is None
    assert parse_log_dict("{'epoch': 3}") is None
    assert parse_log_dict("{'loss': 1.0") is None


def test_merged_terminal_paste_reads_values_bar_and_deepspeed() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", HF4_MERGED)
    records += parser.flush(5.0)
    bar = merged(records, 1999)
    assert (bar.total_steps, bar.step_time_s) == (24128, 3.33)
    ds = merged(records, 2000)
    assert ds.learning_rate == 0.001 and ds.samples_per_s == pytest.approx(9.526738918021234)
    assert ds.time.ToNanoseconds() > 0
    assert [loss for _, loss in losses(records)] == [6.2645, 0.0, 0.0]


def test_dict_before_its_redraw_across_files() -> None:
    parser = ScriptLogParser()
    first = feed(parser, "stderr", ["\r  0%|          | 0/20 [00:00<?, ?it/s]"])
    assert phases(first) == [P.RANK_PHASE_FIRST_STEP]
    assert feed(parser, "stdout", HF5_STDOUT[:1], now=0.5) == []  # waits
    records = feed(parser, "stderr", HF5_STDERR[1:5], now=1.0)
    assert losses(records) == [(2, 4.112)]


def test_dict_after_its_redraw_across_files() -> None:
    parser = ScriptLogParser()
    feed(parser, "stderr", HF5_STDERR[:9])  # two clears and redraws: steps 2 and 4
    records = feed(parser, "stdout", HF5_STDOUT[:2], now=0.1)
    assert losses(records) == [(2, 4.112), (4, 4.083)]


# Real runs on this machine (transformers 5.25, CPU), same script as above:
# `--max_steps 9 --logging_steps 3 --disable_tqdm True`: PrinterCallback prints the dicts
# (as f"{v:.4g}" strings too) and there is no Trainer bar at all.
DISABLED_TQDM_STDOUT = (
    "[2026-12-05 23:12:08,509] [WARNING] [real_accelerator.py:213:get_accelerator] Setting "
    "accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.",
    "{'loss': '4.061', 'grad_norm': '7.18', 'learning_rate': '3.889e-05', 'epoch': '0.06'}",
    "{'loss': '3.969', 'grad_norm': '7.263', 'learning_rate': '2.222e-05', 'epoch': '0.12'}",
    "{'loss': '3.922', 'grad_norm': '7.047', 'learning_rate': '5.556e-06', 'epoch': '0.18'}",
    "{'train_runtime': '9.774', 'train_samples_per_second': '7.367', "
    "'train_steps_per_second': '0.921', 'train_loss': '3.984', 'epoch': '0.18'}",
)
DISABLED_TQDM_STDERR = (
    "Writing model shards:   0%|          | 0/1 [00:00<?, ?it/s]Writing model shards: 100%|"
    "██████████| 1/1 [00:00<00:00, 478.86it/s]",
)
# The evaluation run resumed from its checkpoint-6 with `--max_steps 12 --logging_steps 2`:
# the bar is created at 0/12 and its first update jumps to 7.
RESUMED_STDERR = (
    "\r  0%|          | 0/12 [00:00<?, ?it/s]\r 58%|█████▊    | 7/12 [00:02<00:01,  3.12it/s]"
    "\r 67%|██████▋   | 8/12 [00:03<00:02,  1.81it/s]\r" + " " * 46 + "\r"
    "\r 67%|██████▋   | 8/12 [00:03<00:02,  1.81it/s]"
    "\r 83%|████████▎ | 10/12 [00:04<00:00,  2.46it/s]\r" + " " * 47 + "\r"
    "\r 83%|████████▎ | 10/12 [00:04<00:00,  2.46it/s]"
    "\r100%|██████████| 12/12 [00:04<00:00,  3.10it/s]\r" + " " * 47 + "\r"
    "\r100%|██████████| 12/12 [00:04<00:00,  3.10it/s]\n",
    "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A"
    "\rWriting model shards: 100%|██████████| 1/1 [00:00<00:00, 185.74it/s]\n",
    "\r" + " " * 47 + "\r\r100%|██████████| 12/12 [00:04<00:00,  3.10it/s]"
    "\r100%|██████████| 12/12 [00:04<00:00,  2.55it/s]\n",
)
RESUMED_STDOUT = (
    "{'loss': '4.136', 'grad_norm': '8.355', 'learning_rate': '2.083e-05', 'epoch': '0.16'}",
    "{'loss': '4.082', 'grad_norm': '7.808', 'learning_rate': '1.25e-05', 'epoch': '0.2'}",
    "{'loss': '4.069', 'grad_norm': '8.459', 'learning_rate': '4.167e-06', 'epoch': '0.24'}",
    "{'train_runtime': '4.697', 'train_samples_per_second': '10.22', "
    "'train_steps_per_second': '1.277', 'train_loss': '4.096', 'epoch': '0.24'}",
)


def test_disable_tqdm_prints_dicts_only() -> None:
    parser = ScriptLogParser(["--max_steps", "9", "--logging_steps", "3", "--disable_tqdm", "True"])
    records = feed(parser, "stderr", DISABLED_TQDM_STDERR)
    records += feed(parser, "stdout", DISABLED_TQDM_STDOUT, now=0.0)
    assert phases(records) == [P.RANK_PHASE_IMPORTING]
    records += parser.flush(2.5)
    assert losses(records) == [(3, 4.061), (6, 3.969), (9, 3.922)]
    end = metrics(records)[-1]
    assert (end.step, end.samples_per_s, end.total_steps) == (9, 7.367, 9)


@pytest.mark.parametrize("stderr_first", [True, False])
def test_resumed_run_continues_from_the_checkpoint_step(stderr_first: bool) -> None:
    parser = ScriptLogParser(["--max_steps", "12", "--logging_steps", "2"])
    parts = [("stderr", RESUMED_STDERR), ("stdout", RESUMED_STDOUT)]
    records: list[Record] = []
    for stream, lines in parts if stderr_first else parts[::-1]:
        records += feed(parser, stream, lines)
    assert losses(records) == [(8, 4.136), (10, 4.082), (12, 4.069)]
    assert [m.step for m in metrics(records) if m.HasField("step_time_s")] == [7, 8, 10, 12]
    assert metrics(records)[-1].samples_per_s == 10.22


def test_without_any_hint_dicts_count_by_one() -> None:
    parser = ScriptLogParser()
    feed(parser, "stdout", HF5_STDOUT[:3], now=0.0)
    assert [s for s, _ in losses(parser.flush(3.0))] == [1, 2, 3]


def test_logging_steps_as_a_ratio_of_max_steps() -> None:
    parser = ScriptLogParser(["--max_steps", "200", "--logging_steps", "0.05"])
    feed(parser, "stdout", HF4_FLOATS, now=0.0)
    assert [s for s, _ in losses(parser.flush(3.0))] == [10, 20]


def test_eval_dicts_use_their_redraw_and_give_no_training_figures() -> None:
    # https://github.com/huggingface/transformers/issues/22751 style eval dict, as the Trainer
    # logs it (trainer.py evaluate -> self.log(output.metrics)).
    eval_dict = (
        "{'eval_loss': 3.2041656970977783, 'eval_runtime': 0.4521, "
        "'eval_samples_per_second': 22.12, 'eval_steps_per_second': 2.212, 'epoch': 0.02}"
    )
    parser = ScriptLogParser()
    feed(parser, "stderr", HF5_STDERR[:5])  # a clear and a redraw at 2
    records = feed(parser, "stdout", [eval_dict], now=0.1)
    assert [m for m in metrics(records) if m.HasField("loss")] == []
    records = feed(parser, "stdout", HF5_STDOUT[1:2], now=0.2)  # waits for the next redraw
    records += feed(parser, "stderr", HF5_STDERR[5:9], now=0.3)
    assert losses(records) == [(4, 4.083)]


def test_resumed_bar_starts_past_zero() -> None:
    # transformers ProgressCallback on resume: the bar is created at 0/max_steps, then the
    # first update jumps to global_step (trainer_callback.py on_step_end).
    parser = ScriptLogParser()
    records = feed(
        parser,
        "stderr",
        [
            "\r  0%|          | 0/1000 [00:00<?, ?it/s]",
            "\r 50%|█████     | 501/1000 [00:05<00:05, 98.10it/s]",
            "\r" + " " * 50,
            "\r",
            "\r 50%|█████     | 502/1000 [00:05<00:05, 98.10it/s]",
        ],
    )
    records += feed(parser, "stdout", HF4_FLOATS[:1])
    assert [m.step for m in metrics(records)][:1] == [501]
    assert phases(records) == [P.RANK_PHASE_FIRST_STEP, P.RANK_PHASE_TRAINING]
    assert losses(records) == [(502, 0.2065)]


def test_resume_log_lines_continue_the_count() -> None:
    # transformers 4.x trainer.py (`logger.info`, shown with --log_level info):
    #   "  Continuing training from checkpoint, will skip to saved global_step"
    #   "  Continuing training from global step 500"
    # transformers 5.25 trainer.py:
    #   "  Resuming training from checkpoint with epoch 1 and global step 500"
    for line in (
        "[INFO|trainer.py:1812] 2024-01-10 10:00:00,000 >>   Continuing training from "
        "global step 500",
        "[INFO|trainer.py:1647] 2026-01-10 10:00:00,000 >>   Resuming training from checkpoint "
        "with epoch 1 and global step 500",
    ):
        parser = ScriptLogParser(["--logging_steps", "10"])
        records = feed(parser, "stderr", [line])
        assert phases(records) == [P.RANK_PHASE_LOADING_CHECKPOINT]
        feed(parser, "stdout", HF4_FLOATS[:1])
        assert losses(parser.flush(9.0)) == [(510, 0.2065)]


def test_other_bars_are_not_the_trainer_bar() -> None:
    parser = ScriptLogParser()
    records = feed(
        parser,
        "stderr",
        [
            # datasets Map (https://github.com/huggingface/datasets, arrow_dataset.py map)
            "Map: 100%|██████████| 400/400 [00:00<00:00, 5231.89 examples/s]",
            # transformers from_pretrained of a sharded checkpoint
            "Loading checkpoint shards: 100%|██████████| 33/33 [00:41<00:00,  1.26s/it]",
            # from the real run above: a nested bar below the Trainer's
            "\rWriting model shards:   0%|          | 0/1 [00:00<?, ?it/s]\x1b[A",
            # a bar without a total
            "10it [00:01,  9.50it/s]",
        ],
    )
    assert records == []


def test_a_first_loop_bar_yields_to_the_trainer_bar() -> None:
    """A script's own loop drawn before training (no description) is replaced by the bar
    whose redraws follow the Trainer's clears."""
    parser = ScriptLogParser()
    feed(parser, "stderr", ["100%|██████████| 50/50 [00:01<00:00, 45.0it/s]"])
    feed(parser, "stderr", ["\r  0%|          | 0/20 [00:00<?, ?it/s]"])
    records = feed(parser, "stderr", HF5_STDERR[1:5])
    records += feed(parser, "stdout", HF5_STDOUT[:1])
    assert losses(records) == [(2, 4.112)]
    assert parser.total == 20


# --- tqdm -----------------------------------------------------------------------------------


def test_tqdm_rates() -> None:
    found = parse_bar("  3%|███     | 12/345 [00:07<06:50,  1.23s/it]")
    assert found is not None and found[0].step_time_s == 1.23 and found[0].unit == "it"
    found = parse_bar(" 40%|████      | 8/20 [00:00<00:00, 15.49it/s]")
    assert found is not None and found[0].step_time_s == pytest.approx(1 / 15.49)
    found = parse_bar("  0%|          | 0/20 [00:00<?, ?it/s]")
    assert found is not None and found[0].step_time_s is None and found[0].n == 0
    found = parse_bar("Map: 100%|██████████| 400/400 [00:00<00:00, 5231.89 examples/s]")
    assert found is not None and (found[0].desc, found[0].unit) == ("Map", "examples")


# --- DeepSpeed ------------------------------------------------------------------------------

# DeepSpeed 0.9.x (the era of the 0.9.5 pin): https://github.com/huggingface/accelerate/issues/1589
DS_09 = (
    "[2023-06-21 07:39:09,443] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 27.41 | backward: 73.44 | backward_inner: 50.99 | backward_allreduce: 22.40 | "
    "step: 72.82",
    "  3%|███" + " " * 86 + "| 12/345 [00:07<06:50,  1.23s/it][2023-06-21 07:39:09,625] [INFO] "
    "[logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | optimizer_allgather: 7.96 | "
    "optimizer_gradients: 0.02 | optimizer_step: 60.64",
    "[2023-06-21 07:39:09,625] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward_microstep: 27.48 | backward_microstep: 73.59 | backward_inner_microstep: 51.05 | "
    "backward_allreduce_microstep: 22.49 | step_microstep: 72.59",
    "[2023-06-21 07:39:09,626] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 27.46 | backward: 73.60 | backward_inner: 51.05 | backward_allreduce: 22.50 | "
    "step: 72.60",
)
# DeepSpeed 0.10-era ThroughputTimer + GPT-NeoX: https://github.com/deepspeedai/DeepSpeed/issues/3742
DS_NEOX = (
    "[2023-07-25 21:03:17,269] [INFO] [timer.py:215:stop] epoch=0/micro_step=34/global_step=34, "
    "RunningAvgSamplesPerSec=7.864669709950182, CurrSamplesPerSec=8.00912418308922, "
    "MemAllocated=59.65GB, MaxMemAllocated=63.31GB",
    "[2023-07-25 21:03:17,269] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward_microstep: 652.42 | backward_microstep: 2164.53 | backward_inner_microstep: "
    "2001.89 | backward_allreduce_microstep: 162.60 | step_microstep: 1172.13",
    "[2023-07-25 21:03:17,269] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 652.41 | backward: 2164.52 | backward_inner: 2001.89 | backward_allreduce: "
    "162.60 | step: 1172.13",
    " samples/sec: 7.799 | iteration       34/   10000 | elapsed time per iteration (ms): "
    "4103.1 | learning rate: 2.111E-06 | approx flops per GPU: 112.9TFLOPS | lm_loss: "
    "1.118665E+01 | number of skipped iterations:   0 | number of nan iterations:   0 |",
    "time (ms) | forward: 659.86 | backward: 2164.69 | backward-backward: 2164.66 | "
    "backward-allreduce: 0.00 | optimizer: 1172.51 | batch generator: 0.83",
    "[2023-07-25 21:03:21,037] [INFO] [logging.py:96:log_dist] [Rank 0] step=35, skipped=0, "
    "lr=[2.1731931451279077e-06, 2.1731931451279077e-06], mom=[[0.9, 0.95], [0.9, 0.95]]",
)
# DeepSpeed 0.7.7, launcher prefix: https://github.com/deepspeedai/DeepSpeed/issues/2629
DS_07 = (
    "stdout: [2022-12-20 08:26:26,101] [INFO] [timer.py:197:stop] 0/17, "
    "RunningAvgSamplesPerSec=158.31157878546472, CurrSamplesPerSec=159.628891629629, "
    "MemAllocated=1.75GB, MaxMemAllocated=2.6GB",
)
# DeepSpeed 0.5.x: https://github.com/deepspeedai/DeepSpeed/issues/1825
DS_05 = (
    "[2022-03-11 02:06:58,985] [INFO] [logging.py:69:log_dist] [Rank 0] step=40, skipped=2, "
    "lr=[5e-05], mom=[[0.9, 0.999]]",
    "[2022-03-11 02:06:58,985] [INFO] [timer.py:189:stop] 0/40, SamplesPerSec=83.48609168106144,"
    " MemAllocated=0.26GB, MaxMemAllocated=9.02GB",
)
# DeepSpeed 0.1/0.2 (2020, before log_dist): https://github.com/deepspeedai/DeepSpeed/issues/255
DS_02 = (
    ">[INFO 2020-06-08 06:02:19] 0/450, SamplesPerSec=7.458824487454903",
    "time (ms) | forward_microstep: 193.65 | backward_microstep: 329.25 | "
    "backward_inner_microstep: 329.14 | backward_allreduce_microstep: 0.05 | step_microstep: 0.92",
)
# DeepSpeed 0.12 + Megatron-DeepSpeed: argonne-lcf fork's ALCF/README.md, as mirrored in
# github.com/samanta-amit/Megatron-DeepSpeed ALCF/README.md (indented as in the README).
MEGATRON_DS = (
    "        [2024-03-07 15:27:02,646] [INFO] [timer.py:260:stop] epoch=0/micro_step=199/"
    "global_step=199, RunningAvgSamplesPerSec=58.730622229657506, "
    "CurrSamplesPerSec=61.35304005128382, MemAllocated=6.01GB, MaxMemAllocated=19.52GB",
    "        iteration      199/  317892 | consumed samples:       152832 | consumed tokens:"
    "    625999872 | elapsed time per iteration (ms): 14287.5 | learning rate: 2.407E-04 | "
    "global batch size:   768 | lm loss: 5.905366E+00 | loss scale: 8192.0 | actual seqlen:  "
    "4096 | number of skipped iterations:   0 | number of nan iterations:   0 | samples per "
    "second: 53.753 | tokens per gpu per second (tgs): 1146.733 | TFLOPs: 69.85 |",
    "        [2024-03-07 15:27:15,063] [INFO] [logging.py:96:log_dist] [Rank 0] step=200, "
    "skipped=4, lr=[0.000240653265864008, 0.000240653265864008], mom=[(0.9, 0.999), "
    "(0.9, 0.999)]",
    "        iteration      200/  317892 | consumed samples:       153600 | consumed tokens:"
    "    629145600 | elapsed time per iteration (ms): 14541.4 | learning rate: 2.407E-04 | "
    "global batch size:   768 | lm loss: 5.897035E+00 | loss scale: 8192.0 | actual seqlen:  "
    "4096 | number of skipped iterations:   0 | number of nan iterations:   0 | samples per "
    "second: 52.815 | tokens per gpu per second (tgs): 1126.713 | TFLOPs: 68.63 |",
)


def test_deepspeed_09_wall_clock_lines() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_09)
    timers = [m for m in metrics(records) if m.HasField("forward_s")]
    assert [m.step for m in timers] == [1, 2]  # no step line before them: counted
    assert (timers[0].forward_s, timers[0].backward_s) == pytest.approx((0.02741, 0.07344))
    assert (timers[0].allreduce_s, timers[0].optimizer_step_s) == pytest.approx((0.0224, 0.07282))
    assert timers[0].step_time_s == pytest.approx((27.41 + 73.44 + 72.82) / 1000)
    bar = [m for m in metrics(records) if m.step == 12]
    assert bar and bar[0].step_time_s == 1.23 and bar[0].total_steps == 345


def test_deepspeed_timer_line_before_any_step_line_and_neox_iterations() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_NEOX)
    assert metrics(records)[0].samples_per_s == pytest.approx(8.00912418308922)
    step34 = merged(records, 34)
    assert step34.samples_per_s == 7.799  # the later line wins (GPT-NeoX's samples/sec)
    assert step34.memory_bytes == int(59.65 * GIB)
    assert step34.forward_s == pytest.approx(0.65241)  # the timer line after it is step 34's
    assert step34.loss == pytest.approx(11.18665) and step34.tflops == pytest.approx(112.9)
    assert step34.step_time_s == pytest.approx(4.1031)  # the iteration line came last
    assert step34.learning_rate == pytest.approx(2.111e-06) and step34.total_steps == 10000
    assert merged(records, 35).learning_rate == pytest.approx(2.1731931451279077e-06)
    assert [m.step for m in metrics(records)] == [34, 34, 34, 35]  # GPT-NeoX's timers skipped


def test_deepspeed_old_throughput_forms() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_07 + DS_05 + DS_02)
    got = metrics(records)
    assert got[0].samples_per_s == pytest.approx(159.628891629629)
    assert got[0].memory_bytes == int(1.75 * GIB)
    assert (got[1].step, got[1].learning_rate) == (40, 5e-05)
    assert got[2].step == 40 and got[2].samples_per_s == pytest.approx(83.48609168106144)
    assert got[2].memory_bytes == int(0.26 * GIB)
    assert got[3].samples_per_s == pytest.approx(7.458824487454903)  # 2020's logger prefix
    assert got[3].time.ToNanoseconds() > 0
    assert len(got) == 4  # the micro-step timer line is not a step


def test_deepspeed_019_lines_still_parse() -> None:
    from tests.test_tailer import DEEPSPEED_STDOUT  # captured from DeepSpeed 0.19.8

    parser = ScriptLogParser()
    records = feed(parser, "stdout", DEEPSPEED_STDOUT)
    assert [m.step for m in metrics(records)] == [1, 2, 2, 3, 4, 4, 4, 5]  # not init's 0
    assert phases(records) == [P.RANK_PHASE_TRAINING]


def test_deepspeed_pipeline_engine_lines() -> None:
    # deepspeed/runtime/pipe/engine.py train_batch: f"steps: {global_steps} loss: {..:0.4f} "
    # [other losses] f"iter time (s): {..:0.3f} samples/sec: {..:0.3f}". This one is a real
    # MoE run's, quoted in a public test script found by exact-string search in the code index
    # (its repository was not named by the index).
    line = (
        "steps: 200 loss: 5.5508 lm loss: 5.5103 moe loss: 0.0405 iter time (s): 0.936 "
        "samples/sec: 136.706"
    )
    got = metrics(feed(ScriptLogParser(), "stdout", [line]))
    assert [(m.step, m.loss, m.step_time_s, m.samples_per_s) for m in got] == [
        (200, 5.5508, 0.936, 136.706)
    ]


# --- Megatron -------------------------------------------------------------------------------

# Megatron-LM core_r0.6 era, with the time stamp: https://github.com/NVIDIA/Megatron-LM/issues/756
MEGATRON_LM = (
    " [2024-04-06 03:02:12] iteration       71/     100 | consumed samples:         9088 | "
    "elapsed time per iteration (ms): 5361.6 | throughput per GPU (TFLOP/s/GPU): 243.6 | "
    "learning rate: 1.420000E-05 | global batch size:   128 | lm loss: 1.818812E+00 | "
    "load_balancing_loss: 1.013377E+00 | loss scale: 1.0 | grad norm: 1.300 | num zeros: 0.0 | "
    "number of skipped iterations:   0 | number of nan iterations:   0 |",
)
# Megatron-LM 2023 fork without a time stamp: https://github.com/epfLLM/Megatron-LLM/issues/11
MEGATRON_OLD = (
    " iteration      122/  250000 | consumed samples:       124928 | elapsed time per "
    "iteration (ms): 86545.2 | learning rate: 9.150E-06 | global batch size:  1024 | lm loss: "
    "2.504220E+00 | loss scale: 1.0 | grad norm: 0.231 | number of skipped iterations:   0 | "
    "number of nan iterations:   0 |",
)
# nanotron: https://github.com/huggingface/nanotron/pull/23
NANOTRON = (
    "01/17/2024 13:47:27 [INFO|DP=0|PP=0|TP=0|ip-26-0-160-225]: iteration: 991 / 1000 | "
    "consumed_tokens: 634K | elapsed_time_per_iteration_ms: 45 | tokens_per_sec: 14.2K | "
    "tokens_per_sec_per_gpu: 1.78K | global_batch_size: 20 | lm_loss: 10.6 | lr: 1e-05 | "
    "model_tflops_per_gpu: 0.00869 | hardware_tflops_per_gpu: 0.00869 | grad_norm: 0.515 | "
    "cuda_memory_allocated: 75.2M | cuda_max_memory_reserved: 547M | hd_total_memory_tb: 312G "
    "| hd_used_memory_tb: 61.8G | hd_free_memory_tb: 250G",
)


def test_megatron_lm_iteration_lines() -> None:
    records = feed(ScriptLogParser(), "stdout", MEGATRON_LM + MEGATRON_OLD)
    new, old = metrics(records)
    assert (new.step, new.total_steps) == (71, 100)
    assert new.step_time_s == pytest.approx(5.3616)
    assert (new.tflops, new.learning_rate, new.loss) == (243.6, 1.42e-05, 1.818812)
    assert (new.loss_scale, new.grad_norm) == (1.0, 1.3)
    assert records[1].time is not None  # " [2024-04-06 03:02:12]"
    assert (old.step, old.total_steps, old.loss, old.grad_norm) == (122, 250000, 2.50422, 0.231)
    assert old.step_time_s == pytest.approx(86.5452)
    assert phases(records) == [P.RANK_PHASE_TRAINING]


def test_megatron_deepspeed_lines_with_deepspeed_lines() -> None:
    records = feed(ScriptLogParser(), "stdout", MEGATRON_DS)
    step199 = merged(records, 199)
    assert (step199.tflops, step199.tokens_per_s, step199.samples_per_s) == (
        69.85,
        1146.733,
        53.753,
    )
    assert step199.memory_bytes == int(6.01 * GIB)  # from DeepSpeed's timer line
    assert (step199.loss, step199.loss_scale, step199.total_steps) == (5.905366, 8192.0, 317892)
    step200 = merged(records, 200)
    assert step200.learning_rate == pytest.approx(2.407e-04) and step200.loss == 5.897035


def test_nanotron_iteration_line() -> None:
    m = megatron_metrics(NANOTRON[0])
    assert m is not None
    assert (m.step, m.total_steps, m.loss, m.learning_rate, m.grad_norm) == (
        991,
        1000,
        10.6,
        1e-05,
        0.515,
    )
    assert (m.tokens_per_s, m.tflops, m.step_time_s) == (1780.0, 0.00869, 0.045)


def test_not_an_iteration_line() -> None:
    assert megatron_metrics("iteration 5 of the loop | done") is None
    assert megatron_metrics("saving checkpoint at iteration     200 to checkpoints/x") is None


# --- start-up phases ------------------------------------------------------------------------

STARTUP = (
    # DeepSpeed 0.9.x under the accelerate launcher:
    # https://github.com/huggingface/accelerate/issues/1606
    "stdout: g0003: [2023-06-18 23:37:18,773] [INFO] [real_accelerator.py:110:get_accelerator]"
    " Setting ds_accelerator to cuda (auto detect)",
    # torch.utils.cpp_extension (verbose), as pytorch/tutorials advanced_source/cpp_extension.rst
    # shows it; torch 2.13 logs the same texts (cpp_extension.py).
    "Using /tmp/torch_extensions as PyTorch extensions root...",
    "Emitting ninja build file /tmp/torch_extensions/lltm/build.ninja...",
    "Building extension module lltm...",
    "Loading extension module lltm...",
    # DeepSpeed 0.19.8's shm op, from the real run's stdout above (/tmp/hf/r0.out)
    "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    # https://github.com/huggingface/accelerate/issues/1606
    "stdout: g0003: [2023-06-18 23:37:19,177] [INFO] [comm.py:594:init_distributed] cdb=None",
    # DeepSpeed 0.9 torch checkpoint engine: https://github.com/EleutherAI/gpt-neox/pull/836
    "[2023-04-13 17:49:52,904] [INFO] [torch_checkpoint_engine.py:23:load] [Torch] Loading "
    "checkpoint from /mnt/329710/resources/gpt_neox_2.0_ckpt/checkpoints-neox2.0-1.3b-4096-"
    "32GPUs/global_step25000/mp_rank_00_model_states.pt...",
    # transformers TF trainer's banner, same text in Trainer (trainer.py `logger.info`):
    # https://github.com/huggingface/transformers/pull/4946
    "06/12/2020 10:05:38 - INFO - transformers.trainer_tf -   ***** Running training *****",
    # back to an earlier phase's text: ignored, phases only move forward
    "Loading extension module utils...",
    "\r  5%|▌         | 1/20 [00:00<00:06,  2.81it/s]",
)


def test_startup_phases_move_forward_only() -> None:
    records = feed(ScriptLogParser(), "stdout", STARTUP)
    assert phases(records) == [
        P.RANK_PHASE_IMPORTING,
        P.RANK_PHASE_BUILDING_OPS,
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
        P.RANK_PHASE_FIRST_STEP,
        P.RANK_PHASE_TRAINING,
    ]
    first = next(r for r in records if r.kind is RecordKind.PHASE)
    assert first.time is not None and first.source == "stdout"


def test_deepspeed_019_and_megatron_startup_texts() -> None:
    # DeepSpeed 0.19.8 (.venv): comm/comm.py init_distributed, torch_checkpoint_engine.py load.
    parser = ScriptLogParser()
    records = feed(
        parser,
        "stdout",
        [
            # the first line of the evaluation run's stdout above (DeepSpeed 0.19.8 on CPU)
            "[2026-12-05 23:10:22,406] [WARNING] [real_accelerator.py:213:get_accelerator] "
            "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable "
            "to detect it.",
            "[2026-11-28 09:46:20,001] [INFO] [comm.py:908:init_distributed] Initializing "
            "TorchBackend in DeepSpeed with backend gloo",
            "[2026-11-28 09:46:21,001] [INFO] [logging.py:123:log_dist] [Rank 0] [Torch] Begin "
            "Load checkpoint from /ckpt/global_step10/mp_rank_00_model_states.pt...",
        ],
    )
    assert phases(records) == [
        P.RANK_PHASE_IMPORTING,
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
    ]
    # Megatron-DeepSpeed megatron/initialize.py, checkpointing.py, training.py print_datetime
    parser = ScriptLogParser(["--train-iters", "2000"])
    records = feed(
        parser,
        "stdout",
        [
            "> initializing torch distributed ...",
            " loading checkpoint from /ckpt at iteration 1000",
            "[before the start of training step] datetime: 2024-03-07 15:20:00 ",
        ],
    )
    assert phases(records) == [
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
        P.RANK_PHASE_FIRST_STEP,
    ]
    assert parser.total == 2000


# --- the matcher alone, and bounds ----------------------------------------------------------


def test_matcher_bounded_and_owed_redraws_skipped() -> None:
    matcher = StepMatcher()
    for n in range(5000):  # redraws with no dicts ever (stdout not captured)
        matcher.bar("stderr", n, after_clear=True)
    assert len(matcher._queue) <= 1024
    fresh = StepMatcher()
    placed = fresh.add(_dict("stdout"))
    assert placed == [] and fresh.expire(10.0)[0][1] == 1  # no bar: counted
    assert fresh.bar("stderr", 7, after_clear=True) == []  # its late redraw: skipped
    assert fresh.add(_dict("stdout")) == []
    assert [s for _, s in fresh.bar("stderr", 9, after_clear=True)] == [9]


def _dict(stream: str) -> LogDict:
    return LogDict.of({"loss": 1.0}, stream, 0.0)


def test_long_garbage_is_fast() -> None:
    parser = ScriptLogParser()
    for junk in ("1%|" * 40000, "{'" * 40000, "iteration 1/ 2 |" * 8000, "9" * 100000):
        parser.feed("stdout", junk, 0.0)
        parser.feed("stderr", "SamplesPerSec=" + junk + "step=" + junk, 0.0)


def test_numbers_too_large_for_the_contract_are_dropped() -> None:
    # Constructed garbage: a step past int64 would make protobuf raise.
    big = "99999999999999999999999"
    parser = ScriptLogParser(["--max_steps", "1e30", "--logging_steps", "1e300"])
    lines = [
        f"iteration {big}/ 5 |",
        f"[Rank 0] step={big}, skipped=0, lr=[1]",
        "epoch=0/micro_step=1/global_step=1, RunningAvgSamplesPerSec=1, CurrSamplesPerSec=1, "
        "MemAllocated=1.2.3GB",
        f" 5%|x| {big}/{big} [00:00<00:00, 1it/s]",
        f"steps: {big} loss: 1 iter time (s): 1.2.3 samples/sec: 1",
        f"Continuing training from global step {big}",
        "{'loss': 1.0, 'epoch': 1, 'step': 1e30}",
    ]
    records = feed(parser, "stdout", lines) + parser.flush(100.0)
    assert all(0 < m.step <= 10**15 for m in metrics(records))
    throughput = [m for m in metrics(records) if m.HasField("samples_per_s")]
    assert throughput and not throughput[0].HasField("memory_bytes")


_FRAGMENTS = st.sampled_from(
    [
        "\r",
        "\n",
        "\x1b[A",
        " " * 20,
        "%|",
        "| 3/20 [00:01<00:02, 2.5it/s]",
        "{'loss': ",
        "'nan'",
        "}",
        "iteration 5/ 10 |",
        " lm loss: 1.0E+00 |",
        "[Rank 0] step=",
        ", skipped=0, lr=[",
        "epoch=0/micro_step=1/global_step=1, RunningAvgSamplesPerSec=",
        "time (ms) | fwd: 1.0 | step: ",
        "Continuing training from global step ",
        "***** Running training *****",
        "Total optimization steps = ",
        "steps: 1 loss: x iter time (s): 1 samples/sec: 2",
        "99999999999999999999999",
        "1.2.3",
        "MemAllocated=",
        "GB",
        "0/",
        ", SamplesPerSec=",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stdout", "stderr"]),
            st.lists(st.one_of(_FRAGMENTS, st.text(max_size=30)), max_size=12).map("".join),
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=20,
    ),
    st.lists(st.text(max_size=20), max_size=6),
)
def test_garbage_never_raises(lines: list[tuple[str, str, float]], argv: list[str]) -> None:
    parser = ScriptLogParser(argv)
    for stream, line, now in lines:
        for record in parser.feed(stream, line, now):
            assert record.kind in (RecordKind.METRICS, RecordKind.PHASE)
    parser.flush(1000.0)
