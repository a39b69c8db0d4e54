"""Hardening: every AgentService request validated before a servicer sees it (names,
paths confined to the job's directories, bounds), refusals and agent-to-agent calls
audited, request sizes limited, token files private or the agent does not start."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import (
    MAX_TAIL_LINES,
    ValidationError,
    check_absolute_dir,
    check_checkpoint_ref,
    validate_job_spec,
)

from agent.main import parse_args, run_agent
from agent.rpc.validation import VALIDATORS, restart_checkpoint, validate_request
from agent.security.auth import TokenError, load_or_create_token
from console.model.job_spec import JobSpecError, parse_job_spec
from tests.secure_agent import ThreadedAgent, threaded_agent

A = agent_service_pb2


def good_spec(**changes: Any) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        name="demo-moe",
        command=["python", "-m", "agent.train"],
        args=["--seed", "1"],
        env={"NCCL_DEBUG": "INFO"},
        working_dir="/work/repo",
        checkpoint_dir="/data/out/checkpoints",
    )
    spec.nodes.add(node="node-a", slots=1)
    spec.nodes.add(node="node-b", slots=2)
    spec.restart.resume = "latest"
    for key, value in changes.items():
        if key == "resume":
            spec.restart.resume = value
        elif key == "backoff_s":
            spec.restart.backoff_s = value
        elif isinstance(value, dict):
            getattr(spec, key).update(value)
        elif isinstance(value, list):
            del getattr(spec, key)[:]
            getattr(spec, key).extend(value)
        else:
            setattr(spec, key, value)
    return spec


def refusal(method: str, request: object) -> str:
    with pytest.raises(ValidationError) as info:
        validate_request(method, request)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the validators ------------------------------------------------------------------------


def test_a_good_spec_passes() -> None:
    validate_job_spec(good_spec())
    validate_request("SubmitJob", A.SubmitJobRequest(spec=good_spec()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../etc"}, "spec.name: '../etc' must be 1-63 lower-case"),
        ({"name": "Demo"}, "spec.name"),
        ({"name": "a" * 64}, "spec.name"),
        ({"command": []}, "spec.command: give the program"),
        ({"args": ["ok", "nul\x00"]}, "spec.args[1]: must not contain a NUL"),
        ({"args": ["x" * 70_000]}, "spec.args[0]: longer than"),
        ({"args": ["x"] * 5000}, "over 4096 words"),
        ({"env": {"1BAD": "x"}}, "not a valid variable name"),
        ({"env": {"RANK": "3"}}, "spec.env.RANK: is set by the agent"),
        ({"working_dir": "relative/dir"}, "spec.working_dir: 'relative/dir' must be an absolute"),
        ({"working_dir": "/work/../etc"}, "must not contain '..'"),
        ({"checkpoint_dir": "/data//out"}, "is not a plain path; write '/data/out'"),
        ({"checkpoint_dir": "/"}, "not the root"),
        ({"hang_timeout_s": math.nan}, "spec.hang_timeout_s: nan must be a number of seconds"),
        ({"collective_timeout_s": math.inf}, "spec.collective_timeout_s: inf is too large"),
        ({"backoff_s": -1.0}, "spec.restart.backoff_s"),
        ({"resume": "/etc/passwd"}, "outside the job's directories (/work/repo or /data/out"),
        ({"resume": "../other/step5"}, "must not contain '..'"),
        ({"resume": "~/ckpt"}, "'~' is not expanded"),
        ({"deepspeed_config_json": "x" * (2 << 20)}, "larger than 1 MiB"),
    ],
)
def test_bad_specs_get_one_line_naming_the_field(changes: dict[str, Any], message: str) -> None:
    assert message in refusal("SubmitJob", A.SubmitJobRequest(spec=good_spec(**changes)))


def test_node_entries_are_checked() -> None:
    spec = good_spec()
    spec.nodes.add(node="node-a", slots=1)
    assert "node node-a is listed twice" in refusal("SubmitJob", A.SubmitJobRequest(spec=spec))
    spec = good_spec()
    spec.nodes[0].slots = 0
    assert "slots: 0 must be 1-1024" in refusal("SubmitJob", A.SubmitJobRequest(spec=spec))
    peers = [A.PeerAgent(name="node-a", address="gpu-01:50051", token="t" * 600)]
    assert "peers[0].token: longer than 512" in refusal(
        "SubmitJob", A.SubmitJobRequest(spec=good_spec(), peers=peers)
    )
    peers = [A.PeerAgent(name="node-a", address="gpu-01")]
    assert "peers[0].address: 'gpu-01' is not HOST:PORT" in refusal(
        "SubmitJob", A.SubmitJobRequest(spec=good_spec(), peers=peers)
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "latest",
        "step20",
        "out/checkpoints/step20",
        "/data/out/checkpoints/step20",
        "/work/repo/x",
    ],
)
def test_checkpoints_inside_the_job_directories(value: str) -> None:
    assert check_checkpoint_ref(value, "resume", good_spec()) == value


@pytest.mark.parametrize(
    "value",
    ["/data/out/checkpoints-other/step1", "/data/out", "/", "/work/repository", " step1", "a\nb"],
)
def test_checkpoints_outside_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        check_checkpoint_ref(value, "resume", good_spec())


def test_the_checkpoint_the_jobs_args_resume_from_is_allowed_with_its_neighbours() -> None:
    """Continual training: the job's own args name another job's checkpoint; the leader
    may pass it, or its universal conversion beside it, and nothing else out there."""
    spec = good_spec()
    spec.args.extend(["--resume_from_checkpoint", "/old/job/checkpoints/step100"])
    check_checkpoint_ref("/old/job/checkpoints/step100", "resume_from", spec)
    check_checkpoint_ref("/old/job/checkpoints/step100_universal", "resume_from", spec)
    with pytest.raises(ValidationError, match="outside the job's directories"):
        check_checkpoint_ref("/old/job/secrets", "resume_from", spec)
    sneaky = good_spec()
    sneaky.args.extend(["--resume_from_checkpoint", "/old/../etc/x"])
    with pytest.raises(ValidationError):
        check_checkpoint_ref("/etc/passwd", "resume_from", sneaky)


def test_restart_checkpoint_is_confined_to_the_stored_job() -> None:
    stored = good_spec()
    restart_checkpoint(A.RestartJobRequest(name="demo-moe", from_checkpoint="step20"), stored)
    inside = A.RestartJobRequest(name="demo-moe", from_checkpoint="/data/out/checkpoints/step20")
    restart_checkpoint(inside, stored)
    outside = A.RestartJobRequest(name="demo-moe", from_checkpoint="/etc/ssh")
    with pytest.raises(ValidationError, match="outside the job's directories"):
        restart_checkpoint(outside, stored)
    with_spec = A.RestartJobRequest(name="demo-moe", spec=good_spec(), from_checkpoint="/etc")
    assert "from_checkpoint: '/etc' is outside" in refusal("RestartJob", with_spec)


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("StopJob", A.StopJobRequest(name="x", grace_s=math.nan), "grace_s"),
        ("RestartJob", A.RestartJobRequest(name="x", exclude_nodes=["../n"]), "exclude_nodes[0]"),
        ("RestartJob", A.RestartJobRequest(name="x", from_checkpoint="../../etc"), "'..'"),
        ("DescribeJob", A.DescribeJobRequest(name=""), "name: ''"),
        ("ListCheckpoints", A.ListCheckpointsRequest(job_name="a/b"), "job_name"),
        ("WatchJobEvents", A.WatchJobEventsRequest(job_name="A"), "job_name"),
        (
            "TailRankLog",
            A.TailRankLogRequest(job_name="j", tail_lines=MAX_TAIL_LINES + 1),
            "tail_lines",
        ),
        ("TailRankLog", A.TailRankLogRequest(job_name="j", stream="../../x"), "stream"),
        ("TailRankLog", A.TailRankLogRequest(job_name="j", rank=-1), "rank: -1"),
        (
            "StartRanks",
            A.StartRanksRequest(spec=good_spec(), world_size=2, ranks=[2]),
            "outside 0-1",
        ),
        ("StartRanks", A.StartRanksRequest(spec=good_spec(), world_size=2, ranks=[0, 0]), "twice"),
        (
            "StartRanks",
            A.StartRanksRequest(spec=good_spec(), world_size=0, ranks=[0]),
            "world_size",
        ),
        (
            "StartRanks",
            A.StartRanksRequest(spec=good_spec(), world_size=1, ranks=[0], resume_from="/etc"),
            "resume_from",
        ),
        (
            "StartRanks",
            A.StartRanksRequest(spec=good_spec(), world_size=1, ranks=[0], master_addr="a b"),
            "master_addr",
        ),
        ("StopRanks", A.StopRanksRequest(job_name="x", grace_s=-1), "grace_s"),
        (
            "RequestCheckpoint",
            A.RequestCheckpointRequest(job_name="x", request_id="a b\n"),
            "request_id",
        ),
        ("RequestCheckpoint", A.RequestCheckpointRequest(job_name="../x"), "job_name"),
        ("StartTask", A.StartTaskRequest(), "give an eval, quantize or serve spec"),
        ("StopTask", A.StopTaskRequest(task_id="../x"), "task_id"),
        ("WatchTask", A.WatchTaskRequest(task_id=""), "task_id"),
        ("WatchNode", A.WatchNodeRequest(history_s=-5), "history_s"),
        # Found by the fuzzer: SQLite and seek() take no integer past 2**63 - 1.
        ("WatchJobEvents", A.WatchJobEventsRequest(after_seq=2**64 - 1), "after_seq"),
        ("TailRankLog", A.TailRankLogRequest(job_name="j", from_offset=2**63), "from_offset"),
        ("NoSuchCall", A.ListJobsRequest(), "no validator"),
    ],
)
def test_rpc_fields_are_checked(method: str, request_: object, message: str) -> None:
    assert message in refusal(method, request_)


def test_every_agent_service_method_has_a_validator() -> None:
    methods = A.DESCRIPTOR.services_by_name["AgentService"].methods_by_name
    assert set(methods) == set(VALIDATORS)


def test_absolute_dirs() -> None:
    assert check_absolute_dir("/a/b/", "d") == "/a/b/"
    assert check_absolute_dir("", "d") == ""
    with pytest.raises(ValidationError, match="plain path"):
        check_absolute_dir("/a/./b", "d")


# -- on a live agent -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedAgent]:
    with threaded_agent(tmp_path_factory.mktemp("hardened") / "data") as running:
        yield running


@pytest.fixture
def stub(agent: ThreadedAgent) -> Iterator[Any]:
    with grpc.insecure_channel(agent.address) as channel:
        yield agent.stub(channel)


def rpc_error(call: Any, request: object, metadata: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, metadata=metadata, timeout=5, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return info.value


def test_bad_requests_are_refused_and_audited(agent: ThreadedAgent, stub: Any) -> None:
    bad = A.SubmitJobRequest(spec=good_spec(name="../../etc"))
    error = rpc_error(stub.SubmitJob, bad, agent.metadata("alice"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "SubmitJob: spec.name: '../../etc' must be 1-63 lower-case letters, digits and '-', "
        "starting with a letter or digit"
    )
    entry = agent.audit()[0]
    assert (entry.who, entry.what) == ("alice", "submit")
    assert entry.details["outcome"].startswith("refused: spec.name")

    # Agent-to-agent: a peer's StartRanks naming a path as its job is refused, nothing made.
    start = A.StartRanksRequest(spec=good_spec(name=".."), world_size=1, ranks=[0], leader="node-b")
    error = rpc_error(stub.StartRanks, start, agent.metadata())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    entry = agent.audit()[0]
    assert (entry.who, entry.what) == ("leader node-b", "start-ranks")
    data_dir = agent.runtime.supervisor.data_dir
    assert not (data_dir / "jobs" / "..").resolve().joinpath("attempt-0").exists()


def test_stop_ranks_from_a_peer_is_audited(agent: ThreadedAgent, stub: Any) -> None:
    stub.StopRanks(
        A.StopRanksRequest(job_name="idle", attempt=3), metadata=agent.metadata(), timeout=5
    )
    entry = agent.audit()[0]
    assert (entry.who, entry.what) == ("token holder", "stop-ranks")
    assert entry.details["job"] == "idle" and entry.details["outcome"] == "ok"
    assert entry.details["peer"].startswith("ipv4:127.0.0.1:")


def test_refused_start_ranks_is_audited_with_the_reason(
    agent: ThreadedAgent, stub: Any, tmp_path: Path
) -> None:
    spec = good_spec(
        name="no-entry", working_dir=str(tmp_path), checkpoint_dir="", command=["/nonexistent/x"]
    )
    start = A.StartRanksRequest(spec=spec, attempt=1, world_size=1, ranks=[0], leader="node-b")
    error = rpc_error(stub.StartRanks, start, agent.metadata())
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    # The caller has the refusal as the servicer aborts; the audit line follows at once.
    deadline = time.monotonic() + 5
    while not [e for e in agent.audit() if e.details.get("job") == "no-entry"]:
        assert time.monotonic() < deadline, agent.audit()[:2]
        time.sleep(0.02)
    entry = agent.audit()[0]
    assert (entry.who, entry.what) == ("leader node-b", "start-ranks")
    assert entry.details["outcome"].startswith("refused: node-a: entry point '/nonexistent/x'")


def test_streams_and_tails_are_bounded(agent: ThreadedAgent, stub: Any) -> None:
    too_many = A.TailRankLogRequest(job_name="j", tail_lines=4_000_000_000)
    error = rpc_error(stub.TailRankLog, too_many, agent.metadata())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "tail_lines: 4000000000 is too large (at most 100000)" in (error.details() or "")
    # Within bounds it reaches the servicer, which knows no such job.
    fine = A.TailRankLogRequest(job_name="j", tail_lines=MAX_TAIL_LINES)
    assert rpc_error(stub.TailRankLog, fine, agent.metadata()).code() is grpc.StatusCode.NOT_FOUND


def test_restart_from_outside_the_job_is_refused(agent: ThreadedAgent, stub: Any) -> None:
    leader = agent.runtime.leader
    leader.spec = lambda name: good_spec()  # type: ignore[method-assign]
    try:
        outside = A.RestartJobRequest(name="demo-moe", from_checkpoint="/etc/ssh")
        error = rpc_error(stub.RestartJob, outside, agent.metadata("bob"))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "outside the job's directories" in (error.details() or "")
        assert agent.audit()[0].who == "bob"
    finally:
        del leader.spec
    inside = A.RestartJobRequest(name="demo-moe", from_checkpoint="/data/out/checkpoints/s1")
    assert rpc_error(stub.RestartJob, inside, agent.metadata()).code() is grpc.StatusCode.NOT_FOUND


def test_requests_are_size_limited_and_unauthenticated_ones_never_parsed(
    agent: ThreadedAgent, stub: Any
) -> None:
    huge = A.SubmitJobRequest(spec=good_spec(deepspeed_config_json="x" * (5 << 20)))
    error = rpc_error(stub.SubmitJob, huge, agent.metadata())
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    bad = A.SubmitJobRequest(spec=good_spec(name="BAD"))
    error = rpc_error(stub.SubmitJob, bad, (("authorization", "Bearer wrong-token-xxxxxxxx"),))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    reply = stub.GetNodeInfo(A.GetNodeInfoRequest(), metadata=agent.metadata(), timeout=5)
    assert reply.info.node_name == "node-a"


# -- token files -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_token_files_must_be_private(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "token"
    path.write_text("s" * 40)
    path.chmod(mode)
    with pytest.raises(TokenError, match=f"mode {mode:o}.*chmod 600"):
        load_or_create_token(tmp_path, path)


def test_token_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(TokenError, match="not a regular file"):
        load_or_create_token(tmp_path, tmp_path / "dir")


async def test_agent_refuses_to_start_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = tmp_path / "token"
    token.write_text("s" * 40)
    token.chmod(0o644)
    args = parse_args(
        ["--node-name", "node-a", "--data-dir", str(tmp_path / "d"), "--token-file", str(token)]
    )
    with caplog.at_level(logging.ERROR, logger="gantry.agent"):
        assert await run_agent(args) == 2
    assert f"run: chmod 600 {token}" in caplog.text
    caplog.clear()
    token.chmod(0o600)
    half_tls = parse_args(
        [
            *("--node-name", "node-a", "--data-dir", str(tmp_path / "d")),
            *("--token-file", str(token), "--tls-ca", str(tmp_path / "ca.pem")),
        ]
    )
    with caplog.at_level(logging.ERROR, logger="gantry.agent"):
        assert await run_agent(half_tls) == 2
    assert "add --tls-cert" in caplog.text
    caplog.clear()
    exposed = parse_args(
        [
            *("--node-name", "node-a", "--data-dir", str(tmp_path / "d")),
            *("--token-file", str(token), "--listen", "0.0.0.0:0"),
        ]
    )
    with caplog.at_level(logging.ERROR, logger="gantry.agent"):
        assert await run_agent(exposed) == 2
    assert "refusing to listen on 0.0.0.0 without mutual TLS" in caplog.text


# -- the console's spec parser says the same, with the line ------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("checkpoint_dir: ../out\n", "line 5: checkpoint_dir: '../out' must not contain '..'"),
        (
            "restart: {resume: ../other/step5}\n",
            "restart.resume: '../other/step5' must not contain",
        ),
        ("restart: {resume: /etc/ssh}\n", "restart.resume: '/etc/ssh' is outside the job's dir"),
        ("restart: {resume: ~/ckpt}\n", "'~' is not expanded"),
    ],
)
def test_console_spec_confines_checkpoints(tmp_path: Path, extra: str, message: str) -> None:
    base = "name: j\nnodes: [node-a]\ncommand: [python]\nworking_dir: .\n"
    with pytest.raises(JobSpecError, match=message.replace("(", r"\(")) as info:
        parse_job_spec(base + extra, tmp_path, source="j.yaml")
    assert "\n" not in str(info.value)
    inside = f"restart: {{resume: {tmp_path}/ckpt/step5}}\ncheckpoint_dir: ckpt\n"
    spec = parse_job_spec(base + inside, tmp_path, source="j.yaml")
    validate_job_spec(spec)  # what the console accepts, the agent accepts
