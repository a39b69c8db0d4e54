"""Serving: `python -m agent.serve` on the demo model under a closed-loop gRPC load;
completion tokens/s, requests/s and time to first token, with and without batching.

Each server runs as the agent runs a serve task (`python -m agent.serve --model DIR
--listen 127.0.0.1:0 --ready-file F ...`, the agent's environment with
PYTHONUNBUFFERED and HF_HUB_OFFLINE, the server's own thread default unless
--server-threads), with `--engine-cpus auto` unless --engine-cpus says otherwise: its
engine on a core of its own, its front end on the others. This bench's client then runs
on the front end's cores, off the engine's, as a client on a machine of its own would
(agent/serve/cpu_binding.py says what the binding is worth); `--engine-cpus none`
measures with neither bound.

- batched: `--max-batch-size` 32, or the largest concurrency when above, `--max-queue-delay-ms` 10;
- batch 1: `--max-batch-size 1`, the same queue delay;
- int8 wo: the `agent.tasks.quantize --weight-only` artifact of the same model (what the demo
  serves), batched, at the largest concurrency only (with --int8-dynamic also "int8
  dyn", int8 activations too).

All servers load at once, then wait idle for their turns, so that the cells of different
settings alternate (see `schedule`): batched and batch 1 swap which goes first at each
concurrency, and at the largest one each runs twice, batched first and last and batch 1
twice between (each figure is over its two cells), so a change in other load on a
shared machine weighs on both sides of a ratio.

Each cell is a closed loop: C client coroutines over one channel, each sending the next
prompt (`Generate`, greedy, max_tokens --max-tokens) as soon as its previous reply ended.
The first --warmup-s seconds are not counted; over the next --seconds, tokens/s counts
the completion tokens that arrived in the window (as streamed, so a reply that stops
early at the end-of-text token counts what it produced), requests/s the replies that
ended in it, and time to first token (client side: send to first streamed token) is over
the requests sent in it. The requests still running then have max(5 s, --seconds) to
finish and are cancelled after that (`cut`: those sent in the window; one cut before its
first token counts its wait so far, a lower bound). Beside: the server's own time to
first token (Usage: received to first token), the mean decode batch size (GetServerStats'
histogram over the window), and the CPU-s per s used over the window by the server, the
bench and every other process: on a shared machine the last says how far to trust a
row. --quick: 1.5 s warm-up and 4 s windows.

The model: --model DIR (a trained demo model, e.g. .gantry/demo/out/final, or any HF
directory the server loads); without it the demo architecture (tiny-moe) with the demo
tokenizer and seeded random weights, built in a temp dir: throughput does not depend on
the weights as long as replies run to max_tokens, which the figures show (mean
completion tokens, finish reasons). Prompts are the demo's 122 held-out conversations,
rendered as agent.tasks.eval renders them, sent in turn: they repeat, as a chat
application's system prompts and earlier turns do, so the servers' prefix cache (on by
default, as vLLM's) finds their starts; the share is printed (--prefix-cache-mb 0: off).

    .venv/bin/python bench/serving.py [--model DIR] [--quick] [--seconds 10]
        [--warmup-s 3] [--concurrency 1,8,32] [--max-tokens 32] [--max-batch-size N]
        [--max-queue-delay-ms 10] [--stream-interval 1] [--prefix-cache-mb MB]
        [--device auto|cpu|cuda] [--server-threads N]
        [--int8-dynamic] [--no-int8] [--engine-cpus auto|none|CPUS] [--keep]

REST vs gRPC (bench/serving_rest.py): a batched server of its own, which also serves the
OpenAI-compatible HTTP API (--http-port), with `--engine-cpus none` and the client unbound
(the two front ends compared as before binding: HTTP's costs more per token, and bound to
the core it would share with the client it is what limits the run); after the cells
above, the load tester runs against its gRPC and its HTTP endpoint at concurrency 32
(--no-rest skips it). The servers answer a bearer token the bench makes (as an agent's).

Every process the bench starts is stopped on exit, Ctrl-C or error.

The decode loop alone (bench/serving_engine.py, before the servers start): the model's
batch-1 and batch-N decode steps in a process of their own, no gRPC, no client: the gain
the loop would give with a core to itself (on a 2-core machine the bench's client and
the server's front end take most of a core from it).

Last line: {"batching_gain_c32": ..., "ttft_p50_ms_c32": ..., "ttft_p99_ms_c32": ...,
"tokens_per_server_cpu_s_c32": ..., "int8_tokens_per_s_ratio": ...,
"rest_vs_grpc_tokens_per_s_ratio": ..., "decode_loop_gain": ...}, the c32 figures at
concurrency 32 (else the largest measured); tokens_per_server_cpu_s_c32: the batched
server's completion tokens per CPU-second it used in its c32 windows. With --device cuda
(concurrency 1,8,32,64 unless given) or a --concurrency list with 64, also "tokens_per_s_c64",
"requests_per_s_c64" (replies of --max-tokens tokens) and "ttft_p99_ms" (client side),
of the batched server at concurrency 64; the batched server's --max-batch-size is then
64 unless given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from agent.serve.cpu_binding import (  # noqa: E402
    AUTO,
    NONE,
    BindingError,
    allowed_cpus,
    bind_process,
    format_cpus,
    plan_binding,
)
from agent.serve.loading import DEFAULT_THREADS  # noqa: E402
from bench.failover_cluster import BenchError, _raise_interrupt, run_main  # noqa: E402
from bench.serving_engine import decode_loop  # noqa: E402
from bench.serving_load import (  # noqa: E402
    BENCH_TOKEN,
    Cell,
    CpuMeter,
    closed_loop,
)
from bench.serving_report import HEADER, print_cell, report  # noqa: E402
from bench.serving_rest import rest_vs_grpc  # noqa: E402
from bench.serving_server import (  # noqa: E402
    PYTHON,
    START_TIMEOUT_S,
    Server,
    launch_server,
    server_env,
    stop_server,
    wait_ready,
)

QUANTIZE_TIMEOUT_S = 600.0
DEMO_MODEL = "tiny-moe"
DEMO_MAX_LENGTH = 128  # examples/job-demo.yaml's --max_length: the tokenizer is trained on that
PROMPT_CONVERSATIONS = 64


# --- the model ------------------------------------------------------------------------


def build_demo_model(out: Path, seed: int) -> str:
    """The demo's tiny-moe with the demo tokenizer (trained on the demo data as agent.train
    prepares it) and seeded random weights, saved as agent.train saves `final`."""
    from agent.ml.loading import quiet_torchao

    quiet_torchao()
    from transformers.utils import logging as hf_logging

    from agent.ml.data import TOKENIZER_DIR, ensure_chat_tokens, load_tokenizer, prepare
    from agent.ml.models import build_model
    from agent.rank.demo_data import generate, write_jsonl

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    train, _ = generate(2000, 0, seed=0)
    data = out / "data" / "train.jsonl"
    write_jsonl(data, train)
    prepared = out / "prepared"
    prepare(data, prepared, DEMO_MAX_LENGTH, log=lambda _: None)
    tokenizer = load_tokenizer(prepared / TOKENIZER_DIR)
    ensure_chat_tokens(tokenizer)
    model = build_model(DEMO_MODEL, tokenizer, seed=seed)
    final = out / "final"
    model.save_pretrained(str(final))
    tokenizer.save_pretrained(str(final))
    params = sum(p.numel() for p in model.parameters())
    return f"{DEMO_MODEL}, demo tokenizer ({len(tokenizer)} tokens), {params / 1e6:.2f} M params"


def demo_prompts() -> list[str]:
    """The demo's held-out conversations, rendered as agent.tasks.eval does (history included)."""
    from agent.ml.data import eval_prompts, parse_conversation
    from agent.rank.demo_data import generate

    _, heldout = generate(0, PROMPT_CONVERSATIONS, seed=0, bad_records=False)
    prompts: list[str] = []
    for record in heldout:
        prompts += [text for text, _ in eval_prompts(parse_conversation(record))]
    return prompts


