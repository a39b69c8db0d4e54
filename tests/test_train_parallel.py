"""Issue 17 on real DeepSpeed ranks (CPU, gloo, fp32, a few steps each): activation
checkpointing and peak memory; expert parallel 2 on DeepSpeed's MoE layer against expert
parallel 1; tensor parallel 2 (DeepSpeed's AutoTP) against one rank. Each run takes
10-25 s on idle cores.

The runs a test compares are independent and spend most of their time single-threaded
(importing torch and DeepSpeed, building the engine): a test starts them side by side. The
plain one-rank tiny-dense run is the baseline of two tests: it runs once, in the background.

Tolerance: a fixed-seed run's loss at every step stays within LOSS_REL_TOL (relative) of its
baseline. The layouts compute the same sums in another order and place, so the losses agree
to float32 rounding (measured: equal to 1e-7); 1e-3 leaves room for other CPUs' kernels."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from transformers import AutoModelForCausalLM

from agent.rank import demo_data
from agent.rank.ds_config import BF16_ENV
from tests.deepspeed_env import ROOT, free_port
from tests.ds_runs import LOADED_TIMEOUT_S, RUN_TIMEOUT_S, train_two_ranks

A = TypeVar("A")
B = TypeVar("B")
LOSS_REL_TOL = 1e-3
STEPS = 3
DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "steps_per_print": 1,
    "zero_optimization": {"stage": 1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("parallel-data")
    demo_data.write_demo(base, n_train=40, n_heldout=2, seed=1)
    (base / "ds.json").write_text(json.dumps(DS_CONFIG))
    return base


def trainer_args(data: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        "--deepspeed_config", str(data / "ds.json"),
        "--model_name_or_path", model,
        "--data", str(data / "train.jsonl"),
        "--output_dir", str(out),
        "--max_steps", str(STEPS),
        "--max_length", "64",
        "--save_steps", "100",
        "--learning_rate", "1e-3",
        *extra,
    ]  # fmt: skip


def records(path: Path, kind: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if r["kind"] == kind]


def one_rank(env: dict[str, str], out: Path, args: list[str]) -> tuple[str, Path]:
    """`python -m agent.train` as the only rank; its output and metrics file."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = out / "metrics.rank0.jsonl"
    rank_env = {
        **env,
        BF16_ENV: "0",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "GANTRY_METRICS_FILE": str(metrics),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agent.train", *args],
        env=rank_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout, metrics


def two_ranks(env: dict[str, str], out: Path, args: list[str]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    run = train_two_ranks({**env, BF16_ENV: "0"}, out, "t", args)
    return [out / f"metrics.rank{rank}.jsonl" for rank in range(len(run.codes))]


@pytest.fixture(scope="module")
def dense_one_rank(
    deepspeed_warm: dict[str, str], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Future[tuple[str, Path]]]:
    """The plain tiny-dense run on one rank (its output and metrics file), started in the
    background at once: the gradient-checkpointing and the tensor-parallel tests compare
    their runs with it while theirs run."""
    out = tmp_path_factory.mktemp("dense-one-rank")
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(one_rank, deepspeed_warm, out, trainer_args(data, out, "tiny-dense"))


def side_by_side(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """The results of two independent runs started together (each in its own subprocesses,
    port and output folder)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.submit(first), pool.submit(second)
        return a.result(), b.result()


def losses(metrics: Path) -> list[float]:
    got = records(metrics, "metrics")
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    return [float(r["loss"]) for r in got]


def assert_close(got: list[float], want: list[float]) -> None:
    for step, (a, b) in enumerate(zip(got, want, strict=True), 1):
        assert abs(a - b) <= LOSS_REL_TOL * abs(b), f"step {step}: {a} vs {b}"


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_gradient_checkpointing_trains_the_same_and_peak_memory_is_reported(
    deepspeed_warm: dict[str, str],
    data: Path,
    dense_one_rank: Future[tuple[str, Path]],
    tmp_path: Path,
) -> None:
    ckpt_out, ckpt = one_rank(
        deepspeed_warm,
        tmp_path / "b",
        trainer_args(data, tmp_path / "b", "tiny-dense", "--gradient_checkpointing"),
    )
    plain_out, plain = dense_one_rank.result()
    assert "gantry: gradient checkpointing on" in ckpt_out
    assert "gradient checkpointing on" not in plain_out
    (start,) = records(ckpt, "start")
    assert start["gradient_checkpointing"] is True
    assert records(plain, "start")[0]["gradient_checkpointing"] is False
    # Recomputed activations are the same activations: the same losses.
    assert_close(losses(ckpt), losses(plain))
    for path in (plain, ckpt):  # before and after: each step carries the rank's peak
        peaks = [r["peak_memory_bytes"] for r in records(path, "metrics")]
        assert all(isinstance(p, int) and p > 2**20 for p in peaks), peaks
        assert peaks == sorted(peaks)  # a peak never falls


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_expert_parallel_2_matches_expert_parallel_1(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:
    ep1, ep2 = side_by_side(
        lambda: two_ranks(
            deepspeed_warm,
            tmp_path / "ep1",
            trainer_args(data, tmp_path / "ep1", "tiny-moe", "--deepspeed_moe"),
        ),
        lambda: two_ranks(
            deepspeed_warm,
            tmp_path / "ep2",
            trainer_args(data, tmp_path / "ep2", "tiny-moe", "--expert_parallel_size", "2"),
        ),
    )
    log = (tmp_path / "ep2" / "t.rank0.log").read_text()
    assert "2 MoE block(s) on DeepSpeed's MoE layer, expert parallel 2" in log
    # Mixtral's own weight for its router loss, added to the loss the backward pass takes.
    assert "MoE gates' load-balancing loss weighted 0.001 in the loss" in log
    for rank in (0, 1):
        assert_close(losses(ep2[rank]), losses(ep1[rank]))
        (start,) = records(ep2[rank], "start")
        assert start["parallelism"] == {"tensor": 1, "expert": 2}
        assert start["moe_aux_loss_coef"] == pytest.approx(0.001)
        assert start["coordinates"] == {"data": 0, "tensor": 0, "expert": rank}
        for record in records(ep2[rank], "metrics"):
            groups = record["collective_by_group_s"]
            assert groups["expert"] > 0 and set(groups) <= {"data", "expert"}, groups
        for record in records(ep1[rank], "metrics"):
            assert "expert" not in record["collective_by_group_s"]  # no all-to-all at EP 1
        assert "coordinates" not in records(ep1[rank], "start")[0]
    # The final model is Mixtral's again, every expert gathered from both ranks.
    finals = [
        AutoModelForCausalLM.from_pretrained(str(tmp_path / run / "final")).state_dict()
        for run in ("ep1", "ep2")
    ]
    assert finals[1]["model.layers.0.mlp.experts.gate_up_proj"].shape[0] == 32
    assert set(finals[0]) == set(finals[1])
    for key, want in finals[0].items():
        assert torch.allclose(finals[1][key], want, atol=1e-5), key


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_the_moe_load_balancing_loss_reaches_the_backward_pass(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:

    def run(coef: str) -> list[float]:
        out = tmp_path / f"aux{coef}"
        extra = ("--deepspeed_moe", "--moe_aux_loss_coef", coef)
        return losses(one_rank(deepspeed_warm, out, trainer_args(data, out, "tiny-moe", *extra))[1])

    aux0, aux1 = side_by_side(lambda: run("0"), lambda: run("1"))
    runs = {"0": aux0, "1": aux1}
    # The same first forward (the reported loss is the language model's alone), then the
    # gates trained on the load-balancing loss too route differently.
    assert runs["0"][0] == runs["1"][0]
    assert any(
        abs(a - b) > 1e-4 * abs(b) for a, b in zip(runs["1"][1:], runs["0"][1:], strict=True)
    )


@pytest.mark.timeout(LOADED_TIMEOUT_S)
def test_tensor_parallel_2_matches_one_rank(
    deepspeed_warm: dict[str, str],
    data: Path,
    dense_one_rank: Future[tuple[str, Path]],
    tmp_path: Path,
) -> None:
    # The same global batch: TP 2 on two ranks is one data-parallel rank, as is one rank alone.
    tp2 = two_ranks(
        deepspeed_warm,
        tmp_path / "tp2",
        trainer_args(data, tmp_path / "tp2", "tiny-dense", "--tensor_parallel_size", "2"),
    )
    _, tp1 = dense_one_rank.result()
    want = losses(tp1)
    for rank in (0, 1):
        assert_close(losses(tp2[rank]), want)
        (start,) = records(tp2[rank], "start")
        assert start["coordinates"] == {"data": 0, "tensor": rank, "expert": 0}
        groups = records(tp2[rank], "metrics")[-1]["collective_by_group_s"]
        assert groups.get("tensor", 0) > 0, groups


def test_a_layout_the_model_cannot_take_is_refused_in_one_line(
    deepspeed_warm: dict[str, str], data: Path, tmp_path: Path
) -> None:
    rank_env = {
        **deepspeed_warm,
        BF16_ENV: "0",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    args = trainer_args(data, tmp_path / "x", "tiny-moe", "--expert_parallel_size", "2")
    done = subprocess.run(
        [sys.executable, "-m", "agent.train", *args],
        env=rank_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode != 0
    assert (
        "gantry: expert parallel 2 does not divide the 1 data-parallel ranks "
        "(world 1 / tensor 1)" in done.stdout + done.stderr
    )
