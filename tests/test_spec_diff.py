"""The pure helpers behind operator restarts: what changed between two job specs, and the
rank argv pointing at the job's own DeepSpeed config."""

from __future__ import annotations

import json
import sys

import pytest
from gantry.v1 import job_pb2
from gantry.v1.spec_diff import CONFIG_FIELD, SpecChange, diff_specs, spec_changes

from agent.jobs.node.launch import rank_argv, with_deepspeed_config


def base_spec() -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(
        name="demo",
        command=["python", "-m", "agent.train"],
        args=["--per_device_train_batch_size", "16", "--gradient_accumulation_steps=1", "--bf16"],
        env={"NCCL_DEBUG": "INFO"},
        checkpoint_dir="/out/ckpt",
        deepspeed_config_json=json.dumps(
            {"train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 3}}, indent=2
        ),
    )
    spec.nodes.add(node="node-a", slots=1)
    spec.nodes.add(node="node-b", slots=1)
    spec.restart.max_restarts = 3
    return spec


def edited(**changes: object) -> job_pb2.JobSpec:
    spec = base_spec()
    for name, value in changes.items():
        field = getattr(spec, name)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        elif isinstance(value, dict):
            field.clear()
            field.update(value)
        else:
            setattr(spec, name, value)
    return spec


def test_equal_specs_have_no_changes() -> None:
    assert spec_changes(base_spec(), base_spec()) == []


def test_a_remedy_reads_as_one_phrase_per_change() -> None:
    new = edited(
        args=["--per_device_train_batch_size", "8", "--gradient_accumulation_steps=2", "--bf16"],
        env={"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "1"},
        deepspeed_config_json=json.dumps(
            {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}
        ),
    )
    assert spec_changes(base_spec(), new) == [
        "args --per_device_train_batch_size 16 -> 8",
        "args --gradient_accumulation_steps 1 -> 2",
        "env NCCL_IB_DISABLE unset -> 1",
        "deepspeed config train_micro_batch_size_per_gpu 16 -> 8",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--per_device_train_batch_size", "16", "--gradient_accumulation_steps=1"],
            ["--bf16 set -> unset"],
        ),
        (
            [
                "--per_device_train_batch_size",
                "16",
                "--gradient_accumulation_steps=1",
                "--bf16",
                "--lr",
                "-0.5",
            ],
            ["--lr unset -> -0.5"],
        ),
        (
            ["--bf16", "--gradient_accumulation_steps=1", "--per_device_train_batch_size", "16"],
            ["reordered"],
        ),
        (
            [
                "--per_device_train_batch_size",
                "16",
                "--gradient_accumulation_steps=1",
                "--bf16",
                "--note",
                "two words",
            ],
            ["--note unset -> 'two words'"],
        ),
    ],
)
def test_args_changes(args: list[str], expected: list[str]) -> None:
    assert spec_changes(base_spec(), edited(args=args)) == [f"args {e}" for e in expected]


def test_positional_args_and_command() -> None:
    old = edited(command=["python", "train.py"], args=["data.txt", "--steps", "3"])
    new = edited(command=["python3", "train.py"], args=["other.txt", "--steps", "3"])
    assert spec_changes(old, new) == [
        "command python train.py -> python3 train.py",
        "args data.txt -> other.txt",
    ]


def test_env_removed_and_changed() -> None:
    old = edited(env={"A": "1", "B": "x"})
    new = edited(env={"B": "y y"})
    assert spec_changes(old, new) == ["env A 1 -> unset", "env B x -> 'y y'"]


def test_deepspeed_config_changes() -> None:
    layout_only = edited(
        deepspeed_config_json=json.dumps(json.loads(base_spec().deepspeed_config_json))
    )
    assert spec_changes(base_spec(), layout_only) == []
    assert spec_changes(base_spec(), edited(deepspeed_config_json="")) == [
        "deepspeed config removed"
    ]
    assert spec_changes(edited(deepspeed_config_json=""), base_spec()) == ["deepspeed config added"]
    many = {f"key{i}": i for i in range(6)}
    assert spec_changes(base_spec(), edited(deepspeed_config_json=json.dumps(many))) == [
        "deepspeed config changed (8 keys)"
    ]
    # 1 and true are equal in Python, not in a DeepSpeed config.
    flag_old = edited(deepspeed_config_json='{"fp16": {"enabled": 1}}')
    flag_new = edited(deepspeed_config_json='{"fp16": {"enabled": true}}')
    assert spec_changes(flag_old, flag_new) == ["deepspeed config fp16.enabled 1 -> true"]
    broken = edited(deepspeed_config_json="{not json")
    assert spec_changes(base_spec(), broken) == ["deepspeed config changed"]


