"""The node-local supervisor against fake ranks: tiny scripts that report, exit, hang."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.jobs.node.hangs import JOIN_WARN_DEFAULT_S, NO_HANDLER
from agent.jobs.node.launch import rank_argv, rank_env
from agent.jobs.node.logs import extract_stacks
from agent.jobs.node.supervisor import LocalSupervisor

K = job_pb2.JobEventKind

# A fake rank. Arguments are key=value: steps, period (s between steps), exit (code),
# hang_at (step at which it gets stuck), ignore_term, clean_term (exit 0 on SIGTERM),
# checkpoint (tag written after the last step), deepspeed (print DeepSpeed's lines instead of
# writing the metrics file), env_out (file to dump its environment, argv and cwd into).
FAKE_RANK = r"""
import faulthandler, json, os, signal, sys, time
if "no_stacks=1" not in sys.argv:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if "ignore_term" in args:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "clean_term" in args:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
rank = int(os.environ["RANK"])
path = os.environ["GANTRY_METRICS_FILE"]
if "env_out" in args:
    with open(args["env_out"].format(rank=rank), "w") as f:
        json.dump({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd()}, f)

def write(record):
    record.update(time=time.time(), rank=rank)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")

def stuck_in_all_reduce():
    time.sleep(60)

deepspeed = "deepspeed" in args
if not deepspeed:
    write({"kind": "start"})
else:
    print("[2026-11-28 09:46:22,901] [INFO] [logging.py:123:log_dist] [Rank 0] "
          "step=0, skipped=0, lr=[0.001], mom=[(0.9, 0.999)]", flush=True)
if "optimizer" in args:  # optimizer steps, as a training script takes (the hook counts them)
    import torch
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
for step in range(1, int(args.get("steps", 0)) + 1):
    if step == int(args.get("hang_at", -1)):
        stuck_in_all_reduce()
    if "optimizer" in args:
        weight.sum().backward()
        optimizer.step()
    if deepspeed:
        print(f"[Rank 0] time (ms) | fwd: 1.00 | bwd: 2.00 | bwd_inner: 1.00 | "
              f"bwd_allreduce: 1.00 | step: {step}.00", flush=True)
    else:
        write({"kind": "metrics", "step": step, "loss": 1.0 / step, "lr": 1e-3,
               "collective_s": {"all_reduce": 0.001}})
        write({"kind": "heartbeat", "step": step})
    time.sleep(float(args.get("period", 0)))
if "checkpoint" in args:
    write({"kind": "checkpoint", "step": 99, "tag": args["checkpoint"], "path": "/c/x"})
if "linger" in args:
    time.sleep(float(args["linger"]))
