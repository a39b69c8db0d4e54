"""`gantry loadtest --sweep` against an endpoint of known capacity on 127.0.0.1, and the
CLI's --csv / --html / `compare --html` handed to console.loadtest.report_files."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import console.loadtest
from console.loadtest.report import Report
from console.loadtest.sweep import SweepReport
from console.loadtest.sweep_run import load_sweep
from tests.loadtest_servers import Timing, grpc_server_in_thread
from tests.loadtest_sweep_server import slots_server_in_thread
from tests.test_loadtest_cli import COMPLETE, run_cli

SLOTS, SLOT_S = 6, 0.06  # capacity 100 requests/s
# A step of STEP at a rate r past the capacity queues up to (r - 100) * 0.5 requests, each
# 10 ms more wait: the 150 ms SLO, less the 60 ms a request takes, fails from about
# 90 ms / 0.5 s = 18 % past the capacity (within the bounds asserted below), and a rate
# under it has 90 ms to spare for a busy machine's stalls.
STEP = "500ms"


def test_sweep_finds_the_capacity_of_a_known_endpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with slots_server_in_thread(SLOTS, SLOT_S) as address:
        args = ["loadtest", "--target", address, "--method", COMPLETE, "--data", "{}"]
        args += ["--sweep", "--slo-latency-ms", "150", "--duration", STEP, "--json"]
        code, out, err = run_cli(args, capsys, cwd=tmp_path)
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"max_rate_within_slo", "ceiling_rps", "slo", "steps", "reports"}
    capacity = SLOTS / SLOT_S
    assert 0.8 * capacity <= data["ceiling_rps"] <= 1.05 * capacity
    found = data["max_rate_within_slo"]
    assert found is not None and 0.6 * capacity <= found <= 1.25 * capacity, data["steps"]
    assert data["slo"] == {"ttft_ms": None, "latency_ms": 150.0, "goodput_pct": 99.0}
    rates = [s["rate_rps"] for s in data["steps"]]
    assert rates == sorted(rates) and len(rates) == len(data["reports"]) >= 2
    assert any(not s["ok"] for s in data["steps"]) and any(s["ok"] for s in data["steps"])
    assert all(r["mode"] == "open" for r in data["reports"])
    # Each step's line on stderr as it finished; the sweep saved apart from single runs.
    assert "sweep: closed-loop probe, 32 in flight" in err
    assert err.count(" pass") + err.count(" fail") >= len(rates)
    saved = list((tmp_path / ".gantry" / "loadtests" / "sweeps").glob("*-sweep.json"))
    assert len(saved) == 1 and f"report: {Path('.gantry/loadtests/sweeps') / saved[0].name}" in err
    assert load_sweep(saved[0]).to_json() == data
    assert list((tmp_path / ".gantry" / "loadtests").glob("*.json")) == []


def test_sweep_without_an_slo_or_with_a_rate_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(["loadtest", "--target", "127.0.0.1:5", "--sweep"], capsys)
    assert code == 2 and out == "" and "--sweep needs an SLO" in err
    args = ["loadtest", "--target", "127.0.0.1:5", "--sweep", "--slo-ttft-ms", "5"]
    code, out, err = run_cli([*args, "--rate", "4"], capsys)
    assert code == 2 and "--sweep chooses the rates itself: drop --rate" in err


# --- --csv, --html and compare --html, through report_files --------------------------


@pytest.fixture
def report_files(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """A stand-in for console.loadtest.report_files (written by another part of the
    issue): records each call and writes a marker file."""
    calls: list[tuple[Any, ...]] = []
    fake = types.ModuleType("console.loadtest.report_files")

    def write_csv(report: Report, path: Path) -> None:
        calls.append(("csv", report, path))
        path.write_text("csv")

    def write_html(report: Report, path: Path, sweep: dict[str, Any] | None = None) -> None:
        calls.append(("html", report, path, sweep))
        path.write_text("html")

    def write_compare_html(a: Report, b: Report, label_a: str, label_b: str, path: Path) -> None:
        calls.append(("compare", a, b, label_a, label_b, path))
        path.write_text("compare")

    fake.write_csv = write_csv  # type: ignore[attr-defined]
    fake.write_html = write_html  # type: ignore[attr-defined]
    fake.write_compare_html = write_compare_html  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "console.loadtest.report_files", fake)
    monkeypatch.setattr(console.loadtest, "report_files", fake, raising=False)
    return calls


def test_csv_and_html_of_a_run_and_of_a_comparison(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, report_files: list[tuple[Any, ...]]
) -> None:
    out_json, csv, html = tmp_path / "a.json", tmp_path / "out" / "a.csv", tmp_path / "a.html"
    with grpc_server_in_thread(Timing(delay_s=0.002)) as address:
        args = ["loadtest", "--target", address, "--method", COMPLETE, "--data", "{}"]
        args += ["--rate", "40", "--requests", "10", "--quiet", "--out", str(out_json)]
        code, _, err = run_cli([*args, "--csv", str(csv), "--html", str(html)], capsys)
    assert code == 0, err
    assert [c[0] for c in report_files] == ["csv", "html"]
    assert report_files[0][1].sent == 10 and report_files[0][2] == csv
    assert report_files[1][2:] == (html, None)  # no sweep
    assert f"report: {csv}\n" in err and f"report: {html}\n" in err and csv.is_file()

    report_files.clear()
    cmp_html = tmp_path / "cmp.html"
    args = ["loadtest", "compare", str(out_json), str(out_json), "--html", str(cmp_html)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    ((kind, a, b, label_a, label_b, path),) = report_files
    assert kind == "compare" and a.sent == b.sent == 10 and path == cmp_html
    assert (label_a, label_b) == (str(out_json), str(out_json))
    assert f"report: {cmp_html}" in err and "achieved req/s" in out

    unwritable = tmp_path / "file-not-dir"
    unwritable.write_text("")
    report_files.clear()
    args = ["loadtest", "compare", str(out_json), str(out_json), "--html"]
    code, out, err = run_cli([*args, str(unwritable / "x.html")], capsys)
    assert code == 2 and err.startswith("gantry: cannot write") and err.count("\n") == 1


def test_sweep_html_gets_the_curve_and_the_run_at_the_rate_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, report_files: list[tuple[Any, ...]]
) -> None:
    csv, html, out_json = tmp_path / "s.csv", tmp_path / "s.html", tmp_path / "s.json"
    with slots_server_in_thread(SLOTS, SLOT_S) as address:
        args = ["loadtest", "--target", address, "--method", COMPLETE, "--data", "{}"]
        # Short steps: no capacity is asserted here. Twice the capacity still fails (200
        # ms of queue in 200 ms), so the run at the rate found is not the highest rate's.
        args += ["--sweep", "--slo-latency-ms", "150", "--duration", "200ms", "--quiet"]
        args += ["--csv", str(csv), "--html", str(html), "--out", str(out_json)]
        code, out, err = run_cli(args, capsys)
    assert code == 0, err
    sweep = SweepReport.from_json(json.loads(out_json.read_text()))
    assert out.splitlines()[-1].startswith("max rate within SLO  ")
    (_, csv_report, csv_path), (_, html_report, html_path, curve) = report_files
    assert (csv_path, html_path) == (csv, html)
    assert curve == sweep.to_json()
    assert html_report.target_rps == pytest.approx(sweep.max_rate_within_slo, abs=1e-3)
    assert csv_report.to_json() == html_report.to_json()