def quantize(model: Path, out: Path, weight_only: bool, env: dict[str, str]) -> None:
    argv = [PYTHON, "-m", "agent.tasks.quantize", "--model", str(model), "--out", str(out)]
    argv += ["--latency-prompts", "1", "--gen-tokens", "2"]  # its own timing: not needed
    argv += ["--weight-only"] if weight_only else []
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=QUANTIZE_TIMEOUT_S
    )
    if result.returncode != 0:
        raise BenchError(
            f"agent.tasks.quantize exited {result.returncode}: {result.stderr[-2000:]}"
        )


# --- a cell ---------------------------------------------------------------------------


def measure(
    server: Server, setting: str, c: int, prompts: list[str], args: argparse.Namespace
) -> Cell:
    if args.binding is not None:  # every thread, the client's gRPC threads started since too
        bind_process(args.binding.front)
    meter = CpuMeter(server.process)
    cell = asyncio.run(closed_loop(server.address, setting, c, prompts, args, meter))
    if server.proc.poll() is not None:
        raise BenchError(f"the server exited ({server.proc.returncode}):\n{server.logs()}")
    print_cell(cell)
    return cell


def schedule(concurrencies: list[int], int8: list[str]) -> list[tuple[str, int]]:
    """(setting, concurrency) in the order measured: batched and batch 1 alternate which
    goes first, and at the top concurrency batched runs before and after the others,
    batch 1 twice between them (each figure is over its two cells), so that a drift in
    other load on the machine weighs on both sides of each ratio."""
    pair = ["batched", "batch 1"]
    plan: list[tuple[str, int]] = []
    for i, c in enumerate(concurrencies[:-1]):
        plan += [(name, c) for name in (pair if i % 2 == 0 else pair[::-1])]
    top = concurrencies[-1]
    return plan + [(name, top) for name in [*pair, *int8, "batch 1", "batched"]]


