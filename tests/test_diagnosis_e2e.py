"""Real excerpts (tests/fixtures/logs/, sources in SOURCES.md) replayed by ranks under a
real agent: the diagnoses reach the job's timeline while the ranks run, a failed rank's
reason is the diagnosed cause, `gantry job --json` shows them and the NCCL transport,
and the kernel log (a file the agent follows, as it follows /dev/kmsg) ties an oom kill
to the rank it killed and shows an XID on a node with no GPU."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli

ROOT = Path(__file__).resolve().parent.parent
REPLAY = ROOT / "tests" / "fixtures" / "replay_rank.py"
FILES = [
    "nccl_watchdog_pt2_llamafactory7396.log",
    "cuda_oom_pt2_zero3_step_llamafactory7532.log",
    "nccl_transport_ib_gdrdma_p2pipc_nccl687.log",
    "xid_79_fallen_off_bus_dmesg_T_akash209.log",
    "loss_scale_storm_hf_tqdm_chinesellama534.log",
]


def launch(tmp_path: Path, cluster: Path, name: str, ranks: int, args: list[str]) -> None:
    spec: dict[str, Any] = {
        "name": name,
        "nodes": [f"node-a slots={ranks}"],
        "command": ["python", str(REPLAY)],
        "args": args,
        "working_dir": str(tmp_path),
        "restart": {"max_restarts": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    code, _, err = cli(["launch", str(path), "--cluster", str(cluster)], _capsys())
    assert code == 0, err


_CAPSYS: list[pytest.CaptureFixture[str]] = []


def _capsys() -> pytest.CaptureFixture[str]:
    return _CAPSYS[-1]


def job(cluster: Path, name: str) -> dict[str, Any]:
    code, out, err = cli(["job", name, "--cluster", str(cluster), "--json"], _capsys())
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def wait_for(
    cluster: Path, name: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        report = job(cluster, name)
        if done(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name}: {json.dumps(report)[:3000]}")
        time.sleep(0.3)


def alerts(report: dict[str, Any]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for d in report["diagnoses"]:
        out.setdefault(d["rank"], set()).add(d["alert"])
    return out


@pytest.fixture
def agent(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    _CAPSYS.append(capsys)
    kernel_log = tmp_path / "kern.log"
    kernel_log.write_text("")
    node = local_agents("node-a", extra_args=["--kernel-log", str(kernel_log)])
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [node.target])
    return cluster, kernel_log


def test_real_excerpts_are_diagnosed_while_the_ranks_run(
    agent: tuple[Path, Path], tmp_path: Path
) -> None:
    cluster, _ = agent
    hold = tmp_path / "hold"
    hold.write_text("")
    launch(
        tmp_path, cluster, "replay", len(FILES), ["--files", ",".join(FILES), "--hold", str(hold)]
    )
    want = {
        0: {"nccl_watchdog_timeout"},
        1: {"cuda_oom"},
        3: {"xid"},
        4: {"loss_scale_storm"},
    }

    def told(r: dict[str, Any]) -> bool:
        # Each rank replays its excerpt at its own pace: rank 2's NCCL lines (the
        # transport) may land after the others' diagnoses.
        net = r.get("transport", {}).get("node-a", {})
        diagnosed = all(want[k] <= alerts(r).get(k, set()) for k in want)
        return diagnosed and bool(net.get("inter_node"))

    report = wait_for(cluster, "replay", told)
    assert report["job"]["state"] == "JOB_STATE_RUNNING"  # told while the ranks run
    watchdog = next(d for d in report["diagnoses"] if d["alert"] == "nccl_watchdog_timeout")
    assert watchdog["severity"] == "critical"
    assert "ALLREDUCE (SeqNum 1580)" in watchdog["cause"]
    assert "last completed 1579" in watchdog["cause"]
    # The transport NCCL reported, per node.
    net = report["transport"]["node-a"]
    assert net["network"] == "IB" and net["gpudirect_rdma"] is True
    assert "P2P/IPC" in net["intra_node"] and "NET/IB" in net["inter_node"]
    code, out, _ = cli(["job", "replay", "--cluster", str(cluster)], _capsys())
    assert code == 0 and "transport (NCCL):" in out and "IB+GDR" in out
    hold.unlink()
    wait_for(cluster, "replay", lambda r: r["job"]["state"] == "JOB_STATE_SUCCEEDED")


def test_a_failed_ranks_reason_is_its_diagnosis_not_its_exit_code(
    agent: tuple[Path, Path], tmp_path: Path
) -> None:
    cluster, _ = agent
    # The OOM is followed by 25 lines of other output before the rank exits 1.
    launch(
        tmp_path,
        cluster,
        "oom",
        1,
        [
            "--files",
            "cuda_oom_pt2_zero3_step_llamafactory7532.log",
            "--exit-codes",
            "1",
            "--noise",
            "25",
        ],
    )
    report = wait_for(cluster, "oom", lambda r: r["job"].get("state") == "JOB_STATE_FAILED")
    (rank,) = report["job"]["attempts"][0]["ranks"]
    assert rank["reason"].startswith("CUDA out of memory on GPU 1: tried 3.39 GiB")
    assert rank["reason"].endswith("(exit code 1)")
    failed = [d for d in report["diagnoses"] if d["alert"] == "cuda_oom"]
    assert failed and all(d["severity"] == "critical" for d in failed)


def test_the_kernel_log_ties_an_oom_kill_to_its_rank(
    agent: tuple[Path, Path], tmp_path: Path
) -> None:
    cluster, kernel_log = agent
    hold = tmp_path / "hold"
    hold.write_text("")
    launch(
        tmp_path,
        cluster,
        "hostoom",
        1,
        ["--files", "nccl_transport_socket_noib_nccl226.log", "--hold", str(hold)],
    )
    report = wait_for(
        cluster,
        "hostoom",
        lambda r: (
            bool(r["job"].get("attempts"))
            and r["job"]["attempts"][0]["ranks"][0].get("state") == "RANK_STATE_RUNNING"
        ),
    )
    pid = int(report["job"]["attempts"][0]["ranks"][0]["pid"])
    # The kernel's lines, in the format of tests/fixtures/logs/host_oom_dmesg_iso_ert7797.log,
    # for this rank's process; then an XID on a GPU this node does not have.
    with kernel_log.open("a") as log:
        log.write(
            f"[1234.567890] Out of memory: Killed process {pid} (python) total-vm:27163140kB, "
            "anon-rss:25016116kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:49400kB "
            "oom_score_adj:0\n"
        )
        log.write(
            "[1235.000000] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=python, GPU has fallen "
            "off the bus.\n"
        )
    report = wait_for(cluster, "hostoom", lambda r: "host_oom" in alerts(r).get(0, set()))
    oom = next(d for d in report["diagnoses"] if d["alert"] == "host_oom")
    assert f"killed pid {pid} (python)" in oom["cause"]
    os.kill(pid, signal.SIGKILL)  # what the oom-killer did
    report = wait_for(cluster, "hostoom", lambda r: r["job"].get("state") == "JOB_STATE_FAILED")
    reason = report["job"]["attempts"][0]["ranks"][0]["reason"]
    assert reason.startswith("host out of memory: the kernel's oom-killer killed pid")
    # A node with no GPU still shows the kernel's XID as its own event (with its next sample).
    deadline = time.monotonic() + 30
    while True:
        code, out, err = cli(["status", "--cluster", str(cluster), "--json"], _capsys())
        assert code == 0, err
        events = json.loads(out)["nodes"][0]["xid_events"]
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    (xid,) = events
    assert str(xid["xid"]) == "79" and xid["source"] == "kernel"
    assert xid["pciBusId"] == "0000:3b:00"
