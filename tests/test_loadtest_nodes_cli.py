"""`gantry loadtest --from-nodes` from the command line: two real agents run the workers
(`--workers 2` each), the report names both nodes, and an unknown node is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.loadtest_servers import Timing, grpc_server_in_thread
from tests.test_loadtest_cli import run_cli


def test_the_cli_loads_from_two_nodes(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agents = [local_agents("node-a"), local_agents("node-b")]
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target for a in agents])
    with grpc_server_in_thread(Timing(first_s=0.002, gap_s=0.001, tokens=3)) as address:
        base = ["loadtest", "--target", address, "--cluster", str(cluster), "--no-save"]
        code, out, err = run_cli(
            [*base, "--rate", "40", "--duration", "2s", "--max-tokens", "3",
             "--from-nodes", "node-a,node-b", "--workers", "2", "--json", "--quiet"],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        report = json.loads(out)
        nodes = {n["node"]: n for n in report["nodes"]}
        assert set(nodes) == {"node-a", "node-b"}
        assert all(n["workers"] == 2 for n in nodes.values())
        assert sum(n["ok"] for n in nodes.values()) == report["ok"] > 0
        code, out, err = run_cli([*base, "--rate", "5", "--from-nodes", "node-z"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("gantry: ") and err.count("\n") == 1 and "node-z" in err, err
