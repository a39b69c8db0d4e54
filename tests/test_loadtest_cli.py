"""`gantry loadtest` and `gantry loadtest compare`: one-line errors with exit 2, reports on
stdout and on disk, and Ctrl-C (SIGINT to the process group) with workers: exit 130 and a
partial report still written."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from gantry.v1 import inference_service_pb2 as pb

from console.cli import main
from console.loadtest.config import LoadTestConfig
from console.loadtest.resolve import resolve
from tests.deepspeed_env import ROOT
from tests.loadtest_servers import Timing, grpc_server_in_thread
from tests.test_loadtest_live import closed_port

COMPLETE = "gantry.v1.InferenceService/Complete"


def run_cli(
    args: list[str], capsys: pytest.CaptureFixture[str], cwd: Path | None = None
) -> tuple[int, str, str]:
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as info:
            main(args)
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


T = ["loadtest", "--target", "127.0.0.1:5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*T, "--rate", "fast"], "--rate 'fast': not a rate in requests per second"),
        ([*T, "--rate", "-3"], "--rate '-3': a rate must be a positive number"),
        ([*T, "--rate", "5", "--duration", "10x"], "--duration '10x': not a duration"),
        ([*T, "--rate", "5", "--warmup", "soon"], "--warmup 'soon': not a duration"),
        ([*T, "--schedule", "100:30s,ramp:400"], "--schedule '100:30s,ramp:400': step 2"),
        ([*T, "--schedule", "100:30s,fast:1m"], "step 2 'fast:1m': 'fast' is not a rate"),
        ([*T, "--concurrency", "two"], "--concurrency 'two': not a whole number"),
        ([*T, "--rate", "5", "--workers", "0"], "--workers must be 1 to 64"),
        ([*T, "--rate", "5", "--requests", "1.5"], "--requests '1.5': not a whole number"),
        (T, "give the load: --rate R (open loop), --concurrency N"),
        ([*T, "--rate", "5", "--concurrency", "2"], "give one of --rate, --concurrency"),
        ([*T, "--rate", "5", "--arrival", "bursty"], "--arrival 'bursty': expected constant"),
        (["loadtest", "--rate", "5"], "give the endpoint: --target HOST:PORT"),
        (["loadtest", "--target", "nowhere", "--rate", "5"], "--target 'nowhere': expected"),
        (["loadtest", "compare", "/nonexistent/a.json", "b.json"], "/nonexistent/a.json: No such"),
        (
            [*T, "--rate", "5", "--method", "a.B/C", "--ignore-eos"],
            "--ignore-eos is for the Gantry endpoint or an HTTP completions URL",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("gantry: ") and err.count("\n") == 1, err
    assert message in err


def test_an_unreachable_target_fails_before_the_run_without_a_cluster(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # No cluster file anywhere: loadtest does not need one.
    args = ["loadtest", "--target", f"127.0.0.1:{closed_port()}", "--rate", "5"]
    code, out, err = run_cli(args, capsys, cwd=tmp_path)
    assert code == 2 and out == ""
    assert err.startswith("gantry: cannot reach 127.0.0.1:") and err.count("\n") == 1
    assert not (tmp_path / ".gantry").exists()


def test_json_report_saved_then_compared(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with grpc_server_in_thread(Timing(delay_s=0.005)) as address:
        base = ["loadtest", "--target", address, "--method", COMPLETE, "--data", "{}"]
        code, out, err = run_cli(
            [*base, "--concurrency", "2", "--requests", "20", "--json", "--quiet"],
            capsys,
            cwd=tmp_path,
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["ok"] == 20 and report["mode"] == "closed"
        assert report["notes"][0].startswith("closed loop hides stalls (coordinated omission)")
        saved = sorted((tmp_path / ".gantry" / "loadtests").glob("*.json"))
        assert len(saved) == 1 and json.loads(saved[0].read_text())["ok"] == 20
        assert f"report: {Path('.gantry/loadtests') / saved[0].name}" in err
        out_file = tmp_path / "b.json"
        code, out, err = run_cli(
            [*base, "--rate", "40", "--requests", "20", "--out", str(out_file), "--quiet"],
            capsys,
        )
        assert code == 0, err
        assert "achieved" in out and "latency" in out  # the table
        assert json.loads(out_file.read_text())["sent"] == 20
    code, out, err = run_cli(["loadtest", "compare", str(saved[0]), str(out_file)], capsys)
    assert code == 0, err
    assert out.startswith(f"A: {saved[0]}\nB: {out_file}")
    assert "latency p99 ms" in out and "achieved req/s" in out
    # Closed loop against open loop: said before the figures.
    warning = "warning: not comparable: A is closed loop and B is open loop: closed loop hides"
    assert out.index(warning) < out.index("latency p99 ms")
    code, out, _ = run_cli(["loadtest", "compare", str(out_file), str(out_file), "--json"], capsys)
    rows = {r["metric"]: r for r in json.loads(out)["rows"]}
    assert rows["latency p50 ms"]["verdict"] == "same" and rows["latency p50 ms"]["diff"] == 0
    assert json.loads(out)["warnings"] == []
    code, out, _ = run_cli(["loadtest", "compare", str(saved[0]), str(out_file), "--json"], capsys)
    assert json.loads(out)["warnings"][0].startswith("A is closed loop and B is open loop")


def test_short_completions_warn_live_and_in_the_table_and_ignore_eos_is_sent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One-token answers to max_tokens 8: a warning on stderr as soon as it shows, and a
    note in the table; --ignore-eos goes out in every request."""
    with grpc_server_in_thread(Timing(tokens=1)) as address:
        base = ["loadtest", "--target", address, "--max-tokens", "8", "--no-save"]
        code, out, err = run_cli([*base, "--concurrency", "2", "--requests", "40"], capsys)
        assert code == 0, err
        assert "gantry: warning: completions are short: median 1 token, max_tokens 8" in err
        assert "gantry: warning: closed loop hides stalls" in err
        assert err.count("completions are short") == 1  # once, not at every progress line
        assert "note       completions are short: median 1 token, max_tokens 8" in out
        assert "note       closed loop hides stalls" in out
        code, out, err = run_cli(
            [*base, "--rate", "50", "--requests", "10", "--ignore-eos", "--json", "--quiet"], capsys
        )
        assert code == 0, err
        report = json.loads(out)
        assert report["ignore_eos"] is True and report["max_tokens"] == 8
        assert any("--ignore-eos is set, yet they end early" in n for n in report["notes"])
        spec = asyncio.run(
            resolve(LoadTestConfig(address, concurrency=1, max_tokens=8, ignore_eos=True))
        )
    for body in spec.bodies:
        params = pb.GenerateRequest.FromString(body).params
        assert params.ignore_eos and params.max_tokens == 8


