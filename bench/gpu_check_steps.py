"""The Python steps of bench/gpu_check.sh (a machine with an NVIDIA GPU):

    python bench/gpu_check_steps.py nvml-probe     # exit 1, one line, when NVML has no GPU
    python bench/gpu_check_steps.py torch-probe    # exit 1, one line, when torch has no CUDA
    python bench/gpu_check_steps.py nvml [--seconds 3]
    python bench/gpu_check_steps.py train [--steps 60] [--timeout-s 180]

`nvml`: agent.telemetry.sampler.Sampler (the agent's own NVML sampler) on the real devices for a
few seconds; prints the node's facts and every GPU's figures from its last sample.

`train`: a one-GPU DeepSpeed run of the demo job (`deepspeed --num_gpus 1 --module
agent.train`, examples/ds_config_zero3.json, tiny-moe on the demo data, DS_ACCELERATOR
cuda: agent.train leaves the backend to DeepSpeed, which is NCCL there) while the
sampler runs; prints rank 0's figures from its metrics records (agent.report): steps/s,
tokens/s, samples/s, loss, time in collectives, peak GPU memory, the config changes
agent.rank.ds_config made, the process group's backend as the log shows it, and the GPU's
peak utilization and memory as NVML saw them during the run.

Each prints its figures; a failure exits 1 with one line saying why (after the log's
tail, for `train`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
DS_CONFIG = ROOT / "examples" / "ds_config_zero3.json"
GIB = 1 << 30


def fail(message: str) -> None:
    print(f"gpu_check: {message}", flush=True)
    sys.exit(1)


# --- probes ---------------------------------------------------------------------------


def nvml_probe() -> None:
    """One line per GPU that NVML sees; else 'NVML: why' and exit 1."""
    try:
        import pynvml
    except ImportError as exc:
        print(f"NVML: pynvml is not installed ({exc})")
        sys.exit(1)
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        print(f"NVML: {exc}")
        sys.exit(1)
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        if count == 0:
            print("NVML: no GPU")
            sys.exit(1)
        for i in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            print(f"GPU {i}: {name.decode() if isinstance(name, bytes) else name} (NVML)")
    finally:
        pynvml.nvmlShutdown()


def torch_probe() -> None:
    import torch

    if not torch.cuda.is_available():
        fail(
            f"torch {torch.__version__} in {sys.prefix} cannot use the GPU "
            f"(CUDA build: {torch.version.cuda or 'none'}; torch.cuda.is_available() is "
            "False): install a CUDA build of torch into the venv"
        )
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}: {', '.join(names)}")


# --- the NVML sampler -------------------------------------------------------------------


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def describe_gpu(g: Any) -> str:
    """One line of a GpuSample's figures (fields NVML did not give are left out)."""
    if g.error:
        return f"GPU {g.index} {g.name}: error: {g.error}"
    parts = [f"GPU {g.index} {g.name}"]
    if g.HasField("gpu_util_percent"):
        parts.append(f"util {g.gpu_util_percent:.0f}%")
    if g.HasField("mem_used_bytes") and g.HasField("mem_total_bytes"):
        parts.append(f"mem {_gib(g.mem_used_bytes)}/{_gib(g.mem_total_bytes)}")
    if g.HasField("temperature_c"):
        parts.append(f"{g.temperature_c:.0f} C")
    if g.HasField("power_draw_w"):
        limit = f"/{g.power_limit_w:.0f}" if g.HasField("power_limit_w") else ""
        parts.append(f"{g.power_draw_w:.0f}{limit} W")
    if g.HasField("sm_clock_mhz"):
        parts.append(f"SM {g.sm_clock_mhz} MHz")
    if g.HasField("pcie_link_gen"):
        parts.append(f"PCIe gen{g.pcie_link_gen} x{g.pcie_link_width}")
    if g.HasField("ecc_uncorrected_volatile"):
        parts.append(f"ECC uncorrected {g.ecc_uncorrected_volatile}")
    parts.append(f"NVLinks {len(g.nvlinks)}")
    if g.throttle_reason_names:
        parts.append("clocks: " + ",".join(g.throttle_reason_names))
    if g.xid_counts:
        parts.append(f"XIDs {dict(g.xid_counts)}")
    return ", ".join(parts)


def nvml_step(seconds: float) -> None:
    from agent.telemetry.sampler import Sampler

    sampler = Sampler("gpu-check", interval_s=0.5)
    sampler.start()
    try:
        time.sleep(seconds)
        info = sampler.node_info()
        samples = sampler.history()
    finally:
        sampler.stop()
    if info.nvml_error or not info.gpu_count:
        fail(f"the NVML sampler sees no GPU ({info.nvml_error or 'no GPU'})")
    print(
        f"sampler: {len(samples)} samples in {seconds:g} s; driver {info.driver_version}, "
        f"CUDA {info.cuda_driver_version}, {info.gpu_count} GPU(s), accelerator "
        f"{info.accelerator}"
    )
    for g in samples[-1].gpus:
        print("  " + describe_gpu(g))
    if any(g.error for g in samples[-1].gpus):
        fail("the NVML sampler could not read a GPU")


# --- the one-GPU DeepSpeed run -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in records if r.get("rank", 0) == 0]


def backend_seen(log: str) -> str:
    if "ProcessGroupNCCL" in log or "NCCL INFO" in log:
        return "nccl (NCCL lines in the log)"
    if "gloo" in log.lower():
        return "gloo?"
    return "not shown in the log"


