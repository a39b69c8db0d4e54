"""Preemption: a real two-node job on loopback, a notice file dropped mid-run.

Two `gantry-agent` processes (node-a leads; node-b watches `--preemption-notice
file:NOTICE`) run a 2-rank job of tests/fixtures/preempt_rank.py, a rank program that
honours checkpoint requests (agent.rank.checkpoint_request) as Gantry's trainer and the HF
callback do: at a step's end it saves, reports the checkpoint and answers the request. Once
both ranks have trained a few steps the bench writes the notice file (with a deadline
--grace-s ahead); the job must checkpoint, stop and wait as preempted. Then node-b's agent
is killed (the instance goes), the notice removed, the agent started again on its port (the
node is back), and the job must resume from that checkpoint.

- notice -> checkpoint: from writing the notice file to the last rank's answer as the
  agents recorded it (its PREEMPTION_NOTICE event with ``answered``). Goal: within the grace.
- steps lost: per rank, the last step attempt 1 reached less the step attempt 2 resumed at
  (the rank's own "resumed at N"). Goal: 0.

    .venv/bin/python bench/preempt.py [--step-s 0.2] [--train-s 3] [--grace-s 30] [--keep]

Prints a table, then the last line {"notice_to_checkpoint_s": ..., "steps_lost": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gantry.v1 import job_pb2  # noqa: E402

from console.net.jobs_client import JobsClient  # noqa: E402
from console.net.local_agents import LocalAgent, start_agent  # noqa: E402

JS = job_pb2.JobState
EK = job_pb2.JobEventKind
RANK_PROGRAM = ROOT / "tests" / "fixtures" / "preempt_rank.py"
JOB = "preempt-bench"
NODES = ("node-a", "node-b")
POLL_S = 0.2


class BenchError(RuntimeError):
    pass


def job_spec(root: Path, step_s: float, grace_s: float) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        name=JOB,
        nodes=[job_pb2.NodeSlots(node=n, slots=1) for n in NODES],
        command=[sys.executable, str(RANK_PROGRAM)],
        args=["--steps", "100000", "--step-s", f"{step_s:g}"],
        working_dir=str(root),
        checkpoint_dir=str(root / "ckpt"),
        restart=job_pb2.RestartPolicy(max_restarts=0, backoff_s=0.2),
        preemption=job_pb2.PreemptionPolicy(grace_s=grace_s),
    )
    spec.args.extend(["--checkpoint-dir", spec.checkpoint_dir])
    return spec


def rank_dir(agent: LocalAgent, attempt: int, rank: int) -> Path:
    return agent.data_dir / "jobs" / JOB / f"attempt-{attempt}" / f"rank-{rank}"


def last_step(agent: LocalAgent, attempt: int, rank: int) -> int:
    """The furthest step the rank's metrics file of ``attempt`` records (0: none)."""
    step = 0
    with contextlib.suppress(OSError):
        for line in (rank_dir(agent, attempt, rank) / "metrics.jsonl").read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("kind") == "metrics":
                    step = max(step, int(record.get("step", 0)))
    return step


