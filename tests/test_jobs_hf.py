"""A Hugging Face `Trainer` script that knows nothing of Gantry (examples/hf-trainer/train.py
without its Gantry callback, tqdm bars on), run as a two-rank job by two real agents:

- its step, loss and learning rate show live from what it prints (log dicts on stdout,
  tqdm on stderr), and every rank shows its start-up phase, rank 1 too (it prints nothing);
- `kill -9` of rank 1 after a `checkpoint-N`: attempt 2 resumes from that `checkpoint-N`
  (passed as `--resume_from_checkpoint`), its steps continue from N and its loss from where
  it was, and the job ends succeeded;
- the checkpoints are listed with the Trainer's own convention.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.rank import demo_data
from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.deepspeed_env import DEEPSPEED_ENV, ROOT
from tests.test_cli import run_cli

JOB = "hf-job"
MAX_STEPS = 24
SAVE_STEPS = 8
START_TIMEOUT_S = 300  # two ranks importing torch, transformers and DeepSpeed on 2 busy cores
METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS
PHASE = job_pb2.JobEventKind.JOB_EVENT_KIND_RANK_PHASE


def hf_spec(path: Path, data: Path, out: Path) -> Path:
    spec = {
        "name": JOB,
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", "examples/hf-trainer/train.py"],
        "args": [
            "--deepspeed",
            "examples/hf-trainer/ds_config.json",
            "--data",
            str(data),
            "--output_dir",
            str(out),
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "1",
            "--max_steps",
            str(MAX_STEPS),
            "--learning_rate",
            "3e-3",
            "--logging_steps",
            "2",
            "--save_steps",
            str(SAVE_STEPS),
            "--max_length",
            "128",
            "--seed",
            "1",
            "--resume_from_checkpoint",
            "latest",
        ],
        "env": {**DEEPSPEED_ENV, "OMP_NUM_THREADS": "1"},
        "working_dir": str(ROOT),
        "restart": {"max_restarts": 2, "backoff_s": 0, "resume": "latest"},
        "hang_timeout_s": 120,
        "checkpoint_dir": str(out),
    }
    path.write_text(json.dumps(spec))
    return path


def metric_events(agent_dir: Path) -> list[job_pb2.JobEvent]:
    journal = Journal.open(agent_dir)
    try:
        return journal.events_after(0, JOB, kinds=[METRICS])
    finally:
        journal.close()


class Run:
    def __init__(self, cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.file = cluster_file
        self.capsys = capsys

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli([*args, "--cluster", str(self.file)], self.capsys)

    def job(self) -> dict[str, Any]:
        code, out, err = self.cli("job", JOB, "--json")
        assert code == 0, err
        return dict(json.loads(out))

    def wait(self, what: str, check: Any, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = self.job()
            if check(doc["job"]):
                return doc
            assert time.monotonic() < deadline, f"{what}: {json.dumps(doc)[-3000:]}"
            time.sleep(0.5)


def attempts(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("attempts", []))


def step(att: dict[str, Any], rank: int) -> int:
    for r in att.get("ranks", []):
        if r.get("rank", 0) == rank:
            return int(r.get("metrics", {}).get("step", 0))
    return 0


@pytest.fixture
def hf_run(
    deepspeed_warm: dict[str, str],
    local_agents: StartAgent,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[tuple[Run, Path, dict[str, Path]]]:
    agents = {name: local_agents(name) for name in ("node-a", "node-b")}
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents.values()])
    train, _ = demo_data.write_demo(tmp_path / "data", n_train=400, n_heldout=10, seed=3)
    out = tmp_path / "out"
    run = Run(cluster, capsys)
    code, _, err = run.cli("launch", str(hf_spec(tmp_path / "job.yaml", train, out)))
    assert code == 0, err
    yield run, out, {name: a.data_dir for name, a in agents.items()}
    run.cli("stop", JOB, "--grace", "2")


@pytest.mark.timeout(900)
def test_an_hf_trainer_script_is_watched_and_resumes_from_its_checkpoint(
    hf_run: tuple[Run, Path, dict[str, Path]],
) -> None:
    run, out, agent_dirs = hf_run
    # Live: the Trainer's own printing gives the step and loss of rank 0.
    doc = run.wait(
        "attempt 1 past its first checkpoint",
        lambda job: attempts(job) and step(attempts(job)[0], 0) >= SAVE_STEPS + 2,
    )
    first = attempts(doc["job"])[0]
    rank0 = next(r for r in first["ranks"] if r.get("rank", 0) == 0)
    assert "loss" in rank0["metrics"] and "learningRate" in rank0["metrics"]
    assert rank0["metrics"]["totalSteps"] == MAX_STEPS
    assert (out / f"checkpoint-{SAVE_STEPS}" / "trainer_state.json").is_file()
    # Every rank got through its start-up phases, rank 1 too (it prints nothing).
    _, events_out, _ = run.cli("events", JOB, "--json")
    phases = [json.loads(line) for line in events_out.splitlines()]
    phases = [e for e in phases if e["kind"] == "JOB_EVENT_KIND_RANK_PHASE"]
    for rank in (0, 1):
        seen = [e["details"]["phase"] for e in phases if e.get("rank", 0) == rank]
        assert "joining" in seen and seen[-1] == "training", (rank, seen)

    # kill -9 of rank 1's script: the next attempt resumes from the Trainer's checkpoint.
    victim = psutil.Process(next(r for r in first["ranks"] if r.get("rank") == 1)["pid"])
    [script] = victim.children()
    script.kill()
    doc = run.wait(
        "attempt 2 training", lambda job: len(attempts(job)) >= 2 and step(attempts(job)[1], 0) > 0
    )
    second = attempts(doc["job"])[1]
    resumed = Path(second["resumedFrom"])
    assert resumed.parent == out and resumed.name.startswith("checkpoint-")
    resumed_step = int(resumed.name.removeprefix("checkpoint-"))
    assert SAVE_STEPS <= resumed_step < MAX_STEPS
    reason = attempts(doc["job"])[0]["reason"]
    assert "rank 1" in reason

    doc = run.wait(
        "the job to succeed",
        lambda job: job.get("state") == "JOB_STATE_SUCCEEDED",
        timeout_s=START_TIMEOUT_S * 2,
    )
    events = [e for e in metric_events(agent_dirs["node-a"]) if e.rank == 0]
    # The script kept training between the status read and the kill, so the step it was
    # killed at is the last one rank 0 printed in attempt 1, not the one seen before the kill.
    steps_1 = [int(e.metrics.step) for e in events if e.attempt == 1]
    assert resumed_step <= max(steps_1)
    steps_2 = [int(e.metrics.step) for e in events if e.attempt == 2]
    assert steps_2 and min(steps_2) > resumed_step and max(steps_2) == MAX_STEPS
    losses_1 = [e.metrics.loss for e in events if e.attempt == 1 and e.metrics.HasField("loss")]
    losses_2 = [e.metrics.loss for e in events if e.attempt == 2 and e.metrics.HasField("loss")]
    # the loss continues from where it was, not from an untrained model's
    assert losses_2 and losses_2[0] < losses_1[0] - 0.5
    listed = {c["tag"]: c for c in doc.get("checkpoints", [])}
    assert f"checkpoint-{MAX_STEPS}" in listed
    assert listed[f"checkpoint-{MAX_STEPS}"].get("format") == "hf"
    assert listed[f"checkpoint-{MAX_STEPS}"].get("latest") is True
