"""Failover: how fast two Gantry agents get a 2-rank DeepSpeed job going again after
one rank is SIGKILLed, and after a whole node is lost with a hot spare to take its ranks.

Two real `gantry-agent` processes (node-a, node-b, one rank each) run `python -m
agent.train` on the CPU accelerator (tiny model, checkpoints every --save-steps, restart
policy {max_restarts: 1, backoff_s: 0, resume: latest}). Once both ranks have reported
steps past a checkpoint, the bench SIGKILLs rank 1's training process (the child of its
rank wrapper) and measures, per run:

- kill -> all stopped: until every process of attempt 1 (both wrappers and everything
  below them) has exited; a zombie waiting to be reaped counts as exited;
- kill -> next step, less the model's own start-up: (kill -> first metrics record of
  attempt 2) - (attempt 2's last rank start -> that record), the rank start being its
  RANK_STARTED event; i.e. what Gantry adds between the kill and the new ranks running;
- the step numbers: attempt 1's last step, the checkpoint attempt 2 resumed from, and
  attempt 2's first step (which must be the checkpoint's step + 1).

    .venv/bin/python bench/failover.py [--runs 3] [--model tiny-moe] [--save-steps 5]
        [--kill-after 2] [--micro-batch 4] [--grad-accum 1] [--threads 1] [--keep] [--fake]
        [--cold]

The kill comes once both agents' standbys for the next attempt are ready (a failure comes
long after a start); --cold turns standbys off (GANTRY_STANDBY=0), every rank starting cold.

--fake runs tests/fixtures/fake_rank.py instead of the trainer (no DeepSpeed, no
checkpoints: only the timings mean something). Every process the bench starts is
stopped on exit, Ctrl-C or error.

- kill -> next step, raw: everything included (the new ranks' start-up too).

Then as many hot-spare runs (bench/failover_replace.py): a third agent, node-c, is the
job's spare; node-b's agent and its rank are SIGKILLed together, and the next attempt runs
rank 1 on node-c at the same world size from the checkpoint as it is:

- replace -> next step, less model start-up: (kill -> the spare's first metrics record) -
  (the spare's rank start -> that record). Goal: <= 5 s.

Last line: {"kill_to_all_stopped_s": ..., "kill_to_next_step_s": ...,
"kill_to_next_step_raw_s": ..., "replace_to_next_step_s": ...,
"replace_to_next_step_raw_s": ...} (medians)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gantry.v1 import job_pb2  # noqa: E402

from console.model.job_spec import parse_job_spec  # noqa: E402
from console.net.jobs_client import JobsClient  # noqa: E402
from console.net.local_agents import LocalAgent, start_agent  # noqa: E402

if TYPE_CHECKING:
    from bench.failover_replace import ReplaceRun

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


def stop_agents(agents: list[LocalAgent], root: Path) -> None:
    """Agents leave their ranks running when they stop (by design: a restarted agent
    re-adopts them), so the ranks are killed here too: first whatever is below each
    agent, then anything else that names our temp dir."""
    below = [p for a in agents for p in tree(a.process.pid)[1:]]
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


# -- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    number: int
    kill_to_all_stopped_s: float = float("nan")
    kill_to_first_step_s: float = float("nan")
    startup_s: float = float("nan")  # attempt 2: last rank started -> first metrics record
    kill_to_next_step_s: float = float("nan")
    last_step_1: int = -1  # attempt 1's last step (either rank)
    killed_at_step: int = -1  # rank 1's last reported step when killed
    resumed_step: int = -1  # the checkpoint attempt 2 loaded
    first_step_2: int = -1
    continues: bool = False
    replayed: int = 0  # steps both attempts ran (after the checkpoint, before the kill)
    replay_rel_diff: float = float("nan")  # their rank-0 losses, max relative difference
    standby: bool = False  # attempt 2's ranks were handed to their standbys
    timeline: list[tuple[float, str]] = field(default_factory=list)


def _kill_point(files: RankFiles, save_steps: int, kill_after: int, fake: bool) -> int | None:
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


def standbys_ready(agents: dict[str, LocalAgent], job: str) -> bool:
    """Every agent of the job has a standby for its next attempt that has done its imports
    (not the spare, node-c: it holds no ranks of the job)."""
    for agent in (agents[node] for node in NODES):
        logs = list((agent.data_dir / "standby" / job).glob("*/stdout.log"))
        if not logs or not all("gantry standby: ready" in p.read_text() for p in logs):
            return False
    return True


async def one_run(
    args: argparse.Namespace,
    number: int,
    client: JobsClient,
    agents: dict[str, LocalAgent],
    root: Path,
    data: Path,
) -> Run:
    name = f"failover-{number}"
    out = root / f"run-{number}"
    run = Run(number)
    files = RankFiles(agents, name)
    await client.launch(job_spec(args, name, data, out))
    first = await wait_attempt(client, name, 1, START_TIMEOUT_S)
    if not (args.fake or args.cold):
        # A failure comes long after a start: the agents' standbys are ready by then.
        await wait_for(
            "the agents' standbys for the next attempt",
            lambda: True if standbys_ready(agents, name) else None,
            START_TIMEOUT_S,
            name,
            client,
        )
    killed_at = await wait_for(
        "steps past a checkpoint",
        lambda: _kill_point(files, args.save_steps, args.kill_after, args.fake),
        START_TIMEOUT_S,
        name,
        client,
    )
    attempt_1 = [p for r in first.ranks for p in tree(r.pid)]
    wrapper_1 = next(r.pid for r in first.ranks if r.rank == 1)
    victims = psutil.Process(wrapper_1).children()
    if len(victims) != 1:
        raise BenchError(f"rank 1's wrapper {wrapper_1} has {len(victims)} children, not 1")
    victim = victims[0]
    kill_at = time.time()
    victim.kill()  # SIGKILL
    while running(attempt_1):
        if time.time() - kill_at > GONE_TIMEOUT_S:
            left = ", ".join(str(p.pid) for p in running(attempt_1))
            raise BenchError(f"attempt 1's processes {left} still run {GONE_TIMEOUT_S:.0f}s later")
        time.sleep(0.005)
    run.kill_to_all_stopped_s = time.time() - kill_at
    run.killed_at_step = int(killed_at)

    second = await wait_attempt(client, name, 2, START_TIMEOUT_S)
    firsts = await wait_for(
        "attempt 2's first step",
        lambda: (
            [m[0] for m in (files.records(2, rank, "metrics") for rank in (0, 1))]
            if all(files.records(2, rank, "metrics") for rank in (0, 1))
            else None
        ),
        START_TIMEOUT_S,
        name,
        client,
    )
    first_step_at = min(float(m["time"]) for m in firsts)
    events = await job_events(client, name)
    started = [ts(e.time) for e in events if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED]
    started_2 = [
        ts(e.time)
        for e in events
        if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED and e.attempt == 2 and e.rank >= 0
    ]
    if len(started_2) < len(NODES) or not started:
        raise BenchError(f"job {name}: no RANK_STARTED events for attempt 2")
    run.standby = all(
        e.details.get("standby") == "yes"
        for e in events
        if e.kind == EK.JOB_EVENT_KIND_RANK_STARTED and e.attempt == 2 and e.rank >= 0
    )
    run.kill_to_first_step_s = first_step_at - kill_at
    run.startup_s = first_step_at - max(started_2)
    run.kill_to_next_step_s = run.kill_to_first_step_s - run.startup_s

    steps_1 = [int(r["step"]) for rank in (0, 1) for r in files.records(1, rank, "metrics")]
    run.last_step_1 = max(steps_1)
    run.first_step_2 = min(int(m["step"]) for m in firsts)
    starts_2 = [files.records(2, rank, "start") for rank in (0, 1)]
    loaded = {int(s[0]["step"]) for s in starts_2 if s}
    from_path = step_of(second.resumed_from)
    if args.fake:
        run.resumed_step = 0
    elif from_path is not None:
        run.resumed_step = from_path
        if loaded != {from_path}:
            raise BenchError(
                f"attempt 2 resumed from {second.resumed_from} but started at {loaded}"
            )
    run.continues = run.first_step_2 == run.resumed_step + 1 and run.resumed_step <= run.last_step_1
    if not args.fake:
        await wait_for(
            "attempt 2 to pass attempt 1's last step",
            lambda: (
                True
                if any(int(r["step"]) >= run.last_step_1 for r in files.records(2, 0, "metrics"))
                else None
            ),
            START_TIMEOUT_S,
            name,
            client,
        )
        loss_1 = {int(r["step"]): float(r["loss"]) for r in files.records(1, 0, "metrics")}
        loss_2 = {int(r["step"]): float(r["loss"]) for r in files.records(2, 0, "metrics")}
        both = sorted(set(loss_1) & set(loss_2))
        run.replayed = len(both)
        if both:
            run.replay_rel_diff = max(
                abs(loss_1[s] - loss_2[s]) / max(abs(loss_1[s]), 1e-12) for s in both
            )

    seen: set[tuple[int, int, int]] = set()
    for event in events:
        key = (event.kind, event.attempt, event.rank)
        if event.kind == EK.JOB_EVENT_KIND_METRICS or key in seen or ts(event.time) < kill_at:
            continue
        seen.add(key)
        who = f" rank {event.rank}" if event.rank >= 0 else ""
        label = f"{EK.Name(event.kind).removeprefix('JOB_EVENT_KIND_').lower()}{who}"
        run.timeline.append((ts(event.time) - kill_at, f"{label} (attempt {event.attempt})"))
    run.timeline.append((run.kill_to_all_stopped_s, "attempt 1: every process gone"))
    run.timeline.append((run.kill_to_first_step_s, f"attempt 2: first step {run.first_step_2}"))
    run.timeline.sort()

    await client.stop(name, grace_s=5)
    await wait_state(client, name, {JS.JOB_STATE_STOPPED, JS.JOB_STATE_FAILED}, 60)
    leftovers = [p for r in second.ranks for p in tree(r.pid)]
    kill_all(leftovers)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return run


async def wait_state(client: JobsClient, name: str, states: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        led, _ = await client.describe(name)
        if led.job.state in states:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"job {name} stayed {JS.Name(led.job.state)}")
        await asyncio.sleep(POLL_S)


async def measure(
    args: argparse.Namespace, agents: dict[str, LocalAgent], root: Path, data: Path
) -> tuple[list[Run], list[ReplaceRun]]:
    from bench.failover_replace import replace_run  # it uses this module's helpers

    runs = []
    replaced = []
    sources = trainer_sources()
    async with JobsClient([a.target for a in agents.values()]) as client:
        for number in range(1, args.runs + 1):
            run = await one_run(args, number, client, agents, root, data)
            check_sources(sources)
            print(
                f"run {number}: kill -> all stopped {run.kill_to_all_stopped_s:.3f} s, "
                f"kill -> next step {run.kill_to_next_step_s:.3f} s "
                f"(+ {run.startup_s:.1f} s model start-up); steps {run.last_step_1} | "
                f"ckpt {run.resumed_step} -> {run.first_step_2}",
                flush=True,
            )
            runs.append(run)
        for number in range(1, args.runs + 1):
            spared = await replace_run(args, number, client, agents, root, data)
            check_sources(sources)
            print(
                f"spare run {number}: node lost -> first step on the spare "
                f"{spared.replace_to_next_step_s:.3f} s (+ {spared.startup_s:.1f} s model "
                f"start-up); {spared.replaced_nodes or 'NOT replaced'}",
                flush=True,
            )
            replaced.append(spared)
    return runs, replaced


# -- report -----------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, runs: list[Run], replaced: list[ReplaceRun]
) -> dict[str, float]:
    what = "fake_rank.py" if args.fake else f"agent.train {args.model}"
    print()
    print(
        f"failover: 2 agents x 1 rank, {what}, micro-batch {args.micro_batch} x "
        f"accumulation {args.grad_accum}, checkpoint every {args.save_steps} steps, "
        f"SIGKILL of rank 1 {args.kill_after}+ steps past a checkpoint, {len(runs)} run(s)"
    )
    head = (
        f"{'run':>3} {'kill->stopped s':>15} {'kill->step s':>12} {'start-up s':>10} "
        f"{'net s':>7} {'killed@':>7} {'last(1)':>7} {'ckpt':>5} {'first(2)':>8} "
        f"{'continues':>9} {'replayed':>8} {'replay loss rel diff':>20} {'standby':>7}"
    )
    print(head)
    for r in runs:
        print(
            f"{r.number:>3} {r.kill_to_all_stopped_s:15.3f} {r.kill_to_first_step_s:12.3f} "
            f"{r.startup_s:10.3f} {r.kill_to_next_step_s:7.3f} {r.killed_at_step:>7} "
            f"{r.last_step_1:>7} {r.resumed_step:>5} {r.first_step_2:>8} "
            f"{'yes' if r.continues else 'NO':>9} {r.replayed:>8} {r.replay_rel_diff:20.3g} "
            f"{'yes' if r.standby else 'no':>7}"
        )
    print()
    print("timeline of the last run (seconds after the kill; leader's journal + this bench):")
    for offset, label in runs[-1].timeline:
        print(f"  {offset:+8.3f}  {label}")
    stopped = [r.kill_to_all_stopped_s for r in runs]
    net = [r.kill_to_next_step_s for r in runs]
    raw = [r.kill_to_first_step_s for r in runs]
    startup = [r.startup_s for r in runs]
    print()
    print(f"{'figure':44} {'median':>8} {'max':>8} {'goal':>6}")
    for label, values, goal in (
        ("kill -> every attempt-1 process gone (s)", stopped, "<= 2"),
        ("kill -> next step, less model start-up (s)", net, "<= 5"),
        ("kill -> next step, raw (s)", raw, "<= 5"),
        ("model start-up of attempt 2 (s)", startup, ""),
    ):
        print(f"{label:44} {statistics.median(values):8.3f} {max(values):8.3f} {goal:>6}")
    spare_net = [r.replace_to_next_step_s for r in replaced]
    spare_raw = [r.kill_to_spare_step_s for r in replaced]
    for label, values, goal in (
        ("node lost -> spare's step, less start-up (s)", spare_net, "<= 5"),
        ("node lost -> spare's step, raw (s)", spare_raw, ""),
        ("model start-up on the spare (s)", [r.startup_s for r in replaced], ""),
    ):
        print(f"{label:44} {statistics.median(values):8.3f} {max(values):8.3f} {goal:>6}")
    every = all(r.continues for r in runs)
    print(f"attempt 2 continues from the checkpoint in every run: {'yes' if every else 'NO'}")
    same = all(r.same_world and r.replaced_nodes == "node-b=node-c" for r in replaced)
    said = "yes" if same else "NO"
    print(f"the spare ran node-b's rank at the same world size in every run: {said}")
    return {
        "kill_to_all_stopped_s": round(statistics.median(stopped), 3),
        "kill_to_next_step_s": round(statistics.median(net), 3),
        "kill_to_next_step_raw_s": round(statistics.median(raw), 3),
        "replace_to_next_step_s": round(statistics.median(spare_net), 3),
        "replace_to_next_step_raw_s": round(statistics.median(spare_raw), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="tiny-moe", help="tiny-moe, tiny-mixtral, tiny-dense")
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument(
        "--kill-after", type=int, default=2, help="steps past the checkpoint before the kill"
    )
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per rank"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--fake", action="store_true", help="tests/fixtures/fake_rank.py")
    parser.add_argument(
        "--cold", action="store_true", help="no standbys: every attempt's ranks start cold"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.save_steps < 2 or args.kill_after < 1:
        parser.error("--runs and --kill-after must be >= 1, --save-steps >= 2")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="gantry-failover-"))
    agents: dict[str, LocalAgent] = {}
    try:
        data = root / "no-data" if args.fake else prepare_data(root, args.max_length)
        for node in (*NODES, "node-c"):  # node-c: the spare of the hot-spare runs
            agents[node] = start_agent(
                node,
                root / "agents" / node,
                extra_args=["--torch-extensions-dir", str(EXTENSIONS_DIR)],
            )
        runs, replaced = asyncio.run(measure(args, agents, root, data))
    finally:
        stop_agents(list(agents.values()), root)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    figures = report(args, runs, replaced)
    print(json.dumps(figures))


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


if __name__ == "__main__":
    run_main(main)
