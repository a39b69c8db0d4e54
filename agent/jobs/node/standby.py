"""Standbys: each local rank's next-attempt process, started ahead of a failure.

Once a rank reaches its first step, the supervisor asks for a standby for its slot (job,
local rank): ``agent/rank/standby_runner.py`` under the usual rank wrapper, with the rank's
environment less what changes between attempts (RANK, WORLD_SIZE, MASTER_PORT, ...). It
imports what the rank imported and waits. When the next attempt starts that slot with the
same interpreter, working directory and environment, the standby is handed the rank's
command line and becomes it: the restart skips the interpreter's start and its imports.
Anything that differs (another spec, a command the standby cannot run) discards it and the
rank starts cold, as it always could. ``GANTRY_STANDBY=0`` in a job's env turns it off.

A standby that is never used exits by itself after ``idle_s``; the agent also stops its
standbys when it stops, and on start stops any a previous agent left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.jobs.node import rank_process
from agent.jobs.node.rank_process import RankHandle

__all__ = ["SWITCH_ENV", "Standbys", "handoff_path0", "stable_env"]

log = logging.getLogger("gantry.agent")

SWITCH_ENV = "GANTRY_STANDBY"
IDLE_S = 600.0
HANDOFF_TIMEOUT_S = 2.0
STANDBY_SCRIPT = str(Path(__file__).resolve().parents[2] / "rank" / "standby_runner.py")
# What differs from one attempt to the next: given at hand-off, not at the standby's start.
PER_ATTEMPT = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "GANTRY_ATTEMPT",
        "GANTRY_METRICS_FILE",
        "GANTRY_IMPORTS_FILE",
        "GANTRY_HEARTBEAT_S",
        "GANTRY_RANK_HOOKS_PID",
        "GANTRY_HEARTBEAT_PID",
    }
)


def stable_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of a rank's environment a standby can be started with."""
    return {k: v for k, v in env.items() if k not in PER_ATTEMPT}


def handoff_path0(argv: Sequence[str], cwd: str) -> str | None:
    """``sys.path[0]`` for ``python [-u] -m MOD ...`` (the working dir) or ``python [-u]
    SCRIPT.py ...`` (the script's folder); None for anything a standby cannot become."""
    if len(argv) < 2 or not Path(argv[0]).name.startswith("python"):
        return None
    rest = list(argv[1:])
    if rest[0] == "-u":
        rest = rest[1:]
    if len(rest) >= 2 and rest[0] == "-m":
        return cwd
    if rest and rest[0].endswith(".py") and not rest[0].startswith("-"):
        script = rest[0] if os.path.isabs(rest[0]) else os.path.join(cwd, rest[0])
        return os.path.dirname(os.path.abspath(script))
    return None


def _key(python: str, cwd: str, path0: str, env: Mapping[str, str]) -> str:
    doc = json.dumps([python, cwd, path0, sorted(stable_env(env).items())])
    return hashlib.sha256(doc.encode()).hexdigest()


@dataclass
class _Standby:
    key: str
    handle: RankHandle
    socket: str
    folder: Path


