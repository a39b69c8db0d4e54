"""The namespaced test bed itself (tests/netbed): hosts with their own addresses, agents
the console reaches over mutual TLS on those addresses, `gantry up` over each host's own
sshd, and a bed torn down (or left by a crashed run, cleaned) without a trace.
Needs root (CI runs as root): without it the bed fails with one line saying so."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from console.net.agent_client import fetch_status
from console.ssh.cli_args import add_ssh_verbs
from console.ssh.mode import open_ssh
from console.ssh.up_verb import run_ssh_verb
from tests.conftest import kill_processes_mentioning
from tests.netbed.bed import Netbed, clean_stale, netns_pids, start_bed, teardown
from tests.netbed.fixture import netbed, netbed_faults_undone  # noqa: F401
from tests.netbed.jobs import cli

ROOT = Path(__file__).resolve().parent.parent


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_have_their_own_addresses_and_reach_each_other(netbed: Netbed) -> None:  # noqa: F811
    for host in netbed.hosts:
        addrs = host.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f"inet {host.address}/24" in addrs, addrs
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 50051), 5).close()"
    first, last = netbed.hosts[0], netbed.hosts[-1]
    done = first.run([sys.executable, "-c", probe, last.address])
    assert done.returncode == 0, done.stderr
    # The bed's traffic stays in the bed: its subnet is routed nowhere but its own link.
    route = subprocess.run(
        ["ip", "-4", "route", "show", netbed.plan.subnet], capture_output=True, text=True
    ).stdout
    assert f"dev {netbed.plan.console_link}" in route and route.count("\n") == 1, route


def test_the_console_reaches_every_agent_over_mutual_tls(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    code, out = cli(["--cluster", str(netbed.cluster_file), "status", "--json"])
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    nodes = {n["name"]: n for n in report["nodes"]}
    assert sorted(nodes) == ["node-1", "node-2", "node-3"]
    for host in netbed.hosts:
        assert nodes[host.name]["state"] == "live"
        assert nodes[host.name]["address"] == host.agent_target  # not loopback
    # Without the console's certificate the same agents refuse the console.
    doc = yaml.safe_load(netbed.cluster_file.read_text())
    doc["tls"].pop("cert")
    doc["tls"].pop("key")
    doc["tls"]["ca"] = str(netbed.ca_dir / "ca.pem")
    anonymous = tmp_path / "anonymous.yaml"
    anonymous.write_text(yaml.safe_dump(doc))
    code, out = cli(["--cluster", str(anonymous), "status", "--json"])
    assert code != 0 and '"live"' not in out, out


def test_gantry_up_over_ssh_starts_an_agent_inside_each_host(
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
) -> None:
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{h.name} slots=1\n" for h in netbed.hosts))
    state, remote = tmp_path / "ssh-cluster.yaml", tmp_path / "remote"
    parser = argparse.ArgumentParser(prog="gantry")
    add_ssh_verbs(parser.add_subparsers(dest="verb"))
    ssh_args = [
        "--ssh-config",
        str(netbed.ssh_config),
        "--known-hosts",
        str(netbed.known_hosts),
        "-i",
        str(netbed.user_key),
        "--state",
        str(state),
        "--connect-timeout",
        "10",
    ]
    try:
        up = [
            "up",
            str(hostfile),
            *ssh_args,
            "--remote-python",
            sys.executable,
            "--remote-dir",
            str(remote),
            "--no-warm-ops",
        ]
        assert run_ssh_verb(parser.parse_args(up)) == 0
        for host in netbed.hosts:
            info = json.loads((remote / host.name / "agent.json").read_text())
            assert info["pid"] in host.pids(), f"{host.name}'s agent runs outside {host.ns}"
        ssh = open_ssh(hostfile, state)
        try:
            replies = [
                asyncio.run(fetch_status(t)) for t in sorted(ssh.targets, key=lambda t: t.name)
            ]
        finally:
            ssh.close()
        assert [r.info.node_name for r in replies] == netbed.plan.names()
        assert run_ssh_verb(parser.parse_args(["down", str(hostfile), *ssh_args])) == 0
    finally:
        kill_processes_mentioning(str(remote))


def test_teardown_leaves_nothing_and_a_crashed_runs_bed_is_cleaned(tmp_path: Path) -> None:
    bed = start_bed(tmp_path / "own", count=1, agents=False)
    ns = bed.hosts[0].ns
    assert ns in namespaces() and netns_pids(ns)  # its sshd
    teardown(bed)
    assert ns not in namespaces() and bed.plan.bridge_ns not in namespaces()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert bed.plan.console_link not in links

    # A run that dies without tearing its bed down: the next one removes it.
    script = (
        "import sys,time; from pathlib import Path; from tests.netbed.bed import start_bed;"
        "start_bed(Path(sys.argv[1]), 1, agents=False); print('up', flush=True); time.sleep(120)"
    )
    crashed = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "crashed")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert crashed.stdout is not None and crashed.stdout.readline() == "up\n"
    finally:
        crashed.send_signal(signal.SIGKILL)
        crashed.wait()
    owned = f"gnb-{crashed.pid}-"
    assert owned in namespaces()
    deadline = time.monotonic() + 5
    while psutil.pid_exists(crashed.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    removed = clean_stale()
    assert any(n.startswith(owned) for n in removed), removed
    assert owned not in namespaces()
