"""The decode loop alone, for bench/serving.py: what a batch-1 and a batch-N decode step of
the served model cost with no gRPC, no front end and no client beside it.

It separates what the serving loop does from what the machine lets it do. The server's
batching gain is 32 x (batch-1 time per token) / (batch-32 time per token), all-in; on
a small machine the load client and the front end share the cores with the engine. Here
the same model is loaded as the server's engine loads it (agent.serve.loading, the
server's thread count), the demo prompts are prefilled into a BatchDecoder, and each
round decodes --tokens steps (a reply's length) at batch 1, then at batch --rows, the
two alternating so that a change in the machine's speed weighs on both. Per round:
mean step time; the medians over --rounds are printed as one JSON line:
{"step_ms_b1", "step_ms_bN", "rows", "decode_loop_gain"}, the last being
rows x step_ms_b1 / step_ms_bN: the gain the loop would give if it had a core to itself.

    .venv/bin/python -m bench.serving_engine --model DIR [--rows 32] [--tokens 32]
        [--rounds 5] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from agent.serve.loading import DEFAULT_THREADS, load_for_serving
from bench.serving_server import PYTHON, ROOT


def step_ms(model: Any, prompts: list[list[int]], tokens: int) -> float:
    """Mean decode step, in ms, of a batch of `prompts` decoding `tokens` steps."""
    from agent.serve.decode import BatchDecoder

    decoder: BatchDecoder[int] = BatchDecoder(model, rows=len(prompts))
    for key, (_, prefilled) in enumerate(decoder.prefill_many(prompts)):
        decoder.join(key, prefilled)
    feed = dict.fromkeys(range(len(prompts)), 1)
    decoder.step(feed)  # the first step sizes the cache's buffers: not counted
    started = time.perf_counter()
    for _ in range(tokens):
        feed = dict(zip(decoder.keys, decoder.step(feed).argmax(-1).tolist(), strict=True))
    return (time.perf_counter() - started) / tokens * 1e3


def measure(
    model_dir: Path,
    prompts: list[str],
    rows: int,
    tokens: int,
    rounds: int,
    threads: int,
    device: str = "cpu",
) -> dict[str, float]:
    model, tokenizer = load_for_serving(model_dir, device, threads)
    if next(model.parameters()).device.type != "cpu":
        # the server captures CUDA graphs for its steps; eager steps would say little of it
        raise SystemExit("measured on CPU only")
    ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    batch = [ids[i % len(ids)] for i in range(rows)]
    step_ms(model, batch, 2)  # warm-up: first calls allocate
    single: list[float] = []
    many: list[float] = []
    for i in range(rounds):
        single.append(step_ms(model, [ids[i % len(ids)]], tokens))
        many.append(step_ms(model, batch, tokens))
    b1, bn = statistics.median(single), statistics.median(many)
    return {"step_ms_b1": b1, "step_ms_bN": bn, "rows": rows, "decode_loop_gain": rows * b1 / bn}


def decode_loop(
    model: Path, args: argparse.Namespace, env: dict[str, str], timeout_s: float
) -> float:
    """For bench/serving.py: this module in a process of its own, at its --max-batch-size
    and --max-tokens; the loop's gain (a side figure: NaN, and one line, if it fails)."""
    if args.device == "cuda":
        print("decode loop alone: measured on CPU only", flush=True)
        return float("nan")
    argv = [PYTHON, "-m", "bench.serving_engine", "--model", str(model)]
    argv += ["--device", args.device, "--rows", str(args.max_batch_size)]
    argv += ["--tokens", str(args.max_tokens), "--rounds", "3" if args.quick else "7"]
    argv += ["--threads", str(args.server_threads)] if args.server_threads else []
    try:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        print(f"decode loop alone: not measured (over {timeout_s:.0f} s)", flush=True)
        return float("nan")
    try:
        figures = json.loads(done.stdout.splitlines()[-1])
        rows, b1, bn = figures["rows"], figures["step_ms_b1"], figures["step_ms_bN"]
    except (IndexError, ValueError, KeyError):
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        print(f"decode loop alone: not measured ({last})", flush=True)
        return float("nan")
    print(
        f"decode loop alone (no gRPC, no client): a step takes {b1:.2f} ms at batch 1 and "
        f"{bn:.2f} ms at batch {rows}, a gain of {figures['decode_loop_gain']:.1f}x",
        flush=True,
    )
    return float(figures["decode_loop_gain"])


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.serving_engine", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model directory")
    parser.add_argument("--rows", type=int, default=32, help="the batched side's batch size")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads")
    parser.add_argument("--device", default="cpu", help="as the server's --device")
    args = parser.parse_args()
    from bench.serving import demo_prompts

    figures = measure(
        args.model, demo_prompts(), args.rows, args.tokens, args.rounds, args.threads, args.device
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
