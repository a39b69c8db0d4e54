"""agent.train end to end: two real DeepSpeed ranks (ZeRO-3, gloo, CPU) as plain
processes on 127.0.0.1, a resume from the latest checkpoint, the final HF directory.

Both precisions the trainer picks on a CPU run on every machine, whatever its probe
says: the main runs force fp32 (GANTRY_CPU_BF16=0: no native bf16, so the reference
config's fp16 becomes fp32), a short extra run forces bf16 (GANTRY_CPU_BF16=1; emulated,
so slower, where the CPU lacks AVX512-BF16/AMX). Nothing here asserts a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.ml.data import Turn, eval_prompts
from agent.rank import demo_data
from agent.rank.ds_config import BF16_ENV
from agent.rank.train import collective_timeout, lr_lambda, parse_args, resolve_resume
from tests.deepspeed_env import ROOT
from tests.ds_runs import LOADED_TIMEOUT_S, Run, train_two_ranks

# A module fixture's runs count against the first test that asks for it; on a loaded
# 2-core machine (and a cold op cache) that is minutes, not seconds.
loaded = pytest.mark.timeout(LOADED_TIMEOUT_S)


def forced(env: dict[str, str], native_bf16: bool) -> dict[str, str]:
    return {**env, BF16_ENV: "1" if native_bf16 else "0"}


@pytest.fixture(scope="module")
def runs(
    deepspeed_warm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Run, Run]]:
    env = forced(deepspeed_warm, native_bf16=False)  # fp32 on any CPU
    base = tmp_path_factory.mktemp("train")
    demo_data.write_demo(base / "demo", n_train=300, n_heldout=10, seed=1)
    out = base / "out"
    out.mkdir()
    common = [
        "--deepspeed_config",
        str(ROOT / "examples" / "ds_config_zero3.json"),
        "--model_name_or_path",
        "tiny-moe",
        "--data",
        str(base / "demo" / "train.jsonl"),
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
        "--save_steps",
        "4",
        "--max_length",
        "128",
    ]
    first = train_two_ranks(env, out, "first", [*common, "--max_steps", "8"])
    for rank in range(2):  # keep the first run's records apart
        path = out / f"metrics.rank{rank}.jsonl"
        path.rename(out / f"first.rank{rank}.jsonl")
    second = train_two_ranks(
        env,
        out,
        "second",
        [*common, "--max_steps", "11", "--resume_from_checkpoint", "latest"],
        local_rank_flag=True,
    )
    yield Run(out, first.codes, first.logs), second


def first_metrics(run: Run, rank: int) -> list[dict[str, Any]]:
    path = run.out / f"first.rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@loaded
def test_first_run_trains_and_reports(runs: tuple[Run, Run]) -> None:
    first, _ = runs
    log = first.logs[0]
    assert f"gantry: {BF16_ENV}=0: bf16 taken as emulated on the cpu accelerator (forced;" in log
    assert "gantry: fp16 is not supported on the cpu accelerator" in log
    assert "gantry: ZeRO stage 3, fp32, micro batch 4, accumulation 2 on 2 rank(s)" in log
    assert "gantry: prepared" in log or "nothing to do" in log
    for rank in range(2):
        rows = first_metrics(first, rank)
        kinds = [r["kind"] for r in rows]
        # Heartbeats may come first: they start while DeepSpeed initialises.
        assert kinds.index("start") < kinds.index("metrics") and kinds[-1] == "end"
        assert rows[-1]["status"] == "completed" and rows[-1]["step"] == 8
        assert all(r["rank"] == rank for r in rows)
        metrics = [r for r in rows if r["kind"] == "metrics"]
        assert [m["step"] for m in metrics] == list(range(1, 9))
        for m in metrics:
            for key in (
                "time",
                "epoch",
                "loss",
                "grad_norm",
                "lr",
                "step_time_s",
                "samples_per_s",
                "tokens_per_s",
                "collective_total_s",
                "forward_s",
                "backward_s",
                "optimizer_step_s",
                "memory_bytes",
            ):
                assert key in m, key
            assert "loss_scale" not in m  # fp32: no loss scale to report
            assert m["collective_s"] and all(v >= 0 for v in m["collective_s"].values())
            assert abs(sum(m["collective_s"].values()) - m["collective_total_s"]) < 1e-3
            assert m["step_time_s"] >= m["forward_s"] + m["backward_s"] > 0
        assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5  # the loss falls
        assert metrics[0]["lr"] < max(m["lr"] for m in metrics)  # warmup: the first is not the peak
        ckpts = [r for r in rows if r["kind"] == "checkpoint"]
        assert [(c["step"], c["tag"]) for c in ckpts] == [(4, "step4"), (8, "step8")]
        assert "heartbeat" in kinds


@loaded
def test_checkpoints_hold_step_and_data_position(runs: tuple[Run, Run]) -> None:
    import torch

    first, _ = runs
    ckpt = first.out / "checkpoints"
    assert (ckpt / "step4").is_dir() and (ckpt / "step8").is_dir()
    state = torch.load(
        ckpt / "step8" / "zero_pp_rank_0_mp_rank_00_model_states.pt",
        map_location="cpu",
        weights_only=False,
    )
    # 8 steps x 2 micro-batches, all within the first epoch (38 micro-batches a rank)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (8, 0, 16)
    assert state["epoch_samples"] == 16 * 4 * 2  # micro-batches x micro batch x ranks


@loaded
def test_resume_continues_step_numbering(runs: tuple[Run, Run]) -> None:
    first, second = runs
    assert "resumed from" in second.logs[0] and "at step 8" in second.logs[0]
    for rank in range(2):
        rows = second.metrics(rank)
        start = next(r for r in rows if r["kind"] == "start")  # heartbeats may come first
        assert start["step"] == 8
        assert "/checkpoints/step8" in start["resumed_from"]
        metrics = [r for r in rows if r["kind"] == "metrics"]
        assert [m["step"] for m in metrics] == [9, 10, 11]
        before = [r for r in first_metrics(first, rank) if r["kind"] == "metrics"]
        # the optimizer and data position came back: no jump back to the first loss
        assert metrics[0]["loss"] < before[0]["loss"] - 0.5
        assert metrics[0]["epoch"] > before[-1]["epoch"]
        assert [r["tag"] for r in rows if r["kind"] == "checkpoint"] == ["step11"]
    assert (first.out / "checkpoints" / "latest").read_text().strip() == "step11"


@loaded
def test_final_directory_reloads_and_generates(runs: tuple[Run, Run]) -> None:
    final = runs[0].out / "final"
    info = json.loads((final / "gantry_train.json").read_text())
    assert info["step"] == 11
    assert_final_is_fp32_and_generates(final)


def assert_final_is_fp32_and_generates(final: Path) -> None:
    """The trainer's final directory: an fp32 Hugging Face model (gathered from the ZeRO-3
    partitions, whatever precision trained it) that reloads and generates."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with safe_open(str(final / "model.safetensors"), "pt") as weights:
        stored = {str(weights.get_tensor(k).dtype) for k in weights.keys()}  # noqa: SIM118
    assert stored == {"torch.float32"}
    # and the config says so: from_pretrained loads the dtype config.json names
    assert json.loads((final / "config.json").read_text())["dtype"] == "float32"
    tok = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final))
    config = model.config
    assert config.model_type in ("mixtral", "deepseek_v3")
    experts = getattr(config, "n_routed_experts", None) or config.num_local_experts
    assert experts == 32 and config.num_experts_per_tok == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(float(p.detach().abs().sum()) > 0 for p in model.parameters())  # gathered, not empty
    prompt, _ = eval_prompts([Turn("Reverse the words.", "apple river stone", "")])[0]
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids.shape[1]