sys.exit(int(args.get("exit", 0)))
"""


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal.open(tmp_path / "agent")
    yield j
    j.close()


@pytest.fixture
def fake_rank(tmp_path: Path) -> Path:
    path = tmp_path / "fake_rank.py"
    path.write_text(FAKE_RANK)
    return path


@pytest.fixture
def events() -> list[job_pb2.JobEvent]:
    return []


@pytest.fixture
def supervisors(
    tmp_path: Path, journal: Journal, events: list[job_pb2.JobEvent]
) -> Iterator[Callable[..., LocalSupervisor]]:
    made: list[LocalSupervisor] = []

    def make(**kw: object) -> LocalSupervisor:
        sup = LocalSupervisor(
            tmp_path / "agent",
            "n1",
            journal,
            on_event=events.append,
            stack_wait_s=kw.pop("stack_wait_s", 2.0),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        made.append(sup)
        return sup

    yield make
    # Nothing a test started outlives it: standbys (a rank that trained prepares one) and ranks.
    for sup in made:
        sup.close()
    pgids = [r.pid for r in journal.live_ranks(None, []) if r.pid > 0]
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def spec(fake_rank: Path, *args: str, hang_timeout_s: float = 0.0) -> job_pb2.JobSpec:
    return job_pb2.JobSpec(
        name="moe",
        command=[sys.executable, str(fake_rank)],
        args=list(args),
        env={"NCCL_DEBUG": "INFO"},
        hang_timeout_s=hang_timeout_s,
        collective_timeout_s=120,
        working_dir=str(fake_rank.parent),
    )


async def poll_until(sup: LocalSupervisor, done: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await sup.poll()
        await asyncio.sleep(0.03)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def wrapper_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def states(sup: LocalSupervisor, job: str = "moe") -> list[int]:
    return [r.state for r in sup.ranks(job)]


def kinds(events: list[job_pb2.JobEvent], rank: int | None = None) -> list[int]:
    return [e.kind for e in events if rank is None or e.rank == rank]


def steps(events: list[job_pb2.JobEvent], rank: int = 0) -> list[int]:
    return [e.metrics.step for e in events if e.kind == K.JOB_EVENT_KIND_METRICS and e.rank == rank]


def all_done(sup: LocalSupervisor) -> Callable[[], bool]:
    return lambda: not sup.live_keys()


async def test_ranks_exit_0_with_their_metrics_and_environment(
    supervisors: Callable[..., LocalSupervisor],
    journal: Journal,
    fake_rank: Path,
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    job_spec = spec(fake_rank, "steps=3", f"env_out={tmp_path}/env-{{rank}}.json")
    started = sup.start_ranks(job_spec, 1, [2, 3], 4, "10.0.0.1", 29511, "/ckpt/global_step10")
    assert [r.state for r in started] == [job_pb2.RANK_STATE_STARTING] * 2
    assert [r.local_rank for r in started] == [0, 1] and all(r.pid > 0 for r in started)
    await poll_until(sup, all_done(sup))

    assert states(sup) == [job_pb2.RANK_STATE_EXITED, job_pb2.RANK_STATE_EXITED]
    for pb in sup.ranks("moe"):
        assert pb.exit_code == 0 and pb.node == "n1"
        assert pb.metrics.step == 3 and pb.metrics.loss == pytest.approx(1 / 3)
        assert pb.metrics.collective_time_s == pytest.approx(0.001)
        assert pb.last_heartbeat.seconds > 0
    for rank in (2, 3):
        assert kinds(events, rank)[0] == K.JOB_EVENT_KIND_RANK_STARTED
        assert kinds(events, rank)[-1] == K.JOB_EVENT_KIND_RANK_EXITED
        assert steps(events, rank) == [1, 2, 3]
    # What on_event saw is what the journal holds, numbered.
    assert [e.seq for e in events] == [e.seq for e in journal.events_after(0, "moe")]
    assert events == journal.events_after(0, "moe")

    seen = json.loads((tmp_path / "env-3.json").read_text())
    env = seen["env"]
    assert (env["RANK"], env["LOCAL_RANK"]) == ("3", "1")
    assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29511")
    assert env["DS_ACCELERATOR"] == "cpu"
    assert env["NCCL_DEBUG"] == "INFO" and env["GANTRY_JOB"] == "moe"
    assert env["GANTRY_ATTEMPT"] == "1" and env["GANTRY_COLLECTIVE_TIMEOUT_S"] == "120"
    rank_dir = tmp_path / "agent" / "jobs" / "moe" / "attempt-1" / f"rank-{env['RANK']}"
    assert env["GANTRY_METRICS_FILE"] == str(rank_dir / "metrics.jsonl")
    assert seen["argv"][-2:] == ["--resume_from_checkpoint", "/ckpt/global_step10"]
    assert seen["cwd"] == str(tmp_path)
    assert (rank_dir / "exit_code").read_text() == "0\n"
    attempt = journal.get_attempt("moe", 1)
    assert attempt is not None
    assert (attempt.master_port, attempt.resumed_from) == (29511, "/ckpt/global_step10")


async def test_rank_exiting_3_fails_with_its_code(
    supervisors: Callable[..., LocalSupervisor],
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    sup.start_ranks(spec(fake_rank, "steps=2", "exit=3"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup))
    [rank] = sup.ranks("moe")
    assert (rank.state, rank.exit_code, rank.reason) == (
        job_pb2.RANK_STATE_FAILED,
        3,
        "exit code 3",
    )
    failed = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_FAILED]
    assert len(failed) == 1 and failed[0].details["exit_code"] == "3"
    assert steps(events) == [1, 2]


async def test_hung_rank_is_dumped_then_failed(
    supervisors: Callable[..., LocalSupervisor],
    journal: Journal,
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    clock = ManualClock()
    sup = supervisors(clock=clock)
    job_spec = spec(fake_rank, "steps=5", "hang_at=3", hang_timeout_s=30)
    [started] = sup.start_ranks(job_spec, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: steps(events) == [1, 2])
    await asyncio.sleep(0.2)
    await sup.poll()
    assert states(sup) == [job_pb2.RANK_STATE_RUNNING]

    clock.advance(29)  # not yet
    await sup.poll()
    assert states(sup) == [job_pb2.RANK_STATE_RUNNING]
    clock.advance(2)
    await sup.poll()
    assert states(sup) == [job_pb2.RANK_STATE_HUNG]
    [hung] = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_HUNG]
    assert hung.details["last_step"] == "2" and "no progress for 31 s" in hung.message

    stderr = Path(journal.ranks("moe")[0].stderr_path)
    await wait_for(lambda: "stuck_in_all_reduce" in stderr.read_text())  # the dump is written
    clock.advance(1)
    await sup.poll()
    assert states(sup) == [job_pb2.RANK_STATE_HUNG]  # waits stack_wait_s for the dump
    clock.advance(1.5)
    await sup.poll()
    [rank] = sup.ranks("moe")
    assert rank.state == job_pb2.RANK_STATE_FAILED and rank.reason.startswith("hung")
    [failed] = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_FAILED]
    stacks = failed.details["stacks"]
    assert "Current thread 0x" in stacks and "stuck_in_all_reduce" in stacks
    assert failed.details["state"] == "FAILED"
    # Then it is killed, and its exit code recorded.
    await poll_until(sup, all_done(sup))
    [rank] = sup.ranks("moe")
    assert rank.exit_code == -signal.SIGKILL and rank.state == job_pb2.RANK_STATE_FAILED
    assert not psutil.pid_exists(started.pid) or (
        psutil.Process(started.pid).status() == psutil.STATUS_ZOMBIE
    )
    assert kinds(events)[-1] == K.JOB_EVENT_KIND_RANK_FAILED  # no event for the reaping
    assert journal.events_after(0, "moe") == events


async def test_a_rank_blocked_in_one_call_is_hung_though_its_heartbeats_go_on(
    supervisors: Callable[..., LocalSupervisor],
    journal: Journal,
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    """A rank stuck in a collective keeps beating from Gantry's start-up hook (its
    heartbeat thread runs on): heartbeats that say it has not moved are not progress."""
    sup = supervisors()  # the real clock; heartbeats every hang_timeout_s / 4 = 0.5 s
    job_spec = spec(fake_rank, "steps=100000", "hang_at=3", "optimizer=1", hang_timeout_s=2)
    sup.start_ranks(job_spec, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: steps(events) == [1, 2], timeout=60)  # torch imports first
    stuck_from = asyncio.get_running_loop().time()
    await poll_until(sup, lambda: states(sup) != [job_pb2.RANK_STATE_RUNNING], timeout=30)
    [hung] = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_HUNG]
    assert hung.details["last_step"] == "2"
    assert asyncio.get_running_loop().time() - stuck_from < 2 + 10  # generous: a busy host
    metrics = Path(journal.ranks("moe")[0].metrics_path).read_text().splitlines()
    beats = [json.loads(line) for line in metrics if '"heartbeat"' in line]
    assert beats and beats[-1]["moved"] is False  # the hook's heartbeats went on, unmoved
    await poll_until(sup, all_done(sup), timeout=30)


async def test_a_hung_rank_that_cannot_dump_its_stacks_is_not_sent_sigusr1(
    supervisors: Callable[..., LocalSupervisor],
    journal: Journal,
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    """SIGUSR1's default action kills: a rank without a handler for it (the start-up hook
    off, no faulthandler) is failed at once and killed, saying why there are no stacks."""
    clock = ManualClock()
    sup = supervisors(clock=clock)
    job_spec = spec(fake_rank, "steps=5", "hang_at=3", "no_stacks=1", hang_timeout_s=30)
    job_spec.env["GANTRY_INSTRUMENT"] = "0"
    sup.start_ranks(job_spec, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: steps(events) == [1, 2])
    clock.advance(31)
    await sup.poll()
    await sup.poll()  # no dump to wait for
    [rank] = sup.ranks("moe")
    assert rank.state == job_pb2.RANK_STATE_FAILED and rank.reason.startswith("hung")
    [failed] = [e for e in events if e.kind == K.JOB_EVENT_KIND_RANK_FAILED]
    assert failed.details["stacks"] == NO_HANDLER
    await poll_until(sup, all_done(sup))
    [rank] = sup.ranks("moe")
    assert rank.exit_code == -signal.SIGKILL  # killed by Gantry, not by the SIGUSR1


JOINING_FOREVER = """
import json, os, time
with open(os.environ["GANTRY_METRICS_FILE"], "a") as f:
    f.write(json.dumps({"kind": "phase", "time": time.time(), "rank": 0, "phase": "joining"}))
    f.write("\\n")
