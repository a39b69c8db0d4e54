"""`gantry status` against real agent processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from console.cli import main
from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_status_json_all_live(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = local_agents("node-a"), local_agents("node-b")
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target, b.target])
    code, out, _ = run_cli(["status", "--cluster", str(cluster), "--json"], capsys)
    report = json.loads(out)
    assert code == 0
    assert report["ok"] is True
    assert [n["name"] for n in report["nodes"]] == ["node-a", "node-b"]
    assert {n["state"] for n in report["nodes"]} == {"live"}
    assert report["nodes"][0]["info"]["nodeName"] == "node-a"
    assert float(report["nodes"][0]["latest"]["host"]["memTotalBytes"]) > 0


def test_status_table_and_exit_code_with_a_dead_agent(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = local_agents("node-a"), local_agents("node-b")
    b.stop()
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [a.target, b.target])
    code, out, _ = run_cli(["--cluster", str(cluster), "status"], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NODE", "ADDRESS", "STATE"]
    assert "live" in lines[1] and lines[1].startswith("node-a")
    assert "unreachable" in lines[2] and "agent unreachable" in lines[2]


def test_status_wrong_token_is_unauthorized(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = local_agents("node-a")
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token-at-all\n")
    code, out, _ = run_cli(
        ["status", "--agent", f"node-a={a.address}", "--token-file", str(bad), "--json"], capsys
    )
    node = json.loads(out)["nodes"][0]
    assert code == 1
    assert node["state"] == "unauthorized"
    assert "token refused" in node["error"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--cluster", "/nonexistent/c.yaml"], "cannot read cluster file"),
        (["status", "--agent", "a=h:1", "--cluster", "x.yaml"], "not both"),
        (["status", "--agent", "nohost"], "NAME=HOST:PORT"),
    ],
)
def test_bad_input_gets_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_no_cluster_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GANTRY_CLUSTER", raising=False)
    code, _, err = run_cli(["status"], capsys)
    assert code == 2
    assert "no cluster given" in err


def test_gantry_entry_point_is_installed(local_agents: StartAgent, tmp_path: Path) -> None:
    a = local_agents("node-a")
    gantry = Path(sys.executable).parent / "gantry"
    result = subprocess.run(
        [
            str(gantry),
            "status",
            "--agent",
            f"node-a={a.address}",
            "--token-file",
            str(a.target.token_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nodes"][0]["state"] == "live"


def test_agent_refuses_a_public_address(tmp_path: Path) -> None:
    agent = Path(sys.executable).parent / "gantry-agent"
    result = subprocess.run(
        [str(agent), "--listen", "0.0.0.0:0", "--node-name", "x", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr


def test_demo_check_starts_and_stops_two_agents(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "console.demo", "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "node-a" in result.stdout and "node-b" in result.stdout
    assert result.stdout.count("live") == 2
    cluster = (root / "cluster.yaml").read_text()
    assert "node-a" in cluster and "node-b" in cluster
    # The agents it started are gone.
    for name in ("node-a", "node-b"):
        pid = json.loads((root / name / "agent.json").read_text())["pid"]
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def test_init_up_down_and_ssh_are_verbs_of_gantry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The security verbs reach their modules through `gantry` itself; bad input is one
    line and exit 2 before anything is contacted."""
    monkeypatch.chdir(tmp_path)
    ca = tmp_path / "ca"
    code, out, err = run_cli(
        ["init", "--ca", str(ca), "--host", "node-a=127.0.0.1", "--json"], capsys
    )
    assert code == 0, err
    assert (ca / "ca.pem").is_file() and (ca / "cluster.yaml").is_file()
    json.loads(out)
    missing = tmp_path / "no-hostfile"
    for args, message in (
        (["up", str(missing)], "no-hostfile"),
        (["down", str(missing)], "run `gantry up HOSTFILE` first"),
        (["--ssh", str(missing), "status"], "no-hostfile"),
        (["--ssh", str(missing), "--cluster", "c.yaml", "status"], "either --ssh or --cluster"),
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert message in err and err.count("\n") == 1, (args, err)
