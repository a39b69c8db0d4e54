"""Log scanning: what the live failure-signature scanner costs.

1. The scanner alone (``agent.jobs.node.log_scan.LogScanner``, what the agent runs on every
   line of every rank), on a mix of the real excerpts in tests/fixtures/logs/ (one line in
   20) and ordinary training output: a step's line (DeepSpeed, Megatron, Hugging Face
   Trainer) one line in 100, the rest what a chatty rank prints between steps (NCCL INFO
   lines, library warnings, its own prints); in lines per CPU second of this process.
2. A real agent following one rank that writes --rate lines a second (the same mix, to
   stdout and stderr) for --seconds: the agent process's CPU seconds per second, and as a
   reference the same agent with a rank that writes nothing.

    .venv/bin/python bench/log_scan.py [--lines 200000] [--rate 5000] [--seconds 10]

Last line: {"scan_lines_per_cpu_s": ..., "agent_cpu_s_per_s_at_5k_lines": ...,
"agent_cpu_s_per_s_idle": ..., "diagnoses": ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gantry.v1 import job_pb2  # noqa: E402

from agent.jobs.node.log_scan import LogScanner  # noqa: E402
from console.model.job_spec import parse_job_spec  # noqa: E402
from console.net.jobs_client import JobsClient  # noqa: E402
from console.net.local_agents import start_agent  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "logs"
# What a chatty rank prints between its metrics: NCCL's INFO lines, library warnings, the
# script's own prints.
CHATTER = [
    "node-a:1234:1250 [0] NCCL INFO Channel 0{d}/0 : 0[0] -> 1[1] via P2P/IPC",
    "node-a:1234:1250 [0] NCCL INFO Connected all rings",
    "/usr/lib/python3/dist-packages/torch/utils/data/dataloader.py:558: UserWarning: This"
    " DataLoader will create 8 worker processes in total.",
    "[2024-05-01 10:00:00,123] [INFO] [checkpointing.py:529:forward] Activation checkpointing"
    " layer {n}",
    "sample {n}: tokens=2048 padded=17 source=shard-00{d}.jsonl",
    "Token indices sequence length is longer than the specified maximum sequence length",
]
# A step's line: one in METRICS_EVERY lines (at 5,000 lines/s, 50 steps a second).
METRICS = [
    "[2024-05-01 10:00:00,123] [INFO] [logging.py:96:log_dist] [Rank 0] step={n}, skipped=0,"
    " lr=[0.0001], mom=[(0.9, 0.999)]",
    " iteration {n}/  500000 | consumed samples: 12800 | elapsed time per iteration (ms):"
    " 1234.5 | learning rate: 1.000E-04 | global batch size: 128 | lm loss: 2.345E+00 |"
    " loss scale: 65536.0 | grad norm: 1.234 | number of skipped iterations: 0 |",
    "{{'loss': 2.3456, 'grad_norm': 1.23, 'learning_rate': 5e-05, 'epoch': 0.{n}}}",
]
METRICS_EVERY = 100
EXCERPT_EVERY = 20  # one line in 20 comes from a real failure excerpt


def mix(count: int) -> list[str]:
    """``count`` lines: ordinary output with real excerpts' lines mixed in."""
    excerpts = [
        line
        for path in sorted(CORPUS.glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if line.strip()
    ]
    out = []
    for i in range(count):
        if excerpts and i % EXCERPT_EVERY == 0:
            out.append(excerpts[(i // EXCERPT_EVERY) % len(excerpts)])
        elif i % METRICS_EVERY == 1:
            out.append(METRICS[(i // METRICS_EVERY) % len(METRICS)].format(n=i // METRICS_EVERY))
        else:
            out.append(CHATTER[i % len(CHATTER)].format(n=i, d=i % 10))
    return out


def scan_rate(lines: list[str]) -> tuple[float, int]:
    """Lines per CPU second through fresh scanners (one per 10,000 lines, like ranks)."""
    found = 0
    start = time.process_time()
    for begin in range(0, len(lines), 10_000):
        scanner = LogScanner()
        for i, line in enumerate(lines[begin : begin + 10_000]):
            found += len(scanner.feed("stderr" if i % 3 == 0 else "stdout", line, i / 5000))
        found += len(scanner.flush())
    return len(lines) / (time.process_time() - start), found


WRITER = """
import sys, time
lines = open(sys.argv[1]).read().splitlines()
rate, seconds = float(sys.argv[2]), float(sys.argv[3])
start = time.monotonic(); i = 0
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * rate)
    while i < due:
        line = lines[i % len(lines)]
        (sys.stderr if i % 3 == 0 else sys.stdout).write(line + "\\n")
        i += 1
    sys.stdout.flush(); sys.stderr.flush()
    time.sleep(0.01)
time.sleep(float(sys.argv[4]))
"""


async def agent_cpu(rate: float, seconds: float, work: Path) -> tuple[float, int]:
    """The agent's CPU seconds per second while its one rank writes ``rate`` lines/s."""
    name = f"scan{int(rate)}"
    data = work / name
    agent = start_agent("node-a", data, extra_args=["--no-warm-ops", "--kernel-log", "off"])
    try:
        lines_file = work / "lines.txt"
        lines_file.write_text("\n".join(mix(50_000)) + "\n")
        writer = work / "writer.py"
        writer.write_text(WRITER)
        doc = {
            "name": name,
            "nodes": ["node-a slots=1"],
            "command": [sys.executable, str(writer)],
            "args": [str(lines_file), str(rate), str(seconds + 3), "2"],
            "working_dir": str(work),
            "restart": {"max_restarts": 0},
        }
        spec = parse_job_spec(json.dumps(doc), work, known_nodes={"node-a"})
        proc = psutil.Process(agent.process.pid)
        async with JobsClient([agent.target]) as client:
            await client.launch(spec)
            await asyncio.sleep(3.0)  # the rank started, the agent settled
            cpu = proc.cpu_times()
            t0 = time.monotonic()
            await asyncio.sleep(seconds)
            cpu2 = proc.cpu_times()
            elapsed = time.monotonic() - t0
            used = (cpu2.user + cpu2.system) - (cpu.user + cpu.system)
            events = [e async for e in client.events(name, follow=False)]
        alerts = sum(e.kind == job_pb2.JOB_EVENT_KIND_ALERT for e in events)
        return used / elapsed, alerts
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    lines = mix(args.lines)
    rate, found = scan_rate(lines)
    with tempfile.TemporaryDirectory(prefix="gantry-logscan-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("GANTRY_STANDBY", "0")
        busy, alerts = asyncio.run(agent_cpu(args.rate, args.seconds, work))
        idle, _ = asyncio.run(agent_cpu(0.0, args.seconds, work))
    print(f"{'what':<44} {'figure':>12}")
    print(f"{'scanner, lines per CPU second':<44} {rate:>12,.0f}")
    print(f"{'diagnoses in the mix':<44} {found:>12}")
    print(f"{f'agent CPU s/s, rank writing {args.rate:,.0f} lines/s':<44} {busy:>12.4f}")
    print(f"{'agent CPU s/s, rank writing nothing':<44} {idle:>12.4f}")
    print(f"{'ALERT events journaled (rate-limited)':<44} {alerts:>12}")
    print(
        json.dumps(
            {
                "scan_lines_per_cpu_s": round(rate),
                "agent_cpu_s_per_s_at_5k_lines": round(busy, 4),
                "agent_cpu_s_per_s_idle": round(idle, 4),
                "diagnoses": found,
            }
        )
    )


if __name__ == "__main__":
    main()