time.sleep(60)
"""


async def test_a_rank_joining_too_long_is_warned_of_once(
    supervisors: Callable[..., LocalSupervisor],
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    """A rendezvous that cannot complete (MASTER_ADDR unresolvable) waits silently for
    torch's own timeout: one warning names the master, and the rank goes on."""
    script = tmp_path / "joining.py"
    script.write_text(JOINING_FOREVER)
    wall = ManualClock(time.time())
    sup = supervisors(wall_clock=wall)
    job = job_pb2.JobSpec(
        name="moe", command=[sys.executable, str(script)], working_dir=str(tmp_path)
    )
    job.env["GANTRY_INSTRUMENT"] = "0"
    sup.start_ranks(job, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: sup.ranks("moe")[0].phase == job_pb2.RANK_PHASE_JOINING)

    def told() -> list[job_pb2.JobEvent]:
        return [e for e in events if e.kind == K.JOB_EVENT_KIND_ALERT]

    wall.advance(JOIN_WARN_DEFAULT_S - 10)  # no hang timeout: the default wait
    await sup.poll()
    assert not told()
    wall.advance(20)
    await sup.poll()
    await sup.poll()
    [alert] = told()
    assert alert.details["alert"] == "rendezvous" and alert.details["severity"] == "warning"
    assert "joining the process group for" in alert.message
    assert alert.details["master"] == "127.0.0.1:29500"
    assert sup.ranks("moe")[0].state == job_pb2.RANK_STATE_RUNNING  # it goes on


