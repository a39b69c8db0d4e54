"""The corpus of real excerpts (tests/fixtures/logs/, each one's source in SOURCES.md)
replayed line by line through what the agent runs on a rank's output: the failure
scanner and NCCL's parser. What each must find is in expected.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.jobs.node.log_scan import LogScanner
from agent.jobs.node.nccl import NcclParser

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
