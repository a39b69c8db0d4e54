"""Issue 19, the slow link, on the namespaced test bed (tests/netbed): a real two-rank
DeepSpeed job (Gantry's trainer, tiny-dense, gloo on the CPU) across node-1 and node-2, with
node-2's link slowed. The issue asks for 20-50 ms of delay; this kernel has no sch_netem, so
the link is slowed by bandwidth instead (tc tbf at 50 Mbit/s each way): the ranks' time in
collectives rises above 20 % of the step, and the advisor's network rule fires on that real
data, read as the operator reads it (`gantry advise NAME --json`). With the link restored,
the rule's window (each rank's last 20 steps of the attempt) moves past the slow steps and
the finding clears in the same attempt: no restart.

The tbf fault itself is checked on the bed: a host's transfer rate to a peer drops to the
rate set, and is back once the throttle is undone. Needs root (CI runs as root)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deepspeed_env import deepspeed_warm  # noqa: F401  (a session fixture)
from tests.netbed import plan as p
from tests.netbed.bed import Netbed
from tests.netbed.fixture import netbed, netbed_faults_undone  # noqa: F401
from tests.netbed.link_scenarios import (
    NETWORK_RULE,
    SLOW_NODE,
    slow_link_scenario,
)

PROBE_BYTES = 2_000_000
PROBE_PORT = 50999
SINK = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
conn, _ = server.accept()
while conn.recv(65536):
    pass
conn.close()
"""
SOURCE = """
import socket, sys, time
for _ in range(100):
    try:
        conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
start = time.monotonic()
conn.sendall(b"x" * int(sys.argv[3]))
conn.shutdown(socket.SHUT_WR)
conn.recv(1)
print(time.monotonic() - start)
"""


def transfer_s(bed: Netbed, sender: str, receiver: str) -> float:
    """Seconds for `sender` to push PROBE_BYTES over TCP to `receiver` (until it has them)."""
    dst = bed.host(receiver)
    sink = [sys.executable, "-c", SINK, str(PROBE_PORT)]
    server = subprocess.Popen(["ip", "netns", "exec", dst.ns, *sink])
    try:
        argv = [sys.executable, "-c", SOURCE, dst.address, str(PROBE_PORT), str(PROBE_BYTES)]
        done = bed.host(sender).run(argv, timeout_s=30)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.strip())
    finally:
        server.kill()
        server.wait(5)


def test_throttle_slows_the_hosts_link_and_unthrottle_restores_it(
    netbed: Netbed,  # noqa: F811
) -> None:
    host = netbed.host("node-2")
    netbed.throttle(host, "8mbit", max_s=60)
    slow_out = transfer_s(netbed, "node-2", "node-1")  # node-2's eth0 sends through tbf
    slow_in = transfer_s(netbed, "node-1", "node-2")  # the bridge's port to node-2 does
    netbed.unthrottle(host)
    fast = transfer_s(netbed, "node-2", "node-1")
    # 2 MB at 8 Mbit/s: 2 s at least, each way; the veth unthrottled: far less.
    assert slow_out >= 1.5 and slow_in >= 1.5, (slow_out, slow_in)
    assert fast < slow_out / 3, (fast, slow_out)
    qdiscs = host.run(["tc", "qdisc", "show", "dev", p.HOST_IFACE]).stdout
    assert "tbf" not in qdiscs, qdiscs


def test_throttle_undoes_itself_at_its_time_limit(netbed: Netbed) -> None:  # noqa: F811
    host = netbed.host("node-3")
    netbed.throttle(host, "1mbit", max_s=0.5)
    assert "tbf" in host.run(["tc", "qdisc", "show", "dev", p.HOST_IFACE]).stdout
    deadline = time.monotonic() + 10
    while "tbf" in host.run(["tc", "qdisc", "show", "dev", p.HOST_IFACE]).stdout:
        assert time.monotonic() < deadline, "the throttle outlived its time limit"
        time.sleep(0.1)


@pytest.mark.slow_scenario  # a real DeepSpeed job over minutes: `make test-faults`, bench/faults.py
def test_slow_link_fires_the_network_rule_and_restoring_it_clears_it(
    deepspeed_warm: dict[str, str],  # noqa: F811
    netbed: Netbed,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = slow_link_scenario(netbed, tmp_path)
    with capsys.disabled():
        print(json.dumps({k: result[k] for k in ("slow_link_network_finding", "collective_share")}))
    finding = result["throttled_finding"]
    assert finding is not None, f"no {NETWORK_RULE} finding while {SLOW_NODE}'s link was slow"
    assert finding["rule"] == NETWORK_RULE and finding["severity"] == "warning"
    # Its evidence: the share over a window of real steps of both ranks, and the threshold.
    assert "of step time over steps" in finding["evidence"], finding
    assert "2 ranks; threshold 20%" in finding["evidence"], finding
    assert result["collective_share"] > 0.20, result
    assert result["restored_finding"] is None, result
    assert result["slow_link_network_finding"] is True
