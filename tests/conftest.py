from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from console.net.local_agents import LocalAgent, start_agent, stop_all
from tests.deepspeed_env import (
    EXT_CACHE,
    deepspeed_warm,  # noqa: F401  (a session fixture)
)

StartAgent = Callable[..., LocalAgent]

# Agents started by the tests give their ranks the suite's shared DeepSpeed ops cache, not
# each a folder of its own ...
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(EXT_CACHE))
# ... and do not build them as they start: `deepspeed_warm` does, once per session.
os.environ.setdefault("GANTRY_WARM_OPS", "0")


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC, so snapshots show the same clock everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def local_agents(tmp_path: Path) -> Iterator[StartAgent]:
    """Starts real `gantry-agent` processes on 127.0.0.1; all are stopped afterwards."""
    started: list[LocalAgent] = []

    def start(name: str, port: int = 0, extra_args: list[str] | None = None) -> LocalAgent:
        agent = start_agent(name, tmp_path / "agents" / name, port, extra_args)
        started.append(agent)
        return agent

    yield start
    stop_all(started)
    # Ranks outlive their agent by design; a test's ranks must not outlive the test.
    kill_processes_mentioning(str(tmp_path / "agents"))


def kill_processes_mentioning(text: str) -> None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(text in arg for arg in cmdline):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.kill()


if TYPE_CHECKING:
    from tests.serve_moe import Moe


@pytest.fixture(scope="module")
def moe() -> Iterator[Moe]:
    """The serving tests' tiny MoE (tests/serve_moe.py), on one torch thread as the
    server's engine runs."""
    import torch

    from tests.serve_moe import make_moe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_moe()
    torch.set_num_threads(threads)
