"""`gantry up`/`down` and the console's SSH mode against a real OpenSSH sshd on 127.0.0.1
(tests/sshd.py): install and start an agent through it, reach it through a tunnel,
restart it over SSH, survive a dropped connection; refuse an unknown host key, a
changed one even with --accept-new, and a wrong user key. Nothing touches ~/.ssh."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from console.model.cluster import ClusterStore
from console.net.agent_client import fetch_status
from console.net.operator import Operator
from console.ssh.cli_args import add_ssh_verbs
from console.ssh.connect import SshError, SshOptions, connect
from console.ssh.hostfile import HostEntry
from console.ssh.mode import open_ssh, ssh_reasons, ssh_targets
from console.ssh.state import SshCluster, SshNode, StateError, dump_state, load_state
from console.ssh.tunnels import TunnelManager
from console.ssh.up_verb import run_ssh_verb
from console.ui.app import GantryApp
from tests.conftest import kill_processes_mentioning
from tests.sshd import SSHD, Sshd, keygen, public_key, running_sshd

needs_sshd = pytest.mark.skipif(not SSHD.exists(), reason="needs openssh-server (make test)")
WAIT_S = 30.0


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not SSHD.exists():
        pytest.skip("needs openssh-server (make test installs it)")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def ssh_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gantry")
    add_ssh_verbs(parser.add_subparsers(dest="verb"))
    return parser


@dataclass
class Up:
    root: Path
    sshd: Sshd
    hostfile: Path
    state: Path
    known_hosts: Path
    remote_dir: Path
    remote_python: Path

    def ssh_args(self, *, key: Path | None = None, known_hosts: Path | None = None) -> list[str]:
        return [
            "--ssh-config",
            str(self.sshd.ssh_config),
            "--known-hosts",
            str(known_hosts or self.known_hosts),
            "-i",
            str(key or self.sshd.user_key),
            "--state",
            str(self.state),
            "--connect-timeout",
            "10",
        ]

    def run(self, verb: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
        code = run_ssh_verb(ssh_parser().parse_args([verb, *args]))
        out = capsys.readouterr()
        return code, out.out + out.err

    def agent_info(self, node: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads((self.remote_dir / node / "agent.json").read_text())
        return info


def python_without_gantry(root: Path) -> Path:
    """A fresh venv whose dependencies come from this one but which has no Gantry: the
    node `gantry up` must install Gantry on (offline, --no-deps). Symlinks, no copies."""
    venv = root / "node-venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = Path(next(p for p in sys.path if p.endswith("site-packages")))
    deps = root / "deps"
    deps.mkdir()
    for entry in ours.iterdir():
        name = entry.name
        if name.startswith(("gantry-", "__editable__")) or name.endswith(".pth"):
            continue
        (deps / name).symlink_to(entry)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(f"{deps}\n")
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def up(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up")
    hostfile = root / "hosts"
    hostfile.write_text("node-1 slots=1\n")
    setup = Up(
        root,
        sshd,
        hostfile,
        root / "console" / "ssh" / "cluster.yaml",
        sshd.known_hosts(root / "known_hosts"),
        root / "remote",
        python_without_gantry(root),
    )
    yield setup
    kill_processes_mentioning(str(setup.remote_dir))


@needs_sshd
def test_up_installs_gantry_and_starts_the_agent(
    up: Up, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = up.run(
        "up",
        str(up.hostfile),
        *up.ssh_args(),
        "--remote-python",
        str(up.remote_python),
        "--remote-dir",
        str(up.remote_dir),
        capsys=capsys,
    )
    assert code == 0, out
    assert "node-1  up" in out and "installed gantry 0.1.0" in out
    # The node's environment now has our version, installed from the wheel.
    version = subprocess.run(
        [str(up.remote_python), "-c", "import importlib.metadata as m; print(m.version('gantry'))"],
        capture_output=True,
        text=True,
        cwd=up.root,
    )
    assert version.stdout.strip() == "0.1.0"
    # Detached (its own session), on loopback, with a token only its owner reads.
    info = up.agent_info("node-1")
    agent = psutil.Process(info["pid"])
    assert agent.is_running() and str(up.remote_python) in agent.cmdline()[0]
    assert agent.pid == psutil.Process(agent.pid).pid and agent.ppid() != psutil.Process().pid
    assert info["address"].startswith("127.0.0.1:")
    token = up.remote_dir / "node-1" / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    cluster = load_state(up.state)
    [node] = cluster.nodes
    assert node.agent_port == int(info["address"].rpartition(":")[2])
    assert node.token_file.read_text() == token.read_text()
    assert stat.S_IMODE(node.token_file.stat().st_mode) == 0o600


async def until(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@needs_sshd
async def test_console_reaches_the_agent_through_a_tunnel_and_restarts_it(up: Up) -> None:
    if not up.state.exists():
        pytest.skip("needs the test before")
    # As `gantry --ssh HOSTFILE` opens the console (the lines of console/cli.py).
    ssh = await asyncio.to_thread(open_ssh, up.hostfile, up.state)
    manager, targets = ssh.manager, ssh.targets
    try:
        assert manager.failures() == {}
        [target] = targets
        assert target.address.startswith("127.0.0.1:")
        operator = Operator(targets, agents=ssh.agents)
        app = GantryApp(targets, operator=operator, background=ssh.background)
        async with app.run_test() as pilot:
            await until("live", lambda: app.store.node("node-1").state.value == "live")
            before = up.agent_info("node-1")
            line = await operator.restart_agent("node-1")
            assert line.startswith("node-1: agent restarted over SSH")
            after = up.agent_info("node-1")
            assert after["pid"] != before["pid"] and after["address"] == before["address"]
            assert not psutil.pid_exists(before["pid"])
            # The console's stream comes back through the same tunnel (same local
            # address) to the new agent.
            await until("live again", lambda: app.store.node("node-1").state.value == "live")
            reply = await fetch_status(target)
            assert reply.info.hostname
            await pilot.pause(0)

        # A dropped SSH connection is re-established (with backoff) by itself.
        assert manager.connects("node-1") == 1
        up.sshd.drop_connections()
        await until("reconnected", lambda: manager.connects("node-1") == 2)
        reply = await fetch_status(target)
        assert reply.info.hostname
    finally:
        await asyncio.to_thread(ssh.close)


@needs_sshd
def test_down_stops_the_agent(up: Up, capsys: pytest.CaptureFixture[str]) -> None:
    if not up.state.exists():
        pytest.skip("needs the test before")
    pid = up.agent_info("node-1")["pid"]
    code, out = up.run("down", str(up.hostfile), *up.ssh_args(), capsys=capsys)
    assert code == 0, out
    assert "node-1: agent stopped" in out
    assert not psutil.pid_exists(pid)
    assert load_state(up.state).nodes == []


# -- refusals, each one line ------------------------------------------------------------


def entry(sshd: Sshd) -> HostEntry:
    return HostEntry("node-1", "node-1")


def options(sshd: Sshd, known_hosts: Path, **kw: Any) -> SshOptions:
    return SshOptions(
        config=(sshd.ssh_config,),
        known_hosts=known_hosts,
        identities=(kw.pop("key", sshd.user_key),),
        connect_timeout_s=kw.pop("timeout", 10.0),
        **kw,
    )


def fingerprint_of(public: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True)
    return out.stdout.split()[1]  # SHA256:...


@needs_sshd
def test_up_refuses_an_unknown_host_key_and_says_how_to_accept_it(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-1 slots=1\n")
    known = tmp_path / "known_hosts"  # empty: the key is unknown
    args = ["--ssh-config", str(sshd.ssh_config), "--known-hosts", str(known)]
    args += ["-i", str(sshd.user_key), "--state", str(tmp_path / "state.yaml")]
    code = run_ssh_verb(ssh_parser().parse_args(["up", str(hostfile), *args]))
    out = capsys.readouterr().out
    assert code == 1
    [line] = [x for x in out.splitlines() if "FAILED" in x]
    assert f"host key of [127.0.0.1]:{sshd.port} is unknown" in line
    assert fingerprint_of(Path(f"{sshd.host_key}.pub")) in line
    assert "--accept-new" in line
    assert not known.exists()
    assert load_state(tmp_path / "state.yaml").nodes == []


@needs_sshd
def test_up_says_when_the_nodes_python_is_missing(
    sshd: Sshd, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-1 slots=1\n")
    args = ["--ssh-config", str(sshd.ssh_config), "-i", str(sshd.user_key)]
    args += ["--known-hosts", str(sshd.known_hosts(tmp_path / "known_hosts"))]
    args += ["--state", str(tmp_path / "state.yaml"), "--remote-python", "/nowhere/python"]
    code = run_ssh_verb(ssh_parser().parse_args(["up", str(hostfile), *args]))
    out = capsys.readouterr().out
    assert code == 1
    assert "node-1  FAILED  no Python at /nowhere/python on the node (give --remote-python" in out


@needs_sshd
async def test_accept_new_records_an_unknown_key(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    conn = await connect(entry(sshd), options(sshd, known, accept_new=True))
    conn.close()
    assert known.read_text() == f"[127.0.0.1]:{sshd.port} {public_key(sshd.host_key)}\n"
    # Known now: accepted without --accept-new.
    conn = await connect(entry(sshd), options(sshd, known))
    conn.close()


@needs_sshd
async def test_a_changed_host_key_is_refused_even_with_accept_new(
    sshd: Sshd, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "old_host_key")
    known = sshd.known_hosts(tmp_path / "known_hosts", public_key(other))
    before = known.read_text()
    with pytest.raises(SshError) as caught:
        await connect(entry(sshd), options(sshd, known, accept_new=True))
    assert caught.value.kind == "host-key"
    message = str(caught.value)
    assert f"HOST KEY OF [127.0.0.1]:{sshd.port} HAS CHANGED" in message
    assert fingerprint_of(Path(f"{sshd.host_key}.pub")) in message
    assert f"ssh-keygen -R '[127.0.0.1]:{sshd.port}'" in message
    assert "\n" not in message
    assert known.read_text() == before


@needs_sshd
async def test_a_wrong_user_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(SshError) as caught:
        await connect(entry(sshd), options(sshd, known, key=stranger))
    assert caught.value.kind == "auth"
    assert str(caught.value).startswith(f"authentication failed for {sshd.user}@node-1")


async def test_unresolvable_refused_and_silent_hosts_say_why(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    opts = SshOptions(known_hosts=known, identities=(tmp_path / "none",), connect_timeout_s=0.5)
    opts = SshOptions(config=(tmp_path / "empty_config",), known_hosts=known, connect_timeout_s=0.5)
    (tmp_path / "empty_config").write_text("")
    with pytest.raises(SshError) as caught:
        await connect(HostEntry("x", "no-such-node.invalid"), opts)
    assert caught.value.kind == "resolve"
    assert "cannot resolve host name no-such-node.invalid" in str(caught.value)

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(SshError) as caught:
        await connect(HostEntry("x", "127.0.0.1", port), opts)
    assert caught.value.kind == "refused"

    # A server that accepts and never speaks SSH: the connect timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True)
    thread.start()
    try:
        with pytest.raises(SshError) as caught:
            await connect(HostEntry("x", "127.0.0.1", silent.getsockname()[1]), opts)
        assert caught.value.kind == "timeout"
        assert "timed out after" in str(caught.value)
    finally:
        thread.join(2)
        for s in (*accepted, silent):
            s.close()


@needs_sshd
async def test_the_console_shows_why_a_nodes_ssh_fails(sshd: Sshd, tmp_path: Path) -> None:
    known = sshd.known_hosts(tmp_path / "known_hosts")
    stranger = keygen(tmp_path / "stranger")
    node = SshNode(HostEntry("node-1", "node-1"), 1, tmp_path / "token", "python", "r")
    manager = TunnelManager([node], options(sshd, known, key=stranger))
    failures = await asyncio.to_thread(manager.start, WAIT_S)
    try:
        assert failures["node-1"].startswith(f"ssh: authentication failed for {sshd.user}@node-1")
        [target] = manager.targets()
        store = ClusterStore()
        store.add_node("node-1", target.address, time.time())
        store.set_lost("node-1", time.time(), "agent unreachable (connection refused or dropped)")
        show = asyncio.create_task(ssh_reasons(manager, 0.05)(SimpleNamespace(store=store)))
        await until(
            "the reason",
            lambda: store.node("node-1").error.startswith("ssh: authentication failed"),
        )
        show.cancel()
    finally:
        await asyncio.to_thread(manager.close)


def test_ssh_mode_needs_gantry_up_first(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-1 slots=1\nnode-2 slots=1\n")
    with pytest.raises(StateError, match="run `gantry up HOSTFILE` first"):
        ssh_targets(hostfile, tmp_path / "none.yaml")
    state = tmp_path / "cluster.yaml"
    node = SshNode(HostEntry("node-1", "node-1"), 4000, tmp_path / "t", "python", "~/.g")
    dump_state(SshCluster(state, hostfile, SshOptions(user="alice"), [node]))
    loaded = load_state(state)
    assert loaded.nodes == [node] and loaded.options.user == "alice"
    with pytest.raises(StateError, match=r"node node-2 has no agent in .*run: gantry up HOSTFILE"):
        ssh_targets(hostfile, state)
