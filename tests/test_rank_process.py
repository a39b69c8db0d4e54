"""Spawning ranks under the wrapper, exit codes, stopping without orphans, adoption."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.jobs.node import rank_process
from agent.jobs.node.rank_process import RankHandle, adopt, describe_exit, read_exit_file, spawn

REPO = Path(__file__).resolve().parent.parent
WRAPPER = REPO / "agent" / "jobs" / "node" / "rank_wrapper.py"
PY = sys.executable


@pytest.fixture
def handles() -> Iterator[list[RankHandle]]:
    """Whatever a test started is killed afterwards, even when it fails."""
    started: list[RankHandle] = []
    yield started
    for handle in started:
        handle.kill()
        wait_code(handle, 5.0)


def start(tmp_path: Path, handles: list[RankHandle], code: str, *args: str) -> RankHandle:
    handle = spawn(
        [PY, "-c", code, *args],
        dict(os.environ),
        tmp_path,
        tmp_path / "stdout.log",
        tmp_path / "stderr.log",
        tmp_path / "exit_code",
    )
    handles.append(handle)
    return handle


def wait_code(handle: RankHandle, timeout: float = 5.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = handle.poll()
        if code is not None:
            return code
        time.sleep(0.02)
    return None


def wait_file(path: Path, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} was not written")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def test_exit_code_output_and_exit_file(tmp_path: Path, handles: list[RankHandle]) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    handle = start(tmp_path, handles, code)
    assert not handle.adopted
    assert handle.create_time == pytest.approx(psutil.Process(handle.pid).create_time())
    assert wait_code(handle) == 3
    assert read_exit_file(tmp_path / "exit_code") == 3
    assert (tmp_path / "stdout.log").read_text() == "out\n"
    assert (tmp_path / "stderr.log").read_text() == "err\n"
    # Appended, never truncated: a second run adds to the same files.
    second = spawn(
        [PY, "-c", "print('again')"],
        dict(os.environ),
        None,
        tmp_path / "stdout.log",
        tmp_path / "stderr.log",
        tmp_path / "exit_code",
    )
    handles.append(second)
    assert wait_code(second) == 0
    assert (tmp_path / "stdout.log").read_text() == "out\nagain\n"
    assert read_exit_file(tmp_path / "exit_code") == 0


def test_rank_is_in_the_wrappers_group_and_session(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    code = "import os, sys; print(os.getpgid(0), os.getsid(0), flush=True); sys.exit(0)"
    handle = start(tmp_path, handles, code)
    assert wait_code(handle) == 0
    pgid, sid = map(int, (tmp_path / "stdout.log").read_text().split())
    assert pgid == sid == handle.pid
    assert os.getpgid(0) != handle.pid


def test_death_by_signal_is_recorded_as_minus_signal(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    handle = start(tmp_path, handles, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert wait_code(handle) == -signal.SIGKILL
    assert read_exit_file(tmp_path / "exit_code") == -signal.SIGKILL
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"


def test_a_missing_executable_is_exit_code_127(tmp_path: Path, handles: list[RankHandle]) -> None:
    handle = spawn(
        ["/nonexistent/train"],
        dict(os.environ),
        None,
        tmp_path / "o",
        tmp_path / "e",
        tmp_path / "x",
    )
    handles.append(handle)
    assert wait_code(handle) == 127
    assert "cannot start '/nonexistent/train'" in (tmp_path / "e").read_text()


def test_a_stale_exit_file_is_removed_at_spawn(tmp_path: Path, handles: list[RankHandle]) -> None:
    (tmp_path / "exit_code").write_text("0\n")
    handle = start(tmp_path, handles, "import time; time.sleep(5)")
    assert not (tmp_path / "exit_code").exists()
    assert handle.poll() is None


def test_stop_clean_exit_within_grace(tmp_path: Path, handles: list[RankHandle]) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    handle = start(tmp_path, handles, code)
    wait_file(tmp_path / "stdout.log")
    t0 = time.monotonic()
    assert handle.stop(grace_s=5.0) == 0
    assert time.monotonic() - t0 < 2.0
    assert not alive(handle.pid)


IGNORES_TERM_WITH_CHILDREN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
child = subprocess.Popen(sleeper)  # same group, inherits SIGTERM ignored
escaped = subprocess.Popen(sleeper, start_new_session=True)  # left the group
with open(sys.argv[1], "w") as f:
    f.write(f"{child.pid} {escaped.pid}\\n")
time.sleep(60)
"""


