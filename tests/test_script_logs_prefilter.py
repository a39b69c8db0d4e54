"""The script parser's prefilter skips lines no reader starts from: skipping must change no
record. Every log text the tests and the corpus hold is read twice, once with the prefilter
and once with it matching everything, and the records compared."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from agent.jobs.metrics_records import Record, RecordKind
from agent.jobs.node import script_logs
from agent.jobs.node.script_logs import ScriptLogParser

TESTS = Path(__file__).resolve().parent
_SOURCES = [
    *sorted(TESTS.glob("test_script_logs*.py")),
    TESTS / "test_deepspeed_lines.py",
    TESTS / "test_megatron_lines.py",
    TESTS / "script_log_helpers.py",
]


def _texts() -> list[str]:
    """Multi-line string constants of the parsers' tests, and the corpus' log excerpts."""
    texts = [
        p.read_text(errors="replace") for p in sorted((TESTS / "fixtures" / "logs").glob("*.log"))
    ]
    for path in _SOURCES:
        if path.name == Path(__file__).name or not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and text.count("\n") >= 2:
                texts.append(text)
    return texts


def _read(text: str) -> list[tuple[object, ...]]:
    parser = ScriptLogParser()
    records: list[Record] = []
    now = 0.0
    for i, line in enumerate(text.split("\n")):
        now += 0.05
        records += parser.feed("stderr" if "%|" in line or i % 7 == 3 else "stdout", line, now)
        if i % 40 == 39:
            records += parser.flush(now)
    records += parser.flush(now + 10.0)
    return [
        (
            r.kind,
            r.step,
            r.phase,
            r.source,
            r.time,
            r.metrics.SerializeToString(deterministic=True) if r.metrics is not None else None,
        )
        for r in records
    ]


TEXTS = _texts()


def test_the_inputs_are_many_and_hold_records() -> None:
    assert len(TEXTS) >= 40
    assert sum(bool(_read(t)) for t in TEXTS) >= 12


@pytest.mark.parametrize("index", range(len(TEXTS)))
def test_skipping_quiet_lines_changes_no_record(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = TEXTS[index]
    filtered = _read(text)
    monkeypatch.setattr(script_logs, "_may_wake", lambda line: True)
    monkeypatch.setattr(script_logs, "_STARTUP", re.compile(""))
    assert _read(text) == filtered


def test_a_chatty_line_is_skipped_and_a_step_line_is_not() -> None:
    parser = ScriptLogParser()
    assert (
        parser.feed("stdout", "sample 12: tokens=2048 padded=17 source=shard-001.jsonl", 1.0) == []
    )
    step = (
        "[2024-05-01 10:00:00,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=5, skipped=0,"
        " lr=[0.0001], mom=[(0.9, 0.999)]"
    )
    records = parser.feed("stdout", step, 1.0)
    assert [r.step for r in records if r.kind == RecordKind.METRICS] == [5]