SILENT = """
import sys, time
end = time.time() + 5
while time.time() < end:
    if sys.argv[1] == "busy":
        sum(range(100_000))  # works, prints nothing (every rank but 0 of many scripts)
    else:
        time.sleep(0.1)  # waits, prints nothing (blocked in a collective)
"""


@pytest.mark.parametrize("work", ["busy", "idle"])
async def test_a_rank_without_heartbeats_is_judged_by_its_cpu(
    supervisors: Callable[..., LocalSupervisor],
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
    work: str,
) -> None:
    """The start-up hook off and nothing printed: only its CPU time says whether the rank
    works. A busy one is not hung however long it is silent; an idle one is."""
    script = tmp_path / "silent.py"
    script.write_text(SILENT)
    sup = supervisors()
    job = job_pb2.JobSpec(
        name="moe",
        command=[sys.executable, str(script), work],
        working_dir=str(tmp_path),
        hang_timeout_s=1.5,
    )
    job.env["GANTRY_INSTRUMENT"] = "0"
    sup.start_ranks(job, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup), timeout=60)
    [rank] = sup.ranks("moe")
    if work == "busy":
        assert rank.state == job_pb2.RANK_STATE_EXITED and rank.exit_code == 0
    else:
        assert rank.state == job_pb2.RANK_STATE_FAILED and rank.reason.startswith("hung")


