"""Reading a Hugging Face Trainer script's output: transformers 4.x float dicts, merged
terminal pastes, --disable_tqdm, resumed runs, other bars, tqdm rates.

Each fixture line is copied from the source named beside it (a public issue thread, a public
repository's file, or a run of the installed libraries on this machine); only runs of fill
characters in progress bars and very long paths were shortened.
"""

from __future__ import annotations

import math

import pytest
from gantry.v1 import job_pb2

from agent.jobs.metrics_records import Record
from agent.jobs.node.script_logs import ScriptLogParser
from agent.jobs.node.script_logs_hf import parse_bar, parse_log_dict
from tests.script_log_helpers import feed, losses, merged, metrics, phases
from tests.test_script_logs_hf5 import HF5_STDERR, HF5_STDOUT

P = job_pb2.RankPhase

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
