# ruff: noqa: E501  (the table of error messages reads best one case a line)
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from gantry.v1 import job_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from console.model.job_spec import (
    TOP_KEYS,
    JobSpecError,
    hostfile_lines,
    job_spec_to_yaml,
    load_job_spec,
    parse_job_spec,
)

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = {"node-a", "node-b"}

BASE = """\
name: demo-moe
nodes:
  - node-a slots=1
  - node-b slots=1
command: [python, -m, agent.train]
"""


def parse(text: str, base_dir: Path, known: set[str] | None = CLUSTER) -> job_pb2.JobSpec:
    return parse_job_spec(text, base_dir, known, source="job.yaml")


def test_full_spec(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "ds.json").write_text('{"zero_optimization": {"stage": 3}}')
    (tmp_path / "job.yaml").write_text(
        BASE
        + "args: [--deepspeed_config, examples/ds.json, --save_steps, 20, --lr, 3e-3, --x, 010]\n"
        "env: {NCCL_DEBUG: INFO, NCCL_IB_DISABLE: '1', PORTISH: 010, RATIO: 1.50}\n"
        "working_dir: .\n"
        "restart: {max_restarts: 3, backoff_s: 2.5, resume: latest}\n"
        "hang_timeout_s: 120\n"
        "collective_timeout_s: 60\n"
        "checkpoint_dir: out/demo/checkpoints\n"
        "deepspeed_config: examples/ds.json\n"
        "cost: {price_per_gpu_hour: 2.5, instance_type: p5.48xlarge, pricing: on-demand}\n"
        "eval_targets: {bleu4_min: 0.9, ttft_ms_max: 200}\n"
    )
    spec = load_job_spec(tmp_path / "job.yaml", CLUSTER)
    assert spec.name == "demo-moe"
    assert hostfile_lines(spec) == ["node-a slots=1", "node-b slots=1"]
    assert list(spec.command) == ["python", "-m", "agent.train"]
    # Numbers in args and env are kept as written, not as YAML resolved them (010 is 8).
    assert list(spec.args)[-6:] == ["--save_steps", "20", "--lr", "3e-3", "--x", "010"]
    assert dict(spec.env) == {
        "NCCL_DEBUG": "INFO",
        "NCCL_IB_DISABLE": "1",
        "PORTISH": "010",
        "RATIO": "1.50",
    }
    assert spec.working_dir == str(tmp_path)
    assert (spec.restart.max_restarts, spec.restart.backoff_s, spec.restart.resume) == (
        3,
        2.5,
        "latest",
    )
    assert (spec.hang_timeout_s, spec.collective_timeout_s) == (120, 60)
    assert spec.checkpoint_dir == str(tmp_path / "out" / "demo" / "checkpoints")
    assert json.loads(spec.deepspeed_config_json) == {"zero_optimization": {"stage": 3}}
    assert spec.cost.pricing == "on-demand"
    assert spec.eval_targets.HasField("bleu4_min")
    assert not spec.eval_targets.HasField("rouge_l_min")


def test_defaults(tmp_path: Path) -> None:
    spec = parse(BASE.replace("node-b slots=1", "node-b"), tmp_path)
    assert [n.slots for n in spec.nodes] == [1, 1]
    assert (spec.restart.max_restarts, spec.restart.backoff_s, spec.restart.resume) == (
        0,
        5.0,
        "latest",
    )
    assert (spec.hang_timeout_s, spec.collective_timeout_s) == (0.0, 300.0)
    assert spec.working_dir == str(tmp_path)
    assert not spec.args and not spec.env and not spec.deepspeed_config_json
    assert not spec.HasField("cost") and not spec.HasField("eval_targets")


def test_nodes_as_one_hostfile_string(tmp_path: Path) -> None:
    text = (
        "name: j\n"
        "nodes: |\n"
        "  # the hostfile\n"
        "  node-a slots=2\n"
        "\n"
        "  node-b slots=4   # big one\n"
        "command: python train.py --seed 1\n"
    )
    spec = parse(text, tmp_path)
    assert hostfile_lines(spec) == ["node-a slots=2", "node-b slots=4"]
    assert list(spec.command) == ["python", "train.py", "--seed", "1"]