def test_ctrl_c_stops_the_workers_and_still_writes_the_partial_report(tmp_path: Path) -> None:
    out_file = tmp_path / "partial.json"
    with grpc_server_in_thread(Timing(delay_s=0.005)) as address:
        argv = [sys.executable, "-m", "console", "loadtest", "--target", address]
        argv += ["--method", COMPLETE, "--rate", "40", "--duration", "60s", "--workers", "2"]
        argv += ["--out", str(out_file)]
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a terminal gives it
        )
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 60
            line = ""
            while " sent " not in line or " sent 0 " in line:
                line = proc.stderr.readline()
                assert line or proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "no progress line"
            workers = psutil.Process(proc.pid).children(recursive=True)
            assert len(workers) == 2
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    report = json.loads(out_file.read_text())
    assert report["partial"] is True and report["sent"] > 0 and report["workers"] == 2
    assert report["duration_s"] < 30
    assert "achieved" in out  # the table is printed too
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def test_data_is_read_from_a_file_or_stdin_when_it_starts_with_an_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Triton ModelInfer request with one 224x224 image is megabytes of JSON: past a command
    # line's limit, so --data @FILE (and @- for standard input), as curl and grpcurl take it.
    import io

    from console.verbs.loadtest import _data

    request = tmp_path / "infer.json"
    request.write_text('{"model_name": "resnet", "inputs": []}')
    assert _data(f"@{request}") == request.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO('{"name": "x"}'))
    assert _data("@-") == '{"name": "x"}'
    assert _data('{"a": 1}') == '{"a": 1}'
    code, _, err = run_cli([*T, "--rate", "5", "--data", f"@{tmp_path / 'nope.json'}"], capsys)
    assert code == 2 and err.strip().endswith(
        f"--data @{tmp_path / 'nope.json'}: No such file or directory"
    )
