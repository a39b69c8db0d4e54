"""SSH mode's agent-to-agent calls: agents listen on their node's loopback only, so a
job's leader reaches a peer's agent over SSH (agent.jobs.leader.peer_ssh) with its own SSH config,
keys and known_hosts, through a local port forward. Against a real OpenSSH sshd on
127.0.0.1 (tests/sshd.py) and real agents."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import ValidationError, check_peer_token_file, check_ssh_destination

from agent.jobs.leader.peer_ssh import configure_peer_ssh, split_destination
from agent.jobs.leader.peers import NodeUnreachable, RemoteNode
from console.model.job_spec import parse_job_spec
from console.net.cluster_file import NodeTarget
from console.net.jobs_client import JobsClient
from console.ssh.cli_args import add_ssh_verbs
from console.ssh.mode import open_ssh
from console.ssh.up_verb import run_ssh_verb
from tests.conftest import StartAgent, kill_processes_mentioning
from tests.sshd import SSHD, Sshd, keygen, public_key, running_sshd

A = agent_service_pb2
JS = job_pb2.JobState
FAKE_RANK = Path(__file__).resolve().parent / "fixtures" / "fake_rank.py"
needs_sshd = pytest.mark.skipif(not SSHD.exists(), reason="needs openssh-server (make test)")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not SSHD.exists():
        pytest.skip("needs openssh-server (make test installs it)")
    with running_sshd(tmp_path_factory.mktemp("sshd"), aliases=2) as server:
        yield server


def peer_config(sshd: Sshd, root: Path, *, known_key: str | None = None) -> Path:
    """What a node's ~/.ssh/config would hold: the aliases, this user's key, and a
    known_hosts trusting the sshd's host key (or `known_key` instead)."""
    known = sshd.known_hosts(root / "known_hosts", known_key)
    config = root / "ssh_config"
    config.write_text(
        sshd.ssh_config.read_text()
        + f"Host *\n  IdentityFile {sshd.user_key}\n  IdentitiesOnly yes\n"
        + f"  UserKnownHostsFile {known}\n"
    )
    return config


@pytest.fixture
def peer_ssh(sshd: Sshd, tmp_path: Path) -> Iterator[Path]:
    config = peer_config(sshd, tmp_path)
    configure_peer_ssh([config])
    yield config
    configure_peer_ssh([])


def test_ssh_destinations_are_parsed_and_validated() -> None:
    assert split_destination("node-2") == (None, "node-2", None)
    assert split_destination("alice@10.0.0.2:2222") == ("alice", "10.0.0.2", 2222)
    assert split_destination("[fe80::1]") == (None, "[fe80::1]", None)
    for good in ("node-2", "alice@node-2", "10.0.0.2:2222"):
        assert check_ssh_destination(good, "ssh") == good
    for bad in ("-oProxyCommand=touch x", "node 2", "a@-b", ""):
        with pytest.raises(ValidationError, match="ssh"):
            check_ssh_destination(bad, "ssh")
    # The leader reads a peer's token file over SSH: only ever a file named token.
    for good in ("/srv/gantry/node-2/token", "~/.gantry/agents/node-2/token"):
        assert check_peer_token_file(good, "token_file") == good
    for bad in ("/etc/shadow", "~/.ssh/id_ed25519", "/a/../b/token", "rel/token", "/x/token\0"):
        with pytest.raises(ValidationError, match="token_file"):
            check_peer_token_file(bad, "token_file")


@needs_sshd
def test_the_leader_reaches_a_loopback_agent_over_ssh(
    sshd: Sshd, peer_ssh: Path, local_agents: StartAgent
) -> None:
    agent = local_agents("node-2")
    token = agent.target.read_token()
    before = len(sshd.session_pids())

    async def run() -> tuple[str, str | None, int]:
        node = RemoteNode(
            A.PeerAgent(name="node-2", address=agent.address, token=token, ssh="node-2")
        )
        try:
            await node.ping()
            reply = await node.stop_ranks(A.StopRanksRequest(job_name="none", grace_s=0))
            sessions = len(sshd.session_pids())
            return reply.__class__.__name__, await node.local_ip(), sessions
        finally:
            await node.close()

    name, ip, sessions = asyncio.run(run())
    assert name == "StopRanksResponse"
    assert ip == "127.0.0.1"  # the address the peer's network sees this node at
    assert sessions > before  # the calls went through the sshd, not straight to the port