def test_hostfile_string_errors_name_their_line(tmp_path: Path) -> None:
    text = "name: j\nnodes: |\n  node-a slots=1\n  node-x slots=1\ncommand: [python]\n"
    with pytest.raises(JobSpecError) as info:
        parse(text, tmp_path)
    assert str(info.value) == (
        "job.yaml line 4: nodes[1]: unknown node node-x (the cluster has node-a, node-b)"
    )


def test_round_trip(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text('{"fp16": {"enabled": true}, "steps_per_print": 10}')
    text = (
        BASE + "args: ['--prompt', '', '--n', 3]\n"
        "env: {NCCL_DEBUG: INFO, EMPTY: '', WEIRD: 'a: b # c'}\n"
        "restart: {max_restarts: 2, backoff_s: 0.25, resume: ''}\n"
        "deepspeed_config: ds.json\n"
        "cost: {price_per_gpu_hour: 1.75}\n"
        "eval_targets: {rouge_l_min: 0.5, tokens_per_s_min: 100}\n"
    )
    spec = parse(text, tmp_path)
    again = parse(job_spec_to_yaml(spec), tmp_path / "elsewhere")
    assert again == spec
    assert again.HasField("cost") and again.HasField("eval_targets")
    assert job_spec_to_yaml(again) == job_spec_to_yaml(spec)


def test_resume_flag_and_retention_round_trip(tmp_path: Path) -> None:
    text = BASE + (
        "restart: {resume: latest, resume_flag: --load}\ncheckpoint_dir: out\nkeep_checkpoints: 3\n"
    )
    spec = parse(text, tmp_path)
    assert (spec.restart.resume_flag, spec.keep_checkpoints) == ("--load", 3)
    assert parse(job_spec_to_yaml(spec), tmp_path) == spec
    assert parse(BASE + "restart: {resume_flag: '--resume='}\n", tmp_path).restart.resume_flag == (
        "--resume="
    )


def test_checkpoint_dir_defaults_to_the_scripts_output_dir(tmp_path: Path) -> None:
    hf = BASE.replace("[python, -m, agent.train]", "[python, train.py]")
    spec = parse(hf + "args: [--output_dir, runs/a, --logging_steps, 5]\n", tmp_path)
    assert spec.checkpoint_dir == str(tmp_path / "runs" / "a")  # checkpoint-N lands there
    spec = parse(BASE + "args: ['--output_dir=out']\n", tmp_path)
    assert spec.checkpoint_dir == str(tmp_path / "out" / "checkpoints")  # agent.train's stepN
    given = parse(hf + "args: [--output_dir, x]\ncheckpoint_dir: elsewhere\n", tmp_path)
    assert given.checkpoint_dir == str(tmp_path / "elsewhere")
    assert parse(hf, tmp_path).checkpoint_dir == ""


def test_example_job_parses() -> None:
    spec = load_job_spec(ROOT / "examples" / "job-demo.yaml", CLUSTER)
    assert hostfile_lines(spec) == ["node-a slots=1", "node-b slots=1"]
    assert list(spec.command) == ["python", "-m", "agent.train"]
    assert spec.working_dir == str(ROOT)
    assert spec.checkpoint_dir.startswith(str(ROOT / ".gantry"))
    args = list(spec.args)
    assert args[args.index("--deepspeed_config") + 1] == "examples/ds_config_zero3.json"
    assert args[args.index("--resume_from_checkpoint") + 1] == "latest"


BAD = [
    # (text, the exact one-line message or a fragment of it)
    ("name: [\n", "job.yaml line 2: not valid YAML"),
    ("name: a\n  b: c\n", "job.yaml line 2: not valid YAML: mapping values are not allowed"),
    ("", "job.yaml: is empty; write a mapping with name, nodes and command"),
    ("- a\n- b\n", "job.yaml: expected a mapping with name, nodes and command, got a list"),
    (BASE + "restrat: {max_restarts: 1}\n", "job.yaml line 6: unknown key 'restrat'; did you mean 'restart'?"),
    (BASE + "max_restarts: 1\n", "unknown key 'max_restarts'; it belongs under restart: {max_restarts: ...}"),
    (BASE + "zzz: 1\n", "unknown key 'zzz'; expected one of name, nodes, command"),
    (BASE + "restart: {max_restart: 1}\n", "job.yaml line 6: restart: unknown key 'max_restart'; did you mean 'max_restarts'?"),
    (BASE + "name: again\n", "job.yaml line 6: key 'name' is given twice; keep one"),
    (BASE.replace("name: demo-moe\n", ""), "job.yaml: missing 'name' (a job name such as demo-moe)"),
    (BASE.replace("command: [python, -m, agent.train]\n", ""), "job.yaml: missing 'command'"),
    ("name: j\ncommand: [python]\n", "job.yaml: missing 'nodes'"),
    (BASE.replace("demo-moe", "Demo_MoE"), "job.yaml line 1: name: 'Demo_MoE' must be 1-63 lower-case letters"),
    (BASE.replace("demo-moe", "a" * 64), "name: 'aaaa"),
    (BASE.replace("demo-moe", "-x"), "starting with a letter or digit"),
    (BASE.replace("demo-moe", "42"), "name: expected a job name, got a number (42)"),
    (BASE.replace("node-b slots=1", "node-x slots=1"), "job.yaml line 4: nodes[1]: unknown node node-x (the cluster has node-a, node-b)"),
    (BASE.replace("node-b slots=1", "node-a slots=2"), "job.yaml line 4: nodes[1]: node-a is listed twice; list each node once"),
    (BASE.replace("node-b slots=1", "node-b slots=0"), "nodes[1]: slots=0 for node-b must be a positive whole number"),
    (BASE.replace("node-b slots=1", "node-b slots=two"), "nodes[1]: slots=two for node-b must be a positive whole number"),
    (BASE.replace("node-b slots=1", "node-b slots=-1"), "slots=-1 for node-b must be a positive whole number"),
    (BASE.replace("node-b slots=1", "node-b slots=1 slots=2"), "nodes[1]: slots given twice for node-b"),
    (BASE.replace("node-b slots=1", "node-b gpus=2"), "nodes[1]: unexpected 'gpus=2'; write 'node-b slots=N'"),
    (BASE.replace("node-b slots=1", "{node: node-b}"), "nodes[1]: expected 'HOST slots=N' (hostfile form), got a mapping"),
    ("name: j\nnodes: []\ncommand: [python]\n", "job.yaml line 2: nodes: list at least one node"),
    ("name: j\nnodes: 3\ncommand: [python]\n", "nodes: expected a list of 'HOST slots=N' lines, got a number (3)"),
    (BASE.replace("[python, -m, agent.train]", "[]"), "command: give the program to run"),
    (BASE.replace("[python, -m, agent.train]", "[python, {a: 1}]"), "job.yaml line 5: command[1]: expected a word of text, got a mapping"),
    (BASE.replace("[python, -m, agent.train]", "'python \"unclosed'"), "command: cannot split"),
    (BASE + "args: [--x, null]\n", "args[1]: expected a word of text, got nothing (null)"),
    (BASE + "args: {a: b}\n", "args: expected a list of words, got a mapping"),
    (BASE + "env: {NCCL_DEBUG: {level: INFO}}\n", "job.yaml line 6: env.NCCL_DEBUG: expected a text value, got a mapping"),
    (BASE + "env: {NCCL_DEBUG: [INFO]}\n", "env.NCCL_DEBUG: expected a text value, got a list"),
    (BASE + "env: {NCCL_IB_DISABLE: true}\n", 'env.NCCL_IB_DISABLE: write the value in quotes, e.g. "1" or "0", not true/false (true)'),
    (BASE + "env: {FOO: }\n", 'env.FOO: give a value (write "" for an empty one)'),
    (BASE + "env: {1BAD: x}\n", "env: '1BAD' is not a valid variable name"),
    (BASE + "env: {'A-B': x}\n", "env: 'A-B' is not a valid variable name"),
    (BASE + "env: {RANK: '0'}\n", "env.RANK: is set by the agent for each rank; remove it"),
    (BASE + "env: [A=1]\n", "env: expected a mapping NAME: value, got a list"),
    (BASE + "restart: {max_restarts: -1}\n", "restart.max_restarts: -1 must be a whole number >= 0"),
    (BASE + "restart: {max_restarts: 1.5}\n", "restart.max_restarts: expected a whole number >= 0, got a number (1.5)"),
    (BASE + "restart: {max_restarts: yes}\n", "restart.max_restarts: expected a whole number >= 0, got true/false (true)"),
    (BASE + "restart: {max_restarts: 99999999999}\n", "restart.max_restarts: 99999999999 is too large"),
    (BASE + "restart: {backoff_s: -5}\n", "restart.backoff_s: -5 must be a number of seconds >= 0"),
    (BASE + "restart: {backoff_s: '5'}\n", "restart.backoff_s: expected a number of seconds >= 0, got text '5'"),
    (BASE + "restart: {backoff_s: .nan}\n", "restart.backoff_s: nan must be a number of seconds >= 0"),
    (BASE + "restart: {backoff_s: .inf}\n", "restart.backoff_s: inf is too large"),
    (BASE + "restart: 3\n", "restart: expected a mapping (restart policy), got a number (3)"),
    (BASE + "restart: {resume: no}\n", 'restart.resume: expected text, got true/false (false); write "latest", "" (start fresh) or a checkpoint tag or path'),
    (BASE + "restart: {resume: 5}\n", "restart.resume: expected text, got a number (5)"),
    (BASE + "restart: {resume: Latest}\n", "restart.resume: 'Latest': write 'latest' in lower case"),
    (BASE + "restart: {resume: ' latest'}\n", "restart.resume: ' latest' has stray spaces"),
    (BASE + "restart: {resume_flag: resume}\n", "restart.resume_flag: 'resume' is not a flag; write e.g. --resume_from_checkpoint, --load, or --resume= to pass one --resume=PATH word"),
    (BASE + "restart: {resume_flag: '--a b'}\n", "restart.resume_flag: '--a b' is not a flag"),
    (BASE + "keep_checkpoints: 3\n", "keep_checkpoints: needs checkpoint_dir: the folder to keep them in"),
    (BASE + "checkpoint_dir: c\nkeep_checkpoints: -1\n", "keep_checkpoints: -1 must be a whole number >= 0"),
    (BASE + "hang_timeout_s: -1\n", "job.yaml line 6: hang_timeout_s: -1 must be a number of seconds >= 0"),
    (BASE + "collective_timeout_s: -0.5\n", "collective_timeout_s: -0.5 must be a number of seconds >= 0"),
    (BASE + "collective_timeout_s: soon\n", "collective_timeout_s: expected a number of seconds >= 0, got text 'soon'"),
    (BASE + "working_dir: nope\n", "working_dir: {tmp}/nope is not an existing folder (relative paths start at the YAML file's folder)"),
    (BASE + "working_dir: ''\n", "working_dir: is empty; leave it out to use the YAML file's folder"),
    (BASE + "deepspeed_config: missing.json\n", "deepspeed_config: missing.json not found (looked for {tmp}/missing.json; relative paths start at working_dir)"),
    (BASE + "deepspeed_config: bad.json\n", "deepspeed_config: {tmp}/bad.json is not valid JSON: Expecting"),
    (BASE + "deepspeed_config: list.json\n", "deepspeed_config: must hold a JSON object ({...}), got a list"),
    (BASE + "deepspeed_config: sub\n", "deepspeed_config: {tmp}/sub is not a regular file"),
    (BASE + "deepspeed_config: 3\n", "deepspeed_config: expected a path to a JSON file or a mapping, got a number (3)"),
    (BASE + "cost: {pricing: on-demnd}\n", "cost.pricing: 'on-demnd' is not a pricing model; did you mean 'on-demand'?"),
    (BASE + "cost: {price_per_gpu_hour: -2}\n", "cost.price_per_gpu_hour: -2 must be a number >= 0"),
    (BASE + "cost: {price: 2}\n", "cost: unknown key 'price'; did you mean"),
    (BASE + "eval_targets: {bleu4: 0.9}\n", "eval_targets: unknown key 'bleu4'; did you mean 'bleu4_min'?"),
    (BASE + "when: 2024-13-45\n", "job.yaml: not valid YAML"),
    (BASE + "x: !!python/object:os.system {}\n", "job.yaml line 6: not valid YAML"),
    ("a: &a [*a]\n", "job.yaml line 1: unknown key 'a'"),
    ("--- 1\n--- 2\n", "job.yaml line 2: not valid YAML: but found another document"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_errors_are_one_line_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "sub").mkdir()
    with pytest.raises(JobSpecError) as info:
        parse(text, tmp_path)
    error = str(info.value)
    assert "\n" not in error
    assert message.replace("{tmp}", str(tmp_path)) in error, error


def test_every_error_starts_at_its_field_or_source(tmp_path: Path) -> None:
    for text, _ in BAD:
        with pytest.raises(JobSpecError) as info:
            parse(text, tmp_path)
        assert str(info.value).startswith("job.yaml")


def test_nodes_checked_by_name_without_a_cluster(tmp_path: Path) -> None:
    spec = parse(BASE.replace("node-b", "node-z"), tmp_path, known=None)
    assert [n.node for n in spec.nodes] == ["node-a", "node-z"]
    with pytest.raises(JobSpecError, match="node name 'Node_Z' must be lower-case"):
        parse(BASE.replace("node-b", "Node_Z"), tmp_path, known=None)
    with pytest.raises(JobSpecError, match=r"unknown node node-a \(the cluster has no nodes\)"):
        parse(BASE, tmp_path, known=set())


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match=r"cannot read job spec .*nope.yaml"):
        load_job_spec(tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(JobSpecError, match="not UTF-8"):
        load_job_spec(tmp_path / "latin1.yaml")
    (tmp_path / "job.yaml").write_text(BASE + "nmae: x\n")
    with pytest.raises(JobSpecError) as info:
        load_job_spec(tmp_path / "job.yaml")
    assert str(info.value) == (
        f"{tmp_path / 'job.yaml'} line 6: unknown key 'nmae'; did you mean 'name'?"
    )


def test_working_dir_and_config_paths(tmp_path: Path) -> None:
    (tmp_path / "repo" / "examples").mkdir(parents=True)
    (tmp_path / "repo" / "examples" / "ds.json").write_text('{"train_batch_size": 16}')
    (tmp_path / "repo" / "jobs").mkdir()
    text = BASE + "working_dir: ..\ndeepspeed_config: examples/ds.json\n"
    spec = parse(text, tmp_path / "repo" / "jobs")
    assert spec.working_dir == str(tmp_path / "repo")
    assert spec.checkpoint_dir == ""
    assert json.loads(spec.deepspeed_config_json) == {"train_batch_size": 16}
    inline = parse(BASE + "deepspeed_config: {train_batch_size: 16}\n", tmp_path)
    assert inline.deepspeed_config_json == spec.deepspeed_config_json


def test_error_messages_clip_long_values(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError) as info:
        parse(BASE + f"{'k' * 5000}: 1\n", tmp_path)
    assert len(str(info.value)) < 300


# -- fuzzing: nothing but JobSpecError, whatever the input ----------------------------

YAMLISH = st.text(alphabet=string.printable + "é—\u00a0\t", max_size=300)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["node-a slots=1", "node-b slots=0", "latest", ".", "..", "/", "x.json"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(TOP_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [*TOP_KEYS, "max_restarts", "backoff_s", "resume", "pricing", "bleu4_min", "nmae"]
)
SPECISH = st.fixed_dictionaries(
    {"name": st.just("fuzz"), "nodes": st.just(["node-a slots=1"]), "command": st.just(["x"])}
).flatmap(
    lambda base: st.dictionaries(KEYS, VALUES, max_size=6).map(lambda extra: {**base, **extra})
)


def check_only_job_spec_errors(text: str, base_dir: Path) -> None:
    try:
        spec = parse_job_spec(text, base_dir, CLUSTER)
    except JobSpecError as exc:
        assert "\n" not in str(exc)
        return
    # Whatever parses also writes back and parses to the same spec.
    assert parse_job_spec(job_spec_to_yaml(spec), base_dir, CLUSTER) == spec


FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(text=YAMLISH)
def test_fuzz_text(tmp_path: Path, text: str) -> None:
    check_only_job_spec_errors(text, tmp_path)


@FUZZ
@given(doc=VALUES)
def test_fuzz_any_document(tmp_path: Path, doc: Any) -> None:
    check_only_job_spec_errors(yaml.safe_dump(doc), tmp_path)


@FUZZ
@given(doc=SPECISH)
def test_fuzz_spec_shaped_documents(tmp_path: Path, doc: dict[str, Any]) -> None:
    check_only_job_spec_errors(yaml.safe_dump(doc), tmp_path)