async def test_no_hang_detection_without_a_timeout(
    supervisors: Callable[..., LocalSupervisor], fake_rank: Path
) -> None:
    clock = ManualClock()
    sup = supervisors(clock=clock)
    sup.start_ranks(spec(fake_rank, "steps=1", "linger=30"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: states(sup) == [job_pb2.RANK_STATE_RUNNING])
    clock.advance(10_000)
    await sup.poll()
    assert states(sup) == [job_pb2.RANK_STATE_RUNNING]
    await sup.stop_ranks("moe", 1, grace_s=0.2)


async def test_deepspeed_stdout_when_the_rank_does_not_report(
    supervisors: Callable[..., LocalSupervisor],
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    sup.start_ranks(spec(fake_rank, "steps=3", "deepspeed=1"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup))
    [rank] = sup.ranks("moe")
    assert rank.state == job_pb2.RANK_STATE_EXITED
    assert steps(events) == [1, 2, 3]  # "step=0" is what initialize prints: no step
    assert rank.metrics.step == 3 and rank.metrics.optimizer_step_s == pytest.approx(0.003)


async def test_checkpoint_event_and_garbage_lines(
    supervisors: Callable[..., LocalSupervisor],
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
    tmp_path: Path,
) -> None:
    sup = supervisors()
    sup.start_ranks(
        spec(fake_rank, "steps=1", "checkpoint=global_step99", "linger=0.3"),
        1,
        [0],
        1,
        "127.0.0.1",
        29500,
    )
    metrics = tmp_path / "agent" / "jobs" / "moe" / "attempt-1" / "rank-0" / "metrics.jsonl"
    await poll_until(sup, lambda: metrics.exists())
    with metrics.open("a") as f:
        f.write("this is not json\n")
    await poll_until(sup, all_done(sup))
    [ckpt] = [e for e in events if e.kind == K.JOB_EVENT_KIND_CHECKPOINT_SAVED]
    assert ckpt.details["tag"] == "global_step99" and ckpt.details["step"] == "99"
    assert states(sup) == [job_pb2.RANK_STATE_EXITED]


async def test_tail_log(
    supervisors: Callable[..., LocalSupervisor], fake_rank: Path, tmp_path: Path
) -> None:
    sup = supervisors()
    sup.start_ranks(spec(fake_rank, "steps=3", "deepspeed=1"), 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, all_done(sup))
    last = sup.tail_log("moe", 0, 0, "stdout", tail_lines=2)
    assert len(last.lines) == 2 and last.lines[-1].text.endswith("step: 3.00")
    assert all(line.stream == "stdout" for line in last.lines)
    everything = sup.tail_log("moe", 1, 0, "stdout", from_offset=0)
    assert len(everything.lines) == 4 and everything.lines[0].offset == 0
    assert everything.next_offset == last.next_offset
    assert sup.tail_log("moe", 1, 0, "stdout", from_offset=everything.next_offset).lines == []
    assert sup.tail_log("moe", 1, 0, "stderr").lines == []
    with pytest.raises(KeyError):
        sup.tail_log("moe", 1, 5)
    with pytest.raises(ValueError):
        sup.tail_log("moe", 1, 0, "stdin")


async def test_unstartable_rank_fails_and_bad_requests_are_refused(
    supervisors: Callable[..., LocalSupervisor],
    fake_rank: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    sup = supervisors()
    bad = spec(fake_rank)
    bad.working_dir = "/nonexistent/dir"
    [rank] = sup.start_ranks(bad, 1, [0], 1, "127.0.0.1", 29500)
    assert rank.state == job_pb2.RANK_STATE_FAILED and "could not start" in rank.reason
    assert kinds(events) == [K.JOB_EVENT_KIND_RANK_FAILED]
    assert not sup.live_keys()
    # An ended rank's place is free again (an earlier job of the same name, resubmitted:
    # its leader begins at attempt 1 again); its folder is kept beside the new one.
    [again] = sup.start_ranks(bad, 1, [0], 1, "127.0.0.1", 29500)
    assert again.state == job_pb2.RANK_STATE_FAILED
    rank_dir = sup.rank_dir("moe", 1, 0)
    assert len(list(rank_dir.parent.glob("rank-0.earlier-*"))) == 1
    # A rank that has not ended keeps its place: a second start is refused.
    sup.start_ranks(spec(fake_rank, "steps=1000", "period=0.1"), 7, [0], 1, "127.0.0.1", 29500)
    with pytest.raises(ValueError, match="already started"):
        sup.start_ranks(spec(fake_rank), 7, [0], 1, "127.0.0.1", 29500)
    await sup.stop_ranks("moe", 7, 1.0)
    with pytest.raises(ValueError, match="job name"):
        sup.start_ranks(job_pb2.JobSpec(name="../x", command=["x"]), 1, [0], 1, "h", 1)
    with pytest.raises(ValueError, match="outside world size"):
        sup.start_ranks(spec(fake_rank), 2, [1], 1, "127.0.0.1", 29500)
    with pytest.raises(ValueError, match="GPUs"):
        sup.start_ranks(spec(fake_rank), 2, [0, 1], 2, "127.0.0.1", 29500, gpus=[0])


def test_rank_env_on_a_gpu_node() -> None:
    job = job_pb2.JobSpec(
        name="moe",
        command=["python", "t.py"],
        args=["--x"],
        env={"NCCL_SOCKET_IFNAME": "eth0", "RANK": "99"},
        hang_timeout_s=8,
    )
    env = rank_env(
        {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "7"},
        job,
        attempt=2,
        rank=5,
        local_rank=1,
        local_world_size=4,
        world_size=8,
        master_addr="n1",
        master_port=29500,
        metrics_path=Path("/d/m.jsonl"),
        gpus=[0, 1, 2, 3],
        heartbeat_s=5.0,
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and "DS_ACCELERATOR" not in env
    assert env["RANK"] == "5"  # Gantry's own variables win over the job's env
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["PATH"] == "/bin"
    assert env["GANTRY_HEARTBEAT_S"] == "2"  # a quarter of the hang timeout
    assert "GANTRY_COLLECTIVE_TIMEOUT_S" not in env
    assert env["PYTHONUNBUFFERED"] == "1"
    # "python" means the interpreter Gantry runs on, not whichever one PATH finds first.
    assert rank_argv(job) == [sys.executable, "t.py", "--x"]
    resumed = rank_argv(job, "/c/s")
    assert resumed == [sys.executable, "t.py", "--x", "--resume_from_checkpoint", "/c/s"]


def test_extract_stacks() -> None:
    text = "\n".join(
        [
            "some log line",
            "Thread 0x00007f0000000001 (most recent call first):",
            '  File "/x/train.py", line 10 in data_worker',
            "",
            "Current thread 0x00007f0000000002 (most recent call first):",
            '  File "/x/train.py", line 20 in stuck_in_all_reduce',
            '  File "/x/train.py", line 30 in <module>',
            "another log line",
        ]
    )
    stacks = extract_stacks(text)
    assert stacks.splitlines()[0].startswith("Thread 0x")
    assert "stuck_in_all_reduce" in stacks and "data_worker" in stacks
    assert "log line" not in stacks
    assert extract_stacks("nothing here") == ""


NCCL_SOCKET_FALLBACK = r"""
import sys
import time
lines = [
    "node-b:4242:4242 [0] NCCL INFO NCCL version 2.21.5+cuda12.4",
    "node-b:4242:4260 [0] NCCL INFO NET/IB : No device found.",
    "node-b:4242:4260 [0] NCCL INFO NET/Socket : Using [0]eth0:10.1.2.3<0>",
    "node-b:4242:4260 [0] NCCL INFO Using network Socket",
    "node-b:4242:4260 [0] NCCL INFO Channel 00/0 : 1[0] -> 0[0] [send] via NET/Socket/0",
]
print("\n".join(lines), flush=True)
"""


async def test_nccl_socket_fallback_raises_an_event_naming_rank_and_line(
    supervisors: Callable[..., LocalSupervisor],
    tmp_path: Path,
    events: list[job_pb2.JobEvent],
) -> None:
    script = tmp_path / "nccl_rank.py"
    script.write_text(NCCL_SOCKET_FALLBACK)
    sup = supervisors()
    job_spec = job_pb2.JobSpec(
        name="nccl",
        command=[sys.executable, str(script)],
        env={"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "0"},
        working_dir=str(tmp_path),
    )
    sup.start_ranks(job_spec, 1, [1], 2, "127.0.0.1", 29512)
    await poll_until(sup, all_done(sup))
    nccl = [e for e in events if e.kind == K.JOB_EVENT_KIND_NCCL]
    fallback = [e for e in nccl if e.details["finding"] == "ib_fallback"]
    assert len(fallback) == 1
    assert fallback[0].rank == 1
    assert "Using network Socket" in fallback[0].details["line"]
    assert fallback[0].details["severity"] == "warning"
    assert any(e.details["finding"] == "version" and "2.21.5" in e.message for e in nccl)


async def test_keep_checkpoints_prunes_the_job_folder_while_it_runs(
    supervisors: Callable[..., LocalSupervisor], journal: Journal, fake_rank: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    for step in (5, 10, 15, 20):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text(
            f'{{"global_step": {step}}}'
        )
    job = spec(fake_rank, "steps=30", "period=0.05")
    job.checkpoint_dir, job.keep_checkpoints = str(ckpt), 2
    sup = supervisors()
    sup.start_ranks(job, 1, [0], 1, "127.0.0.1", 29500)
    await poll_until(sup, lambda: not (ckpt / "checkpoint-10").exists())
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-15", "checkpoint-20"]
