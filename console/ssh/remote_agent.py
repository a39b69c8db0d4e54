"""What `gantry up` does on a node over SSH: check its Python environment's Gantry
version, install the locally built wheel when it is missing or differs, and start,
stop or restart `gantry-agent` detached from the SSH session, bound to 127.0.0.1.

The node's side is a small stdlib-only Python script run with the node's interpreter:
it stops an agent it started before (its pid from DATA_DIR/agent.json, checked against
/proc), writes the token (mode 600; the token travels on stdin, never in argv), starts
`python -m agent.main` in a new session with its output in DATA_DIR/agent.log, and
waits for the agent to write DATA_DIR/agent.json (its address). The console never
imports the agent: it names the module on the node's command line.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from console.ssh.quiet_asyncssh import asyncssh

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
PROBE_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 300.0

VERSION_PROBE = (
    "import importlib.metadata as m, sys\n"
    "try:\n    print(m.version('gantry'))\n"
    "except m.PackageNotFoundError:\n    print('')\n"
)

# Runs on the node (stdlib only). argv[1]: JSON parameters; stdin: the token ("" keeps).
NODE_SCRIPT = r"""
import json, os, signal, subprocess, sys, time
p = json.loads(sys.argv[1])
d = os.path.expanduser(p["dir"])
os.makedirs(d, mode=0o700, exist_ok=True)
endpoint = os.path.join(d, "agent.json")
log_path = os.path.join(d, "agent.log")
token_path = os.path.join(d, "token")

def running():
    try:
        with open(endpoint) as f:
            info = json.load(f)
        pid = int(info["pid"])
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmd = f.read()
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return (pid, info) if b"agent.main" in cmd else (None, None)

def stop():
    pid, _ = running()
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + p["grace"]
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True