@needs_sshd
def test_an_untrusted_peer_host_key_stops_the_call_with_why(
    sshd: Sshd, tmp_path: Path, local_agents: StartAgent
) -> None:
    other = public_key(keygen(tmp_path / "other_host_key"))
    configure_peer_ssh([peer_config(sshd, tmp_path, known_key=other)])
    agent = local_agents("node-2")

    async def run() -> str:
        node = RemoteNode(
            A.PeerAgent(name="node-2", address=agent.address, token="t", ssh="node-2")
        )
        try:
            await node.ping()
        except NodeUnreachable as exc:
            return str(exc)
        finally:
            await node.close()
        return "no error"

    try:
        message = asyncio.run(run())
    finally:
        configure_peer_ssh([])
    assert message.startswith("node-2's agent: ssh node-2: host key not trusted"), message
    assert "\n" not in message


@dataclass
class TwoNodes:
    """Two nodes behind the test sshd, brought up with `gantry up`'s own verb."""

    hostfile: Path
    state: Path
    remote_dir: Path
    config: Path

    def gantry(self, capsys: pytest.CaptureFixture[str], verb: str, *args: str) -> str:
        argv = [verb, str(self.hostfile), "--state", str(self.state), *args]
        if verb == "up":
            argv += ["--ssh-config", str(self.config), "--remote-dir", str(self.remote_dir)]
            argv += ["--peer-ssh-config", str(self.config)]
        parser = argparse.ArgumentParser(prog="gantry")
        add_ssh_verbs(parser.add_subparsers(dest="verb"))
        code = run_ssh_verb(parser.parse_args(argv))
        out = capsys.readouterr()
        assert code == 0, out.out + out.err
        return out.out

    def address(self, node: str) -> str:
        info = json.loads((self.remote_dir / node / "agent.json").read_text())
        return str(info["address"])

    def agent(self, node: str) -> psutil.Process:
        info = json.loads((self.remote_dir / node / "agent.json").read_text())
        return psutil.Process(info["pid"])


@pytest.fixture
def two_nodes(sshd: Sshd, tmp_path: Path) -> Iterator[TwoNodes]:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-1 slots=1\nnode-2 slots=1\n")
    nodes = TwoNodes(
        hostfile,
        tmp_path / "console" / "cluster.yaml",
        tmp_path / "remote",
        peer_config(sshd, tmp_path),
    )
    yield nodes
    kill_processes_mentioning(str(nodes.remote_dir))


