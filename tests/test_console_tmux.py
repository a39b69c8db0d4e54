"""The real `gantry` console in tmux at 80x24, through a real pty: keys go in with
`send-keys`, the screen comes back with `capture-pane`, and every check reads the
captured text. Two real agents on 127.0.0.1 run a fake-rank job (no DeepSpeed).

The walk: the cluster screen shows both nodes live; `J` lists the job; `enter` opens
it (title line and both ranks); `l` shows rank 0's log; `escape` goes back; `q` quits.
The console exits with status 0 and the job runs on: closing the console changes
nothing on the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from gantry.v1 import job_pb2

from console.model.job_spec import load_job_spec
from console.net.cluster_file import dump_cluster_file
from console.net.jobs_client import JobsClient
from console.net.local_agents import agent_program
from tests.conftest import StartAgent

FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"
JOB = "tmux-job"
WIDTH, HEIGHT = 80, 24
WAIT_S = 20.0
POLL_S = 0.1
TMUX_CMD_TIMEOUT_S = 10.0
# remain-on-exit keeps the dead pane, so a crash's traceback can still be captured;
# no status line, so the console gets all 24 rows.
TMUX_CONF = "set -g remain-on-exit on\nset -g status off\n"

Check = Callable[[str], bool]


def tmux_program() -> str:
    found = shutil.which("tmux")
    if found is None:
        pytest.fail(
            "tmux is not installed; this test needs it to drive the console through a real "
            "pty (apt-get install tmux)",
            pytrace=False,
        )
    return found


class Tmux:
    """One tmux server on a private socket, with one session running one command."""

    SESSION = "console"

    def __init__(self, program: str, workdir: Path) -> None:
        self.program = program
        self.socket = f"gantry-test-{secrets.token_hex(6)}"
        self.config = workdir / "tmux.conf"
        self.config.write_text(TMUX_CONF)
        self.status_file = workdir / "console.status"
        self.env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        self.env["TERM"] = "xterm-256color"
        self.socket_path: Path | None = None
        self.shell: psutil.Process | None = None
        self.last_capture = ""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [self.program, "-L", self.socket, "-f", str(self.config), *args]
        result = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=TMUX_CMD_TIMEOUT_S
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{shlex.join(argv)}` exited with {result.returncode}: "
                f"{result.stderr.strip()}{self.shown()}"
            )
        return result

    def shown(self) -> str:
        return f"\n--- last capture ---\n{self.last_capture.rstrip()}"

    def start(self, cwd: Path, command: list[str]) -> None:
        # tmux may never learn the pane's exit status: built with libutempter (Debian's
        # 3.3a), it can lose the SIGCHLD that lands while utempter drops the pty's record
        # (tmux issue #311), and the process stays an unreaped zombie; seen here about
        # one quit in two. So a shell waits for the command and writes its status down.
        script = f"{shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"
        self.run(
            "new-session",
            "-d",
            "-s",
            self.SESSION,
            "-x",
            str(WIDTH),
            "-y",
            str(HEIGHT),
            "-c",
            str(cwd),
            "sh",
            "-c",
            script,
        )
        self.socket_path = Path(self.pane("#{socket_path}"))
        with contextlib.suppress(psutil.Error):
            self.shell = psutil.Process(int(self.pane("#{pane_pid}")))

    def pane(self, fmt: str) -> str:
        return self.run("display-message", "-p", "-t", self.SESSION, fmt).stdout.strip()

    def pane_dead(self) -> bool:
        return self.pane("#{pane_dead}") == "1"

    def exit_status(self) -> str:
        """The command's exit status as the shell wrote it ("" if it has not exited)."""
        try:
            return self.status_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def capture(self, history: bool = False) -> str:
        # tmux's "Pane is dead" line scrolls a dead pane's screen (a traceback, say) up
        # into the history.
        extra = ["-S", "-"] if history else []
        self.last_capture = self.run("capture-pane", "-p", *extra, "-t", self.SESSION).stdout
        return self.last_capture

    def send(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.SESSION, *keys)

    def wait_for(self, what: str, check: Check, timeout: float = WAIT_S) -> str:
        """Captures the pane until `check` holds on it; the screen goes into any failure."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.capture()
            if check(screen):
                return screen
            if self.pane_dead():
                self.capture(history=True)
                raise AssertionError(
                    f"the console exited (status {self.exit_status() or '?'}) while waiting "
                    f"for {what}{self.shown()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what}{self.shown()}"
                )
            time.sleep(POLL_S)

    def kill(self) -> None:
        """Kills the server (SIGHUP to the pane's processes) and waits until it is gone;
        whatever of the pane's processes outlives it is killed."""
        pane_processes: list[psutil.Process] = []
        if self.shell is not None:
            with contextlib.suppress(psutil.Error):
                pane_processes = [self.shell, *self.shell.children(recursive=True)]
        self.run("kill-server", check=False)
        deadline = time.monotonic() + TMUX_CMD_TIMEOUT_S
        while self.run("list-sessions", check=False).returncode == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"the tmux server on socket {self.socket} did not exit")
            time.sleep(0.05)
        _, alive = psutil.wait_procs(pane_processes, timeout=3.0)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    (tmp_path / "tmux").mkdir()
    server = Tmux(tmux_program(), tmp_path / "tmux")
    try:
        yield server
    finally:
        server.kill()