def last_log_line():
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4096))
            lines = [l for l in f.read().decode(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    return lines[-1][-300:] if lines else "no output"

def start(port):
    try:
        os.unlink(endpoint)
    except FileNotFoundError:
        pass
    argv = [sys.executable, "-m", "agent.main", "--listen", "127.0.0.1:%d" % port,
            "--node-name", p["node"], "--data-dir", d, "--token-file", token_path]
    argv += p.get("agent_args", [])
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + p["timeout"]
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return None, "agent exited with %d: %s" % (code, last_log_line())
        try:
            with open(endpoint) as f:
                info = json.load(f)
        except (OSError, ValueError):
            info = {}
        if info.get("pid") == proc.pid:
            return info, ""
        time.sleep(0.05)
    proc.kill()
    return None, "agent did not start within %ds: %s" % (p["timeout"], last_log_line())

action = p["action"]
if p.get("version"):
    import importlib.metadata
    try:
        have = importlib.metadata.version("gantry")
    except importlib.metadata.PackageNotFoundError:
        have = ""
    if have != p["version"]:
        print(json.dumps({"version": have}))
        sys.exit(3)
if action == "status":
    pid, info = running()
    print(json.dumps({"running": pid is not None, "info": info}))
    sys.exit(0)
stopped = stop()
if action == "stop":
    print(json.dumps({"stopped": stopped}))
    sys.exit(0)
token = sys.stdin.read().strip()
if token:
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
elif not os.path.exists(token_path):
    print(json.dumps({"error": "no token file %s on the node; run gantry up" % token_path}))
    sys.exit(1)
error = ""
for port in ([p["port"], 0] if p["port"] else [0]):
    info, error = start(port)
    if info is not None:
        print(json.dumps({"address": info["address"], "pid": info["pid"], "stopped": stopped}))
        sys.exit(0)
print(json.dumps({"error": error}))
sys.exit(1)
"""


class RemoteError(Exception):
    """A node-side step failed; the message is one line naming what to fix."""


class VersionMismatch(RemoteError):
    """The node's environment holds another Gantry version ("" when none)."""

    def __init__(self, node: str, have: str, want: str) -> None:
        found = f"gantry {have}" if have else "no gantry"
        super().__init__(f"{node}: the node's Python has {found}; expected {want}")
        self.have = have


@dataclass(frozen=True)
class RemoteAgent:
    node: str
    port: int  # on the node's 127.0.0.1
    pid: int


def local_version() -> str:
    return importlib.metadata.version("gantry")


def data_dir(remote_dir: str, node: str) -> str:
    return f"{remote_dir.rstrip('/')}/{node}"


def node_token_path(remote_dir: str, node: str) -> str:
    """The agent's token file on its node (`~/` for the home directory there)."""
    return f"{data_dir(remote_dir, node)}/token"


async def _run(
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    *,
    stdin: str = "",
    timeout_s: float,
    node: str,
    what: str,
) -> asyncssh.SSHCompletedProcess:
    command = " ".join(shlex.quote(a) for a in argv)
    try:
        return await asyncio.wait_for(
            conn.run(command, input=stdin, check=False), timeout=timeout_s
        )
    except TimeoutError:
        raise RemoteError(f"{node}: {what} did not finish within {timeout_s:.0f}s") from None
    except (asyncssh.Error, OSError) as exc:
        raise RemoteError(f"{node}: {what} failed: {exc}") from None


def _missing_python(result: asyncssh.SSHCompletedProcess, python: str, node: str) -> None:
    if result.exit_status == 127:
        raise RemoteError(f"{node}: no Python at {python} on the node (give --remote-python PATH)")


def _last_line(text: object) -> str:
    lines = [line for line in str(text or "").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


async def remote_version(conn: asyncssh.SSHClientConnection, python: str, node: str) -> str:
    """The Gantry version installed in the node's environment ("" when none)."""
    result = await _run(
        conn, [python, "-c", VERSION_PROBE], timeout_s=PROBE_TIMEOUT_S, node=node, what="probe"
    )
    _missing_python(result, python, node)
    if result.exit_status != 0:
        raise RemoteError(f"{node}: {python} failed: {_last_line(result.stderr)}")
    return str(result.stdout or "").strip()


class WheelSource:
    """The Gantry wheel to install on nodes: a given file, or built once from this
    checkout (`pip wheel --no-deps --no-build-isolation`, offline) on first need."""

    def __init__(self, wheel: Path | None = None, source: Path | None = None) -> None:
        self._wheel = wheel
        self._source = source
        self._lock = asyncio.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def get(self) -> Path:
        async with self._lock:
            if self._wheel is None:
                self._wheel = await self._build()
            return self._wheel

    async def _build(self) -> Path:
        source = self._source or source_root()
        if source is None:
            raise RemoteError("no Gantry source here to build the wheel from; give --wheel FILE")
        self._tmp = tempfile.TemporaryDirectory(prefix="gantry-wheel-")
        work = Path(self._tmp.name)
        # Built from a copy, so nothing is written into the checkout (build/, egg-info).
        tree = work / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
        tree.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, tree / name)
        for name in ("console", "agent", "protos"):
            shutil.copytree(source / name, tree / name, ignore=ignore)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(work / "dist"),
            str(tree),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        wheels = sorted((work / "dist").glob("gantry-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RemoteError(f"building the Gantry wheel failed: {_last_line(out.decode())}")
        return wheels[0]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def source_root() -> Path | None:
    """This checkout, when Gantry runs from one (an editable install)."""
    import console

    root = Path(console.__file__).resolve().parent.parent
    ok = all((root / p).exists() for p in ("pyproject.toml", "agent", "protos"))
    return root if ok else None


async def install_wheel(
    conn: asyncssh.SSHClientConnection,
    python: str,
    wheel: Path,
    remote_dir: str,
    node: str,
) -> None:
    """Copies the wheel by SFTP and installs it (no dependencies, no index: offline)."""
    target_dir = data_dir(remote_dir, node)
    mkdir = await _run(
        conn,
        ["sh", "-c", 'mkdir -p "$0" && cd "$0" && pwd', _shell_path(target_dir)],
        timeout_s=PROBE_TIMEOUT_S,
        node=node,
        what="mkdir",
    )
    if mkdir.exit_status != 0:
        raise RemoteError(f"{node}: cannot create {target_dir}: {_last_line(mkdir.stderr)}")
    remote_wheel = f"{str(mkdir.stdout).strip()}/{wheel.name}"
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(wheel), remote_wheel)
    except (asyncssh.Error, OSError) as exc:
        raise RemoteError(f"{node}: copying the wheel failed: {exc}") from None
    argv = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    argv += ["--force-reinstall", "--disable-pip-version-check", remote_wheel]
    result = await _run(conn, argv, timeout_s=INSTALL_TIMEOUT_S, node=node, what="pip install")
    _missing_python(result, python, node)
    if result.exit_status != 0:
        raise RemoteError(f"{node}: installing {wheel.name} failed: {_last_line(result.stderr)}")


def _shell_path(path: str) -> str:
    """`~/x` for `sh -c`: the node's home, since a quoted ~ is not expanded."""
    return path if not path.startswith("~/") else "$HOME/" + path[2:]


async def _node_script(
    conn: asyncssh.SSHClientConnection,
    python: str,
    params: dict[str, object],
    *,
    token: str = "",
    node: str,
    what: str,
) -> dict[str, object]:
    result = await _run(
        conn,
        [python, "-c", NODE_SCRIPT, json.dumps(params)],
        stdin=token + "\n",
        timeout_s=START_TIMEOUT_S + STOP_GRACE_S + 30,
        node=node,
        what=what,
    )
    _missing_python(result, python, node)
    try:
        reply = json.loads(_last_line(result.stdout))
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict):
        raise RemoteError(f"{node}: {what} failed: {_last_line(result.stderr)}")
    if "error" in reply:
        raise RemoteError(f"{node}: {reply['error']}")
    if "version" in reply and "address" not in reply:
        raise VersionMismatch(node, str(reply["version"]), str(params.get("version", "")))
    return reply


async def start_agent(
    conn: asyncssh.SSHClientConnection,
    python: str,
    node: str,
    remote_dir: str,
    *,
    token: str = "",
    port: int = 0,
    version: str = "",
    agent_args: Sequence[str] = (),
) -> RemoteAgent:
    """(Re)starts the node's agent on 127.0.0.1:`port` (0: any; a busy port falls back
    to any). A previous agent of this data dir is stopped first; its ranks live on and
    the new agent re-adopts them. `token` "" keeps the node's token file. With
    `version`, a node whose Gantry differs raises VersionMismatch and nothing changes.
    `agent_args` are added to the agent's command line."""
    params = {
        "action": "start",
        "version": version,
        "dir": data_dir(remote_dir, node),
        "node": node,
        "port": port,
        "grace": STOP_GRACE_S,
        "timeout": START_TIMEOUT_S,
        "agent_args": list(agent_args),
    }
    reply = await _node_script(conn, python, params, token=token, node=node, what="agent start")
    address = str(reply.get("address", ""))
    return RemoteAgent(node, int(address.rpartition(":")[2]), int(str(reply.get("pid", 0))))


async def stop_agent(
    conn: asyncssh.SSHClientConnection, python: str, node: str, remote_dir: str
) -> bool:
    """Stops the node's agent (SIGTERM, then SIGKILL); False when none was running."""
    params = {"action": "stop", "dir": data_dir(remote_dir, node), "grace": STOP_GRACE_S}
    reply = await _node_script(conn, python, params, node=node, what="agent stop")
    return bool(reply.get("stopped"))
