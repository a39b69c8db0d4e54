"""The CLI's habits (issue 16) against a real agent on 127.0.0.1: quiet exits into a closed
pipe, follows that end with the job, attempts that do not exist, what `stop` says, the
jobs table's reason and step, unreachable versus unauthorized, numbers in JSON, long lines
and escape codes in logs, and the client side of restart --include, --from and forget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import agent_service_pb2, inference_service_pb2, job_pb2, task_pb2, telemetry_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli
from tests.test_jobs_e2e import wait_job, write_job

ROOT = Path(__file__).resolve().parent.parent
LONG_LINE_BYTES = 2 * 1024 * 1024
# What the chatty rank prints: many lines, a line over 1 MiB, terminal escapes, then "done".
CHATTY = f"""
import sys
for i in range(3000):
    print(f"line {{i:05d}} " + "x" * 30)
print("L" * {LONG_LINE_BYTES})
print("\\x1b]0;pwned\\x07\\x1b[31mred\\x1b[0m bell\\x07 end")
print("done", flush=True)
"""


@pytest.fixture
def cluster(local_agents: StartAgent, tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    dump_cluster_file(path, [local_agents("node-a").target])
    return path


def one_node_job(tmp_path: Path, name: str, args: list[str], **extra: Any) -> Path:
    return write_job(tmp_path, name, args, nodes=["node-a slots=1"], **extra)


def chatty_job(tmp_path: Path, cluster: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    spec = one_node_job(tmp_path, "chatty", [], command=["python", str(script)])
    assert cli(["launch", str(spec), "--cluster", str(cluster)], capsys)[0] == 0
    wait_job(cluster, "chatty", {"JOB_STATE_SUCCEEDED"}, capsys)


def long_job(
    tmp_path: Path, cluster: Path, capsys: pytest.CaptureFixture[str], name: str = "long"
) -> None:
    spec = one_node_job(tmp_path, name, ["--steps", "100000", "--step-s", "0.1"])
    assert cli(["launch", str(spec), "--cluster", str(cluster)], capsys)[0] == 0
    wait_job(cluster, name, {"JOB_STATE_RUNNING"}, capsys)


def gantry(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "console.cli", *args],
        cwd=ROOT,
        text=True,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def into_closed_pipe(args: list[str]) -> tuple[int, str]:
    """Runs `gantry ARGS` with stdout a pipe whose reader is already gone (`| head -0`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = gantry(args, stdout=write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_printing_verbs_exit_quietly_when_the_reader_is_gone(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chatty_job(tmp_path, cluster, capsys)
    where = ["--cluster", str(cluster)]
    for args in (
        ["status"],
        ["jobs"],
        ["job", "chatty"],
        ["events", "chatty"],
        ["events", "chatty", "-f"],
        ["events", "chatty", "--json"],
        ["logs", "chatty", "--tail", "5000"],
        ["logs", "chatty", "-f"],
    ):
        code, err = into_closed_pipe([*args, *where])
        assert code in (0, 141), (args, code, err)
        assert "Traceback" not in err and "BrokenPipe" not in err, (args, err)
        assert "Exception ignored" not in err, (args, err)


def test_follow_ends_with_the_job_and_keeps_following_a_live_one(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chatty_job(tmp_path, cluster, capsys)
    where = ["--cluster", str(cluster)]
    done = gantry(["logs", "chatty", "-f", *where], stdout=subprocess.PIPE)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert out.splitlines()[-1] == "done"
    done = gantry(["events", "chatty", "-f", *where], stdout=subprocess.PIPE)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 0, err
    assert "succeeded" in out.splitlines()[-1]

    long_job(tmp_path, cluster, capsys)
    logs = gantry(["logs", "long", "-f", *where], stdout=subprocess.PIPE)
    events = gantry(["events", "long", "-f", *where], stdout=subprocess.PIPE)
    time.sleep(4)  # several of the followers' checks: the job is live, they go on
    assert logs.poll() is None and events.poll() is None
    assert cli(["stop", "long", *where], capsys)[0] == 0
    out, err = logs.communicate(timeout=60)
    assert logs.returncode == 0, err
    assert "step 1" in out.splitlines()
    out, err = events.communicate(timeout=60)
    assert events.returncode == 0, err
    assert "stopped" in out.splitlines()[-1]


def test_an_attempt_that_does_not_exist_is_an_error(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = one_node_job(tmp_path, "short", ["--steps", "2"])
    assert cli(["launch", str(spec), "--cluster", str(cluster)], capsys)[0] == 0
    wait_job(cluster, "short", {"JOB_STATE_SUCCEEDED"}, capsys)
    for attempt in ("9", "-1"):
        code, out, err = cli(
            ["logs", "short", "--attempt", attempt, "--cluster", str(cluster)], capsys
        )
        assert code == 2 and out == ""
        assert f"job short has no attempt {attempt} (its attempts: 1" in err
        assert err.count("\n") == 1
    code, out, _ = cli(["logs", "short", "--attempt", "1", "--cluster", str(cluster)], capsys)
    assert code == 0 and "step 2" in out.splitlines()


def test_stop_says_what_happened(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_job(tmp_path, cluster, capsys)
    where = ["--cluster", str(cluster)]
    code, out, err = cli(["stop", "long", *where], capsys)
    assert code == 0, err
    assert out == "stopped long (1 rank on 1 node)\n"
    code, out, _ = cli(["stop", "long", *where], capsys)
    assert code == 0 and out == "long was already stopped: nothing to stop\n"
    long_job(tmp_path, cluster, capsys, "long-2")
    code, out, _ = cli(["stop", "long-2", "--json", *where], capsys)
    assert code == 0 and json.loads(out)["job"]["state"] == "JOB_STATE_STOPPED"


def row_of(table: str, name: str) -> dict[str, str]:
    lines = table.splitlines()
    header = lines[0]
    starts = [header.index(col) for col in header.split()]
    for line in lines[1:]:
        if line.split()[0] == name:
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            return dict(zip(header.split(), cells, strict=True))
    raise AssertionError(f"no row {name} in\n{table}")


# Attempt 1 reports steps 1 to 5 and fails; attempt 2 starts and reports nothing.
SILENT_SECOND = """
import os, sys, time
from agent.rank.report import Reporter
if os.environ["GANTRY_ATTEMPT"] == "1":
    with Reporter() as reporter:
        reporter.start()
        for step in range(1, 6):
            reporter.metrics(step, loss=1.0 / step, step_time_s=0.01)
        time.sleep(0.5)
    print("failing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
print("attempt 2, loading", flush=True)
time.sleep(600)
"""


def test_jobs_table_step_is_the_last_known_and_reason_belongs_to_the_state(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "silent_second.py"
    script.write_text(SILENT_SECOND)
    restart = {"max_restarts": 1, "backoff_s": 0.2}
    spec = one_node_job(tmp_path, "flaky", [], command=["python", str(script)], restart=restart)
    where = ["--cluster", str(cluster)]
    assert cli(["launch", str(spec), *where], capsys)[0] == 0
    deadline = time.monotonic() + 60
    while True:  # attempt 2 running, its rank silent
        report = wait_job(cluster, "flaky", {"JOB_STATE_RUNNING"}, capsys)
        if len(report["job"]["attempts"]) == 2:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.3)
    _, out, _ = cli(["jobs", *where], capsys)
    row = row_of(out, "flaky")
    assert (row["STATE"], row["STEP"], row["REASON"]) == ("running", "5", "")
    assert cli(["stop", "flaky", *where], capsys)[0] == 0
    _code, out, _ = cli(["jobs", *where], capsys)
    row = row_of(out, "flaky")
    assert (row["STATE"], row["STEP"]) == ("stopped", "5")
    assert "failing on purpose" not in row["REASON"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_nobody_listening_is_unreachable_not_unauthorized(
    local_agents: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"x=127.0.0.1:{free_port()}"
    code, out, _ = cli(["status", "--agent", dead], capsys)
    assert code == 1 and "unreachable" in out and "unauthorized" not in out
    assert "token" not in out
    code, out, _ = cli(["status", "--agent", dead, "--json"], capsys)
    assert json.loads(out)["nodes"][0]["state"] == "unreachable"
    code, _, err = cli(["jobs", "--agent", dead], capsys)
    assert code == 1 and "unreachable" in err and "token" not in err
    code, _, err = cli(["logs", "j", "--agent", dead], capsys)
    assert code == 1 and "unreachable" in err and "token" not in err
    # An agent that is there, asked without its token: that is a token problem.
    live = local_agents("node-a")
    code, out, _ = cli(["status", "--agent", f"a={live.target.address}"], capsys)
    assert code == 1 and "unauthorized" in out and "no token file" in out


def int64_json_names() -> set[str]:
    """The JSON names of every 64-bit integer field of Gantry's messages."""
    names: set[str] = set()
    seen: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64):
                names.add(field.json_name)
            if field.message_type is not None:
                walk(field.message_type)

    for module in (agent_service_pb2, job_pb2, telemetry_pb2, task_pb2, inference_service_pb2):
        for descriptor in module.DESCRIPTOR.message_types_by_name.values():
            walk(descriptor)
    return names


def strings_of(doc: object, names: set[str], path: str = "") -> Iterator[str]:
    """Where `doc` holds a string under one of `names`."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in names and (
                isinstance(value, str)
                or (isinstance(value, list) and any(isinstance(v, str) for v in value))
            ):
                yield f"{path}.{key}={value!r}"
            yield from strings_of(value, names, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from strings_of(value, names, f"{path}[{i}]")


def test_json_output_has_numbers_for_integers(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = int64_json_names()
    assert {"step", "seq", "offset", "memTotalBytes", "sizeBytes"} <= names
    spec = one_node_job(tmp_path, "numbers", ["--steps", "3"])
    where = ["--cluster", str(cluster), "--json"]
    assert cli(["launch", str(spec), *where], capsys)[0] == 0
    wait_job(cluster, "numbers", {"JOB_STATE_SUCCEEDED"}, capsys)
    docs: list[object] = []
    for args in (["status"], ["jobs"], ["job", "numbers"]):
        code, out, err = cli([*args, *where], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    for args in (["events", "numbers"], ["logs", "numbers"]):
        code, out, err = cli([*args, *where], capsys)
        assert code == 0, err
        docs.append([json.loads(line) for line in out.splitlines()])
    found = [where for doc in docs for where in strings_of(doc, names)]
    assert found == []
    status, _, job, events, logs = docs
    assert isinstance(status, dict) and status["nodes"][0]["latest"]["host"]["memTotalBytes"] > 0
    assert isinstance(job, dict) and job["job"]["attempts"][0]["ranks"][0]["metrics"]["step"] == 3
    assert isinstance(events, list) and all(isinstance(e["seq"], int) for e in events)
    assert isinstance(logs, list) and all(isinstance(line["offset"], int) for line in logs[1:])


def test_logs_cut_long_lines_and_neutralise_escapes(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chatty_job(tmp_path, cluster, capsys)
    where = ["--cluster", str(cluster)]
    code, out, err = cli(["logs", "chatty", "--tail", "3", *where], capsys)
    assert code == 0, err
    long, escapes, done = out.splitlines()
    assert escapes == "red bell\u2407 end"
    assert "\x1b" not in out and "\x07" not in out
    assert long.startswith("LLLL") and long.endswith(" bytes]")
    cut = int(long.rsplit("[cut: ", 1)[1].removesuffix(" bytes]").replace(",", ""))
    assert cut + long.count("L") == LONG_LINE_BYTES
    assert done == "done"
    code, out, _ = cli(["logs", "chatty", "--tail", "3", "--raw", *where], capsys)
    assert out.splitlines()[1] == "\x1b]0;pwned\x07\x1b[31mred\x1b[0m bell\x07 end"


def test_restart_include_from_and_forget_say_what_the_agent_said(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--cluster", str(cluster)]
    spec = one_node_job(tmp_path, "short", ["--steps", "2"])
    assert cli(["launch", str(spec), *where], capsys)[0] == 0
    wait_job(cluster, "short", {"JOB_STATE_SUCCEEDED"}, capsys)
    # A tag that is not there: refused before anything changes, and never "restarting".
    code, out, err = cli(["restart", "short", "--from", "step200", *where], capsys)
    assert code == 2 and out == "" and "step200" in err and err.count("\n") == 1
    report = wait_job(cluster, "short", {"JOB_STATE_SUCCEEDED"}, capsys, timeout=1)
    assert len(report["job"]["attempts"]) == 1
    # --include reaches the leader: a node that was never excluded is refused.
    code, out, err = cli(["restart", "short", "--include", "node-a", *where], capsys)
    assert code == 2 and out == "" and "--include brings back" in err
    # forget: a live job is refused (the leader's reason), a finished one goes.
    long_job(tmp_path, cluster, capsys)
    code, out, err = cli(["forget", "long", *where], capsys)
    assert code == 2 and out == "" and "stop it before forgetting it" in err
    code, out, err = cli(["forget", "short", *where], capsys)
    assert code == 0 and out.startswith("forgot short"), err
    code, out, _ = cli(["jobs", "--json", *where], capsys)
    assert [j["job"]["spec"]["name"] for j in json.loads(out)["jobs"]] == ["long"]
    assert cli(["stop", "long", *where], capsys)[0] == 0


def test_restart_prints_only_once_the_leader_accepted(
    cluster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = one_node_job(tmp_path, "short", ["--steps", "2"], checkpoint_dir="")
    where = ["--cluster", str(cluster)]
    assert cli(["launch", str(spec), *where], capsys)[0] == 0
    wait_job(cluster, "short", {"JOB_STATE_SUCCEEDED"}, capsys)
    code, out, err = cli(["restart", "short", *where], capsys)
    assert code == 0, err
    assert out == "short: restart accepted; attempt 2 starts\n"
