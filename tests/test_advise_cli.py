"""`gantry advise`: the advisor's findings for a live job from the CLI, and applying
one (two real agents, the fake training script running out of memory)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import wait_job, write_job


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

    code, out, err = cli(["advise", "oom-job", "--apply", "oom", "--cluster", str(cluster)], capsys)
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
    assert len(report["job"]["attempts"]) == 2
    spec_args = report["job"]["spec"]["args"]
    assert spec_args[spec_args.index("--per_device_train_batch_size") + 1] == "4"
    assert spec_args[spec_args.index("--gradient_accumulation_steps") + 1] == "2"
    code, out, _ = cli(["job", "oom-job", "--cluster", str(cluster), "--json"], capsys)
    assert json.loads(out)["cost"]["gpu_hours"] > 0
