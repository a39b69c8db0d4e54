"""gantry.v1.rules: the contract's rules kept once, and the console's parser and the agent's
validator, which both apply them, agreeing on the same inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import (
    MAX_ENV,
    MAX_NAME_CHARS,
    MAX_WORDS,
    ValidationError,
    args_resume,
    check_checkpoint_ref,
    check_config_json,
    check_name,
    checkpoint_roots,
    is_checkpoint_within,
    is_name,
    resume_flag,
    spec_args_resume,
    validate_job_spec,
)
from hypothesis import given
from hypothesis import strategies as st

from agent.rpc.validation import validate_request
from console.model.job_spec import JobSpecError, parse_job_spec
from console.net.ca import CaError, parse_host_flag
from console.net.cluster_file import ClusterFileError
from console.net.cluster_file import check_name as cluster_check_name
from console.ssh.hostfile import HOST_RE, node_name

# Names at the edges of the rule: (name, allowed).
NAMES = [
    ("a", True),
    ("0", True),
    ("a-", True),
    ("node-a", True),
    ("a" * 63, True),
    ("9" + "-" * 62, True),
    ("a" * 64, False),
    ("", False),
    ("-a", False),
    ("A", False),
    ("Demo", False),
    ("a.b", False),
    ("a_b", False),
    ("a b", False),
    ("a/b", False),
    ("..", False),
    ("a\n", False),
    ("é", False),
]


def spec(**fields: Any) -> job_pb2.JobSpec:
    fields.setdefault("name", "demo")
    out = job_pb2.JobSpec(command=["python", "train.py"], working_dir="/w/repo", **fields)
    out.nodes.add(node="node-a", slots=1)
    return out


# -- the rules themselves ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "allowed"), NAMES)
def test_names(name: str, allowed: bool) -> None:
    assert is_name(name) is allowed
    if allowed:
        assert check_name(name, "name") == name
    else:
        with pytest.raises(ValidationError, match=r"^job\.name: .* must be 1-63 lower-case"):
            check_name(name, "job.name")


def test_the_longest_name_is_max_name_chars() -> None:
    assert is_name("a" * MAX_NAME_CHARS) and not is_name("a" * (MAX_NAME_CHARS + 1))


def test_errors_name_the_field_under_a_prefix_or_alone() -> None:
    bad = spec(name="Bad")
    with pytest.raises(ValidationError, match=r"^spec\.name: 'Bad'"):
        validate_job_spec(bad)
    with pytest.raises(ValidationError, match=r"^name: 'Bad'"):
        validate_job_spec(bad, field="")
    many = spec()
    many.args.extend(["x"] * MAX_WORDS)
    with pytest.raises(ValidationError, match=f"^spec: command and args hold over {MAX_WORDS}"):
        validate_job_spec(many)
    with pytest.raises(ValidationError, match=f"^args: command and args hold over {MAX_WORDS}"):
        validate_job_spec(many, field="")


def test_config_json_is_an_object_of_bounded_size() -> None:
    assert check_config_json("", "c") == ""
    assert check_config_json('{"a": 1}', "c") == '{"a": 1}'
    with pytest.raises(ValidationError, match=r"^c: is not valid JSON"):
        check_config_json("{not json", "c")
    with pytest.raises(ValidationError, match=r"^c: must be a JSON object"):
        check_config_json("[1, 2]", "c")
    with pytest.raises(ValidationError, match=r"^c: larger than 1 MiB"):
        check_config_json(json.dumps({"a": "x" * (1 << 20)}), "c")
    with pytest.raises(ValidationError, match=r"^spec\.deepspeed_config_json: must be a JSON"):
        validate_job_spec(spec(deepspeed_config_json="3"))


def test_resume_flag_parsing() -> None:
    assert resume_flag(spec()) == ("--resume_from_checkpoint", False)
    joined = spec()
    joined.restart.resume_flag = "--load="
    assert resume_flag(joined) == ("--load", True)
    assert args_resume(["--load", "a", "--load=b"], "--load") == "b"  # the last one wins
    assert args_resume(["--load"], "--load") is None  # no value after it
    assert args_resume(["--loader", "x"], "--load") is None
    assert spec_args_resume(spec(args=["--resume_from_checkpoint", "/c/s1"])) == "/c/s1"


def test_checkpoint_roots_include_the_folder_the_args_resume_from() -> None:
    plain = spec(checkpoint_dir="/data/ckpt")
    assert checkpoint_roots(plain) == ["/w/repo", "/data/ckpt"]
    continued = spec(args=["--resume_from_checkpoint", "/other/job/step9"])
    assert checkpoint_roots(continued) == ["/w/repo", "/other/job"]
    assert is_checkpoint_within("/other/job/step9-universal", continued)
    assert not is_checkpoint_within("/other/jobs", continued)
    assert not is_checkpoint_within("/w/repository", plain)  # a prefix is not a folder
    sneaky = spec(args=["--resume_from_checkpoint", "/other/../etc/x"])
    assert checkpoint_roots(sneaky) == ["/w/repo"]
    with pytest.raises(ValidationError, match=r"outside the job's directories \(/w/repo\)"):
        check_checkpoint_ref("/etc/x", "resume", sneaky)


# -- the console's parser and the agent's validator agree ----------------------------------

BASE = "name: {name}\nnodes: ['{node} slots=1']\ncommand: [python, train.py]\n"


def console_accepts(text: str, base: Path) -> bool:
    try:
        parse_job_spec(text, base, None, source="job.yaml")
    except JobSpecError as exc:
        assert str(exc).startswith("job.yaml") and "\n" not in str(exc)
        return False
    return True


def agent_accepts(request_spec: job_pb2.JobSpec) -> bool:
    try:
        validate_request("SubmitJob", agent_service_pb2.SubmitJobRequest(spec=request_spec))
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("name", "allowed"), NAMES)
def test_console_and_agent_agree_on_names(tmp_path: Path, name: str, allowed: bool) -> None:
    quoted = json.dumps(name)  # a YAML double-quoted scalar
    as_job = BASE.format(name=quoted, node="node-a")
    as_node = f"name: j\nnodes: [{json.dumps(name + ' slots=1')}]\ncommand: [python]\n"
    assert console_accepts(as_job, tmp_path) is allowed
    if name.split() == [name]:  # a hostfile line is split into words first
        assert console_accepts(as_node, tmp_path) is allowed
    assert agent_accepts(spec(name=name)) is allowed
    as_node_spec = spec()
    as_node_spec.nodes[0].node = name
    assert agent_accepts(as_node_spec) is allowed


@pytest.mark.parametrize(
    ("env_name", "allowed"),
    [("A" * 256, True), ("A" * 257, False), ("_x1", True), ("1x", False), ("A-B", False)],
)
def test_console_and_agent_agree_on_env_names(tmp_path: Path, env_name: str, allowed: bool) -> None:
    text = BASE.format(name="j", node="node-a") + f"env: {{{env_name}: v}}\n"
    assert console_accepts(text, tmp_path) is allowed
    assert agent_accepts(spec(env={env_name: "v"})) is allowed


@pytest.mark.parametrize(
    ("flag", "allowed"),
    [("--load", True), ("-l", True), ("--resume=", True), ("load", False), ("--a b", False)],
)
def test_console_and_agent_agree_on_resume_flags(tmp_path: Path, flag: str, allowed: bool) -> None:
    text = BASE.format(name="j", node="node-a") + f"restart: {{resume_flag: '{flag}'}}\n"
    assert console_accepts(text, tmp_path) is allowed
    flagged = spec()
    flagged.restart.resume_flag = flag
    assert agent_accepts(flagged) is allowed


def test_console_accepts_a_checkpoint_beside_the_one_the_args_resume_from(tmp_path: Path) -> None:
    # Continual training from another job's checkpoint: the agents allow its folder.
    text = BASE.format(name="j", node="node-a") + (
        "args: [--resume_from_checkpoint, /other/job/step9]\n"
        "restart: {resume: /other/job/step9-universal}\n"
    )
    parsed = parse_job_spec(text, tmp_path)
    assert parsed.restart.resume == "/other/job/step9-universal"
    assert agent_accepts(parsed)


def test_the_console_applies_the_contracts_limits_last(tmp_path: Path) -> None:
    words = "[" + ", ".join(["x"] * MAX_WORDS) + "]"
    text = BASE.format(name="j", node="node-a") + f"args: {words}\n"
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, tmp_path, source="job.yaml")
    assert str(info.value) == f"job.yaml line 4: args: command and args hold over {MAX_WORDS} words"
    env = ", ".join(f"V{i}: x" for i in range(MAX_ENV + 1))
    text = BASE.format(name="j", node="node-a") + f"env: {{{env}}}\n"
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(text, tmp_path, source="job.yaml")
    assert str(info.value) == f"job.yaml line 4: env: more than {MAX_ENV} variables"


# -- the console's other name checks are the same rule -------------------------------------


@pytest.mark.parametrize(("name", "allowed"), NAMES)
def test_cluster_file_and_ca_use_the_rule(name: str, allowed: bool) -> None:
    if allowed:
        assert cluster_check_name(name, "cluster.yaml") == name
        assert parse_host_flag(f"{name}=gpu-01.lan") == (name, ["gpu-01.lan"])
    else:
        with pytest.raises(ClusterFileError, match="must be lower-case"):
            cluster_check_name(name, "cluster.yaml")
        with pytest.raises(CaError):
            parse_host_flag(f"{name}=gpu-01.lan")


@given(
    host=st.from_regex(HOST_RE, fullmatch=True).filter(lambda h: "\n" not in h),
    port=st.none() | st.integers(1, 65535),
)
def test_hostfile_node_names_follow_the_rule(host: str, port: int | None) -> None:
    assert is_name(node_name(host, port))
