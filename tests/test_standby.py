"""Standbys (agent/jobs/node/standby.py, agent/rank/standby_runner.py): a rank's next attempt,
started ahead, becomes the rank when handed its command line; anything unfit starts cold."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from agent.jobs.node.rank_process import RankHandle
from agent.jobs.node.standby import Standbys, handoff_path0, stable_env

SCRIPT = """
import atexit, os, sys
state = {"ok": "alive"}
# As in a cold rank, the script's globals outlive it until the interpreter exits.
atexit.register(lambda: print("at exit", state["ok"], flush=True))
print("main", __name__, sys.modules["__main__"].__file__ == __file__, flush=True)
print("preloaded", "email.mime.text" in sys.modules, flush=True)
print("argv", sys.argv[1:], "rank", os.environ["RANK"], "cwd", os.getcwd(), flush=True)
print("path0", sys.path[0], flush=True)
print("oops", file=sys.stderr, flush=True)
sys.exit(int(os.environ.get("CODE", "0")))
"""


def wait_exit(handle: RankHandle, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := handle.poll()) is None:
        assert time.monotonic() < deadline, "the standby's rank did not end"
        time.sleep(0.05)
    return code


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Standbys, Path, list[str], dict[str, str]]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text(SCRIPT)
    imports = tmp_path / "imports.json"
    imports.write_text(json.dumps(["email.mime.text", "no_such_module_x"]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RANK": "0", "WORLD_SIZE": "1", "CODE": "0"}
    standbys = Standbys(tmp_path / "standby", idle_s=60)
    return standbys, imports, [sys.executable, "train.py", "--lr", "1"], env


def test_pure_rules() -> None:
    assert handoff_path0(["/usr/bin/python3", "-m", "agent.train", "x"], "/w") == "/w"
    assert handoff_path0(["python", "-u", "sub/t.py"], "/w") == "/w/sub"
    assert handoff_path0(["python", "-O", "t.py"], "/w") is None
    assert handoff_path0(["torchrun", "t.py"], "/w") is None
    assert handoff_path0(["python"], "/w") is None
    env = {"RANK": "1", "MASTER_PORT": "2", "OMP_NUM_THREADS": "1", "GANTRY_METRICS_FILE": "m"}
    assert stable_env(env) == {"OMP_NUM_THREADS": "1"}


def test_a_standby_becomes_the_rank(
    tmp_path: Path, setup: tuple[Standbys, Path, list[str], dict[str, str]]
) -> None:
    standbys, imports, argv, env = setup
    work = str(tmp_path / "work")
    assert standbys.prepare("job", 0, argv, env, work, imports)
    out, err = tmp_path / "rank" / "stdout.log", tmp_path / "rank" / "stderr.log"
    out.parent.mkdir()
    # the next attempt: another rank number and port, the same job environment
    attempt = {**env, "RANK": "3", "MASTER_PORT": "29999"}
    handle = standbys.take("job", 0, argv, attempt, work, out, err)
    assert handle is not None
    assert wait_exit(handle) == 0
    text = out.read_text()
    assert "preloaded True" in text
    assert "main __main__ True" in text and "at exit alive" in text
    assert f"argv ['--lr', '1'] rank 3 cwd {work}" in text
    assert f"path0 {work}" in text
    assert err.read_text() == "oops\n"
    # taken: the slot is empty until prepared again
    assert standbys.take("job", 0, argv, attempt, work, out, err) is None


def test_the_exit_status_is_the_scripts(
    tmp_path: Path, setup: tuple[Standbys, Path, list[str], dict[str, str]]
) -> None:
    standbys, imports, argv, env = setup
    work = str(tmp_path / "work")
    assert standbys.prepare("job", 0, argv, {**env, "CODE": "3"}, work, imports)
    out = tmp_path / "o.log"
    handle = standbys.take("job", 0, argv, {**env, "CODE": "3"}, work, out, tmp_path / "e.log")
    assert handle is not None and wait_exit(handle) == 3
    assert handle.exit_file.read_text().strip() == "3"  # the wrapper recorded it


def test_an_unfit_standby_is_stopped_and_the_rank_starts_cold(
    tmp_path: Path, setup: tuple[Standbys, Path, list[str], dict[str, str]]
) -> None:
    standbys, imports, argv, env = setup
    work = str(tmp_path / "work")
    assert standbys.prepare("job", 0, argv, env, work, imports)
    pid = json.loads((tmp_path / "standby" / "job" / "0" / "standby.json").read_text())["pid"]
    changed = {**env, "NCCL_DEBUG": "INFO"}  # the job's env changed: not this standby's
    assert standbys.take("job", 0, argv, changed, work, tmp_path / "o", tmp_path / "e") is None
    assert wait_gone(pid)
    # no imports listed (a rank without Gantry's start-up hook): nothing to win, none started
    assert not standbys.prepare("job", 1, argv, env, work, tmp_path / "missing.json")
    assert not standbys.prepare("job", 1, argv, {**env, "GANTRY_STANDBY": "0"}, work, imports)


def test_idle_standbys_end_and_a_new_agent_stops_leftovers(
    tmp_path: Path, setup: tuple[Standbys, Path, list[str], dict[str, str]]
) -> None:
    _, imports, argv, env = setup
    work = str(tmp_path / "work")
    idle = Standbys(tmp_path / "idle", idle_s=0.5)
    assert idle.prepare("job", 0, argv, env, work, imports)
    handle = idle._slots[("job", 0)].handle
    assert wait_exit(handle) == 0  # nobody came: it went by itself
    assert idle.take("job", 0, argv, env, work, tmp_path / "o", tmp_path / "e") is None
    first = Standbys(tmp_path / "left", idle_s=60)
    assert first.prepare("job", 0, argv, env, work, imports)
    pid = first._slots[("job", 0)].handle.pid
    Standbys(tmp_path / "left")  # the agent restarted: the old standby is stopped
    assert wait_gone(pid)


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_module_rank_runs_as_python_m_would(
    tmp_path: Path, setup: tuple[Standbys, Path, list[str], dict[str, str]]
) -> None:
    standbys, imports, _, env = setup
    work = str(tmp_path / "work")
    (tmp_path / "work" / "mod_rank.py").write_text(SCRIPT)
    argv = [sys.executable, "-m", "mod_rank", "--x"]
    assert standbys.prepare("job", 0, argv, env, work, imports)
    out = tmp_path / "m.log"
    handle = standbys.take("job", 0, argv, env, work, out, tmp_path / "me.log")
    assert handle is not None and wait_exit(handle) == 0
    text = out.read_text()
    assert "main __main__ True" in text and "argv ['--x']" in text and "at exit alive" in text
    assert f"path0 {work}" in text
