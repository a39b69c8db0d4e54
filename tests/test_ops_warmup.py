"""DeepSpeed's ops built once per agent (agent/jobs/node/ops_warmup.py): which folder, the
stamp that makes later starts free, and a build that fails or is not needed."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.node.ops_warmup import STAMP, extensions_dir, is_warm, remove_stale_locks, warm_ops


def fake_python(tmp_path: Path, code: int, name: str = "python3") -> str:
    """An interpreter stand-in that records its arguments and environment, then exits."""
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(tmp_path / 'calls.jsonl')!r}, 'a').write(json.dumps("
        "{'argv': sys.argv[1:], 'dir': os.environ['TORCH_EXTENSIONS_DIR']}) + '\\n')\n"
        f"print('boom' if {code} else 'built')\n"
        f"sys.exit({code})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_which_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert extensions_dir(data, None, {}) == (data / "torch_extensions").resolve()
    assert (
        extensions_dir(data, None, {"TORCH_EXTENSIONS_DIR": str(tmp_path / "e")})
        == (tmp_path / "e").resolve()
    )
    flag = tmp_path / "flag"
    assert extensions_dir(data, flag, {"TORCH_EXTENSIONS_DIR": "x"}) == flag.resolve()


async def test_built_once_then_a_stamp_read(tmp_path: Path) -> None:
    python = fake_python(tmp_path, 0)
    folder = tmp_path / "ext"
    assert not is_warm(folder, python)
    assert await warm_ops(folder, {"PATH": "/usr/bin"}, python, ops=("CPUAdamBuilder",))
    [call] = calls(tmp_path)
    assert call["dir"] == str(folder) and call["argv"][-1] == "CPUAdamBuilder"
    assert is_warm(folder, python, ("CPUAdamBuilder",))
    assert not is_warm(folder, python)  # other ops asked for: built again
    assert await warm_ops(folder, {}, python, ops=("CPUAdamBuilder",))
    assert len(calls(tmp_path)) == 1  # the stamp says it is done
    stamp = json.loads((folder / STAMP).read_text())
    assert stamp["python"] == python and "deepspeed" in stamp and "torch" in stamp


async def test_a_failed_build_is_logged_and_not_stamped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    python = fake_python(tmp_path, 1)
    folder = tmp_path / "ext"
    with caplog.at_level(logging.WARNING, logger="gantry.agent"):
        assert not await warm_ops(folder, {}, python)
    assert "building DeepSpeed's ops" in caplog.text and "boom" in caplog.text
    assert not (folder / STAMP).exists()


def test_a_lock_left_by_a_killed_build_is_removed(tmp_path: Path) -> None:
    """torch's builder deletes its lock file when done; one killed mid-build leaves it and
    every later rank would wait on it forever."""
    old = tmp_path / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "other_op" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir()
        lock.write_text("")
    os.utime(old, (1000.0, 1000.0))
    assert remove_stale_locks(tmp_path, now=1000.0 + 3600) == [old]
    assert not old.exists() and fresh.exists()  # a build running now keeps its lock