@needs_sshd
def test_a_job_spans_two_nodes_brought_up_over_ssh(
    sshd: Sshd, two_nodes: TwoNodes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gantry up --peer-ssh-config` starts both agents on loopback; in SSH mode the
    console sends each peer as the leader must reach it (the agent's port on its own
    node, the hostfile's host to SSH to), and the leader starts node-2's rank over SSH."""
    two_nodes.gantry(capsys, "up")
    leader = two_nodes.agent("node-1")
    assert ["--peer-ssh-config", str(two_nodes.config)] == leader.cmdline()[-2:]
    ssh = open_ssh(two_nodes.hostfile, two_nodes.state)
    try:
        job = asyncio.run(run_job(ssh.targets, tmp_path, leader, sshd))
        # An agent restarted over SSH keeps the options `gantry up` gave it.
        line = asyncio.run(ssh.agents.restart("node-2"))
        assert line.startswith("node-2: agent restarted over SSH"), line
        restarted = two_nodes.agent("node-2").cmdline()
        assert restarted[-2:] == ["--peer-ssh-config", str(two_nodes.config)]
    finally:
        ssh.close()
    assert job.state == JS.JOB_STATE_SUCCEEDED, job.reason
    assert sorted(r.node for r in job.attempts[0].ranks) == ["node-1", "node-2"]
    # The leader kept how it reaches its peers, for after its own restart.
    peers_file = two_nodes.remote_dir / "node-1" / "jobs" / "ssh-job" / "peers.json"
    peers = json.loads(peers_file.read_text())
    assert {p["name"]: p["ssh"] for p in peers} == {"node-1": "node-1", "node-2": "node-2"}


@needs_sshd
def test_down_asks_before_stopping_ranks_and_up_brings_the_agents_back_to_them(
    two_nodes: TwoNodes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_nodes.gantry(capsys, "up")
    addresses = {n: two_nodes.address(n) for n in ("node-1", "node-2")}
    ssh = open_ssh(two_nodes.hostfile, two_nodes.state)
    try:
        pids = asyncio.run(start_long_job(ssh.targets, tmp_path))
    finally:
        ssh.close()
    # No terminal to ask on: the ranks are left running, the agents stopped.
    out = two_nodes.gantry(capsys, "down")
    assert "leaving the ranks of long-job running (--stop-ranks stops them)" in out
    assert "node-1: agent stopped" in out and "node-2: agent stopped" in out
    assert all(running(pid) for pid in pids)
    # Up again, each on its old port: the leader finds its peer where it was.
    two_nodes.gantry(capsys, "up")
    assert {n: two_nodes.address(n) for n in ("node-1", "node-2")} == addresses
    out = two_nodes.gantry(capsys, "down", "--stop-ranks")
    assert "long-job: stop requested" in out and "node-2: agent stopped" in out
    assert "long-job: stopped by the operator\n" in out  # every node's ranks were stopped
    deadline = time.monotonic() + 30
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"ranks left running: {out}"
        time.sleep(0.2)


def running(pid: int) -> bool:
    """Alive, not a zombie (a rank whose agent is gone is reparented and may not be reaped
    at once)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def fake_job(name: str, tmp_path: Path, *, steps: int, step_s: float) -> job_pb2.JobSpec:
    """One fake rank (no DeepSpeed) on each of node-1 and node-2, never restarted."""
    doc = {
        "name": name,
        "nodes": ["node-1 slots=1", "node-2 slots=1"],
        "command": ["python", str(FAKE_RANK)],
        "args": ["--steps", str(steps), "--step-s", str(step_s)],
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0, "backoff_s": 0},
    }
    return parse_job_spec(json.dumps(doc), tmp_path, {"node-1", "node-2"})


async def start_long_job(targets: list[NodeTarget], tmp_path: Path) -> list[int]:
    """Launches a job that runs until stopped; its ranks' pids once both report steps."""
    client = JobsClient(targets)
    await client.launch(fake_job("long-job", tmp_path, steps=100_000, step_s=0.1))
    deadline = time.monotonic() + 60
    while True:
        led, _ = await client.describe("long-job")
        ranks = led.job.attempts[-1].ranks if led.job.attempts else []
        if len(ranks) == 2 and all(r.pid and r.metrics.step >= 1 for r in ranks):
            return [r.pid for r in ranks]
        assert time.monotonic() < deadline, led.job
        await asyncio.sleep(0.2)


async def run_job(
    targets: list[NodeTarget], tmp_path: Path, leader: psutil.Process, sshd: Sshd
) -> job_pb2.Job:
    client = JobsClient(targets)
    await client.launch(fake_job("ssh-job", tmp_path, steps=3, step_s=0.01))
    over_ssh = False
    deadline = time.monotonic() + 60
    while True:
        # The leader's own SSH connection to the sshd: its calls to node-2 ride on it.
        conns = leader.net_connections("tcp")
        over_ssh |= any(c.raddr and c.raddr.port == sshd.port for c in conns)
        led, _ = await client.describe("ssh-job")
        if led.job.state in (JS.JOB_STATE_SUCCEEDED, JS.JOB_STATE_FAILED):
            assert over_ssh
            return led.job
        assert time.monotonic() < deadline, led.job
        await asyncio.sleep(0.2)
