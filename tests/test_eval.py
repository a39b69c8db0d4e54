"""agent.tasks.eval and agent.tasks.eval_metrics: metrics, targets, inputs and the CLI end to
end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agent.tasks import eval as agent_eval
from agent.tasks.eval_metrics import (
    EvalTargets,
    RougeL,
    all_passed,
    bleu4,
    check_targets,
    percentile,
    rouge_l,
)

HYPS = [
    "the cat sat on the mat today",
    "a quick brown fox jumps over the dog",
    "orange ocean copper dragon",
    "nothing in common here",
]
REFS = [
    "the cat is sitting on the mat today",
    "the quick brown fox jumped over the lazy dog",
    "orange ocean copper dragon",
    "completely different words entirely",
]
REPORT_KEYS = {
    "model",
    "checkpoint",
    "samples",
    "bleu4",
    "rouge_l",
    "ttft_ms_p50",
    "ttft_ms_p90",
    "tokens_per_s",
    "tokens_per_s_batched",
    "targets",
    "passed",
    "hardware",
    "examples",
}


# --- the CLI, started first --------------------------------------------------------
#
# The end-to-end run is a subprocess that spends most of its time importing torch: it
# starts with the first test (in the background) and test_cli_end_to_end, the last test
# of the module, reads its output, so the tests in between share the two cores with it.


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@dataclass
class CliRun:
    process: subprocess.Popen[bytes]
    out: Path
    model: Path
    logs: Path  # the run's stdout and stderr, as files: a pipe nobody reads could fill

    def wait(self) -> tuple[int, str, str]:
        returncode = self.process.wait(timeout=120)
        stdout, stderr = (self.logs / n for n in ("stdout", "stderr"))
        return returncode, stdout.read_text("utf-8"), stderr.read_text("utf-8")


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.tasks.eval", *args]


CLI_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny-dense model with its tokenizer, and a 5-conversation held-out file."""
    from transformers.utils import logging as hf_logging

    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model
    from agent.rank.demo_data import generate, write_jsonl

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    root = tmp_path_factory.mktemp("eval")
    train, heldout = generate(40, 5, seed=3, bad_records=False)
    tokenizer = train_tokenizer((" " + t for r in train for t in r["text"]), vocab_size=300)
    model = build_model("tiny-dense", tokenizer, seed=0)
    model.save_pretrained(str(root / "model"))
    tokenizer.save_pretrained(str(root / "model"))
    write_jsonl(root / "heldout.jsonl", heldout)
    return root


@pytest.fixture(scope="module")
def cli_run(tiny: Path) -> Iterator[CliRun]:
    out = tiny / "reports" / "report.json"
    targets = json.dumps({"tokens_per_s_min": 1.0, "bleu4_min": 0.0, "rouge_l_min": 0.0})
    argv = cli_argv(
        "--model", str(tiny / "model"), "--data", str(tiny / "heldout.jsonl"),
        "--out", str(out), "--max-samples", "5", "--max-new-tokens", "8",
        "--batch-size", "2", "--targets", targets, "--checkpoint", "demo:final",
    )  # fmt: skip
    logs = tiny / "logs"
    logs.mkdir()
    with (logs / "stdout").open("wb") as stdout, (logs / "stderr").open("wb") as stderr:
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=CLI_ENV, cwd=REPO)
    yield CliRun(process, out, tiny / "model", logs)
    if process.poll() is None:
        process.kill()
        process.wait()