def train_step(steps: int, timeout_s: float) -> None:
    from agent.telemetry.sampler import Sampler

    root = Path(tempfile.mkdtemp(prefix="gantry-gpu-check-"))
    metrics = root / "metrics.jsonl"
    log_path = root / "train.log"
    data = root / "data"
    subprocess.run(
        [PYTHON, "-m", "agent.demo_data", "--out", str(data)], cwd=ROOT, check=True, timeout=60
    )
    argv = [PYTHON, "-m", "deepspeed.launcher.runner", "--num_gpus", "1"]
    argv += ["--master_port", str(free_port()), "--module", "agent.train"]
    argv += ["--deepspeed_config", str(DS_CONFIG), "--model_name_or_path", "tiny-moe"]
    argv += ["--output_dir", str(root / "out"), "--data", str(data / "train.jsonl")]
    argv += ["--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1"]
    argv += ["--learning_rate", "1e-3", "--warmup_steps", "20", "--lr_scheduler_type"]
    argv += ["constant", "--max_length", "128", "--save_steps", "100000"]
    argv += ["--max_steps", str(steps), "--seed", "1"]
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cuda",
        "NCCL_DEBUG": "INFO",  # as the demo job: the communicator's set-up shows in the log
        "TORCH_CPP_LOG_LEVEL": "INFO",  # ProcessGroupNCCL's options line
        "GANTRY_METRICS_FILE": str(metrics),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OMP_NUM_THREADS", None)
    sampler = Sampler("gpu-check", interval_s=0.5)
    sampler.start()
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group: the rank too
            proc.wait(10)
    wall = time.monotonic() - started
    samples = sampler.history()
    sampler.stop()
    log = log_path.read_text(errors="replace")
    if code != 0:
        print("\n".join(log.splitlines()[-30:]))
        why = f"timed out after {timeout_s:g} s" if code is None else f"exited {code}"
        fail(f"the one-GPU DeepSpeed run {why} (log: {log_path})")

    records = read_records(metrics)
    start = next((r for r in records if r["kind"] == "start"), {})
    steps_done = [r for r in records if r["kind"] == "metrics"]
    end = next((r for r in records if r["kind"] == "end"), {})
    if len(steps_done) < 3:
        fail(f"the DeepSpeed run reported {len(steps_done)} steps (metrics: {metrics})")
    skip = min(10, len(steps_done) // 3)  # start-up and the first steps' compilation
    window = steps_done[skip:]
    span = window[-1]["time"] - window[0]["time"]
    steps_per_s = (window[-1]["step"] - window[0]["step"]) / span if span > 0 else float("nan")
    tokens = statistics.median(r.get("tokens_per_s", float("nan")) for r in window)
    samples_s = statistics.median(r.get("samples_per_s", float("nan")) for r in window)
    step_time = statistics.median(r.get("step_time_s", float("nan")) for r in window)
    collectives = statistics.median(r.get("collective_total_s", 0.0) for r in window)
    peak = max(r.get("memory_bytes", 0) for r in steps_done)
    print(
        f"deepspeed 1 GPU: {start.get('model')} ({start.get('parameters', 0):,} params), "
        f"micro-batch {start.get('micro_batch')} x accumulation "
        f"{start.get('gradient_accumulation_steps')}, {len(steps_done)} steps in {wall:.0f} s "
        f"wall, end status {end.get('status', '?')}"
    )
    print(f"  process group backend: {backend_seen(log)}")
    for change in start.get("config_changes", []):
        print(f"  ds_config: {change}")
    print(
        f"  from step {window[0]['step']}: {steps_per_s:.2f} steps/s, step time "
        f"{step_time * 1000:.1f} ms, {tokens:,.0f} tokens/s, {samples_s:,.1f} samples/s, "
        f"collectives {collectives * 1000:.1f} ms/step"
    )
    print(
        f"  loss {steps_done[0].get('loss', float('nan')):.4f} (step {steps_done[0]['step']}) "
        f"-> {steps_done[-1].get('loss', float('nan')):.4f} (step {steps_done[-1]['step']}); "
        f"peak GPU memory allocated {peak / (1 << 20):.0f} MiB"
    )
    busy = [g for s in samples for g in s.gpus if not g.error]
    if busy:
        util = max((g.gpu_util_percent for g in busy if g.HasField("gpu_util_percent")), default=0)
        mem = max((g.mem_used_bytes for g in busy if g.HasField("mem_used_bytes")), default=0)
        print(
            f"  NVML during the run ({len(samples)} samples): peak util {util:.0f}%, "
            f"peak memory used {_gib(mem)}"
        )
    shutil.rmtree(root, ignore_errors=True)  # kept when the run failed: the log is there


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("nvml-probe")
    sub.add_parser("torch-probe")
    nvml = sub.add_parser("nvml")
    nvml.add_argument("--seconds", type=float, default=3.0)
    train = sub.add_parser("train")
    train.add_argument("--steps", type=int, default=60)
    train.add_argument("--timeout-s", type=float, default=180.0)
    args = parser.parse_args()
    if args.step == "nvml-probe":
        nvml_probe()
    elif args.step == "torch-probe":
        torch_probe()
    elif args.step == "nvml":
        nvml_step(args.seconds)
    else:
        train_step(args.steps, args.timeout_s)


if __name__ == "__main__":
    main()
