"""The corpus of real log excerpts (tests/fixtures/logs/) is complete and self-consistent.

Checks the files themselves, not the scanner: every excerpt is listed in SOURCES.md with its
public https source and has an entry in expected.json that uses only the diagnosis contract's
alert names, and every literal value an entry names is in the excerpt.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2

from agent.jobs.node.log_signatures import ALERTS

LOGS_DIR = Path(__file__).parent / "fixtures" / "logs"
SOURCES_MD = LOGS_DIR / "SOURCES.md"
EXPECTED_JSON = LOGS_DIR / "expected.json"
MIN_FILES = 30

# details["alert"] values a diagnosis may carry (the scanner's catalogue says them once).
CONTRACT_ALERTS = frozenset(ALERTS)
# Classes the corpus must show with at least one real excerpt each (no real flight-recorder
# dump or IB-fallback-when-IB-was-asked log was found in public threads).
REQUIRED_ALERTS = CONTRACT_ALERTS - {"nccl_flight_recorder", "ib_fallback"}
NETWORKS = frozenset({"IB", "RoCE", "Socket"})
TRANSPORTS = frozenset(
    {"NET/IB", "NET/Socket", "P2P/IPC", "P2P/CUMEM", "P2P/direct pointer", "SHM", "NVLS", "COLLNET"}
)
ENTRY_KEYS = frozenset(
    {"alerts", "may", "cause_contains", "details", "xid", "pci", "nccl", "metrics", "comms"}
)
METRIC_FIELDS = frozenset(job_pb2.RankMetrics.DESCRIPTOR.fields_by_name)
_ROW = re.compile(r"^\| `(?P<file>[^`]+\.log)` \| (?P<source>[^|]+) \|")


def _log_files() -> list[Path]:
    return sorted(LOGS_DIR.glob("*.log"))


def _expected() -> dict[str, dict[str, Any]]:
    data = json.loads(EXPECTED_JSON.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _source_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in SOURCES_MD.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match is not None:
            assert match["file"] not in rows, f"two SOURCES.md rows for {match['file']}"
            rows[match["file"]] = match["source"].strip()
    return rows


def _entries() -> list[tuple[str, dict[str, Any]]]:
    return sorted(_expected().items())


def test_corpus_has_enough_files() -> None:
    assert len(_log_files()) >= MIN_FILES


@pytest.mark.parametrize("path", _log_files(), ids=lambda p: p.name)
def test_excerpt_is_nonempty_utf8_text(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.strip(), f"{path.name} is empty"
    assert text.endswith("\n")
    assert "\x00" not in text


def test_every_excerpt_has_a_source_row_and_an_expected_entry() -> None:
    names = {path.name for path in _log_files()}
    rows = _source_rows()
    expected = _expected()
    assert names - rows.keys() == set(), "excerpts without a SOURCES.md row"
    assert rows.keys() - names == set(), "SOURCES.md rows without an excerpt"
    assert names - expected.keys() == set(), "excerpts without an expected.json entry"
    assert expected.keys() - names == set(), "expected.json entries without an excerpt"


@pytest.mark.parametrize(("name", "source"), sorted(_source_rows().items()))
def test_source_is_a_public_https_address(name: str, source: str) -> None:
    assert re.match(r"^https://[\w.-]+\.\w+/\S+", source), f"{name}: {source!r}"


@pytest.mark.parametrize(("name", "entry"), _entries())
def test_entry_uses_the_contract(name: str, entry: dict[str, Any]) -> None:
    assert set(entry) <= ENTRY_KEYS, f"{name}: unknown keys {set(entry) - ENTRY_KEYS}"
    assert isinstance(entry["alerts"], list)
    assert isinstance(entry["cause_contains"], list)
    named = set(entry["alerts"]) | set(entry.get("may", []))
    assert named <= CONTRACT_ALERTS, f"{name}: {named - CONTRACT_ALERTS}"
    assert not set(entry["alerts"]) & set(entry.get("may", [])), name
    assert all(isinstance(part, str) and part for part in entry["cause_contains"])
    if entry["cause_contains"]:
        assert entry["alerts"], f"{name}: a cause without an alert"


@pytest.mark.parametrize(("name", "entry"), _entries())
def test_literal_values_are_in_the_excerpt(name: str, entry: dict[str, Any]) -> None:
    text = (LOGS_DIR / name).read_text(encoding="utf-8")
    for key, value in entry.get("details", {}).items():
        assert isinstance(value, str) and value in text, f"{name}: details[{key}]={value!r}"
    for address in entry.get("pci", []):
        assert address in text, f"{name}: pci {address}"
    for code in entry.get("xid", []):
        assert f"): {code}," in text, f"{name}: xid {code}"
    if entry.get("xid"):
        assert "xid" in entry["alerts"], name


@pytest.mark.parametrize(
    ("name", "nccl"), [(name, entry["nccl"]) for name, entry in _entries() if "nccl" in entry]
)
def test_transport_facts_are_derivable(name: str, nccl: dict[str, Any]) -> None:
    text = (LOGS_DIR / name).read_text(encoding="utf-8")
    assert set(nccl) <= {"network", "transports", "version", "gdr"}, name
    if "network" in nccl:
        assert nccl["network"] in NETWORKS, name
    assert set(nccl.get("transports", [])) <= TRANSPORTS, name
    if "version" in nccl:
        assert f"NCCL version {nccl['version']}" in text, name
    if nccl.get("gdr"):
        assert "GDRDMA" in text, name


@pytest.mark.parametrize(
    ("name", "metrics"),
    [(name, entry["metrics"]) for name, entry in _entries() if "metrics" in entry],
)
def test_metrics_name_rank_metrics_fields(name: str, metrics: list[dict[str, Any]]) -> None:
    assert metrics, name
    for sample in metrics:
        assert set(sample) <= METRIC_FIELDS, f"{name}: {set(sample) - METRIC_FIELDS}"
        assert isinstance(sample.get("step", 0), int), name


def test_every_required_class_has_an_excerpt() -> None:
    covered = {alert for _, entry in _entries() for alert in entry["alerts"]}
    assert REQUIRED_ALERTS - covered == set()


def test_clean_trainer_output_is_in_the_corpus() -> None:
    clean = [name for name, entry in _entries() if not entry["alerts"] and "metrics" in entry]
    assert len(clean) >= 5, clean