def test_stop_kills_everything_even_what_ignores_sigterm(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    pids_file = tmp_path / "pids"
    handle = start(tmp_path, handles, IGNORES_TERM_WITH_CHILDREN, str(pids_file))
    child, escaped = map(int, wait_file(pids_file).split())
    rank = next(p.pid for p in psutil.Process(handle.pid).children() if p.pid != child)
    assert set(group_members(handle.pid)) >= {handle.pid, rank, child}
    t0 = time.monotonic()
    code = handle.stop(grace_s=0.3)
    assert time.monotonic() - t0 < 3.0
    assert code == -signal.SIGKILL  # the wrapper too was killed: no exit file
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(alive(p) for p in (rank, child, escaped)):
        time.sleep(0.02)
    assert not any(alive(p) for p in (handle.pid, rank, child, escaped))
    assert group_members(handle.pid) == []


async def test_stop_async_does_not_block_the_loop(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    handle = start(tmp_path, handles, code)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    while not (tmp_path / "stdout.log").read_text():  # the rank installed its handler
        await asyncio.sleep(0.02)
    exit_code = await handle.stop_async(grace_s=0.3)
    task.cancel()
    assert exit_code == -signal.SIGKILL
    assert ticks > 10


def test_wrapper_survives_sigusr1_for_the_ranks_faulthandler(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    code = (
        "import faulthandler, signal, sys, time\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "print('ready', flush=True)\n"
        "def sleepy():\n    time.sleep(1.0)\n"
        "sleepy()\nsys.exit(5)\n"
    )
    handle = start(tmp_path, handles, code)
    wait_file(tmp_path / "stdout.log")
    assert handle.signal_group(signal.SIGUSR1)
    assert wait_code(handle) == 5
    stderr = (tmp_path / "stderr.log").read_text()
    assert "Current thread 0x" in stderr and "in sleepy" in stderr


OLD_AGENT = """
import json, os, sys
from pathlib import Path
from agent.jobs.node.rank_process import spawn
d = Path(sys.argv[1])
rank = "import sys, time; print('up', flush=True); time.sleep(float(sys.argv[1])); sys.exit(7)"
h = spawn([sys.executable, "-c", rank, sys.argv[2]], dict(os.environ), None,
          d / "stdout.log", d / "stderr.log", d / "exit_code")
print(json.dumps([h.pid, h.create_time]))
"""


def spawn_from_another_process(tmp_path: Path, sleep_s: float) -> tuple[int, float]:
    """A rank started by an 'agent' process that then exits, as on an agent restart."""
    out = subprocess.run(
        [PY, "-c", OLD_AGENT, str(tmp_path), str(sleep_s)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    pid, create_time = json.loads(out.stdout)
    return int(pid), float(create_time)


def test_adopt_collects_the_exit_code_of_a_rank_we_did_not_start(tmp_path: Path) -> None:
    pid, create_time = spawn_from_another_process(tmp_path, 1.0)
    handle = adopt(pid, create_time, tmp_path / "exit_code")
    assert handle is not None and handle.adopted
    try:
        assert handle.poll() is None
        assert wait_code(handle) == 7
    finally:
        handle.kill()
    assert handle.poll() == 7


def test_adopted_rank_can_be_stopped(tmp_path: Path) -> None:
    pid, create_time = spawn_from_another_process(tmp_path, 30.0)
    handle = adopt(pid, create_time, tmp_path / "exit_code")
    assert handle is not None
    wait_file(tmp_path / "stdout.log")
    # The rank dies of SIGTERM; the wrapper records it before exiting the same way.
    assert handle.stop(grace_s=3.0) == -signal.SIGTERM
    assert not alive(pid)


def test_adopt_refuses_a_reused_pid_or_a_gone_one(
    tmp_path: Path, handles: list[RankHandle]
) -> None:
    handle = start(tmp_path, handles, "import time; time.sleep(5)")
    assert adopt(handle.pid, handle.create_time + 1.0, tmp_path / "exit_code") is None
    assert adopt(0, 0.0, tmp_path / "exit_code") is None
    done = start(tmp_path / "done", handles, "pass")
    assert wait_code(done) == 0
    assert adopt(done.pid, done.create_time, tmp_path / "done" / "exit_code") is None
    same = adopt(handle.pid, handle.create_time, tmp_path / "exit_code")
    assert same is not None and same.poll() is None


def test_find_wrapper_by_exit_file(tmp_path: Path, handles: list[RankHandle]) -> None:
    handle = start(tmp_path, handles, "import time; time.sleep(5)")
    found = rank_process.find_wrapper(tmp_path / "exit_code")
    assert found is not None
    assert found[0] == handle.pid
    assert abs(found[1] - handle.create_time) < 0.01
    assert rank_process.find_wrapper(tmp_path / "other") is None


def test_wrapper_command_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(PY, "-m", "agent.jobs.node.rank_wrapper", "--exit-file", str(tmp_path / "x"), "--"),
            *(PY, "-c", "import sys; print(sys.argv[1:]); sys.exit(4)", "--exit-file", "y"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 4
    assert out.stdout.strip() == "['--exit-file', 'y']"
    assert read_exit_file(tmp_path / "x") == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_wrapper_dies_of_the_ranks_signal(tmp_path: Path, sig: int) -> None:
    out = subprocess.run(
        [
            *(PY, str(WRAPPER), "--exit-file", str(tmp_path / "x")),
            *(PY, "-c", f"import os; os.kill(os.getpid(), {int(sig)})"),
        ],
        capture_output=True,
        timeout=20,
    )
    assert out.returncode == -sig
    assert read_exit_file(tmp_path / "x") == -sig
