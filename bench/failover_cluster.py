"""Failover's cluster side (bench/failover.py): its constants, the processes it starts and
stops (the agents, the ranks below them), the trainer's data and the 2-rank job spec, and
what the ranks' metrics files and the leader's job state say; and `run_main`, which
every bench's entry runs. bench/failover_replace.py, bench/overhead.py and
bench/serving*.py take what they share with this bench from here."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil
from gantry.v1 import job_pb2

from agent.jobs.node.ops_warmup import WARM_CODE
from console.model.job_spec import parse_job_spec
from console.net.jobs_client import JobsClient
from console.net.local_agents import LocalAgent

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DS_CONFIG = ROOT / "examples" / "ds_config_zero3.json"
FAKE_RANK = ROOT / "tests" / "fixtures" / "fake_rank.py"
# The agents' own extensions folder (built as they start, as on a real node), kept across
# bench runs and apart from the test suite's.
EXTENSIONS_DIR = (
    Path("~/.cache/gantry-bench-torch-extensions").expanduser()
    / hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
)
NODES = ("node-a", "node-b")  # one rank each: rank 0 on node-a (the leader), rank 1 on node-b
START_TIMEOUT_S = 300.0  # two ranks importing torch + DeepSpeed on 2 cores: ~35 s
GONE_TIMEOUT_S = 60.0
POLL_S = 0.1
EK = job_pb2.JobEventKind
JS = job_pb2.JobState
STEP_TAG = re.compile(r"(?:global_)?step(\d+)$")
T = TypeVar("T")


class BenchError(RuntimeError):
    pass


# -- processes ---------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of `procs` still running (same pid and create time, not a zombie)."""
    out = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (whatever of them exists)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def kill_all(procs: list[psutil.Process]) -> None:
    for proc in running(procs):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def sweep(root: Path) -> int:
    """SIGKILLs every process whose command line mentions `root` (so: one we started)."""
    me, killed = os.getpid(), 0
    needle = str(root)
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == me:
            continue
        cmdline = proc.info.get("cmdline") or []
        if any(needle in part for part in cmdline):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed


def is_ops_build(proc: psutil.Process) -> bool:
    """An agent's build of DeepSpeed's ops (agent/jobs/node/ops_warmup.py)."""
    try:
        return WARM_CODE in proc.cmdline()
    except psutil.Error:
        return False


def stop_agents(agents: list[LocalAgent], root: Path) -> None:
    """Agents leave their ranks running when they stop (by design: a restarted agent
    re-adopts them), so the ranks are killed here too: first whatever is below each
    agent, then anything else that names our temp dir. An agent's build of DeepSpeed's
    ops is left to finish, as the agent leaves it: killed, it would leave torch's build
    lock in the shared extensions folder, and the next run's ranks would wait on it."""
    below = [p for a in agents for p in tree(a.process.pid)[1:] if not is_ops_build(p)]
    for agent in agents:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
    kill_all(below)
    sweep(root)
    deadline = time.monotonic() + 10
    while running(below) and time.monotonic() < deadline:
        time.sleep(0.05)


def trainer_sources() -> str:
    """A digest of the trainer's code and config: runs are compared only when it is the
    same for all of them (the working tree may be edited while a bench runs)."""
    digest = hashlib.sha256()
    for path in sorted(
        [*ROOT.glob("agent/train*.py"), ROOT / "agent/rank/ds_config.py", DS_CONFIG]
    ):
        digest.update(path.name.encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def check_sources(expected: str) -> None:
    if trainer_sources() != expected:
        raise BenchError(
            "agent/train*.py, agent/rank/ds_config.py or the DeepSpeed config changed while the "
            "bench ran: its runs are not comparable; run it again"
        )


# -- data and job spec ---------------------------------------------------------------------


def prepare_data(root: Path, max_length: int) -> Path:
    """Demo conversations, cleaned and tokenized once: every attempt skips that work."""
    raw = root / "data"
    prepared = root / "prepared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for argv in (
        [PYTHON, "-m", "agent.demo_data", "--out", str(raw)],
        [
            PYTHON,
            "-m",
            "agent.ml.data",
            "prepare",
            "--data",
            str(raw / "train.jsonl"),
            "--out",
            str(prepared),
            "--max-length",
            str(max_length),
        ],
    ):
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv[1:4])} failed: {done.stderr.strip()[-500:]}")
    return prepared


