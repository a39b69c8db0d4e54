"""Starting and stopping `gantry-agent` processes on this machine (demo, local clusters).

The console never imports the agent: it runs the `gantry-agent` program.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from console.net.cluster_file import NodeTarget

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


class AgentStartError(RuntimeError):
    pass


def agent_program() -> list[str]:
    beside = Path(sys.executable).parent / "gantry-agent"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("gantry-agent")
    if found is None:
        raise AgentStartError("gantry-agent is not installed (run `make demo` or pip install .)")
    return [found]


@dataclass
class LocalAgent:
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    address: str

    @property
    def target(self) -> NodeTarget:
        return NodeTarget(self.name, self.address, self.data_dir / "token")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_agent(
    name: str, data_dir: Path, port: int = 0, extra_args: list[str] | None = None
) -> LocalAgent:
    """Starts an agent on 127.0.0.1 and waits until it has written its endpoint."""
    data_dir.mkdir(parents=True, exist_ok=True)
    endpoint = data_dir / "agent.json"
    endpoint.unlink(missing_ok=True)
    log = (data_dir / "agent.log").open("ab")
    argv = [
        *agent_program(),
        "--listen",
        f"127.0.0.1:{port}",
        "--node-name",
        name,
        "--data-dir",
        str(data_dir),
        *(extra_args or []),
    ]
    process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (data_dir / "agent.log").read_text(errors="replace").strip().splitlines()
            last = tail[-1] if tail else "no output"
            raise AgentStartError(f"agent {name} exited with {process.returncode}: {last}")
        if endpoint.exists():
            try:
                info = json.loads(endpoint.read_text())
            except json.JSONDecodeError:
                pass  # written atomically, but be patient with a partial read anyway
            else:
                if info.get("pid") == process.pid:
                    return LocalAgent(name, data_dir, process, info["address"])
        time.sleep(0.05)
    process.kill()
    raise AgentStartError(f"agent {name} did not start within {START_TIMEOUT_S:.0f}s")


def stop_all(agents: list[LocalAgent]) -> None:
    for agent in agents:
        if agent.process.poll() is None:
            os.killpg(agent.process.pid, signal.SIGTERM)
    for agent in agents:
        agent.stop()
