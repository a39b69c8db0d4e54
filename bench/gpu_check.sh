#!/usr/bin/env bash
# The checks that need a machine with an NVIDIA GPU, in one run (a few minutes; every
# step has its own timeout, and all of them together stop at 9.5 minutes, not counting a
# `make venv`):
#
#   1. a GPU is there: `nvidia-smi -L`, else NVML through pynvml; and the venv's torch
#      can use it (torch.cuda.is_available());
#   2. the agent's NVML sampler (agent.telemetry.sampler) on the real device: its figures;
#   3. a one-GPU DeepSpeed run of the demo job (NCCL backend) with the sampler running:
#      steps/s, tokens/s, loss, GPU memory and utilization;
#   4. bench/serving.py --quick on the GPU (the server's --device cuda), concurrency
#      1, 8, 32 and 64: the decode step replayed from CUDA graphs; its last line adds
#      tokens_per_s_c64, requests_per_s_c64 (32 tokens a reply) and ttft_p99_ms (issue
#      18's goals: >= 12,000 tokens/s, stretch 1,200 requests/s, p99 < 500 ms);
#      GANTRY_STREAM_INTERVAL=N runs the servers with --stream-interval N (default 1):
#      with the decode step on the GPU, the front end's work per streamed message is
#      what a one-process server runs out of first;
#   5. bf16 against fp16, and bf16 with --gradient_checkpointing, on one GPU
#      (bench/parallel.py --precisions): steps/s, loss and peak memory of each.
#      Expert and tensor parallelism run on the CPU (bench/parallel.py without a GPU).
#
#     bash bench/gpu_check.sh          # from the repository root
#
# GANTRY_PYTHON=PATH runs the checks with that interpreter instead of .venv/bin/python
# (a GPU machine's own Python with a CUDA torch, Gantry's other dependencies and the
# repository on its PYTHONPATH); no venv is made then.
#
# Otherwise assumes the repository's .venv (`make venv` makes it when it is missing)
# holds a CUDA build of torch. The Makefile pins torch==2.13.0 without an index: what pip resolves
# depends on the machine's pip configuration (a CPU-only wheel, 2.13.0+cpu, on the CPU
# machines this project is developed on); a torch without CUDA fails step 1 with one
# line saying so, and then needs torch==2.13.0 from PyTorch's CUDA index for the
# machine's driver (`.venv/bin/pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cuXYZ`) where that index is reachable.
# Without a GPU: exit 1 with one line, `gpu_check: no NVIDIA GPU on this machine (...)`.
# Exit status: 0 when every step passed, else 1 (the failed steps are listed last).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PY=${GANTRY_PYTHON:-.venv/bin/python}
TOTAL_S=570  # the whole check, make venv aside

# --- 1. is there a GPU ----------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
    smi="nvidia-smi not found"
elif ! gpus=$(timeout 30 nvidia-smi -L 2>&1) || ! grep -q "^GPU" <<<"$gpus"; then
    smi="nvidia-smi -L: $(head -n 1 <<<"$gpus")"
else
    smi=""
fi
if [ -n "$smi" ]; then
    if [ -x "$PY" ]; then
        nvml=$(timeout 30 "$PY" bench/gpu_check_steps.py nvml-probe 2>&1 | tail -n 1)
        status=$?  # pipefail: the probe's own status
    else
        nvml="NVML: not probed (no .venv)"
        status=1
    fi
    if [ "$status" -ne 0 ]; then
        echo "gpu_check: no NVIDIA GPU on this machine ($smi; $nvml)"
        exit 1
    fi
    gpus=$nvml
fi
echo "== 1. GPU"
echo "$gpus"
if [ ! -x "$PY" ]; then
    echo "no .venv: make venv"
    timeout 900 make venv >/tmp/gantry-gpu-check-venv.log 2>&1 \
        || { echo "gpu_check: make venv failed (see /tmp/gantry-gpu-check-venv.log)"; exit 1; }
fi
SECONDS=0
timeout 60 "$PY" bench/gpu_check_steps.py torch-probe || exit 1

failed=()
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, notes a failure, goes on
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name"
    local left=$((TOTAL_S - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "gpu_check: $name: skipped, the check's ${TOTAL_S} s are spent"
        failed+=("$name (skipped)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local started=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local code=$?
    if [ "$code" -ne 0 ]; then
        [ "$code" -eq 124 ] && echo "gpu_check: $name: timed out after ${limit} s"
        failed+=("$name (exit $code)")
    fi
    echo "($name: $((SECONDS - started)) s)"
}

step "2. NVML sampler" 45 "$PY" bench/gpu_check_steps.py nvml --seconds 3
step "3. DeepSpeed, 1 GPU, NCCL" 180 "$PY" bench/gpu_check_steps.py train --steps 60 --timeout-s 160
step "4. bench/serving.py on the GPU" 270 "$PY" bench/serving.py --quick --device cuda \
    --concurrency 1,8,32,64 --max-batch-size 64 --stream-interval "${GANTRY_STREAM_INTERVAL:-1}"
step "5. bf16 vs fp16, checkpointing" 100 "$PY" bench/parallel.py --precisions --device cuda --steps 30

echo
if [ ${#failed[@]} -ne 0 ]; then
    echo "gpu_check: failed: ${failed[*]}"
    exit 1
fi
echo "gpu_check: every step passed"
