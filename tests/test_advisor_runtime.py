"""The advisor on the runtime failures the agents diagnose (a full disk, a dead DataLoader
worker, a failed rendezvous, a wrong socket interface): one finding each, with its fix, while
the job runs and once it has ended."""

from __future__ import annotations

import dataclasses

import pytest

from console.model.advisor import evaluate
from tests.test_advisor import given, only
from tests.test_advisor_events import NOW, alert


@pytest.mark.parametrize(
    ("name", "cause", "fix"),
    [
        ("disk_full", "disk full (No space left on device) writing /ckpt/x", "checkpoint_dir"),
        ("dataloader_worker", "DataLoader worker (pid 7) is killed by signal", "num_workers"),
        ("rendezvous", "port 29555 (MASTER_PORT) is already in use", "MASTER_PORT"),
        ("socket_ifname", "GLOO_SOCKET_IFNAME names 'eth99'", "ip -br addr"),
    ],
)
def test_each_runtime_failure_is_one_finding_with_its_fix(name: str, cause: str, fix: str) -> None:
    notes = [
        alert(name, 1, time=NOW - 20, cause=cause, severity="critical"),
        alert(name, 0, time=NOW - 10, cause=cause, severity="critical"),
    ]
    for running in (True, False):
        inp = dataclasses.replace(given(now=NOW), notes=notes, running=running)
        finding = only(evaluate(inp), name)
        assert finding.severity == "critical"
        assert finding.evidence == f"rank 1 (node-a) 20 s ago: {cause}; also rank 0"
        assert finding.remedy is not None and fix in finding.remedy.details


def test_other_alerts_are_not_runtime_failures() -> None:
    inp = dataclasses.replace(given(now=NOW), notes=[alert("gloo_reset", 0, cause="reset")])
    assert not [f for f in evaluate(inp) if f.rule in ("disk_full", "rendezvous")]


def test_a_slow_join_is_a_warning_while_the_job_runs() -> None:
    note = alert("rendezvous", 0, cause="joining the process group for 300 s", severity="warning")
    running = dataclasses.replace(given(now=NOW), notes=[note], running=True)
    assert only(evaluate(running), "rendezvous").severity == "warning"
