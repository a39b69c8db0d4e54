"""agent.report: JSON-line records, heartbeat thread, no-op without env, stack dumps."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.rank.report import Reporter, memory_bytes

ROOT = Path(__file__).resolve().parent.parent


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "m" / "metrics.jsonl"
    clock = iter([100.0, 101.0, 102.0, 103.0, 104.0])
    rep = Reporter(path, rank=3, heartbeat_s=60, clock=lambda: next(clock))
    assert rep.enabled
    rep.start(step=0, world_size=4)
    rep.metrics(
        1,
        epoch=0.5,
        loss=2.5,
        grad_norm=None,  # not measured: absent, never 0
        lr=1e-3,
        collective_s={"all_reduce": 0.25},
        collective_total_s=0.25,
    )
    rep.checkpoint(1, "step1", tmp_path / "ckpt" / "step1")
    rep.heartbeat()
    rep.end("completed", final_dir="x")
    rep.close()
    rows = records(path)
    assert [r["kind"] for r in rows] == ["start", "metrics", "checkpoint", "heartbeat", "end"]
    assert all(r["rank"] == 3 for r in rows)
    assert [r["time"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    start, metrics, ckpt, beat, end = rows
    assert start["step"] == 0 and start["world_size"] == 4 and start["pid"] == os.getpid()
    assert metrics == {
        "kind": "metrics",
        "time": 101.0,
        "rank": 3,
        "step": 1,
        "epoch": 0.5,
        "loss": 2.5,
        "lr": 1e-3,
        "collective_s": {"all_reduce": 0.25},
        "collective_total_s": 0.25,
    }
    assert ckpt["tag"] == "step1" and ckpt["path"].endswith("ckpt/step1") and ckpt["step"] == 1
    assert beat["step"] == 1  # the last step reported
    assert end["status"] == "completed" and end["step"] == 1


def test_noop_without_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GANTRY_METRICS_FILE", raising=False)
    monkeypatch.chdir(tmp_path)
    with Reporter() as rep:
        assert not rep.enabled
        rep.start()
        rep.metrics(1, loss=1.0)
        rep.checkpoint(1, "t", "p")
    assert list(tmp_path.iterdir()) == []
    assert not any(t.name == "gantry-heartbeat" for t in threading.enumerate())


def test_env_names_file_rank_and_interval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "rank.jsonl"
    monkeypatch.setenv("GANTRY_METRICS_FILE", str(path))
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("GANTRY_HEARTBEAT_S", "0.05")
    with Reporter() as rep:
        assert rep.path == path and rep.rank == 5 and rep.heartbeat_s == 0.05
        rep.start(step=7)
        time.sleep(0.4)
    rows = records(path)
    beats = [r for r in rows if r["kind"] == "heartbeat"]
    assert len(beats) >= 3 and all(b["step"] == 7 and b["rank"] == 5 for b in beats)
    assert rows[-1]["kind"] == "end" and rows[-1]["status"] == "completed"
    assert not any(t.name == "gantry-heartbeat" for t in threading.enumerate())
    monkeypatch.setenv("GANTRY_HEARTBEAT_S", "0")
    with pytest.raises(ValueError):
        Reporter()


def test_failure_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(RuntimeError), Reporter(path, heartbeat_s=60) as rep:
        rep.start()
        raise RuntimeError("boom")
    end = records(path)[-1]
    assert end["kind"] == "end" and end["status"] == "failed" and "boom" in end["error"]


def test_lines_whole_under_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rep = Reporter(path, heartbeat_s=0.001)
    rep.start()
    payload = "x" * 3000

    def burst(n: int) -> None:
        for i in range(200):
            rep.metrics(i, note=payload, who=n)

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rep.close()
    rows = records(path)  # every line parses
    assert sum(1 for r in rows if r["kind"] == "metrics") == 800


def test_non_finite_and_memory(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with Reporter(path, heartbeat_s=60) as rep:
        rep.metrics(1, loss=float("nan"), memory_bytes=memory_bytes())
    row = records(path)[0]
    assert math.isnan(row["loss"]) and row["memory_bytes"] > 10_000_000


def test_collective_clock_without_deepspeed() -> None:
    # In a fresh interpreter: this session may have imported DeepSpeed already.
    code = (
        "import sys\n"
        "from agent.report import CollectiveClock\n"
        "assert 'deepspeed' not in sys.modules\n"
        "print(CollectiveClock().take())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "None\n"), done.stderr


def test_sigusr1_dumps_stacks() -> None:
    code = (
        "import threading, time\n"
        "from agent.report import install_stack_dump\n"
        "install_stack_dump()\n"
        "def worker_loop():\n"
        "    time.sleep(30)\n"
        "threading.Thread(target=worker_loop, daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert proc.poll() is None  # still alive after the dump
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "worker_loop" in err  # the other thread's stack
    assert "Current thread" in err or "Thread 0x" in err