def test_main_bad_inputs_exit_2(
    tiny: Path, cli_run: CliRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, while cli_run's subprocess (started by asking for it) imports torch."""
    model, data, out = str(tiny / "model"), str(tiny / "heldout.jsonl"), str(tmp_path / "r.json")
    (tmp_path / "bare").mkdir()
    bad = write_lines(tmp_path / "bad.jsonl", '{"text": ["S", "a <end> a"]}', "not json")
    empty = write_lines(tmp_path / "empty.jsonl")
    cases = [
        (["--model", str(tmp_path / "bare"), "--data", data], "bare: no config.json"),
        (["--model", model, "--data", str(tmp_path / "none.jsonl")], "none.jsonl: no such file"),
        (["--model", model, "--data", str(empty)], "empty.jsonl: no conversations"),
        (["--model", model, "--data", str(bad)], "bad.jsonl line 2: not JSON"),
        (["--model", model, "--data", data, "--targets", '{"x": 1}'], "--targets: unknown"),
        (["--model", model, "--data", data, "--max-samples", "0"], "--max-samples 0: must be"),
    ]
    for argv, error in cases:
        assert agent_eval.main([*argv, "--out", out]) == 2, error
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gantry: ") and error in lines[0], lines
    assert not Path(out).exists()


def test_main_in_process_at_batch_size_1(
    tiny: Path, cli_run: CliRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tiny / "model" / agent_eval.TRAIN_INFO).write_text('{"step": 7}')
    out = tmp_path / "r.json"
    argv = ["--model", str(tiny / "model"), "--data", str(tiny / "heldout.jsonl")]
    argv += ["--out", str(out), "--max-samples", "2", "--max-new-tokens", "3"]
    assert agent_eval.main([*argv, "--batch-size", "1", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d.get("message") for d in lines] == [
        f"loading {tiny / 'model'}",
        "1/2 samples",
        "2/2 samples",
        None,
    ]
    assert "tokens_per_s_batched" not in lines[-1]["results"]
    report = json.loads(out.read_text())
    assert report["checkpoint"] == "step 7" and report["samples"] == 2
    assert report["batch_size"] == 1 and report["tokens_per_s_batched"] is None
    assert 2 <= report["generated_tokens"] <= 6
    assert report["hardware"] == {**report["hardware"], "device": "cpu", "gpu": None}
    assert report["targets"]["tokens_per_s"]["target"] == 12_000.0


# --- metrics --------------------------------------------------------------------------


def test_bleu4_is_sacrebleus_corpus_bleu() -> None:
    import sacrebleu

    expected = sacrebleu.corpus_bleu(HYPS, [REFS]).score / 100
    assert 0 < expected < 1
    assert bleu4(HYPS, REFS) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_is_rouge_scores_mean_f_measure() -> None:
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    per_pair = [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS, strict=True)]
    assert rouge_l(HYPS, REFS) == pytest.approx(sum(per_pair) / len(per_pair), abs=1e-12)
    assert RougeL()(HYPS[0], REFS[0]) == pytest.approx(per_pair[0], abs=1e-12)


def test_metrics_by_hand() -> None:
    same = ["winter cloud music apple river"]
    assert bleu4(same, same) == pytest.approx(1.0)
    assert rouge_l(same, same) == pytest.approx(1.0)
    assert bleu4(["apple river stone cloud"], ["tiger green seven paper"]) == 0.0
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4.
    assert rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(0.75)
    assert rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_metrics_refuse_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="2 hypotheses for 1"):
        bleu4(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no hypotheses"):
        rouge_l([], [])


def test_percentile_matches_numpys_linear() -> None:
    import numpy as np

    values = [12.0, 3.0, 7.5, 30.0, 1.0, 9.0, 4.0]
    for q in (0, 10, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([5.0], 90) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


# --- targets --------------------------------------------------------------------------


def figures(**overrides: float) -> dict[str, float]:
    base = {"bleu4": 0.5, "rouge_l": 0.6, "ttft_ms_p90": 100.0, "tokens_per_s": 20_000.0}
    return {**base, **overrides}


def test_default_targets_and_json_overrides() -> None:
    assert EvalTargets() == EvalTargets(0.35, 0.45, 500.0, 12_000.0)
    t = EvalTargets.from_json('{"bleu4_min": 0.9, "ttft_ms_max": 50, "rouge_l_min": null}')
    assert t == EvalTargets(bleu4_min=0.9, ttft_ms_max=50.0)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[1]", "expected a JSON object"),
        ("{bad", "not JSON"),
        ('{"bleu": 0.3}', "unknown target 'bleu'"),
        ('{"bleu4_min": "high"}', "bleu4_min must be a number"),
        ('{"bleu4_min": true}', "bleu4_min must be a number"),
    ],
)
def test_bad_targets_are_named(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        EvalTargets.from_json(text)


def test_target_comparisons() -> None:
    checks = check_targets(figures(), EvalTargets())
    assert all_passed(checks)
    assert checks["bleu4"] == {"value": 0.5, "target": 0.35, "op": ">=", "pass": True}
    assert checks["ttft_ms_p90"]["op"] == "<="
    # A figure equal to its mark passes.
    at_marks = figures(bleu4=0.35, rouge_l=0.45, ttft_ms_p90=500.0, tokens_per_s=12_000.0)
    assert all_passed(check_targets(at_marks, EvalTargets()))
    for name, bad in [
        ("bleu4", 0.34),
        ("rouge_l", 0.1),
        ("ttft_ms_p90", 501.0),
        ("tokens_per_s", 11_999.0),
        ("bleu4", math.nan),
    ]:
        checks = check_targets(figures(**{name: bad}), EvalTargets())
        assert not checks[name]["pass"] and not all_passed(checks)
        assert sum(c["pass"] for c in checks.values()) == 3
    loose = EvalTargets(tokens_per_s_min=10.0)
    assert check_targets(figures(tokens_per_s=50.0), loose)["tokens_per_s"]["pass"]


# --- inputs ---------------------------------------------------------------------------


def test_samples_are_the_last_turns(tmp_path: Path) -> None:
    from agent.ml.data import ASSISTANT_TOKEN

    two_turns = {"text": ["S1", "a b c <end> c b a", "S2", "d e f <end> f e d"]}
    one_turn = {"text": ["S", "x y z <end> z y x"]}
    data = write_lines(tmp_path / "h.jsonl", json.dumps(two_turns), "", json.dumps(one_turn))
    samples = agent_eval.load_samples(data)
    assert [(s.line, s.prompt, s.reference) for s in samples] == [
        (1, "d e f", "f e d"),
        (3, "x y z", "z y x"),
    ]
    # The first turn's reference reply is in the model's input; the last one's is not.
    assert "c b a" in samples[0].model_input and "f e d" not in samples[0].model_input
    assert samples[0].model_input.endswith(ASSISTANT_TOKEN)
    assert len(agent_eval.load_samples(data, max_samples=1)) == 1


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ((), "no conversations"),
        (("", "  "), "no conversations"),
        (('{"text": ["S", "a <end> a"]}', "{oops"), "line 2: not JSON"),
        (('{"text": ["S"]}',), 'line 1: "text" must hold'),
        (('{"text": ["S", "a b <end> "]}',), "line 1: the last turn has no reply"),
    ],
)
def test_bad_data_is_named(tmp_path: Path, lines: tuple[str, ...], error: str) -> None:
    data = write_lines(tmp_path / "h.jsonl", *lines)
    with pytest.raises(agent_eval.BadInput, match=error):
        agent_eval.load_samples(data)


