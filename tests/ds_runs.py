"""Real DeepSpeed ranks as plain processes on 127.0.0.1 (no agent): what the trainer's
own tests and the demo model's test run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deepspeed_env import ROOT, free_port

# Bounds for a hang, not expectations: a 2-rank run of a few steps takes 10-25 s on two
# idle cores, and several times that beside other CPU-heavy processes.
RUN_TIMEOUT_S = 480
# pytest-timeout for a test whose module fixture trains (its setup counts): room for
# DeepSpeed's op build on a cold cache and two runs on a loaded machine.
LOADED_TIMEOUT_S = 1200


@dataclass
class Run:
    out: Path
    codes: list[int]
    logs: list[str]

    def metrics(self, rank: int) -> list[dict[str, Any]]:
        path = self.out / f"metrics.rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def train_two_ranks(
    env: dict[str, str],
    out: Path,
    name: str,
    args: list[str],
    local_rank_flag: bool = False,
    timeout_s: float = RUN_TIMEOUT_S,
    command: list[str] | None = None,
    metrics: list[Path] | None = None,
) -> Run:
    """Two ranks of ``command`` (default: ``python -m agent.train``) with ``args``; each
    reports to ``metrics[rank]`` (default: OUT/metrics.rankN.jsonl) and logs to
    OUT/NAME.rankN.log. Both must exit 0."""
    port = str(free_port())
    command = command or [sys.executable, "-m", "agent.train"]
    metrics = metrics or [out / f"metrics.rank{rank}.jsonl" for rank in range(2)]
    procs = []
    logs = []
    for rank in range(2):
        rank_env = {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "GANTRY_METRICS_FILE": str(metrics[rank]),
            "GANTRY_HEARTBEAT_S": "0.5",
            # a hung rank ends its run; a loaded machine's slow start must not
            "GANTRY_COLLECTIVE_TIMEOUT_S": "300",
        }
        extra = [f"--local_rank={rank}"] if local_rank_flag else []
        log = out / f"{name}.rank{rank}.log"
        logs.append(log)
        with log.open("w") as f:
            procs.append(
                subprocess.Popen(
                    [*command, *args, *extra],
                    env=rank_env,
                    cwd=ROOT,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout_s
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(t[-4000:] for t in texts)
    return Run(out, codes, texts)
