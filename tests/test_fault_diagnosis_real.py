"""Faults an operator meets, as real training processes print them: a NaN loss in a plain
loop's line, a DataLoader worker killed, a disk that fills while saving, a rendezvous port in
use, a GLOO_SOCKET_IFNAME naming no interface, a bare MemoryError, and the start-up errors
(a missing module, a bad flag, a missing data file) whose one line must be the cause.

The files under tests/fixtures/logs/captured/ were captured from real runs (CAPTURED.md gives
each command); the public excerpts of the same faults are in the corpus
(tests/test_log_corpus.py). Each is replayed through what the agent runs: the live scanner
(``LogScanner``), and ``failure_cause`` as for a rank whose lines the scanner did not see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.node.failure_cause import failure_cause
from agent.jobs.node.log_scan import CAUSE_PRIORITY
from agent.jobs.node.log_signatures import ALERTS
from agent.jobs.node.runtime_signatures import RUNTIME_ALERTS
from tests.test_launcher_prefixes import scanned

CAPTURED = Path(__file__).resolve().parent / "fixtures" / "logs" / "captured"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CAPTURED / "expected.json").read_text())


def _one(line: str) -> tuple[str, str, dict[str, str]] | None:
    found = scanned([line]).cause()
    if found is None:
        found = next(iter(scanned([line]).found.values()), None)
    return None if found is None else (found.alert, found.cause, dict(found.fields))


def test_every_captured_file_has_an_entry_and_a_row() -> None:
    names = {p.name for p in CAPTURED.glob("*.log")}
    assert names == set(EXPECTED)
    listed = (CAPTURED / "CAPTURED.md").read_text()
    assert all(f"`{name}`" in listed for name in names)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_captured_run_gives_its_diagnosis(name: str) -> None:
    want = EXPECTED[name]
    lines = (CAPTURED / name).read_text().splitlines()
    scanner = scanned(lines)
    found = set(scanner.found)
    assert set(want["alerts"]) <= found, f"{name}: missing {set(want['alerts']) - found}"
    assert found <= set(want["alerts"]) | set(want.get("may", ())), f"{name}: also {found}"
    if set(want["alerts"]) <= set(CAUSE_PRIORITY):
        cause = failure_cause(lines)  # the same reading from the end of the file
        live = scanner.cause()
        told = [cause, live.cause if live is not None else None]
    else:  # a finding, not a failure (a NaN loss): the rank goes on, its alert says it
        told = [scanner.found[alert].cause for alert in want["alerts"]]
    for text in want["cause_contains"]:
        assert all(t is not None and text in t for t in told), f"{name}: {told}"
    for key, value in want.get("details", {}).items():
        assert any(d.fields.get(key) == value for d in scanner.found.values()), name


def test_a_bad_flag_to_argparse_is_its_one_line() -> None:
    lines = (CAPTURED / "argparse_unrecognized_arguments.log").read_text().splitlines()
    assert failure_cause(lines) == "unrecognized arguments: --bogus 1"


def test_new_alerts_are_in_the_catalogue_and_rank_before_a_traceback() -> None:
    for alert in RUNTIME_ALERTS:
        assert alert in ALERTS
        assert CAUSE_PRIORITY.index(alert) < CAUSE_PRIORITY.index("traceback")
    assert len(set(ALERTS)) == len(ALERTS)


# --- NaN loss --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "value", "step"),
    [
        ("iter 15: loss nan, time 10.00ms, mfu 0.00%", "nan", "15"),  # nanoGPT
        ("step 60: train loss nan, val loss nan", "nan", "60"),
        ("Epoch 0 step 7 loss: tensor(nan, grad_fn=<MseLossBackward0>)", "nan", "7"),
        (" iteration      100/    1000 | lm loss: inf | loss scale: 1.0 |", "inf", "100"),
        (
            "{'loss': 'nan', 'grad_norm': 'nan', 'learning_rate': '0.001', 'epoch': '0.5'}",
            "nan",
            "",
        ),
    ],
)
def test_a_nan_loss_is_read_with_its_step(line: str, value: str, step: str) -> None:
    found = scanned([line]).found["nan_loss"]
    assert found.fields["value"] == value
    assert found.fields.get("step", "") == step
    assert found.cause == f"loss is {value}" + (f" at step {step}" if step else "")


@pytest.mark.parametrize(
    "line",
    [
        "iter 15: loss 3.4115, time 12.46ms, mfu 0.00%",
        "logging loss information every 10 steps",
        "loss nanoseconds spent: 12",
        "train loss infinitely better than before",
    ],
)
def test_no_nan_loss_where_the_loss_is_a_number_or_a_word(line: str) -> None:
    assert "nan_loss" not in scanned([line]).found


# --- DataLoader workers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("RuntimeError: DataLoader worker (pid 42) is killed by signal: Killed. ", "oom-killer"),
        ("RuntimeError: DataLoader worker (pid 13176) is killed by signal: Bus error. ", "shm"),
        (
            "RuntimeError: DataLoader worker (pid 25902) is killed by signal: Segmentation fault. ",
            "num_workers=0",
        ),
        (
            "RuntimeError: DataLoader worker (pid 4242) exited unexpectedly with exit code 1. "
            "Details are lost due to multiprocessing. Rerunning with num_workers=0 may give "
            "better error trace.",
            "exit code 1",
        ),
        ("RuntimeError: DataLoader worker (pid(s) 17, 18) exited unexpectedly", "pid 17,18"),
        (
            "ERROR: Unexpected bus error encountered in worker. This might be caused by "
            "insufficient shared memory (shm).",
            "/dev/shm",
        ),
    ],
)
def test_a_dataloader_worker_death_names_its_fix(line: str, says: str) -> None:
    found = _one(line)
    assert found is not None and found[0] == "dataloader_worker"
    assert says in found[1]


def test_the_chained_exited_unexpectedly_does_not_hide_the_signal() -> None:
    scanner = scanned(
        [
            "RuntimeError: DataLoader worker (pid 1817) is killed by signal: Killed. ",
            "",
            "The above exception was the direct cause of the following exception:",
            "",
            "RuntimeError: DataLoader worker (pid(s) 1817) exited unexpectedly",
        ]
    )
    cause = scanner.cause()
    assert cause is not None and "killed by SIGKILL" in cause.cause


# --- disk ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (
            "OSError: [Errno 28] No space left on device: '/ckpt/step_100/optim.pt'",
            "/ckpt/step_100",
        ),
        ("OSError: [Errno 122] Disk quota exceeded", "raise the quota"),
        ("OSError: [Errno 27] File too large: '/out/model.bin'", "ulimit -f"),
        (
            "RuntimeError: [enforce fail at inline_container.cc:778] . PytorchStreamWriter failed "
            "writing file data.pkl: file write failed",
            "failed writing data.pkl",
        ),
        (
            "[rank0]: RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos "
            "704 vs 598",
            "unexpected pos 704",
        ),
    ],
)
def test_a_failed_write_says_disk(line: str, says: str) -> None:
    found = _one(line)
    assert found is not None and found[0] == "disk_full", found
    assert says in found[1]


# --- rendezvous and interfaces ---------------------------------------------------------------


def test_a_rendezvous_that_timed_out_counts_who_joined() -> None:
    found = _one(
        "torch.distributed.DistStoreError: Timed out after 1801 seconds waiting for clients. "
        "1/2 clients joined."
    )
    assert found is not None and found[0] == "rendezvous"
    assert "1 of 2 ranks joined" in found[1]


def test_the_benign_ipv6_warning_is_no_alert() -> None:
    # Printed on every connect to a host without an IPv6 address, also when it then works.
    line = (
        "[W1207 09:41:10.480686039 socket.cpp:764] [c10d] The IPv6 network addresses of "
        "(localhost, 33181) cannot be retrieved (gai error: -2 - Name or service not known)."
    )
    assert scanned([line]).found == {}


# --- host memory ------------------------------------------------------------------------------


def test_a_cpu_allocator_failure_does_not_blame_zero_alone() -> None:
    found = _one(
        "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
        "allocate memory: you tried to allocate 3000000000 bytes. Error code 12 (Cannot "
        "allocate memory)"
    )
    assert found is not None and found[0] == "zero_alloc"
    assert "tried 2.79 GiB" in found[1] and "memory limit" in found[1]


@pytest.mark.parametrize(
    "line", ["retrying after a MemoryError in the cache", "INFO: MemoryError handler installed"]
)
def test_memory_error_only_as_an_exception_line(line: str) -> None:
    assert "zero_alloc" not in scanned([line]).found