def test_checkpoint_label(tmp_path: Path) -> None:
    assert agent_eval.checkpoint_label(tmp_path, "job:final") == "job:final"
    assert agent_eval.checkpoint_label(tmp_path, None) == tmp_path.name
    (tmp_path / agent_eval.TRAIN_INFO).write_text('{"step": 120}')
    assert agent_eval.checkpoint_label(tmp_path, None) == "step 120"


# --- the CLI, checked last -----------------------------------------------------------


def test_cli_missing_model_exits_2_fast(tmp_path: Path) -> None:
    proc = subprocess.run(
        cli_argv("--model", str(tmp_path / "nope"), "--data", "x", "--out", "y"),
        capture_output=True,
        text=True,
        timeout=60,
        env=CLI_ENV,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gantry: --model {tmp_path / 'nope'}: no such directory"
    ]
    assert proc.stdout == ""


def test_cli_end_to_end(cli_run: CliRun) -> None:
    returncode, stdout, stderr = cli_run.wait()
    assert returncode == 0, stderr
    lines = [json.loads(line) for line in stdout.splitlines()]
    progress = [d for d in lines if "progress" in d]
    fractions = [d["progress"] for d in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    by_message = {d["message"]: d for d in progress}
    assert "3/5 samples" in by_message and "batch 3/3 at batch size 2" in by_message
    figures = by_message["5/5 samples"]["figures"]
    assert set(figures) == {"bleu4", "rouge_l", "ttft_ms_p50", "tokens_per_s"}
    done = lines[-1]
    assert done["done"] is True and all(not d.get("done") for d in lines[:-1])
    assert all(isinstance(v, float) for v in done["results"].values())

    report = json.loads(cli_run.out.read_text())
    assert set(report) >= REPORT_KEYS
    assert report["checkpoint"] == "demo:final" and report["samples"] == 5
    assert report["model"] == str(cli_run.model.resolve())
    for name in ("bleu4", "rouge_l"):
        assert 0.0 <= report[name] <= 1.0
    assert 0 < report["ttft_ms_p50"] <= report["ttft_ms_p90"]
    assert report["tokens_per_s"] > 0 and report["tokens_per_s_batched"] > 0
    assert 5 <= report["generated_tokens"] <= 5 * 8
    assert set(report["targets"]) == {"bleu4", "rouge_l", "ttft_ms_p90", "tokens_per_s"}
    assert report["targets"]["tokens_per_s"]["target"] == 1.0
    assert report["passed"] == all(t["pass"] for t in report["targets"].values())
    assert done["results"]["passed"] == (1.0 if report["passed"] else 0.0)
    assert done["results"]["bleu4"] == report["bleu4"]
    assert report["hardware"]["device"] == "cpu" or report["hardware"]["gpu"]
    assert len(report["examples"]) == 3
    assert set(report["examples"][0]) == {"prompt", "reference", "hypothesis"}