def rank_env(threads: int) -> dict[str, str]:
    env = {
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def trainer_args(
    args: argparse.Namespace, data: Path, out: Path, max_steps: int, save_steps: int
) -> list[str]:
    """`python -m agent.train` arguments from the bench's --model, --micro-batch,
    --grad-accum, --seed and --max-length."""
    return [
        "--deepspeed_config",
        str(DS_CONFIG),
        "--model_name_or_path",
        args.model,
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        str(args.micro_batch),
        "--gradient_accumulation_steps",
        str(args.grad_accum),
        "--max_steps",
        str(max_steps),
        "--save_steps",
        str(save_steps),
        "--seed",
        str(args.seed),
        "--max_length",
        str(args.max_length),
        "--learning_rate",
        "1e-3",
    ]


def job_spec(args: argparse.Namespace, name: str, data: Path, out: Path) -> job_pb2.JobSpec:
    doc: dict[str, Any] = {
        "name": name,
        "nodes": [f"{n} slots=1" for n in NODES],
        "env": rank_env(args.threads),
        "working_dir": str(ROOT),
        "restart": {"max_restarts": 1, "backoff_s": 0, "resume": "latest"},
    }
    if args.cold:
        doc["env"]["GANTRY_STANDBY"] = "0"
    if args.fake:
        doc["command"] = ["python", str(FAKE_RANK)]
        doc["args"] = ["--steps", "100000", "--step-s", "0.1"]
    else:
        doc["command"] = ["python", "-m", "agent.train"]
        doc["args"] = [
            *trainer_args(args, data, out, 100_000, args.save_steps),
            "--resume_from_checkpoint",
            "latest",
        ]
        doc["checkpoint_dir"] = str(out / "checkpoints")
        doc["deepspeed_config"] = str(DS_CONFIG)
    return parse_job_spec(json.dumps(doc), ROOT, set(NODES), source=f"bench job {name}")


# -- what the ranks and the leader say ----------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """The rank's JSON-line records (agent.report); a torn last line is left for later."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out


@dataclass
class RankFiles:
    agents: dict[str, LocalAgent]
    job: str

    def path(self, attempt: int, rank: int) -> Path:
        node = NODES[rank]
        return (
            self.agents[node].data_dir
            / "jobs"
            / self.job
            / f"attempt-{attempt}"
            / f"rank-{rank}"
            / "metrics.jsonl"
        )

    def records(self, attempt: int, rank: int, kind: str) -> list[dict[str, Any]]:
        return [r for r in read_records(self.path(attempt, rank)) if r.get("kind") == kind]


def ts(stamp: Any) -> float:
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


async def wait_attempt(
    client: JobsClient, name: str, number: int, timeout_s: float
) -> job_pb2.Attempt:
    """The job's attempt `number` once all its ranks have a pid."""
    deadline = time.monotonic() + timeout_s
    while True:
        led, _ = await client.describe(name)
        job = led.job
        if len(job.attempts) >= number:
            attempt = job.attempts[number - 1]
            if len(attempt.ranks) == len(NODES) and all(r.pid > 0 for r in attempt.ranks):
                return attempt
        if job.state in (JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED, JS.JOB_STATE_SUCCEEDED):
            raise BenchError(f"job {name} ended ({JS.Name(job.state)}): {job.reason}")
        if time.monotonic() > deadline:
            raise BenchError(f"job {name} has no running attempt {number} after {timeout_s:.0f}s")
        await asyncio.sleep(POLL_S)


async def wait_for(
    what: str, check: Callable[[], T | None], timeout_s: float, job: str, client: JobsClient
) -> T:
    """Polls `check()` until it returns something other than None."""
    deadline = time.monotonic() + timeout_s
    last_state = 0.0
    while True:
        value = check()
        if value is not None:
            return value
        now = time.monotonic()
        if now - last_state > 5:  # an attempt that died is reported, not waited out
            last_state = now
            led, _ = await client.describe(job)
            if led.job.state in (JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED):
                raise BenchError(f"job {job} ended while waiting for {what}: {led.job.reason}")
        if now > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def job_events(client: JobsClient, name: str) -> list[job_pb2.JobEvent]:
    return [event async for event in client.events(name, follow=False)]


def step_of(path: str) -> int | None:
    match = STEP_TAG.search(Path(path).name) if path else None
    return int(match.group(1)) if match else None


async def wait_state(client: JobsClient, name: str, states: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        led, _ = await client.describe(name)
        if led.job.state in states:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"job {name} stayed {JS.Name(led.job.state)}")
        await asyncio.sleep(POLL_S)


def kill_point(files: RankFiles, save_steps: int, kill_after: int, fake: bool) -> int | None:
    """Rank 1's last step once it is `kill_after` steps past a checkpoint both ranks saved
    (never right after a save step, so the kill does not land in a checkpoint write)."""
    steps = [[int(r["step"]) for r in files.records(1, rank, "metrics")] for rank in (0, 1)]
    if not steps[0] or not steps[1]:
        return None
    last = steps[1][-1]
    if fake:
        return last if min(steps[0][-1], last) >= kill_after + 2 else None
    saved = [{int(r["step"]) for r in files.records(1, rank, "checkpoint")} for rank in (0, 1)]
    both = saved[0] & saved[1]
    if not both or min(steps[0][-1], last) < max(both) + kill_after or last % save_steps == 0:
        return None
    return last


def run_main(main: Callable[[], None]) -> None:
    """`main()`, with one line instead of a traceback for an interrupt or a BenchError
    (cleanup has run by then: every bench stops what it started in a finally)."""
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every process the bench started is stopped", file=sys.stderr)
        sys.exit(130)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
