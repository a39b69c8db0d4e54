"""Expert and tensor parallelism of Gantry's trainer against their baselines, on real
DeepSpeed ranks started as plain processes on 127.0.0.1 (no agent).

- ep1 / ep2: tiny-moe on two ranks on DeepSpeed's MoE layer, expert parallel 1
  (--deepspeed_moe: every rank holds all 32 experts) and 2 (16 each, tokens exchanged
  all-to-all); the same seed, data and global batch.
- tp1 / tp2: tiny-dense on one rank, then on two ranks with tensor parallel 2 (DeepSpeed's
  AutoTP): one data-parallel rank each, so the same global batch.
- --precisions (one GPU): tiny-moe in bf16 and in fp16, and bf16 with
  --gradient_checkpointing: steps/s, last loss and peak memory (bench/gpu_check.sh).

Steps/s are from rank 0's metrics records after --skip steps; a loss difference is the
largest relative difference of rank 0's loss over the steps. On the CPU accelerator
(DS_ACCELERATOR=cpu, the default without a GPU) ranks use gloo.

    .venv/bin/python bench/parallel.py [--steps 20] [--skip 3] [--threads 1] [--no-tp]
    .venv/bin/python bench/parallel.py --precisions [--steps 40]

Last line: {"ep2_loss_rel_diff": ..., "ep2_vs_ep1_steps_per_s": ..., "tp2_loss_rel_diff": ...
or null}; with --precisions: {"bf16_steps_per_s": ..., "fp16_steps_per_s": ..., ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.rank import demo_data  # noqa: E402

RUN_TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    world: int, args: list[str], out: Path, threads: int, device: str
) -> list[dict[str, Any]]:
    """`python -m agent.train` on `world` ranks; rank 0's metrics records."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if device == "cpu":
        env.update(DS_ACCELERATOR="cpu", GANTRY_CPU_BF16="0", OMP_NUM_THREADS=str(threads))
    procs = []
    for rank in range(world):
        rank_env = {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "GANTRY_METRICS_FILE": str(out / f"metrics.rank{rank}.jsonl"),
        }
        log = (out / f"rank{rank}.log").open("w")
        cmd = [sys.executable, "-m", "agent.train", *args, "--output_dir", str(out)]
        procs.append(subprocess.Popen(cmd, env=rank_env, cwd=ROOT, stdout=log, stderr=log))
    try:
        codes = [p.wait(timeout=RUN_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(codes):
        tail = (out / "rank0.log").read_text()[-3000:]
        raise SystemExit(f"parallel: a run in {out} failed ({codes}):\n{tail}")
    lines = (out / "metrics.rank0.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "metrics"]


def steps_per_s(records: list[dict[str, Any]], skip: int) -> float:
    times = [float(r["step_time_s"]) for r in records if r["step"] > skip]
    return 1.0 / statistics.median(times)


def loss_rel_diff(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> float:
    pairs = zip([r["loss"] for r in got], [r["loss"] for r in want], strict=True)
    return float(max(abs(a - b) / abs(b) for a, b in pairs))


def base_args(data: Path, model: str, steps: int, config: Path) -> list[str]:
    return [
        "--deepspeed_config", str(config),
        "--model_name_or_path", model,
        "--data", str(data / "train.jsonl"),
        "--max_steps", str(steps),
        "--max_length", "64",
        "--save_steps", str(steps + 1),
        "--learning_rate", "1e-3",
    ]  # fmt: skip


def write_config(path: Path, **extra: Any) -> Path:
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 1000,
        "zero_optimization": {"stage": 1},
        **extra,
    }
    path.write_text(json.dumps(config))
    return path


def row(name: str, records: list[dict[str, Any]], skip: int) -> str:
    last = records[-1]
    peak = last.get("peak_memory_bytes") or 0
    return (
        f"{name:<12} {steps_per_s(records, skip):>8.2f} {last['loss']:>10.4f} {peak / 2**20:>10.0f}"
    )


def parallel(opts: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    cfg = write_config(work / "ds.json")
    moe = base_args(data, "tiny-moe", opts.steps, cfg)
    ep1 = run_ranks(2, [*moe, "--deepspeed_moe"], work / "ep1", opts.threads, opts.device)
    ep2 = run_ranks(
        2, [*moe, "--expert_parallel_size", "2"], work / "ep2", opts.threads, opts.device
    )
    table = [row("ep1", ep1, opts.skip), row("ep2", ep2, opts.skip)]
    tp_diff = None
    if not opts.no_tp:
        dense = base_args(data, "tiny-dense", opts.steps, cfg)
        tp1 = run_ranks(1, dense, work / "tp1", opts.threads, opts.device)
        tp2 = run_ranks(
            2, [*dense, "--tensor_parallel_size", "2"], work / "tp2", opts.threads, opts.device
        )
        table += [row("tp1", tp1, opts.skip), row("tp2", tp2, opts.skip)]
        tp_diff = loss_rel_diff(tp2, tp1)
    print(f"{'run':<12} {'steps/s':>8} {'last loss':>10} {'peak MiB':>10}")
    print("\n".join(table))
    return {
        "ep2_loss_rel_diff": loss_rel_diff(ep2, ep1),
        "ep2_vs_ep1_steps_per_s": round(
            steps_per_s(ep2, opts.skip) / steps_per_s(ep1, opts.skip), 3
        ),
        "tp2_loss_rel_diff": tp_diff,
    }


def precisions(opts: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"{'run':<12} {'steps/s':>8} {'last loss':>10} {'peak MiB':>10}")
    for name, extra, flags in (
        ("bf16", {"bf16": {"enabled": True}}, []),
        ("fp16", {"fp16": {"enabled": True, "initial_scale_power": 12}}, []),
        ("bf16_ckpt", {"bf16": {"enabled": True}}, ["--gradient_checkpointing"]),
    ):
        cfg = write_config(work / f"{name}.json", **extra)
        args = [*base_args(data, "tiny-moe", opts.steps, cfg), *flags]
        records = run_ranks(1, args, work / name, opts.threads, opts.device)
        print(row(name, records, opts.skip))
        out[f"{name}_steps_per_s"] = round(steps_per_s(records, opts.skip), 3)
        out[f"{name}_loss"] = round(float(records[-1]["loss"]), 4)
        out[f"{name}_peak_memory_bytes"] = records[-1].get("peak_memory_bytes")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip", type=int, default=3, help="start-up steps left out of steps/s")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per rank (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-tp", action="store_true", help="skip the tensor-parallel runs")
    p.add_argument("--precisions", action="store_true", help="bf16 vs fp16 on one GPU")
    p.add_argument("--keep", action="store_true", help="keep the runs' folder")
    opts = p.parse_args()
    if opts.steps <= opts.skip:
        p.error("--steps must exceed --skip")
    work = Path(tempfile.mkdtemp(prefix="gantry-parallel-"))
    try:
        data = work / "data"
        demo_data.write_demo(data, n_train=200, n_heldout=2, seed=1)
        result = precisions(opts, data, work) if opts.precisions else parallel(opts, data, work)
    finally:
        if opts.keep:
            print(f"runs kept in {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
