"""Gantry's start-up hook in an unchanged script's Python (agent/rank/bootstrap): phases,
heartbeats and stacks, in real interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.jobs.node.launch import BOOTSTRAP_DIR
from tests.deepspeed_env import free_port

PLAIN_DDP = """
import os, subprocess, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
model = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
# a child Python (a compiler, a data worker) must not speak for the rank
subprocess.run([sys.executable, "-c", "pass"], check=True)
for _ in range(2):
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
dist.destroy_process_group()
print("trained", flush=True)
"""


def run(script: str, tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    metrics = tmp / "metrics.jsonl"
    full = {
        **os.environ,
        "PYTHONPATH": BOOTSTRAP_DIR,
        "GANTRY_METRICS_FILE": str(metrics),
        "GANTRY_HEARTBEAT_S": "0.05",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        **env,
    }
    for name in ("GANTRY_RANK_HOOKS_PID", "GANTRY_HEARTBEAT_PID"):
        full.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=full, capture_output=True, text=True, timeout=120
    )
    return done, metrics


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_plain_torch_script_reports_its_phases_and_heartbeats(tmp_path: Path) -> None:
    done, metrics = run(PLAIN_DDP, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained" in done.stdout
    rows = records(metrics)
    phases = [r["phase"] for r in rows if r["kind"] == "phase"]
    assert phases == ["importing", "joining", "first_step", "training"]
    assert any(r["kind"] == "heartbeat" for r in rows)
    assert {r["rank"] for r in rows} == {0}


def test_switched_off_or_without_a_metrics_file_it_does_nothing(tmp_path: Path) -> None:
    done, metrics = run("print('ok')", tmp_path, GANTRY_INSTRUMENT="0")
    assert done.returncode == 0 and done.stdout == "ok\n"
    assert records(metrics) == []
    done, _ = run("print('ok')", tmp_path, GANTRY_METRICS_FILE="")
    assert done.returncode == 0 and done.stdout == "ok\n"


def test_a_broken_metrics_path_never_fails_the_script(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done, _ = run("print('still runs')", tmp_path, GANTRY_METRICS_FILE=str(blocker / "m.jsonl"))
    assert done.returncode == 0 and done.stdout == "still runs\n"


def test_the_sitecustomize_it_shadows_still_runs(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITE'] = 'yes'\n")
    done, metrics = run(
        "import os; print(os.environ.get('OWN_SITE'))",
        tmp_path,
        PYTHONPATH=os.pathsep.join([BOOTSTRAP_DIR, str(own)]),
    )
    assert done.returncode == 0 and done.stdout == "yes\n"
    assert [r["phase"] for r in records(metrics) if r["kind"] == "phase"] == ["importing"]


def test_sigusr1_prints_every_thread(tmp_path: Path) -> None:
    script = "import os, signal, time; os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2)"
    done, _ = run(script, tmp_path)
    assert done.returncode == 0
    # the main thread and Gantry's heartbeat thread
    assert done.stderr.count("Thread 0x") + done.stderr.count("Current thread 0x") >= 2


def test_phases_around_a_wrapped_call() -> None:
    from agent.rank.hooks import PhaseLog

    written: list[str] = []
    phases = PhaseLog(written.append)
    phases.set("importing")
    build = phases.during("building_ops", stay_after=("importing",))(lambda: "built")
    assert build() == "built"
    assert written == ["importing", "building_ops"]  # no step back to importing
    phases.set("first_step")
    assert build() == "built"  # an op built later: back to where the rank was
    assert written[-2:] == ["building_ops", "first_step"]
    phases.set("training")
    phases.set("joining")  # once training, a rank has no start-up phases left
    assert written[-1] == "training"


TRAIN_THEN_BLOCK = """
import threading, time, torch
model = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
end = time.time() + 0.6
while time.time() < end:  # training: optimizer steps between heartbeats
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
print(time.time(), flush=True)
threading.Event().wait(1.5)  # then blocked in one call, as in a collective a peer never joins
"""


def test_heartbeats_say_whether_the_rank_moved_on(tmp_path: Path) -> None:
    done, metrics = run(TRAIN_THEN_BLOCK, tmp_path)
    assert done.returncode == 0, done.stderr
    blocked_at = float(done.stdout.split()[-1])
    beats = [r for r in records(metrics) if r["kind"] == "heartbeat"]
    # Not said before the first optimizer step (as a launcher's would not be).
    assert "moved" not in beats[0]
    training = [b["moved"] for b in beats if b["time"] < blocked_at and "moved" in b]
    # Inside the wait (the process then exits, and its main thread moves again).
    blocked = [b.get("moved") for b in beats if blocked_at + 0.2 < b["time"] < blocked_at + 1.3]
    # Every beat while training normally falls after a step; a starved thread may miss one.
    assert training and sum(training) >= len(training) / 2
    # The first beat in the wait may still see the move into it (a starved thread beats late).
    assert len(blocked) >= 2 and not any(blocked[1:])


TRAINER_MADE = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2)
args = TrainingArguments(output_dir="out", logging_steps=25, disable_tqdm=True, use_cpu=True,
                         report_to="none", eval_strategy="steps", eval_steps=40, max_steps=120)
Trainer(model=LlamaForCausalLM(config), args=args, eval_dataset=[{"input_ids": [1, 2]}])
"""


def test_a_trainer_s_logging_settings_in_the_script_s_code_are_recorded(tmp_path: Path) -> None:
    done, metrics = run(TRAINER_MADE, tmp_path)
    assert done.returncode == 0, done.stderr
    [trainer] = [r for r in records(metrics) if r["kind"] == "trainer"]
    assert trainer["logging_steps"] == 25 and trainer["logging_first_step"] is False
    assert trainer["eval_steps"] == 40 and trainer["max_steps"] == 120


TRAIN_THEN_BUSY = """
import time, torch
model = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(20):
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    opt.zero_grad()
started = time.time()
while time.time() - started < 1.2:
    sum(range(10**8 // 4))  # one long call at one place, on the CPU: an evaluation's way
print(started, flush=True)
"""


def test_a_main_thread_busy_in_one_call_has_moved(tmp_path: Path) -> None:
    """Work at one line (a device sync per batch, a long kernel) is not a hang: it uses CPU."""
    done, metrics = run(TRAIN_THEN_BUSY, tmp_path)
    assert done.returncode == 0, done.stderr
    busy_from = float(done.stdout.split()[-1])
    beats = [r for r in records(metrics) if r["kind"] == "heartbeat"]
    busy = [b.get("moved") for b in beats if busy_from + 0.2 < b["time"] < busy_from + 1.1]
    assert len(busy) >= 2 and all(busy[1:])
