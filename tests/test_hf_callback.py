"""agent.hf_callback with a real (tiny, one-process) Trainer; agent.report's module-level
report() in a script of its own; one heartbeat thread per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.metrics_records import Record, RecordKind, RecordParser
from agent.rank.report import HEARTBEAT_PID_ENV, METRICS_FILE_ENV, Reporter

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_TIMEOUT_S = 120

MICRO_BATCH = 4
GRAD_ACCUM = 2
SEQ = 16


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def parsed(path: Path) -> list[Record]:
    parser = RecordParser()
    return [r for line in path.read_text().splitlines() if (r := parser.parse(line)) is not None]


class Batches:
    """64 rows of SEQ tokens, the last ones padded; labels are the inputs."""

    def __init__(self) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, 60, (64, SEQ), generator=gen)
        self.mask = torch.ones(64, SEQ, dtype=torch.long)
        for i in range(64):
            self.mask[i, SEQ - i % 5 :] = 0

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, Any]:
        labels = self.ids[i].masked_fill(self.mask[i] == 0, -100)
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": labels}


def tiny_trainer(out: Path, max_steps: int, reporter: Reporter, eval_steps: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from agent.rank.hf_callback import GantryCallback

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        max_steps=max_steps,
        learning_rate=1e-3,
        logging_steps=2,
        save_steps=3,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps or None,
    )
    trainer = Trainer(
        model=LlamaForCausalLM(config),
        args=args,
        train_dataset=Batches(),
        eval_dataset=Batches() if eval_steps else None,
    )
    trainer.add_callback(GantryCallback(reporter))
    return trainer


def test_callback_writes_the_trainers_records(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = tmp_path / "metrics.jsonl"
    rep = Reporter(path, rank=0, heartbeat_s=60)
    tiny_trainer(out, max_steps=6, reporter=rep).train()

    raw = rows(path)
    records = parsed(path)
    kinds = [r.kind for r in records]
    assert kinds[0] == RecordKind.START and kinds[-1] == RecordKind.END
    start, end = raw[0], raw[-1]
    assert start["step"] == 0 and start["world_size"] == 1 and start["total_steps"] == 6
    assert start["micro_batch"] == MICRO_BATCH
    assert start["gradient_accumulation_steps"] == GRAD_ACCUM
    assert start["parameters"] > 0 and "resumed_from" not in start
    phases = [r["phase"] for r in raw if r["kind"] == "phase"]
    assert phases == ["first_step", "training"]
    assert raw.index(next(r for r in raw if r["kind"] == "phase")) == 1

    metrics = [r.metrics for r in records if r.kind == RecordKind.METRICS and r.metrics]
    assert [m.step for m in metrics] == [1, 2, 3, 4, 5, 6]  # one record per step, in order
    for m in metrics:
        assert m.step_time_s > 0 and m.forward_s > 0 and m.backward_s > 0
        assert m.HasField("optimizer_step_s") and m.memory_bytes > 10_000_000
        samples = m.samples_per_s * m.step_time_s
        tokens = m.tokens_per_s * m.step_time_s
        assert samples == pytest.approx(MICRO_BATCH * GRAD_ACCUM, rel=0.01)
        assert tokens >= MICRO_BATCH * GRAD_ACCUM * (SEQ - 4) * 0.99
        assert tokens <= MICRO_BATCH * GRAD_ACCUM * SEQ * 1.01
        assert not m.collective_time_by_op_s  # no DeepSpeed comms logger here
    logged = {m.step for m in metrics if m.HasField("loss")}
    assert logged == {2, 4, 6}  # the Trainer's logging steps, merged into their records
    for m in metrics:
        if m.step in logged:
            assert m.HasField("grad_norm") and m.HasField("learning_rate") and m.epoch > 0

    ckpts = [(r.step, r.tag, r.path) for r in records if r.kind == RecordKind.CHECKPOINT]
    assert ckpts == [(n, f"checkpoint-{n}", str(out / f"checkpoint-{n}")) for n in (3, 6)]
    assert all(Path(p).is_dir() for _, _, p in ckpts)
    # the checkpoint record follows its step's metrics record
    steps = [(r["kind"], r.get("step")) for r in raw if r["kind"] in ("metrics", "checkpoint")]
    assert steps.index(("checkpoint", 3)) == steps.index(("metrics", 3)) + 1
    assert end["status"] == "completed" and end["step"] == 6 and end["loss"] > 0

    rep.close()
    resumed_path = tmp_path / "resumed.jsonl"
    rep2 = Reporter(resumed_path, rank=0, heartbeat_s=60)
    tiny_trainer(out, max_steps=8, reporter=rep2).train(
        resume_from_checkpoint=str(out / "checkpoint-6")
    )
    rep2.close()
    again = rows(resumed_path)
    assert again[0]["kind"] == "start" and again[0]["step"] == 6
    assert again[0]["resumed_from"] == str(out / "checkpoint-6")
    assert [r["step"] for r in again if r["kind"] == "metrics" and "step_time_s" in r] == [7, 8]


def run_script(
    code: str, env_extra: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", HEARTBEAT_PID_ENV)}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )


REPORT_SCRIPT = """
import sys, time
before = set(sys.modules)
from agent.rank.report import report, report_checkpoint, report_phase

