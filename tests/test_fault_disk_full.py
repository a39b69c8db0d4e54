"""Disk full while a checkpoint is written (issue 19): Gantry's trainer, two ranks under two
real agents on 127.0.0.1, its checkpoint_dir on a 32 MiB tmpfs that holds one checkpoint
(~21 MB) but not two. The save of step 6 fails: the rank's and the attempt's reason say the
save failed for want of space, naming the directory; step 3 stays whole and ``latest``
names it; once the tmpfs grows, the restart resumes from step 3 and completes.

Needs root (mount). Prints ``{"disk_full_checkpoint_intact": ...}`` for the bench.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rank import demo_data
from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import start_agent, stop_all
from tests.conftest import kill_processes_mentioning
from tests.deepspeed_env import DEEPSPEED_ENV, ROOT
from tests.test_cli import run_cli

JOB = "disk-full"
START_TIMEOUT_S = 240  # two ranks importing torch and DeepSpeed on busy cores


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("test_fault_disk_full needs root (mount -t tmpfs); CI runs it as root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs at tmp_path/out/checkpoints, unmounted afterwards."""
    require_root()
    ckpt = tmp_path / "out" / "checkpoints"
    ckpt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32M", "gantry-b2", str(ckpt)], check=True)
    try:
        yield ckpt
    finally:
        kill_processes_mentioning(str(tmp_path))  # nothing may hold the mount
        subprocess.run(["umount", "-l", str(ckpt)], check=False)


def files_digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def spec(tmp_path: Path, ckpt: Path) -> Path:
    args = [
        "--deepspeed_config",
        "examples/ds_config_zero3.json",
        "--model_name_or_path",
        "tiny-moe",
        "--data",
        str(tmp_path / "demo" / "train.jsonl"),
        "--output_dir",
        str(ckpt.parent),
        # Steps of one short sample, no accumulation: the checkpoint's size (the model's
        # and its optimizer's state) is the same, its steps faster.
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "1",
        "--save_steps",
        "3",
        "--max_steps",
        "6",
        "--max_length",
        "64",
        "--seed",
        "1",
        "--resume_from_checkpoint",
        "latest",
    ]
    body = {
        "name": JOB,
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", "-m", "agent.train"],
        "args": args,
        "env": {**DEEPSPEED_ENV, "OMP_NUM_THREADS": "1", "GANTRY_CPU_BF16": "0"},
        "working_dir": str(ROOT),
        # The test grows the disk as soon as attempt 1 has failed: attempt 2 starts its
        # ranks (seconds of imports) and trains 3 steps before it saves.
        "restart": {"max_restarts": 1, "backoff_s": 1, "resume": "latest"},
        "collective_timeout_s": 60,
        "checkpoint_dir": str(ckpt),
    }
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def test_a_full_disk_fails_the_save_loudly_and_the_restart_resumes_from_the_last_good(
    deepspeed_warm: dict[str, str],
    small_disk: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt = small_disk
    demo_data.write_demo(tmp_path / "demo", n_train=60, n_heldout=5, seed=1)
    agents = [start_agent(n, tmp_path / "agents" / n) for n in ("node-a", "node-b")]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])

    def job() -> dict[str, Any]:
        code, out, err = run_cli(["job", JOB, "--cluster", str(cluster), "--json"], capsys)
        assert code == 0, err
        report: dict[str, Any] = json.loads(out)
        return report

    def wait(
        what: str,
        check: Callable[[dict[str, Any]], bool],
        timeout: float,
        sooner: Callable[[], bool] = lambda: False,
    ) -> Any:
        """Until `check` holds for the job's report or, looked at every 20 ms between two
        reports, `sooner` holds."""
        deadline = time.monotonic() + timeout
        while True:
            report = job()
            if check(report):
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {json.dumps(report)[-3000:]}")
            next_report = time.monotonic() + 0.25
            while time.monotonic() < next_report:
                if sooner():
                    return report
                time.sleep(0.02)

    try:
        code, _, err = run_cli(
            ["launch", str(spec(tmp_path, ckpt)), "--cluster", str(cluster)], capsys
        )
        assert code == 0, err
        ended = ("JOB_STATE_FAILED", "JOB_STATE_SUCCEEDED")
        # step3's files read as soon as `latest` names it: the steps to the save of step6
        # take well under a second.
        wait(
            "step3 saved",
            lambda r: (ckpt / "latest").is_file() or r["job"].get("state") in ended,
            START_TIMEOUT_S,
            sooner=(ckpt / "latest").is_file,
        )
        step3 = files_digest(ckpt / "step3")
        report = wait(
            "attempt 1 to fail",
            lambda r: r["job"]["attempts"][0].get("state") == "JOB_STATE_FAILED",
            START_TIMEOUT_S,
        )
        first = report["job"]["attempts"][0]
        wanted = f"checkpoint save failed: no space left on device in {ckpt}"
        assert wanted in first["reason"], first["reason"]
        assert any(wanted in r.get("reason", "") for r in first["ranks"]), first["ranks"]
        # The previous checkpoint is whole, and `latest` names it, not the cut one.
        assert (ckpt / "latest").read_text() == "step3"
        intact = files_digest(ckpt / "step3") == step3
        listed = [c["tag"] for c in report.get("checkpoints", [])]
        assert listed == ["step3"], listed

        subprocess.run(["mount", "-o", "remount,size=96M", str(ckpt)], check=True)
        report = wait(
            "the restart to finish",
            lambda r: r["job"].get("state") in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"),
            START_TIMEOUT_S,
        )
        second = report["job"]["attempts"][1]
        assert report["job"]["state"] == "JOB_STATE_SUCCEEDED", report["job"].get("reason")
        assert Path(second["resumedFrom"]).name == "step3"
        assert {r["metrics"]["step"] for r in second["ranks"]} == {6}
        assert (ckpt / "latest").read_text() == "step6"
        assert [c["tag"] for c in report.get("checkpoints", [])] == ["step3", "step6"]
        assert intact
        with capsys.disabled():
            print(json.dumps({"disk_full_checkpoint_intact": intact}))
    finally:
        stop_all(agents)
