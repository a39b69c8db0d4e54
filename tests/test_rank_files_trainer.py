"""A Trainer's logging settings from its start-up hook's record place the log dicts it
prints without a progress bar (disable_tqdm), when the command line does not say them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from agent.jobs.metrics_records import RecordKind
from agent.jobs.node.rank_files import RankFiles
from agent.jobs.node.script_logs import ScriptLogParser

DICTS = [
    "{'loss': '2.5', 'grad_norm': '1.0', 'learning_rate': '0.001', 'epoch': '0.1'}",
    "{'loss': '2.4', 'grad_norm': '0.9', 'learning_rate': '0.001', 'epoch': '0.2'}",
]


def steps_read(tmp_path: Path, trainer: Mapping[str, object] | None, argv: list[str]) -> list[int]:
    metrics, stdout, stderr = (tmp_path / n for n in ("metrics.jsonl", "out.log", "err.log"))
    lines = [json.dumps({"kind": "phase", "time": 1.0, "rank": 0, "phase": "importing"})]
    if trainer is not None:
        lines.append(json.dumps({"kind": "trainer", "time": 1.0, "rank": 0, **trainer}))
    metrics.write_text("\n".join(lines) + "\n")
    stdout.write_text("\n".join(DICTS) + "\n")
    stderr.write_text("")
    files = RankFiles(str(metrics), str(stdout), str(stderr), script=ScriptLogParser(argv))
    reading = files.read(10.0, final=True)
    assert all(r.kind != RecordKind.TRAINER for r in reading.records)  # consumed, not a record
    return [r.metrics.step for r in reading.records if r.metrics is not None]


def test_the_dicts_fall_on_the_trainers_logging_steps(tmp_path: Path) -> None:
    assert steps_read(tmp_path, {"logging_steps": 25.0}, ["train.py"]) == [25, 50]


def test_without_the_record_they_are_numbered_in_turn(tmp_path: Path) -> None:
    assert steps_read(tmp_path, None, ["train.py"]) == [1, 2]


def test_the_command_line_wins(tmp_path: Path) -> None:
    argv = ["train.py", "--logging_steps", "10"]
    assert steps_read(tmp_path, {"logging_steps": 25.0}, argv) == [10, 20]


def test_logging_first_step_puts_the_first_dict_at_step_1(tmp_path: Path) -> None:
    trainer = {"logging_steps": 25.0, "logging_first_step": True}
    assert steps_read(tmp_path, trainer, ["train.py"]) == [1, 25]


EVAL = (
    "{'eval_loss': '2.38', 'eval_runtime': '1.2', 'eval_samples_per_second': '3.3',"
    " 'eval_steps_per_second': '1', 'epoch': '0.3'}"
)


def test_an_evaluation_falls_on_its_eval_steps_and_max_steps_is_the_total(tmp_path: Path) -> None:
    """Logs every 7 steps, evaluations every 40: the evaluation after the log at 35 ran at
    40 (not 35), and the run's total is the max_steps the script set."""
    metrics, stdout, stderr = (tmp_path / n for n in ("metrics.jsonl", "out.log", "err.log"))
    trainer = {"kind": "trainer", "logging_steps": 7.0, "eval_steps": 40.0, "max_steps": 120}
    metrics.write_text(json.dumps({"time": 1.0, "rank": 0, **trainer}) + "\n")
    stdout.write_text("\n".join([DICTS[0]] * 5 + [EVAL]) + "\n")
    stderr.write_text("")
    files = RankFiles(str(metrics), str(stdout), str(stderr), script=ScriptLogParser(["t.py"]))
    figures = [r.metrics for r in files.read(10.0, final=True).records if r.metrics is not None]
    assert [m.step for m in figures if m.HasField("loss")] == [7, 14, 21, 28, 35]
    [evaluated] = [m for m in figures if m.HasField("eval_loss")]
    assert evaluated.eval_step == 40 and round(evaluated.eval_loss, 2) == 2.38
    assert all(m.total_steps == 120 for m in figures if m.HasField("total_steps"))
    assert any(m.HasField("total_steps") for m in figures)
