"""The end of what a rank wrote is read, however it ends: killed, stopped or exiting at once.

A Hugging Face Trainer run without its bar (``--disable_tqdm``) prints only log dicts; the
script parser keeps each one up to 2 s waiting for the bar redraw that would tell its step.
A tqdm bar's last draw has no line end at all. Both used to be dropped when the rank ended.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.jobs.node.supervisor import LocalSupervisor
from tests import test_local_supervisor as local
from tests.test_local_supervisor import all_done, poll_until, steps

# The fixtures shared with test_local_supervisor.
journal, events, supervisors = local.journal, local.events, local.supervisors

# Prints a Trainer-style log dict every 10 steps (on stdout) and, with bar=1, tqdm's draws
# (on stderr, the last one without a line end); then touches `ready` and waits to be ended.
HF_RANK = r"""
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
steps, total = int(args["steps"]), 300
print("***** Running training *****", flush=True)
for step in range(1, steps + 1):
    if "bar" in args:
        pct = step * 100 // total
        sys.stderr.write(f"\r{pct:3d}%|#         | {step}/{total} [00:01<00:02, 99.00it/s]")
        sys.stderr.flush()
    if step % 10 == 0:
        loss = round(1.0 / step, 5)
        print({"loss": loss, "grad_norm": 0.2, "learning_rate": 0.001, "epoch": step / 600},
              flush=True)
    time.sleep(0.002)
open(args["ready"], "w").close()
if "exit" in args:
    sys.exit(int(args["exit"]))
time.sleep(60)
"""


@pytest.fixture
def hf_rank(tmp_path: Path) -> Path:
    path = tmp_path / "hf_rank.py"
    path.write_text(HF_RANK)
    return path


def hf_spec(script: Path, ready: Path, *args: str) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name="moe",
        command=[sys.executable, str(script)],
        args=[f"ready={ready}", *args, "--logging_steps", "10", "--max_steps", "300"],
        working_dir=str(script.parent),
    )


def kill_script(wrapper_pid: int, sig: int = signal.SIGKILL) -> None:
    """Signals the rank's script itself (the wrapper's child), as ``kill -9 <pid>`` would."""
    [child] = psutil.Process(wrapper_pid).children()
    os.kill(child.pid, sig)


async def start_and_wait(
    sup: LocalSupervisor, script: Path, ready: Path, *args: str
) -> job_pb2.Rank:
    [started] = sup.start_ranks(hf_spec(script, ready, *args), 1, [0], 1, "127.0.0.1", 29500)
    # Poll while it prints, as the agent does: the last dicts are read just before the end.
    await poll_until(sup, ready.exists, timeout=20)
    await sup.poll()
    return started


@pytest.mark.parametrize("bar", [False, True], ids=["dicts", "bar"])
async def test_a_killed_rank_is_read_to_its_last_line(
    supervisors: Callable[..., LocalSupervisor],
    journal: Journal,
    hf_rank: Path,
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
    bar: bool,
) -> None:
    sup = supervisors()
    ready = tmp_path / "ready"
    started = await start_and_wait(sup, hf_rank, ready, "steps=177", *(["bar=1"] if bar else []))
    kill_script(started.pid)
    await poll_until(sup, all_done(sup))
    [rank] = sup.ranks("moe")
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_FAILED, -9)
    last = 177 if bar else 170  # the bar's last draw, else the last dict's step
    assert rank.metrics.step == last
    assert steps(events)[-1] == last
    if not bar:
        assert steps(events) == list(range(10, 171, 10))
        assert rank.metrics.loss == pytest.approx(1 / 170, rel=1e-3)


async def test_a_stopped_rank_is_read_to_its_last_line(
    supervisors: Callable[..., LocalSupervisor],
    hf_rank: Path,
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    ready = tmp_path / "ready"
    await start_and_wait(sup, hf_rank, ready, "steps=210")
    await sup.stop_ranks("moe", 1, grace_s=2.0)
    assert not sup.live_keys()
    [rank] = sup.ranks("moe")
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_KILLED, -signal.SIGTERM)
    assert rank.metrics.step == 210 and steps(events) == list(range(10, 211, 10))
    assert rank.metrics.loss == pytest.approx(1 / 210, rel=1e-3)


async def test_a_rank_failing_at_once_is_read_to_its_last_line(
    supervisors: Callable[..., LocalSupervisor],
    hf_rank: Path,
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    ready = tmp_path / "ready"
    sup.start_ranks(hf_spec(hf_rank, ready, "steps=90", "exit=3"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup), timeout=20)
    [rank] = sup.ranks("moe")
    assert (rank.state, rank.exit_code) == (job_pb2.RANK_STATE_FAILED, 3)
    assert rank.metrics.step == 90 and steps(events) == list(range(10, 91, 10))