class Scalar:  # what a 0-d tensor or a numpy scalar offers
    def item(self): return 0.5

report_phase("importing")
new = {m.split(".")[0] for m in set(sys.modules) - before}
outside = sorted(new - set(sys.stdlib_module_names))
print(" ".join(outside))
for step in (1, 2, 3):
    report(step=step, loss=4.0 - step, lr=1e-3, grad_norm=Scalar())
    time.sleep(0.15)
report_checkpoint(3, "/ckpt/step3")
if len(sys.argv) > 1:
    raise RuntimeError("boom")
"""


def test_callback_writes_each_evaluations_loss_at_its_step(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    rep = Reporter(path, rank=0, heartbeat_s=60)
    tiny_trainer(tmp_path / "out", max_steps=4, reporter=rep, eval_steps=2).train()
    rep.close()  # its heartbeats go on after training, as the script's process would
    evaluated = [r.metrics for r in parsed(path) if r.metrics and r.metrics.HasField("eval_loss")]
    assert [m.step for m in evaluated] == [2, 4]
    assert all(0 < m.eval_loss < 10 and not m.HasField("loss") for m in evaluated)


def test_report_in_a_script(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    env = {METRICS_FILE_ENV: str(path), "RANK": "1", "GANTRY_HEARTBEAT_S": "0.05"}
    done = run_script(REPORT_SCRIPT, env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["agent"]  # and the standard library
    every = rows(path)
    assert all(r["rank"] == 1 for r in every)
    assert sum(1 for r in every if r["kind"] == "heartbeat") >= 3
    raw = [r for r in every if r["kind"] != "heartbeat"]
    kinds = [r["kind"] for r in raw]
    assert kinds[0] == "phase" and raw[0]["phase"] == "importing"
    assert kinds[1] == "start" and raw[1]["step"] == 1 and raw[1]["pid"] > 0
    assert kinds[-2:] == ["checkpoint", "end"]
    metrics = [r for r in parsed(path) if r.kind == RecordKind.METRICS and r.metrics]
    assert [(m.metrics.step, m.metrics.loss) for m in metrics if m.metrics] == [
        (1, 3.0),
        (2, 2.0),
        (3, 1.0),
    ]
    assert all(r["grad_norm"] == 0.5 for r in raw if r["kind"] == "metrics")
    ckpt = raw[-2]
    assert (ckpt["step"], ckpt["tag"], ckpt["path"]) == (3, "step3", "/ckpt/step3")
    assert raw[-1]["status"] == "completed" and raw[-1]["step"] == 3

    failed = tmp_path / "failed.jsonl"
    crash = run_script(
        REPORT_SCRIPT.replace("if len(sys.argv) > 1:", "if True:"),
        {METRICS_FILE_ENV: str(failed)},
        tmp_path,
    )
    assert crash.returncode == 1 and "boom" in crash.stderr
    end = rows(failed)[-1]
    assert end["kind"] == "end" and end["status"] == "failed" and "boom" in end["error"]


def test_report_without_gantry_writes_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != METRICS_FILE_ENV}
    done = subprocess.run(
        [sys.executable, "-c", REPORT_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def heartbeat_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "gantry-heartbeat")


def test_one_heartbeat_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    monkeypatch.setenv(METRICS_FILE_ENV, str(path))
    monkeypatch.setenv("GANTRY_HEARTBEAT_S", "0.05")
    before = heartbeat_threads()

    # Something else in this process beats for this file already.
    monkeypatch.setenv(HEARTBEAT_PID_ENV, str(os.getpid()))
    with Reporter() as rep:
        rep.start()
        assert heartbeat_threads() == before
        time.sleep(0.3)
        # another file in the same process is not covered by that heartbeat
        with Reporter(tmp_path / "other.jsonl") as other:
            other.start()
            assert heartbeat_threads() == before + 1
            time.sleep(0.3)
    assert not any(r["kind"] == "heartbeat" for r in rows(path))
    assert any(r["kind"] == "heartbeat" for r in rows(tmp_path / "other.jsonl"))

    # The variable came from the parent process: this one beats itself.
    monkeypatch.setenv(HEARTBEAT_PID_ENV, str(os.getppid()))
    with Reporter() as rep:
        rep.start()
        assert heartbeat_threads() == before + 1
        time.sleep(0.3)
    assert any(r["kind"] == "heartbeat" for r in rows(path))

    # A child process started by the one that beats starts its own.
    child = tmp_path / "child.jsonl"
    done = run_script(
        "import time\nfrom agent.report import report\nreport(step=1)\ntime.sleep(0.4)\n",
        {
            METRICS_FILE_ENV: str(child),
            HEARTBEAT_PID_ENV: str(os.getpid()),
            "GANTRY_HEARTBEAT_S": "0.05",
        },
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert sum(1 for r in rows(child) if r["kind"] == "heartbeat") >= 3


def test_callback_imports_no_agent_service_code(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import agent.hf_callback\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('agent', 'grpc', 'gantry', 'console'))))\n"
    )
    done = run_script(code, {}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "agent",
        "agent.rank",
        "agent.rank.any_rank",  # an all-reduce of "was any rank asked": torch only
        "agent.rank.checkpoint_request",  # the contract with the agent: standard library only
        "agent.rank.report",
        "agent.hf_callback",
        "agent.rank.hf_callback",
    }
