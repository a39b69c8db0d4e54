"""agent.rank.quick_exit: a rank leaves with main's status, atexit handlers run and
stdio flushed, without the interpreter's finalization (the 1-8 s a DeepSpeed rank spent
after its end record)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.deepspeed_env import ROOT

SCRIPT = """
import atexit, signal, sys
from agent.rank.quick_exit import exit_after

class Finalized:
    def __del__(self):  # runs only in the interpreter's finalization
        sys.stdout.write("finalized\\n")

kept = Finalized()
atexit.register(lambda: print("atexit ran"))

def main():
    sys.stdout.write("buffered, no newline")  # flushed by exit_after
    outcome = sys.argv[1]
    if outcome == "terminated":
        raise SystemExit(128 + signal.SIGTERM)
    if outcome == "message":
        sys.exit("the data file is gone")
    if outcome == "error":
        raise RuntimeError("boom")
    return int(outcome)

exit_after(main)
"""


def run(tmp_path: Path, outcome: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), outcome],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("outcome", "code"), [("0", 0), ("3", 3), ("terminated", 143)])
def test_status_kept_atexit_run_finalization_skipped(
    tmp_path: Path, outcome: str, code: int
) -> None:
    done = run(tmp_path, outcome)
    assert done.returncode == code, done.stderr
    assert done.stdout == "buffered, no newlineatexit ran\n"
    assert done.stderr == ""


def test_exit_with_a_message_prints_it_and_exits_1(tmp_path: Path) -> None:
    done = run(tmp_path, "message")
    assert (done.returncode, done.stderr) == (1, "the data file is gone\n")
    assert "atexit ran" in done.stdout and "finalized" not in done.stdout


def test_other_exceptions_end_the_process_as_python_does(tmp_path: Path) -> None:
    done = run(tmp_path, "error")
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr
    assert "atexit ran" in done.stdout and "finalized" in done.stdout