def resumed_at(agent: LocalAgent, attempt: int, rank: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        first = (rank_dir(agent, attempt, rank) / "stdout.log").read_text().splitlines()[0]
        return int(first.removeprefix("resumed at "))
    return None


def all_resumed(placed: dict[int, LocalAgent]) -> dict[int, int] | None:
    """rank -> the step attempt 2 resumed at, once every rank said it."""
    found = {r: resumed_at(a, 2, r) for r, a in placed.items()}
    return {r: s for r, s in found.items() if s is not None} if None not in found.values() else None


async def wait_state(client: JobsClient, states: set[int], timeout_s: float) -> job_pb2.Job:
    deadline = time.monotonic() + timeout_s
    while True:
        led, _ = await client.describe(JOB)
        if led.job.state in states:
            return led.job
        if led.job.state in (JS.JOB_STATE_FAILED, JS.JOB_STATE_STOPPED):
            raise BenchError(f"job {JOB} ended: {led.job.reason}")
        if time.monotonic() > deadline:
            raise BenchError(f"job {JOB} stayed {JS.Name(led.job.state)} for {timeout_s:.0f}s")
        await asyncio.sleep(POLL_S)


async def wait_until(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while (value := check()) is None or value is False:
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(POLL_S)
    return value


async def run(args: argparse.Namespace, root: Path, agents: dict[str, LocalAgent]) -> None:
    notice = root / "notice"
    targets = [a.target for a in agents.values()]
    async with JobsClient(targets) as client:
        await client.launch(job_spec(root, args.step_s, args.grace_s))
        await wait_state(client, {JS.JOB_STATE_RUNNING}, 60)
        placed = {0: agents["node-a"], 1: agents["node-b"]}
        await wait_until(
            "steps", lambda: all(last_step(a, 1, r) >= 3 for r, a in placed.items()), 60
        )
        await asyncio.sleep(args.train_s)
        noticed = time.time()
        notice.write_text(f"{noticed + args.grace_s:.3f}\n")
        job = await wait_state(client, {JS.JOB_STATE_PREEMPTED}, args.grace_s + 30)
        events = [e async for e in client.events(JOB, follow=False)]
        answers = {
            e.rank: e
            for e in events
            if e.kind == EK.JOB_EVENT_KIND_PREEMPTION_NOTICE
            and e.attempt == 1
            and e.details.get("answered")
            and e.rank >= 0
        }
        if sorted(answers) != [0, 1]:
            raise BenchError(f"ranks {sorted(answers)} answered: {job.attempts[0].reason}")
        reached = {r: last_step(a, 1, r) for r, a in placed.items()}

        # The instance goes; a new one comes back on the same address.
        port = int(agents["node-b"].address.rsplit(":", 1)[1])
        agents["node-b"].process.kill()
        agents["node-b"].process.wait()
        notice.unlink()
        await asyncio.sleep(5.0)  # the leader's probes see it gone
        agents["node-b"] = start_agent("node-b", agents["node-b"].data_dir, port, AGENT_ARGS)
        placed[1] = agents["node-b"]
        await wait_state(client, {JS.JOB_STATE_RUNNING}, 60)
        resumed = await wait_until("the resumed ranks", lambda: all_resumed(placed), 60)
        await client.stop(JOB, 2.0)

    took = {r: e.time.ToNanoseconds() / 1e9 - noticed for r, e in answers.items()}
    lost = {r: reached[r] - int(resumed[r]) for r in placed}
    print(
        f"{'rank':>4} {'node':<7} {'saved':>6} {'reached':>8} {'resumed':>8} {'lost':>5} answer_s"
    )
    for r in sorted(placed):
        saved = answers[r].details.get("step", "?")
        row = f"{r:>4} {NODES[r]:<7} {saved:>6} {reached[r]:>8} {resumed[r]:>8} {lost[r]:>5}"
        print(f"{row} {took[r]:>8.3f}")
    print(f"attempt 1: {job.attempts[0].reason}")
    last = {
        "notice_to_checkpoint_s": round(max(took.values()), 3),
        "steps_lost": max(lost.values()),
    }
    print(json.dumps(last))


AGENT_ARGS = ["--no-warm-ops"]


def stop_everything(agents: dict[str, LocalAgent], root: Path) -> None:
    """The agents, then every process that names the bench's folder (ranks outlive agents)."""
    for agent in agents.values():
        agent.stop()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(str(root) in part for part in proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-s", type=float, default=0.2, help="the rank's seconds a step")
    parser.add_argument("--train-s", type=float, default=3.0, help="training before the notice")
    parser.add_argument("--grace-s", type=float, default=30.0, help="the spec's preemption grace")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gantry-preempt-"))
    agents: dict[str, LocalAgent] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        agents["node-a"] = start_agent("node-a", root / "agents" / "node-a", 0, AGENT_ARGS)
        notice_args = [*AGENT_ARGS, "--preemption-notice", f"file:{root / 'notice'}"]
        agents["node-b"] = start_agent("node-b", root / "agents" / "node-b", 0, notice_args)
        asyncio.run(run(args, root, agents))
    except BenchError as exc:
        print(f"bench/preempt.py: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        stop_everything(agents, root)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