# --- main -----------------------------------------------------------------------------


def last_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: demo, random)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per cell")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="not counted, per cell")
    parser.add_argument("--quick", action="store_true", help="--seconds 4 --warmup-s 1.5")
    parser.add_argument(
        "--concurrency", help="comma-separated (default 1,8,32; with --device cuda 1,8,32,64)"
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="per request")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="of the batched server (default: 32, or the largest concurrency when above)",
    )
    parser.add_argument("--max-queue-delay-ms", type=float, default=10.0)
    parser.add_argument("--stream-interval", type=int, default=1, help="the servers' own")
    parser.add_argument("--prefix-cache-mb", type=int, help="the servers' own (default theirs)")
    parser.add_argument("--device", default="auto", help="the server's --device")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS of the server (0: unset, the server's default, as the agent runs it)",
    )
    parser.add_argument(
        "--engine-cpus",
        default=AUTO,
        help="the servers' --engine-cpus (default auto); bound, this bench's client runs on "
        "the front end's CPUs; none: no binding",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the random demo weights")
    parser.add_argument("--int8-dynamic", action="store_true", help="also dynamic int8")
    parser.add_argument("--no-int8", action="store_true", help="skip int8")
    parser.add_argument("--no-rest", action="store_true", help="skip REST vs gRPC")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup_s = 4.0, 1.5
    if args.concurrency is None:
        args.concurrency = "1,8,32,64" if args.device == "cuda" else "1,8,32"
    try:
        args.concurrency = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        parser.error("--concurrency: comma-separated integers, e.g. 1,8,32")
    if args.max_batch_size is None:
        args.max_batch_size = max(32, *args.concurrency)
    threads = args.server_threads or DEFAULT_THREADS
    try:
        args.cpus = allowed_cpus()  # before this process binds itself
        args.binding = plan_binding(args.engine_cpus, args.cpus, threads)
    except BindingError as exc:
        parser.error(str(exc))
    if min(args.concurrency) < 1 or args.seconds <= 0 or args.warmup_s < 0:
        parser.error("need concurrency >= 1, --seconds > 0, --warmup-s >= 0")
    if args.stream_interval < 1 or (args.prefix_cache_mb or 0) < 0:
        parser.error("--stream-interval must be at least 1, --prefix-cache-mb at least 0")
    if args.max_batch_size < max(args.concurrency):
        print(
            f"note: --max-batch-size {args.max_batch_size} is below the concurrency "
            f"{max(args.concurrency)}: requests queue beyond it",
            file=sys.stderr,
        )
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json")
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="gantry-serving-"))
    env = server_env(args.server_threads)
    args.token_file = root / "token"
    args.token_file.write_text(BENCH_TOKEN + "\n")
    args.token_file.chmod(0o600)
    servers: dict[str, Server] = {}
    cells: list[Cell] = []
    rest_ratio = loop_gain = float("nan")
    t0 = time.monotonic()
    try:
        if args.model is None:
            print("model: none given; building the demo model with random weights", flush=True)
            model = root / "model" / "final"
            what = build_demo_model(root / "model", args.seed)
            print(f"model: {what} (seed {args.seed}), in {model}")
        else:
            model = args.model.resolve()
            print(f"model: {model}")
        loop_gain = decode_loop(model, args, env, START_TIMEOUT_S)
        if args.binding is not None:
            print(
                f"CPUs: the servers' engines on {format_cpus(args.binding.engine)}; their "
                f"front ends and this bench's client on {format_cpus(args.binding.front)}"
            )
        else:
            print(f"CPUs: not bound (--engine-cpus {args.engine_cpus})")
        prompts = demo_prompts()
        threads = args.server_threads or f"unset (the server's default; {os.cpu_count()} cores)"
        print(
            f"load: closed loop, greedy, max_tokens {args.max_tokens}, {len(prompts)} demo "
            f"prompts in turn; {args.warmup_s:g} s warm-up + {args.seconds:g} s measured per "
            f"cell; server --device {args.device}, --max-queue-delay-ms "
            f"{args.max_queue_delay_ms:g}, --stream-interval {args.stream_interval}, OMP "
            f"threads {threads}",
            flush=True,
        )
        settings: list[tuple[str, Path, int]] = [
            ("batched", model, args.max_batch_size),
            ("batch 1", model, 1),
        ]
        int8 = [] if args.no_int8 else ["int8 wo"] + (["int8 dyn"] if args.int8_dynamic else [])
        for name in int8:
            out = root / name.replace(" ", "-")
            try:
                quantize(model, out, weight_only=name == "int8 wo", env=env)
            except BenchError as exc:
                print(f"{name}: agent.tasks.quantize failed: {last_line(exc)}", flush=True)
                continue
            settings.append((name, out, args.max_batch_size))
        # All servers load at once and wait, idle, for their turns: cells of different
        # settings can then alternate without a restart between them.
        for name, directory, batch in settings:
            base = root / "servers" / name
            servers[name] = launch_server(directory, base, batch, args, env)
        if not args.no_rest:  # front ends compared as before binding: neither side bound
            base = root / "servers" / "rest"
            servers["rest"] = launch_server(
                model, base, args.max_batch_size, args, env, http=True, engine_cpus=NONE
            )
        launched = time.monotonic()
        deadline = launched + START_TIMEOUT_S
        for name in list(servers):
            try:
                wait_ready(servers[name], deadline)
            except BenchError as exc:
                if not name.startswith("int8"):
                    raise
                # int8 is a side figure: its failure (e.g. on a device torchao's int8
                # does not run on) must not lose the others.
                print(f"{name}: the server failed: {last_line(exc)}", flush=True)
                stop_server(servers.pop(name))
        print(f"{len(servers)} servers ready in {time.monotonic() - launched:.0f} s")
        print()
        print(HEADER, flush=True)
        plan = schedule(args.concurrency, [n for n in int8 if n in servers])
        cells = [measure(servers[name], name, c, prompts, args) for name, c in plan]
        if "rest" in servers:
            bind_process(args.cpus)
            both = servers["rest"]
            rest = rest_vs_grpc(
                both.address, both.http_address, prompts, args.token_file, root, args
            )
            rest_ratio = rest.ratio
    finally:
        for server in servers.values():
            stop_server(server)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "(tok/CPU: tokens per server CPU-second; ttft: client side, send to first token; "
        "srv: the server's Usage, received to first token; batch: mean decode batch; "
        "srv CPU, bench, other: CPU-s per s of the server, this bench, other processes)"
    )
    print(f"total {time.monotonic() - t0:.0f} s")
    print(json.dumps(report(cells, args, rest_ratio, loop_gain)))


if __name__ == "__main__":
    run_main(main)
