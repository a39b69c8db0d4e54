"""`gantry advise`: the advisor's findings for a live job from the CLI, and applying
one (two real agents, the fake training script running out of memory): asked on a
terminal, refused without one unless --yes, and never applied to another attempt than
the one it was found in."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import ROOT, wait_job, write_job


def apply_on_a_terminal(cluster: Path, rule: str) -> tuple[subprocess.Popen[bytes], int, str]:
    """`gantry advise oom-job --apply RULE` with a terminal for stdin, once it has asked:
    the process, the terminal's end to answer on, and the question."""
    answer_fd, terminal_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "advise", "oom-job", "--apply", rule],
        cwd=ROOT,
        stdin=terminal_fd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "GANTRY_CLUSTER": str(cluster)},
    )
    os.close(terminal_fd)
    assert proc.stderr is not None
    asked = b""
    while not asked.endswith(b"[y/N] "):
        byte = proc.stderr.read(1)
        assert byte, f"gantry ended without asking: {asked!r}"
        asked += byte
    return proc, answer_fd, asked.decode()


def attempts(cluster: Path, capsys: pytest.CaptureFixture[str]) -> int:
    _, out, _ = cli(["job", "oom-job", "--cluster", str(cluster), "--json"], capsys)
    return len(json.loads(out)["job"]["attempts"])


def test_advise_finds_the_oom_and_applies_its_fix(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])
    args = ["--steps", "100000", "--step-s", "0.1", "--oom-above", "4"]
    args += ["--per_device_train_batch_size", "8"]
    spec = write_job(tmp_path, "oom-job", args)
    assert cli(["launch", str(spec), "--cluster", str(cluster)], capsys)[0] == 0
    wait_job(cluster, "oom-job", {"JOB_STATE_FAILED"}, capsys)

    code, out, err = cli(["advise", "oom-job", "--cluster", str(cluster), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    oom = next(f for f in report["findings"] if f["rule"] == "oom")
    assert oom["applicable"] and oom["remedy"]["kind"] == "halve-micro-batch"
    assert "CUDA out of memory" in oom["evidence"]
    code, out, _ = cli(["advise", "oom-job", "--cluster", str(cluster)], capsys)
    assert "[critical] oom" in out and "gantry advise oom-job --apply oom" in out

    code, _, err = cli(["advise", "oom-job", "--apply", "nope", "--cluster", str(cluster)], capsys)
    assert code == 2 and "no finding 'nope'" in err and err.count("\n") == 1

    # No terminal to ask on, and no --yes: refused, nothing restarted.
    code, out, err = cli(["advise", "oom-job", "--apply", "oom", "--cluster", str(cluster)], capsys)
    assert code == 2 and "pass --yes" in err and err.count("\n") == 1
    assert attempts(cluster, capsys) == 1
    # On a terminal it asks; "n" (or nothing) leaves the job alone.
    proc, answer, asked = apply_on_a_terminal(cluster, "oom")
    assert asked.startswith("apply oom to oom-job (") and "this restarts it [y/N] " in asked
    os.write(answer, b"n\n")
    _, err_bytes = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "oom not applied to oom-job" in err_bytes.decode()
    assert attempts(cluster, capsys) == 1
    # The job restarts while the question is up: the finding was attempt 1's, so "y"
    # applies nothing to attempt 2.
    proc, answer, _ = apply_on_a_terminal(cluster, "oom")
    assert cli(["restart", "oom-job", "--cluster", str(cluster)], capsys)[0] == 0
    os.write(answer, b"y\n")
    _, err_bytes = proc.communicate(timeout=60)
    assert proc.returncode == 2, err_bytes
    assert "oom was found in attempt 1 at 2 ranks, and oom-job is now on attempt 2" in (
        err_bytes.decode()
    )
    wait_job(cluster, "oom-job", {"JOB_STATE_FAILED"}, capsys)  # attempt 2 runs out too
    assert attempts(cluster, capsys) == 2

    code, out, err = cli(
        ["advise", "oom-job", "--apply", "oom", "--yes", "--cluster", str(cluster)], capsys
    )
    assert code == 0, err
    assert "--per_device_train_batch_size 8 -> 4" in out
    report = wait_job(cluster, "oom-job", {"JOB_STATE_RUNNING"}, capsys)
    deadline = time.monotonic() + 30
    while True:  # the new attempt runs past the step that ran out of memory
        report = wait_job(cluster, "oom-job", {"JOB_STATE_RUNNING"}, capsys)
        ranks = report["job"]["attempts"][-1]["ranks"]
        if all(int(r.get("metrics", {}).get("step", 0)) >= 4 for r in ranks):
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.3)
    assert len(report["job"]["attempts"]) == 3
    spec_args = report["job"]["spec"]["args"]
    assert spec_args[spec_args.index("--per_device_train_batch_size") + 1] == "4"
    assert spec_args[spec_args.index("--gradient_accumulation_steps") + 1] == "2"
    code, out, _ = cli(["job", "oom-job", "--cluster", str(cluster), "--json"], capsys)
    assert json.loads(out)["cost"]["gpu_hours"] > 0