class Standbys:
    """This node's standbys, one per (job, local rank) at most."""

    def __init__(self, root: Path, idle_s: float = IDLE_S) -> None:
        self.root = root
        self.idle_s = idle_s
        self._slots: dict[tuple[str, int], _Standby] = {}
        self._dying: list[RankHandle] = []  # killed, to be reaped (they are our children)
        self._stop_leftovers()

    def prepare(
        self,
        job: str,
        local_rank: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        imports_file: Path | None,
    ) -> bool:
        """Starts a standby for the slot unless an equal one waits already. Only for a rank
        whose start-up hook listed its imports: that is where the time goes."""
        self._reap()
        if env.get(SWITCH_ENV, "1") == "0" or imports_file is None or not imports_file.is_file():
            return False
        path0 = handoff_path0(argv, cwd)
        if path0 is None:
            return False
        key = _key(argv[0], cwd, path0, env)
        current = self._slots.get((job, local_rank))
        if current is not None:
            if current.key == key and current.handle.poll() is None:
                return True
            self._discard((job, local_rank))
        folder = self.root / job / str(local_rank)
        shutil.rmtree(folder, ignore_errors=True)
        name = f"gantry-standby-{secrets.token_hex(12)}"
        standby_argv = [
            argv[0],
            STANDBY_SCRIPT,
            "--socket",
            name,
            "--idle-s",
            f"{self.idle_s:g}",
            "--path0",
            path0,
        ]
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / "imports.json"
        shutil.copyfile(imports_file, copy)
        standby_argv += ["--imports-file", str(copy)]
        try:
            handle = rank_process.spawn(
                standby_argv,
                stable_env(env),
                cwd,
                folder / "stdout.log",
                folder / "stderr.log",
                folder / "exit_code",
            )
        except OSError as exc:
            log.warning("no standby for %s local rank %d: %s", job, local_rank, exc)
            return False
        (folder / "standby.json").write_text(
            json.dumps({"pid": handle.pid, "create_time": handle.create_time})
        )
        self._slots[(job, local_rank)] = _Standby(key, handle, name, folder)
        return True

    def take(
        self,
        job: str,
        local_rank: int,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str,
        stdout: Path,
        stderr: Path,
    ) -> RankHandle | None:
        """The slot's standby, become this rank; None when there is none fit for it."""
        self._reap()
        standby = self._slots.pop((job, local_rank), None)
        if standby is None:
            return None
        path0 = handoff_path0(argv, cwd)
        fit = path0 is not None and standby.key == _key(argv[0], cwd, path0, env)
        if not fit or env.get(SWITCH_ENV, "1") == "0" or standby.handle.poll() is not None:
            self._stop(standby)
            return None
        for path in (stdout, stderr):
            path.parent.mkdir(parents=True, exist_ok=True)
        message = {
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd,
            "stdout": str(stdout),
            "stderr": str(stderr),
        }
        if not _hand_off(standby.socket, json.dumps(message).encode()):
            self._stop(standby)
            return None
        with contextlib.suppress(OSError):
            (standby.folder / "standby.json").unlink()
        return standby.handle

    def discard_job(self, job: str) -> None:
        for key in [k for k in self._slots if k[0] == job]:
            self._discard(key)

    def close(self) -> None:
        for key in list(self._slots):
            self._discard(key)
        self._reap()

    def _discard(self, key: tuple[str, int]) -> None:
        standby = self._slots.pop(key, None)
        if standby is not None:
            self._stop(standby)

    def _stop(self, standby: _Standby) -> None:
        standby.handle.kill()
        self._dying.append(standby.handle)
        with contextlib.suppress(OSError):
            (standby.folder / "standby.json").unlink()

    def _reap(self) -> None:
        self._dying = [h for h in self._dying if h.poll() is None]

    def _stop_leftovers(self) -> None:
        """Standbys a previous agent started: nobody would hand them a rank."""
        for record in self.root.glob("*/*/standby.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, psutil.Error):
                info = json.loads(record.read_text())
                handle = rank_process.adopt(
                    int(info["pid"]), float(info["create_time"]), record.with_name("exit_code")
                )
                if handle is not None:
                    handle.kill()
            with contextlib.suppress(OSError):
                record.unlink()


def _hand_off(name: str, message: bytes, timeout_s: float = HANDOFF_TIMEOUT_S) -> bool:
    """Sends the rank to the standby; True once it answered that it took it. A standby
    still starting has not bound its socket yet: it is asked again until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            try:
                conn.connect("\0" + name)
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
                continue
            except OSError:
                return False
            try:
                conn.sendall(message)
                conn.shutdown(socket.SHUT_WR)
                return conn.recv(2) == b"ok"
            except OSError:
                return False
