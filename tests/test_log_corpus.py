"""The corpus of real excerpts (tests/fixtures/logs/, each one's source in SOURCES.md)
replayed line by line through what the agent runs on a rank's output: the failure
scanner, NCCL's parser, the script-output reader (per-step figures) and the comms-logger
table reader. What each must find is in expected.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2
from google.protobuf.json_format import MessageToDict

from agent.jobs.metrics_records import merge_metrics
from agent.jobs.node.comms_table import CommsPerStep, CommsTables, Totals
from agent.jobs.node.log_scan import LogScanner
from agent.jobs.node.nccl import NcclParser
from agent.jobs.node.script_logs import ScriptLogParser

CRITICAL_NOT_TRACEBACK = frozenset(
    {"gloo_reset", "cuda_oom", "nccl_cuda_oom", "nccl_system_error", "nccl_remote_exited"}
)
LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
EXPECTED: dict[str, dict[str, Any]] = json.loads((LOGS / "expected.json").read_text())


def replay(name: str) -> tuple[LogScanner, NcclParser, list[str]]:
    scanner, nccl = LogScanner(), NcclParser(env={}, ib_present=False)
    found: list[str] = []
    for i, line in enumerate((LOGS / name).read_text(errors="replace").splitlines()):
        found += [d.alert for d in scanner.feed("stderr", line, i * 0.01)]
        nccl.feed(line)
    found += [d.alert for d in scanner.flush()]
    return scanner, nccl, found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_excerpt_gives_its_findings(name: str) -> None:
    want = EXPECTED[name]
    scanner, nccl, announced = replay(name)
    found = set(scanner.found)  # announced, and the quiet ones (NCCL WARN lines)
    assert set(announced) <= found
    required = set(want["alerts"])
    if found & CRITICAL_NOT_TRACEBACK:
        # A traceback whose exception line is itself a signature (gloo, NCCL, OOM) is told
        # as that signature.
        required.discard("traceback")
    assert required <= found, f"{name}: missing {required - found}"
    allowed = set(want["alerts"]) | set(want.get("may", ()))
    assert found <= allowed | {"nccl_warn", "traceback"}, f"{name}: also {found - allowed}"
    cause = scanner.cause()
    for text in want.get("cause_contains", ()):
        assert cause is not None and text in cause.cause, f"{name}: {cause}"
    for key, value in want.get("details", {}).items():
        assert any(d.fields.get(key) == value for d in scanner.found.values()), (
            f"{name}: no finding with {key}={value!r}: {[d.fields for d in scanner.found.values()]}"
        )
    xids = {int(d.fields["xid"]) for d in scanner.found.values() if "xid" in d.fields}
    if want.get("xid"):
        assert xids, name
        assert xids <= set(want["xid"])
    pcis = {d.fields["pci"].lower() for d in scanner.found.values() if d.fields.get("pci")}
    if want.get("pci"):  # an Xid's "0000:01:00" and the same GPU's "0000:01:00.0" are one
        printed = [p.lower() for p in want["pci"]]
        # An Xid line has its address; a driver message the kernel split over lines may not
        # (the node's kernel-log reader joins those: tests/test_kernel_log.py).
        assert pcis or not want.get("xid"), name
        assert all(any(p.startswith(w) or w.startswith(p) for w in printed) for p in pcis), pcis
    expected_nccl = want.get("nccl", {})
    state = nccl.state
    if "version" in expected_nccl:
        # NCCL's own version line, or the version an NCCL error names.
        versions = {state.version} | {d.fields.get("nccl_version") for d in scanner.found.values()}
        assert any(v and v.startswith(expected_nccl["version"]) for v in versions), name
    if "network" in expected_nccl:
        assert state.fabric == expected_nccl["network"], (name, state.networks, state.interfaces)
    for kind in expected_nccl.get("transports", ()):
        assert any(k.startswith(kind) for k in state.transports), (name, state.transports)
    if "gdr" in expected_nccl:
        assert state.gdr == expected_nccl["gdr"], name


def test_the_corpus_is_large_and_every_failure_class_is_in_it() -> None:
    assert len(EXPECTED) >= 30
    classes = {alert for want in EXPECTED.values() for alert in want["alerts"]}
    assert {
        "nccl_watchdog_timeout",
        "cuda_oom",
        "nccl_cuda_oom",
        "host_oom",
        "loss_scale_storm",
        "nan_loss",
        "gloo_reset",
        "traceback",
        "xid",
        "nccl_system_error",
        "nccl_remote_exited",
    } <= classes


def _close(got: object, want: object) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(_close(got.get(k), v) for k, v in want.items())
    if isinstance(want, bool) or not isinstance(want, int | float):
        return got == want
    return isinstance(got, int | float) and got == pytest.approx(want, rel=1e-6, abs=1e-12)


def _step_records(name: str) -> list[dict[str, Any]]:
    """Each step's figures once all its METRICS records are merged, as the rank's reader
    keeps them (bars on stderr, the rest on stdout): a later line that spoils a figure
    shows."""
    parser, now, latest = ScriptLogParser(), 0.0, None
    records = []
    for line in (LOGS / name).read_text(errors="replace").splitlines():
        now += 0.05
        records += parser.feed("stderr" if "%|" in line else "stdout", line, now)
    records += parser.flush(now + 10.0)
    by_step: dict[int, job_pb2.RankMetrics] = {}
    for record in records:
        if record.metrics is not None:
            latest = merge_metrics(latest, record.metrics)
            by_step[latest.step] = latest
    merged = [MessageToDict(m, preserving_proto_field_name=True) for m in by_step.values()]
    for figures in merged:  # int64 fields come as strings from MessageToDict
        for key, value in figures.items():
            if isinstance(value, str) and value.isdigit():
                figures[key] = int(value)
        figures.setdefault("step", 0)
    return merged


def _comms_tables(name: str) -> list[Totals]:
    tables, found = CommsTables(), []
    for i, line in enumerate((LOGS / name).read_text(errors="replace").splitlines()):
        found += [totals for _, totals in tables.feed("stdout", line, i * 0.01, None)[1]]
    return found + [totals for _, _, totals in tables.flush(1e9)]


TRAINER_OUTPUT = sorted(
    n for n, want in EXPECTED.items() if "metrics" in want and "comms" not in want
)
COMMS_TABLES = sorted(n for n, want in EXPECTED.items() if "comms" in want)


@pytest.mark.parametrize("name", TRAINER_OUTPUT)
def test_trainer_output_gives_its_steps_figures(name: str) -> None:
    merged = _step_records(name)
    for want in EXPECTED[name]["metrics"]:
        assert any(_close(got, want) for got in merged), f"{name}: no step with {want}: {merged}"


@pytest.mark.parametrize("name", COMMS_TABLES)
def test_comms_logger_tables_give_time_per_collective(name: str) -> None:
    """Each table's rows summed per op; read as the totals of one step, they are the
    collective time per step that the entry names."""
    (totals,) = _comms_tables(name)
    for row in EXPECTED[name]["comms"]:
        calls, total_ms = totals[row["op"]]
        assert calls >= row["count"] and total_ms >= row["total_ms"], (name, row, totals)
    figures = CommsPerStep().metrics(1, totals)
    assert figures is not None
    got = {"collective_time_by_op_s": dict(figures.collective_time_by_op_s)}
    for want in EXPECTED[name]["metrics"]:
        assert _close(got, want), (name, got, want)


def test_the_figures_tests_cover_trainer_output_and_comms_tables() -> None:
    assert len(TRAINER_OUTPUT) >= 8 and len(COMMS_TABLES) >= 2