def write_spec(tmp_path: Path) -> Path:
    spec = {
        "name": JOB,
        "nodes": ["node-a slots=1", "node-b slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", "100000", "--step-s", "0.1"],
        "working_dir": str(tmp_path),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
    }
    path = tmp_path / f"{JOB}.yaml"
    path.write_text(json.dumps(spec))
    return path


def gantry_program() -> str:
    # Beside gantry-agent (the venv's bin): the installed entry point is what runs.
    return str(Path(agent_program()[0]).with_name("gantry"))


def has_line(pattern: str) -> Check:
    compiled = re.compile(pattern, re.MULTILINE)
    return lambda screen: compiled.search(screen) is not None


def footer(*keys: str) -> Check:
    """The last non-empty row (the footer) shows every one of `keys`."""

    def check(screen: str) -> bool:
        rows = [row for row in screen.splitlines() if row.strip()]
        return bool(rows) and all(key in rows[-1] for key in keys)

    return check


def all_of(*checks: Check) -> Check:
    return lambda screen: all(check(screen) for check in checks)


def job_state(client: JobsClient) -> tuple[int, list[int]]:
    """The job's state and, per rank of its latest attempt, the latest step."""
    led, _ = asyncio.run(client.describe(JOB))
    attempt = led.job.attempts[-1]
    return led.job.state, [r.metrics.step for r in attempt.ranks]


@pytest.mark.timeout(120)
def test_console_in_tmux_at_80x24(local_agents: StartAgent, tmp_path: Path, tmux: Tmux) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, targets)
    client = JobsClient(targets)
    asyncio.run(client.launch(load_job_spec(write_spec(tmp_path))))

    tmux.start(
        tmp_path, ["env", "TERM=xterm-256color", gantry_program(), "--cluster", str(cluster)]
    )
    assert tmux.pane("#{pane_width}x#{pane_height}") == f"{WIDTH}x{HEIGHT}"

    # Cluster screen: both nodes live, the footer's keys on the last row.
    screen = tmux.wait_for(
        "node-a and node-b live on the cluster screen",
        all_of(
            has_line(r"nodes 2/2 live"),
            has_line(r"^\s*NODE\s+STATE\b"),
            has_line(r"^\s*node-a\s+live\b"),
            has_line(r"^\s*node-b\s+live\b"),
            footer("J Jobs", "q Quit"),
        ),
    )
    lines = screen.splitlines()
    assert len(lines) <= HEIGHT and all(len(line) <= WIDTH for line in lines), tmux.shown()

    # `J`: the jobs list, with the job running its first attempt on two ranks.
    tmux.send("J")
    tmux.wait_for(
        f"{JOB} running (attempt 1) on the jobs screen",
        all_of(
            has_line(r"^\s*job\s+state\s+attempt\b"),
            has_line(rf"^\s*{JOB}\s+running\s+1\s+\d+\s+2\s+node-a\b"),
            footer("esc Back"),
        ),
    )

    # `enter`: the job screen, its title line and both ranks running.
    job_title = has_line(rf"^\s*{JOB} · running · attempt 1 · step \d+ .*leader node-a")
    both_ranks = all_of(
        has_line(r"^\s*0\s+node-a\s.*\brunning\s+\d+"),
        has_line(r"^\s*1\s+node-b\s.*\brunning\s+\d+"),
    )
    tmux.send("Enter")
    tmux.wait_for(
        "the job screen with both ranks running",
        all_of(job_title, both_ranks, has_line("1 Ranks"), footer("l Logs")),
    )

    # `l`: rank 0's log, live, both streams (a two-column gutter marks stderr's lines);
    # `g` goes to its first line.
    tmux.send("l")
    tmux.wait_for(
        "rank 0's log with step lines",
        all_of(
            has_line(rf"^\s*{JOB} · rank 0 · attempt 1 · stdout\+stderr"),
            has_line(r"^[ │]{0,2}step \d+\s*$"),
        ),
    )
    tmux.send("g")
    tmux.wait_for(
        "the log's first line (rank 0 of 2 attempt 1)",
        has_line(r"^[ │]{0,2}rank 0 of 2 attempt 1 master "),
    )

    # `escape`: back on the job screen.
    tmux.send("Escape")
    tmux.wait_for(
        "the job screen again",
        all_of(job_title, both_ranks, lambda screen: "· stdout" not in screen),
    )

    # `q`: the console exits with status 0...
    tmux.send("q")
    deadline = time.monotonic() + WAIT_S
    while not (tmux.exit_status() and tmux.pane_dead()):
        assert time.monotonic() < deadline, f"the console did not exit after q{tmux.shown()}"
        time.sleep(POLL_S)
    tmux.capture(history=True)
    assert tmux.exit_status() == "0", f"the console exited {tmux.exit_status()}{tmux.shown()}"

    # ...and the job runs on: still running, and both ranks still step.
    state, steps = job_state(client)
    assert state == job_pb2.JOB_STATE_RUNNING, job_pb2.JobState.Name(state)
    assert len(steps) == 2, steps
    deadline = time.monotonic() + WAIT_S
    while True:
        state, later = job_state(client)
        assert state == job_pb2.JOB_STATE_RUNNING, job_pb2.JobState.Name(state)
        if all(b > a for a, b in zip(steps, later, strict=True)):
            break
        assert time.monotonic() < deadline, f"steps stood still after q: {steps} -> {later}"
        time.sleep(0.3)
