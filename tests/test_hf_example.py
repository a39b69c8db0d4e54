"""examples/hf-trainer/train.py as a user runs it: two plain processes (RANK, WORLD_SIZE,
...) training under DeepSpeed on the CPU, then a second run that resumes from `latest`."""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.rank.demo_data import write_demo
from tests.deepspeed_env import ROOT
from tests.ds_runs import train_two_ranks

SCRIPT = ROOT / "examples" / "hf-trainer" / "train.py"
DS_CONFIG = ROOT / "examples" / "hf-trainer" / "ds_config.json"
RUN_TIMEOUT_S = 300
# Small and few steps: the first run still logs 4 times, saves twice and crosses an epoch
# (the data is ~9.5 optimizer steps long); the second resumes and logs twice more.
N_TRAIN = 150
LOG_STEPS = 3
SAVE_STEPS = 6
FIRST_STEPS = 4 * LOG_STEPS
SECOND_STEPS = FIRST_STEPS + 2 * LOG_STEPS


@dataclass
class Run:
    logs: list[str]
    metrics: list[Path]

    def log_dicts(self) -> list[dict[str, float]]:
        """The Trainer's printed step logs on rank 0: {'loss': '2.5', ...} (v5 prints strings)."""
        found = []
        for line in self.logs[0].splitlines():
            if line.startswith("{'loss'"):
                found.append({k: float(v) for k, v in ast.literal_eval(line).items()})
        return found

    def records(self, rank: int) -> list[dict[str, Any]]:
        path = self.metrics[rank]
        return [json.loads(line) for line in path.read_text().splitlines()]


def run_two_ranks(env: dict[str, str], out: Path, name: str, args: list[str]) -> Run:
    metrics = [out.parent / f"{name}.metrics.rank{rank}.jsonl" for rank in range(2)]
    done = train_two_ranks(
        {**env, "OMP_NUM_THREADS": "1", "GANTRY_HEARTBEAT_S": "1"},
        out,
        name,
        args,
        timeout_s=RUN_TIMEOUT_S,
        command=[sys.executable, str(SCRIPT)],
        metrics=metrics,
    )
    return Run(done.logs, metrics)


def global_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def test_trains_under_deepspeed_and_resumes_latest(
    deepspeed_warm: dict[str, str], tmp_path: Path
) -> None:
    data, _ = write_demo(tmp_path / "data", n_train=N_TRAIN, n_heldout=0)
    out = tmp_path / "out"
    out.mkdir()
    common = [
        "--deepspeed",
        str(DS_CONFIG),
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--learning_rate",
        "3e-3",
        "--warmup_steps",
        "2",
        "--logging_steps",
        str(LOG_STEPS),
        "--save_steps",
        str(SAVE_STEPS),
        "--disable_tqdm",
        "true",
        "--gantry_callback",
        "--resume_from_checkpoint",
        "latest",  # nothing there yet: a fresh start
    ]
    first = run_two_ranks(deepspeed_warm, out, "first", [*common, "--max_steps", str(FIRST_STEPS)])
    assert "starting fresh" in first.logs[0]
    last = out / f"checkpoint-{FIRST_STEPS}"
    assert global_step(last) == FIRST_STEPS
    assert (last / f"global_step{FIRST_STEPS}").is_dir()  # DeepSpeed's own state
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    losses = [d["loss"] for d in first.log_dicts()]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5, losses

    for rank in (0, 1):
        # heartbeats go on after the end record, until the process exits
        rows = [r for r in first.records(rank) if r["kind"] != "heartbeat"]
        kinds = [r["kind"] for r in rows]
        assert "start" in kinds and kinds[-1] == "end" and rows[-1]["status"] == "completed"
        start = rows[kinds.index("start")]
        assert start["world_size"] == 2 and start["deepspeed"] is True
        steps = [r for r in rows if r["kind"] == "metrics" and "step_time_s" in r]
        assert [r["step"] for r in steps] == list(range(1, FIRST_STEPS + 1))
        assert all(r["collective_total_s"] > 0 and r["collective_s"] for r in steps)
        assert [r["step"] for r in rows if r["kind"] == "checkpoint"] == [SAVE_STEPS, FIRST_STEPS]
        phases = [r["phase"] for r in rows if r["kind"] == "phase"]
        assert phases == ["first_step", "training"]

    second = run_two_ranks(
        deepspeed_warm, out, "second", [*common, "--max_steps", str(SECOND_STEPS)]
    )
    assert f"resuming from {last}" in second.logs[0]
    assert global_step(out / f"checkpoint-{SECOND_STEPS}") == SECOND_STEPS
    resumed = second.log_dicts()
    assert len(resumed) == 2
    # the first loss logged goes on from where the first run stopped, far below where it began
    assert resumed[0]["loss"] < (losses[0] + losses[-1]) / 2, (losses, resumed)
    state = json.loads((out / f"checkpoint-{SECOND_STEPS}" / "trainer_state.json").read_text())
    logged_steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged_steps == list(range(LOG_STEPS, SECOND_STEPS + 1, LOG_STEPS))  # 6 of them
    rows = second.records(0)
    start = next(r for r in rows if r["kind"] == "start")
    assert start["step"] == FIRST_STEPS and start["resumed_from"] == str(last)
