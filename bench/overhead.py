"""Overhead: the same 2-rank DeepSpeed job under the plain `deepspeed` launcher and
under two Gantry agents; compares training speed and the loss curves.

Both runs train `python -m agent.train` on the CPU accelerator with the same model, seed,
prepared data, arguments and threads per rank (--threads, OMP_NUM_THREADS), one after
the other on this machine:

- launcher: `deepspeed --num_gpus 2 --master_port P --module agent.train ...` (it
  appends --local_rank=N); both ranks append their records to one $GANTRY_METRICS_FILE.
  By default each rank runs under `setsid` (`--no_python --no_local_rank setsid python -m
  agent.train`), in a session of its own as the agents' ranks are: the kernel's autogroup
  scheduler shares a busy CPU between sessions, and one session for both ranks would get
  a smaller share than the agents' two (--launcher-sessions one: as from a shell);
- agents: two `gantry-agent` processes (node-a, node-b, one rank each), the job
  launched through node-a as its leader, records read from each rank's metrics file.

Speed is steps per second from rank 0's own metrics records, from step --skip to the
last step (start-up excluded); the ratio is agents / launcher. The loss curves match when
rank 0 reports the same steps in both runs and each loss is within --rtol (relative).

    .venv/bin/python bench/overhead.py [--steps 60] [--skip 10] [--model tiny-moe]
        [--micro-batch 4] [--grad-accum 2] [--threads 1] [--rtol 1e-6] [--runs 2]
        [--launcher-sessions per-rank|one] [--keep]

Each setting runs --runs times, alternating which goes first (launcher, agents, agents,
launcher, ...); the figures are medians. Other work on the machine skews the comparison:
the CPU other processes used over each run's measured steps is printed beside it.
Every process the bench starts is stopped on exit, Ctrl-C or error.

Last line: {"steps_per_s_ratio": ..., "loss_curves_identical": true|false}
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gantry.v1 import job_pb2  # noqa: E402

from bench.failover_cluster import (  # noqa: E402
    DS_CONFIG,
    NODES,
    PYTHON,
    BenchError,
    _raise_interrupt,
    check_sources,
    kill_all,
    prepare_data,
    rank_env,
    read_records,
    run_main,
    stop_agents,
    sweep,
    trainer_args,
    trainer_sources,
    tree,
)
from console.model.job_spec import parse_job_spec  # noqa: E402
from console.net.jobs_client import JobsClient  # noqa: E402
from console.net.local_agents import LocalAgent, start_agent  # noqa: E402

JS = job_pb2.JobState
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
RUN_TIMEOUT_S = 480.0


class ForeignLoad:
    """CPU-seconds per second used by processes that are not this bench's (their command
    line does not name our temp dir), sampled once a second on a thread: other work on
    the machine skews a speed comparison, and this says how much there was."""

    def __init__(self, root: Path, period_s: float = 1.0) -> None:
        self.root = str(root)
        self.period_s = period_s
        self._last: dict[tuple[int, float], float] = {}
        self._total = 0.0
        self._samples: list[tuple[float, float]] = []  # (unix time, CPU-s so far)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="foreign-load", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        me = os.getpid()
        seen: dict[tuple[int, float], float] = {}
        delta = 0.0
        for proc in psutil.process_iter(["cmdline", "create_time", "cpu_times"]):
            info = proc.info
            cpu, cmdline = info.get("cpu_times"), info.get("cmdline") or []
            if proc.pid == me or cpu is None or any(self.root in part for part in cmdline):
                continue
            key = (proc.pid, float(info.get("create_time") or 0.0))
            used = float(cpu.user + cpu.system)
            seen[key] = used
            if key in self._last:
                delta += max(0.0, used - self._last[key])
        with self._lock:
            self._total += delta
            self._last = seen
            self._samples.append((time.time(), self._total))

    def _loop(self) -> None:
        self._sample()
        while not self._stop.wait(self.period_s):
            with contextlib.suppress(Exception):
                self._sample()

    def between(self, start: float, end: float) -> float:
        """CPU-seconds per second between two unix times (to the nearest samples; processes
        that started and ended between two samples escape)."""
        with self._lock:
            inside = [x for x in self._samples if start <= x[0] <= end]
        if len(inside) < 2:
            return float("nan")
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Result:
    setting: str  # "launcher" or "agents"
    wall_s: float  # start to every rank done
    losses: dict[int, float]  # rank 0's loss per step
    times: dict[int, float]  # rank 0's record time per step
    steps_per_s: float = float("nan")
    step_time_s: float = float("nan")  # rank 0's mean step_time_s over the same steps
    agents_cpu_s: float = 0.0  # both agents' CPU seconds during the run (agents only)
    foreign_cpu_s_per_s: float = float("nan")  # other work on the machine, same steps


def rank0(records: list[dict[str, object]]) -> tuple[dict[int, float], dict[int, float], float]:
    losses: dict[int, float] = {}
    times: dict[int, float] = {}
    step_times: dict[int, float] = {}
    for record in records:
        if record.get("kind") != "metrics" or record.get("rank", 0) != 0:
            continue
        step = int(str(record["step"]))
        losses[step] = float(str(record["loss"]))
        times[step] = float(str(record["time"]))
        if "step_time_s" in record:
            step_times[step] = float(str(record["step_time_s"]))
    return losses, times, statistics.fmean(step_times.values()) if step_times else float("nan")


def speed(result: Result, skip: int) -> None:
    steps = sorted(s for s in result.times if s >= skip)
    if len(steps) < 2:
        raise BenchError(f"{result.setting}: rank 0 reported too few steps past {skip}")
    first, last = steps[0], steps[-1]
    result.steps_per_s = (last - first) / (result.times[last] - result.times[first])


def run_launcher(args: argparse.Namespace, root: Path, data: Path, number: int) -> Result:
    out = root / f"launcher-{number}"
    out.mkdir(parents=True)
    metrics = out / "metrics.jsonl"
    env = {**os.environ, **rank_env(args.threads), "GANTRY_METRICS_FILE": str(metrics)}
    argv = [
        str(DEEPSPEED),
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        *(
            # Each rank in a session of its own, as under the agents (whose rank wrappers
            # start new sessions): with the kernel's autogroup scheduling, CPU time is
            # shared fairly between sessions, so one session for both ranks would get less
            # of a busy machine than the agents' two. LOCAL_RANK comes in the environment.
            ["--no_python", "--no_local_rank", "setsid", PYTHON, "-u", "-m", "agent.train"]
            if args.launcher_sessions == "per-rank"
            else ["--module", "agent.train"]
        ),
        *trainer_args(args, data, out / "out", args.steps, args.steps + 1),
    ]
    log = (out / "launcher.log").open("wb")
    started = time.monotonic()
    # Its own session: one killpg reaches the launcher (and the ranks, unless they run
    # under setsid: the snapshot of its process tree below reaches those).
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        code = proc.wait(RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        below = tree(proc.pid)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_all(below)
    wall = time.monotonic() - started
    if code != 0:
        tail = (out / "launcher.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise BenchError(f"deepspeed launcher exited {code}: {' | '.join(tail)}")
    losses, times, step_time = rank0(read_records(metrics))
    return Result("launcher", wall, losses, times, step_time_s=step_time)


def agent_cpu_s(agents: dict[str, LocalAgent]) -> float:
    total = 0.0
    for agent in agents.values():
        cpu = psutil.Process(agent.process.pid).cpu_times()
        total += cpu.user + cpu.system
    return total


async def run_agents(
    args: argparse.Namespace,
    root: Path,
    data: Path,
    number: int,
    agents: dict[str, LocalAgent],
) -> Result:
    name = f"overhead-{number}"
    out = root / f"agents-{number}"
    doc = {
        "name": name,
        "nodes": [f"{n} slots=1" for n in NODES],
        "command": ["python", "-m", "agent.train"],
        "args": trainer_args(args, data, out, args.steps, args.steps + 1),
        "env": rank_env(args.threads),
        "working_dir": str(ROOT),
        "checkpoint_dir": str(out / "checkpoints"),
        "deepspeed_config": str(DS_CONFIG),
        "restart": {"max_restarts": 0},
    }
    spec = parse_job_spec(json.dumps(doc), ROOT, set(NODES), source=f"bench job {name}")
    cpu_before = agent_cpu_s(agents)
    started = time.monotonic()
    async with JobsClient([a.target for a in agents.values()]) as client:
        await client.launch(spec)
        while True:
            led, _ = await client.describe(name)
            if led.job.state == JS.JOB_STATE_SUCCEEDED:
                break
            if led.job.state in (JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED):
                raise BenchError(f"job {name} ended {JS.Name(led.job.state)}: {led.job.reason}")
            if time.monotonic() - started > RUN_TIMEOUT_S:
                await client.stop(name, grace_s=5)
                raise BenchError(f"job {name} did not finish within {RUN_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)
    wall = time.monotonic() - started
    cpu = agent_cpu_s(agents) - cpu_before
    metrics = agents[NODES[0]].data_dir / "jobs" / name / "attempt-1" / "rank-0" / "metrics.jsonl"
    losses, times, step_time = rank0(read_records(metrics))
    return Result("agents", wall, losses, times, step_time_s=step_time, agents_cpu_s=cpu)


def compare(launcher: Result, agents: Result, rtol: float) -> tuple[bool, float, float, str]:
    """(identical, max abs diff, max rel diff, first differing step or a note)."""
    if set(launcher.losses) != set(agents.losses):
        missing = sorted(set(launcher.losses) ^ set(agents.losses))
        return False, float("nan"), float("nan"), f"steps differ: {missing[:5]}"
    abs_max = rel_max = 0.0
    first_bad = ""
    for step in sorted(launcher.losses):
        a, b = launcher.losses[step], agents.losses[step]
        diff = abs(a - b)
        rel = diff / max(abs(a), 1e-12)
        abs_max, rel_max = max(abs_max, diff), max(rel_max, rel)
        if rel > rtol and not first_bad:
            first_bad = f"first step over tolerance: {step}"
    return not first_bad, abs_max, rel_max, first_bad or "every step within tolerance"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=10, help="speed measured from this step")
    parser.add_argument("--model", default="tiny-moe", help="tiny-moe, tiny-mixtral, tiny-dense")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="OMP_NUM_THREADS per rank, the same in both runs (0: leave it to the trainer)",
    )
    parser.add_argument(
        "--launcher-sessions",
        choices=("per-rank", "one"),
        default="per-rank",
        help="per-rank: each launcher rank under `setsid`, like the agents' ranks (fair when "
        "other work shares the machine); one: as started from a shell",
    )
    parser.add_argument("--rtol", type=float, default=1e-6, help="loss tolerance, relative")
    parser.add_argument(
        "--runs", type=int, default=2, help="runs of each setting, alternating: ABBA..."
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if args.steps < args.skip + 5 or args.skip < 1 or args.runs < 1:
        parser.error("need --skip >= 1, --steps >= --skip + 5 and --runs >= 1")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="gantry-overhead-"))
    agents: dict[str, LocalAgent] = {}
    results: dict[str, list[Result]] = {"launcher": [], "agents": []}
    load = ForeignLoad(root)
    sources = trainer_sources()
    try:
        data = prepare_data(root, args.max_length)
        for node in NODES:
            agents[node] = start_agent(node, root / "agents" / node)
        for number in range(1, args.runs + 1):
            order = ["launcher", "agents"] if number % 2 else ["agents", "launcher"]
            for setting in order:
                if setting == "launcher":
                    result = run_launcher(args, root, data, number)
                else:
                    result = asyncio.run(run_agents(args, root, data, number, agents))
                check_sources(sources)
                speed(result, args.skip)
                window = [result.times[s] for s in result.times if s >= args.skip]
                result.foreign_cpu_s_per_s = load.between(min(window), max(window))
                results[setting].append(result)
                print(
                    f"run {number} {setting:8}: {result.steps_per_s:.4f} steps/s "
                    f"(steps {args.skip}-{max(result.times)}), {result.wall_s:.1f} s wall, "
                    f"other processes {result.foreign_cpu_s_per_s:.2f} CPU-s/s",
                    flush=True,
                )
    finally:
        load.close()
        stop_agents(list(agents.values()), root)
        sweep(root)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    launcher_sps = statistics.median(r.steps_per_s for r in results["launcher"])
    agents_sps = statistics.median(r.steps_per_s for r in results["agents"])
    ratio = agents_sps / launcher_sps
    checks = [compare(results["launcher"][0], a, args.rtol) for a in results["agents"]]
    checks += [compare(results["launcher"][0], b, args.rtol) for b in results["launcher"][1:]]
    identical = all(c[0] for c in checks)
    abs_max = max(c[1] for c in checks)
    rel_max = max(c[2] for c in checks)
    threads = args.threads or "trainer's choice"
    print()
    print(
        f"overhead: agent.train {args.model}, 2 ranks, micro-batch {args.micro_batch} x "
        f"accumulation {args.grad_accum}, {args.steps} steps, OMP threads per rank {threads}, "
        f"{args.runs} run(s) each; speed from step {args.skip} on; launcher ranks in "
        f"{'a session each' if args.launcher_sessions == 'per-rank' else 'one session'}"
    )
    print(
        f"{'setting':10} {'steps/s':>9} {'s/step':>8} {'rank0 step_time_s':>17} {'wall s':>8} "
        f"{'other CPU-s/s':>13}"
    )
    for setting in ("launcher", "agents"):
        sps = statistics.median(r.steps_per_s for r in results[setting])
        step_time = statistics.median(r.step_time_s for r in results[setting])
        wall = statistics.median(r.wall_s for r in results[setting])
        other = statistics.median(r.foreign_cpu_s_per_s for r in results[setting])
        print(f"{setting:10} {sps:9.4f} {1 / sps:8.4f} {step_time:17.4f} {wall:8.1f} {other:13.2f}")
    cpu = statistics.median(r.agents_cpu_s / r.wall_s for r in results["agents"])
    cores = os.cpu_count() or 1
    print(
        f"both agents' CPU while the job ran: {cpu:.4f} CPU-s per s, {cpu / cores:.1%} of "
        f"{cores} cores: with ranks using every core, a ratio near {1 - cpu / cores:.3f}"
    )
    other = max(r.foreign_cpu_s_per_s for rs in results.values() for r in rs)
    if other > 0.1:
        print(
            f"warning: other processes used up to {other:.2f} CPU-s per s during the measured "
            "steps; the speed ratio is only as good as that noise allows"
        )
    print()
    steps = sorted(results["launcher"][0].losses)
    print(f"rank 0 loss, launcher vs agents (of {len(steps)} steps):")
    first_agents = results["agents"][0]
    for step in [*steps[:3], *steps[-2:]]:
        a = results["launcher"][0].losses[step]
        b = first_agents.losses.get(step, float("nan"))
        print(f"  step {step:>4}: {a:.9f}  {b:.9f}")
    print()
    print(f"{'figure':38} {'measured':>12} {'goal':>10}")
    print(f"{'steps/s ratio agents/launcher':38} {ratio:12.4f} {'>= 0.97':>10}")
    print(f"{'loss max abs diff':38} {abs_max:12.3g} {'':>10}")
    print(f"{'loss max rel diff':38} {rel_max:12.3g} {f'<= {args.rtol:g}':>10}")
    print(f"{'loss curves identical':38} {'yes' if identical else 'NO':>12} {'yes':>10}")
    for check in checks:
        if not check[0]:
            print(f"  {check[3]}")
    print(json.dumps({"steps_per_s_ratio": round(ratio, 4), "loss_curves_identical": identical}))


if __name__ == "__main__":
    run_main(main)