def test_other_fields_nodes_and_nested_messages() -> None:
    new = base_spec()
    new.name = "demo-2"
    del new.nodes[1:]
    new.restart.max_restarts = 5
    new.restart.backoff_s = 2.5
    new.hang_timeout_s = 120
    new.checkpoint_dir = ""
    new.eval_targets.bleu4_min = 0.3
    assert spec_changes(base_spec(), new) == [
        "name demo -> demo-2",
        "nodes node-a slots=1, node-b slots=1 -> node-a slots=1",
        "restart.max_restarts 3 -> 5",
        "restart.backoff_s 0 -> 2.5",
        "hang_timeout_s 0 -> 120",
        "checkpoint_dir /out/ckpt -> unset",
        "eval_targets.bleu4_min unset -> 0.3",
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["py", "t.py", "--x", "1"],
            ["py", "t.py", "--x", "1", "--deepspeed_config", "/a/ds.json"],
        ),
        (
            ["py", "t.py", "--deepspeed_config", "old.json", "--x", "1"],
            ["py", "t.py", "--deepspeed_config", "/a/ds.json", "--x", "1"],
        ),
        (
            ["py", "t.py", "--deepspeed_config=old.json", "--x", "1"],
            ["py", "t.py", "--deepspeed_config=/a/ds.json", "--x", "1"],
        ),
        # A flag left without its value gets one.
        (["py", "t.py", "--deepspeed_config"], ["py", "t.py", "--deepspeed_config", "/a/ds.json"]),
        # Every occurrence: argparse would use the last one.
        (
            ["py", "--deepspeed_config", "a.json", "--deepspeed_config=b.json"],
            ["py", "--deepspeed_config", "/a/ds.json", "--deepspeed_config=/a/ds.json"],
        ),
        # Another flag that merely starts alike is left alone.
        (
            ["py", "--deepspeed_config_path", "x"],
            ["py", "--deepspeed_config_path", "x", "--deepspeed_config", "/a/ds.json"],
        ),
    ],
)
def test_with_deepspeed_config(argv: list[str], expected: list[str]) -> None:
    before = list(argv)
    assert with_deepspeed_config(argv, "/a/ds.json") == expected
    assert argv == before  # pure


def test_rank_argv_with_a_config_file_then_resume() -> None:
    spec = job_pb2.JobSpec(command=["python", "t.py"], args=["--deepspeed_config", "mine.json"])
    assert rank_argv(spec, "/c/s", "/d/attempt-2/ds_config.json") == [
        sys.executable,
        "t.py",
        "--deepspeed_config",
        "/d/attempt-2/ds_config.json",
        "--resume_from_checkpoint",
        "/c/s",
    ]
    assert rank_argv(spec) == [sys.executable, "t.py", "--deepspeed_config", "mine.json"]


def test_diff_specs_holds_the_values_apart_from_the_phrases() -> None:
    new = edited(
        args=["--per_device_train_batch_size", "16", "--gradient_accumulation_steps=1"],
        env={},
        deepspeed_config_json="",
    )
    new.restart.max_restarts = 0
    assert diff_specs(base_spec(), new) == [
        SpecChange("args", "--bf16", "", None),  # "": a switch, None: unset
        SpecChange("env", "NCCL_DEBUG", "INFO", None),
        SpecChange("restart.max_restarts", "", "3", "0"),
        SpecChange(CONFIG_FIELD, summary="removed"),
    ]
    assert spec_changes(base_spec(), new) == [
        "args --bf16 set -> unset",
        "env NCCL_DEBUG INFO -> unset",
        "restart.max_restarts 3 -> 0",
        "deepspeed config removed",
    ]