# --- the other precision: bf16, forced -------------------------------------------------

BF16_STEPS = 6


@pytest.fixture(scope="module")
def bf16_run(deepspeed_warm: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A tiny run forced to bf16: native where the CPU has it, emulated (slower) elsewhere."""
    base = tmp_path_factory.mktemp("train-bf16")
    demo_data.write_demo(base / "demo", n_train=60, n_heldout=0, seed=2)
    out = base / "out"
    out.mkdir()
    args = [
        "--deepspeed_config",
        str(ROOT / "examples" / "ds_config_zero3.json"),
        "--model_name_or_path",
        "tiny-moe",
        "--data",
        str(base / "demo" / "train.jsonl"),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "3e-3",
        "--warmup_steps",
        "1",
        "--save_steps",
        "100",  # no checkpoint but the last one
        "--max_length",
        "64",
        "--max_steps",
        str(BF16_STEPS),
    ]
    return train_two_ranks(forced(deepspeed_warm, native_bf16=True), out, "bf16", args)


@loaded
def test_forced_bf16_trains_and_saves_fp32(bf16_run: Run) -> None:
    import math

    log = bf16_run.logs[0]
    forced_line = f"{BF16_ENV}=1: bf16 taken as native on the cpu accelerator (forced;"
    assert f"gantry: {forced_line}" in log
    assert "gantry: fp16 is not supported on the cpu accelerator; using bf16" in log
    assert "gantry: ZeRO stage 3, bf16, micro batch 4, accumulation 1 on 2 rank(s)" in log
    for rank in range(2):
        cfg = json.loads((bf16_run.out / "logs" / f"ds_config.rank{rank}.json").read_text())
        assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
        rows = bf16_run.metrics(rank)
        start = next(r for r in rows if r["kind"] == "start")
        assert any(c.startswith(forced_line) for c in start["config_changes"])
        metrics = [r for r in rows if r["kind"] == "metrics"]
        assert [m["step"] for m in metrics] == list(range(1, BF16_STEPS + 1))
        assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in metrics)
        assert "loss_scale" not in metrics[-1]  # bf16 needs no loss scaling
        assert metrics[-1]["loss"] < metrics[0]["loss"]  # it learns
        assert rows[-1]["kind"] == "end" and rows[-1]["status"] == "completed"
    final = bf16_run.out / "final"
    info = json.loads((final / "gantry_train.json").read_text())
    assert info["step"] == BF16_STEPS
    assert any(c.startswith(forced_line) for c in info["config_changes"])
    assert_final_is_fp32_and_generates(final)


# --- pure helpers of the trainer ------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-moe", "tiny-deepseek", "tiny-dense"])
def test_builtin_models_train_a_step(name: str) -> None:
    import torch

    from agent.ml.data import collate, encode_turns, train_tokenizer
    from agent.ml.models import build_model, count_parameters, generate_reply

    tok = train_tokenizer([" apple river stone", " stone river apple"] * 10, vocab_size=300)
    model = build_model(name, tok, seed=0)
    assert model.config.vocab_size == len(tok)
    if name != "tiny-dense":
        experts = getattr(model.config, "num_local_experts", None) or model.config.n_routed_experts
        assert experts == 32 and model.config.num_experts_per_tok == 2
    assert 100_000 < count_parameters(model) < 3_000_000
    turns = [Turn("s", "apple river stone", "stone river apple")]
    batch = collate([encode_turns(turns, tok)] * 2, int(tok.pad_token_id))
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert isinstance(generate_reply(model, tok, eval_prompts(turns)[0][0], 3), str)


def test_lr_schedule() -> None:
    f = lr_lambda(warmup=4, total=10)
    assert [round(f(s), 2) for s in range(11)] == [
        0.2,
        0.4,
        0.6,
        0.8,
        1.0,
        0.83,
        0.67,
        0.5,
        0.33,
        0.17,
        0.0,
    ]
    c = lr_lambda(warmup=2, total=10, kind="constant")
    assert [round(c(s), 2) for s in (0, 1, 2, 9, 50)] == [0.33, 0.67, 1.0, 1.0, 1.0]


def test_resolve_resume(tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None  # nothing yet: fresh start
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step5").mkdir(parents=True)
    (ckpt / "latest").write_text("step5")
    assert resolve_resume("latest", tmp_path) == (ckpt, None)
    assert resolve_resume(str(ckpt), tmp_path) == (ckpt, None)
    assert resolve_resume(str(ckpt / "step5"), tmp_path) == (ckpt, "step5")
    with pytest.raises(SystemExit):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_collective_timeout_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANTRY_COLLECTIVE_TIMEOUT_S", raising=False)
    assert collective_timeout() == timedelta(seconds=300)
    monkeypatch.setenv("GANTRY_COLLECTIVE_TIMEOUT_S", "12.5")
    assert collective_timeout() == timedelta(seconds=12.5)
    monkeypatch.setenv("GANTRY_COLLECTIVE_TIMEOUT_S", "soon")
    with pytest.raises(SystemExit):
        collective_timeout()


def test_arguments_of_the_reference_launch(tmp_path: Path) -> None:
    cfg = tmp_path / "ds.json"
    cfg.write_text("{}")
    args = parse_args(
        [
            "--deepspeed_config",
            str(cfg),
            "--model_name_or_path",
            "tiny-moe",
            "--output_dir",
            str(tmp_path / "out"),
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "4",
            "--num_train_epochs",
            "3",
            "--learning_rate",
            "2e-5",
            "--warmup_steps",
            "100",
            "--logging_dir",
            str(tmp_path / "logs"),
            "--resume_from_checkpoint",
            "latest",
            "--save_steps",
            "50",
            "--max_steps",
            "10",
            "--seed",
            "1",
            "--data",
            str(cfg),
            "--local_rank=1",
        ]
    )
    assert args.per_device_train_batch_size == 4 and args.local_rank == 1
    assert args.num_train_epochs == 3.0 and args.resume_from_checkpoint == "latest"
    with pytest.raises(SystemExit):
        parse_args(["--deepspeed_config", str(tmp_path / "missing.json")])
