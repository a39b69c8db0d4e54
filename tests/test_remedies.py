"""console.model.remedies: remedies as edits of a job spec's args and embedded DeepSpeed config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gantry.v1 import job_pb2
from gantry.v1.spec_diff import spec_changes

from console.model.advisor import Remedy, evaluate
from console.model.job_spec import load_job_spec
from console.model.remedies import APPLICABLE_KINDS, RemedyError, apply_remedy, describe_changes
from tests.fixtures.advisor.make_streams import HERE, load

ROOT = Path(__file__).resolve().parent.parent

HALVE = Remedy("halve-micro-batch", "Halve the micro batch", "...")
ACCUM = Remedy("set-grad-accum", "Double accumulation", "...")
LOWER_LR = Remedy("lower-lr", "Halve the learning rate", "...")


def spec(args: list[str], config: dict[str, Any] | None = None) -> job_pb2.JobSpec:
    out = job_pb2.JobSpec(name="demo", command=["python", "-m", "agent.train"], args=args)
    out.env["NCCL_DEBUG"] = "INFO"
    if config is not None:
        out.deepspeed_config_json = json.dumps(config, indent=2)
    return out


def config_of(edited: job_pb2.JobSpec) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(edited.deepspeed_config_json)
    return loaded


def test_applicable_kinds() -> None:
    edits = {"halve-micro-batch", "set-grad-accum", "lower-lr", "enable-gradient-checkpointing"}
    assert edits | {"exclude-node"} == APPLICABLE_KINDS


# --- halve-micro-batch --------------------------------------------------------------------


def test_halve_micro_batch_in_args() -> None:
    old = spec(["--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1"])
    new = apply_remedy(HALVE, old)
    assert list(new.args) == [
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "2",
    ]
    assert list(old.args)[1] == "16"  # the original is untouched
    assert new.name == old.name and dict(new.env) == {"NCCL_DEBUG": "INFO"}
    assert list(new.command) == list(old.command)
    assert describe_changes(old, new) == [
        "args: --per_device_train_batch_size 16 -> 8",
        "args: --gradient_accumulation_steps 1 -> 2",
    ]


def test_halve_micro_batch_equals_form() -> None:
    old = spec(["--per_device_train_batch_size=16", "--gradient_accumulation_steps=3", "--seed=1"])
    new = apply_remedy(HALVE, old)
    assert list(new.args) == [
        "--per_device_train_batch_size=8",
        "--gradient_accumulation_steps=6",
        "--seed=1",
    ]
    assert describe_changes(old, new) == [
        "args: --per_device_train_batch_size 16 -> 8",
        "args: --gradient_accumulation_steps 3 -> 6",
    ]


def test_halve_micro_batch_adds_the_accumulation_flag() -> None:
    old = spec(["--per_device_train_batch_size", "4", "--seed", "1"])
    new = apply_remedy(HALVE, old)
    assert list(new.args) == [
        "--per_device_train_batch_size",
        "2",
        "--seed",
        "1",
        "--gradient_accumulation_steps",
        "2",
    ]
    assert describe_changes(old, new) == [
        "args: --per_device_train_batch_size 4 -> 2",
        "args: --gradient_accumulation_steps 2 (added)",
    ]


def test_halve_micro_batch_added_flag_doubles_the_configs_accumulation() -> None:
    old = spec(["--per_device_train_batch_size", "8"], {"gradient_accumulation_steps": 4})
    new = apply_remedy(HALVE, old)
    assert list(new.args) == [
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "8",
    ]
    assert config_of(new) == {"gradient_accumulation_steps": 8}


def test_halve_micro_batch_in_the_embedded_config() -> None:
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 4,
        "fp16": {"enabled": True},
    }
    old = spec(["--seed", "1"], config)
    new = apply_remedy(HALVE, old)
    assert list(new.args) == ["--seed", "1"]  # no flag added: the config holds both
    assert config_of(new) == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 8,
        "fp16": {"enabled": True},
    }
    assert new.deepspeed_config_json == json.dumps(config_of(new), indent=2)
    assert describe_changes(old, new) == [
        "deepspeed_config: train_micro_batch_size_per_gpu 4 -> 2",
        "deepspeed_config: gradient_accumulation_steps 4 -> 8",
    ]


@pytest.mark.parametrize("accum", ["auto", None])
def test_halve_micro_batch_in_config_without_a_numeric_accumulation(accum: str | None) -> None:
    config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 6}
    if accum is not None:
        config["gradient_accumulation_steps"] = accum
    new = apply_remedy(HALVE, spec([], config))
    assert config_of(new) == {"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2}


def test_halve_micro_batch_in_args_and_config() -> None:
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto"}
    old = spec(["--per_device_train_batch_size", "16", "--gradient_accumulation_steps=2"], config)
    new = apply_remedy(HALVE, old)
    assert list(new.args) == [
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps=4",
    ]
    assert config_of(new) == {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": "auto",
    }


def test_halve_micro_batch_rounds_an_odd_one_down() -> None:
    new = apply_remedy(HALVE, spec(["--per_device_train_batch_size", "7"]))
    assert list(new.args) == [
        "--per_device_train_batch_size",
        "3",
        "--gradient_accumulation_steps",
        "2",
    ]


def test_halve_micro_batch_edits_every_occurrence() -> None:
    args = ["--per_device_train_batch_size", "2", "--per_device_train_batch_size=8"]
    new = apply_remedy(HALVE, spec(args))
    assert list(new.args)[:3] == [
        "--per_device_train_batch_size",
        "1",
        "--per_device_train_batch_size=4",
    ]


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (
            ["--seed", "1"],
            None,
            "no micro batch to halve: no --per_device_train_batch_size in args and no numeric "
            "train_micro_batch_size_per_gpu in the DeepSpeed config",
        ),
        (
            [],
            {"train_micro_batch_size_per_gpu": "auto"},
            "no micro batch to halve: no --per_device_train_batch_size in args and no numeric "
            "train_micro_batch_size_per_gpu in the DeepSpeed config",
        ),
        (
            ["--per_device_train_batch_size", "1"],
            {"train_micro_batch_size_per_gpu": 8},  # the command line wins
            "the micro batch is already 1: it cannot be halved",
        ),
        (
            [],
            {"train_micro_batch_size_per_gpu": 1},
            "the micro batch is already 1: it cannot be halved",
        ),
        (
            ["--per_device_train_batch_size=big"],
            None,
            "--per_device_train_batch_size 'big' in args is not a whole number",
        ),
        (
            ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "x"],
            None,
            "--gradient_accumulation_steps 'x' in args is not a whole number",
        ),
        (
            [],
            {"train_micro_batch_size_per_gpu": 2.5},
            "deepspeed_config train_micro_batch_size_per_gpu 2.5 is not a whole number",
        ),
    ],
)
def test_halve_micro_batch_refuses(
    args: list[str], config: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(RemedyError) as caught:
        apply_remedy(HALVE, spec(args, config))
    assert str(caught.value) == message


# --- set-grad-accum -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--gradient_accumulation_steps", "4"], ["--gradient_accumulation_steps", "8"]),
        (["--gradient_accumulation_steps=4"], ["--gradient_accumulation_steps=8"]),
        (
            ["--per_device_train_batch_size", "8"],
            ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"],
        ),
    ],
)
def test_set_grad_accum_in_args(args: list[str], expected: list[str]) -> None:
    old = spec(args)
    new = apply_remedy(ACCUM, old)
    assert list(new.args) == expected
    assert not new.deepspeed_config_json


def test_set_grad_accum_in_the_embedded_config() -> None:
    old = spec(["--per_device_train_batch_size", "8"], {"gradient_accumulation_steps": 3})
    new = apply_remedy(ACCUM, old)
    assert list(new.args) == ["--per_device_train_batch_size", "8"]  # the config's is enough
    assert config_of(new) == {"gradient_accumulation_steps": 6}
    assert describe_changes(old, new) == ["deepspeed_config: gradient_accumulation_steps 3 -> 6"]


def test_set_grad_accum_sets_a_missing_config_key() -> None:
    old = spec(["--seed", "1"], {"train_micro_batch_size_per_gpu": 4})
    new = apply_remedy(ACCUM, old)
    assert config_of(new) == {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    assert describe_changes(old, new) == ["deepspeed_config: gradient_accumulation_steps 2 (added)"]


def test_set_grad_accum_refuses_without_a_place() -> None:
    with pytest.raises(RemedyError, match=r"^no gradient accumulation to raise: no "):
        apply_remedy(ACCUM, spec(["--seed", "1"]))


# --- lower-lr -----------------------------------------------------------------------------


def test_lower_lr_in_args() -> None:
    old = spec(["--learning_rate", "1e-3", "--seed", "1"])
    new = apply_remedy(LOWER_LR, old)
    assert list(new.args) == ["--learning_rate", "0.0005", "--seed", "1"]
    assert describe_changes(old, new) == ["args: --learning_rate 1e-3 -> 0.0005"]


def test_lower_lr_equals_form() -> None:
    new = apply_remedy(LOWER_LR, spec(["--learning_rate=2e-5"]))
    assert list(new.args) == ["--learning_rate=1e-05"]


def test_lower_lr_in_the_embedded_config() -> None:
    config = {
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-5, "eps": 1e-8}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 2e-5}},
    }
    old = spec(["--learning_rate", "4e-5"], config)
    new = apply_remedy(LOWER_LR, old)
    assert list(new.args) == ["--learning_rate", "2e-05"]
    edited = config_of(new)
    assert edited["optimizer"]["params"] == {"lr": 1e-5, "eps": 1e-8}
    assert edited["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 1e-5}
    assert describe_changes(old, new) == [
        "args: --learning_rate 4e-5 -> 2e-05",
        "deepspeed_config: optimizer.params.lr 2e-05 -> 1e-05",
        "deepspeed_config: scheduler.params.warmup_max_lr 2e-05 -> 1e-05",
    ]


def test_lower_lr_leaves_auto_alone() -> None:
    config = {"optimizer": {"params": {"lr": "auto"}}}
    new = apply_remedy(LOWER_LR, spec(["--learning_rate", "1e-4"], config))
    assert config_of(new) == config
    with pytest.raises(RemedyError, match=r"^no learning rate to lower: no --learning_rate"):
        apply_remedy(LOWER_LR, spec(["--seed", "1"], config))


def test_lower_lr_refuses_a_non_number() -> None:
    with pytest.raises(RemedyError) as caught:
        apply_remedy(LOWER_LR, spec(["--learning_rate", "fast"]))
    assert str(caught.value) == "--learning_rate 'fast' in args is not a number"


# --- other kinds, bad configs -------------------------------------------------------------


def test_advice_changes_no_spec() -> None:
    advice = Remedy("advice", "Check rank 3 on node-b", "...")
    with pytest.raises(RemedyError) as caught:
        apply_remedy(advice, spec(["--per_device_train_batch_size", "8"]))
    assert str(caught.value) == "remedy 'advice' changes no job spec: Check rank 3 on node-b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "job demo: deepspeed_config_json is not valid JSON"),
        ("[1, 2]", "job demo: deepspeed_config_json is not a JSON object"),
    ],
)
def test_bad_embedded_config(text: str, message: str) -> None:
    broken = spec(["--per_device_train_batch_size", "8"])
    broken.deepspeed_config_json = text
    with pytest.raises(RemedyError) as caught:
        apply_remedy(HALVE, broken)
    assert str(caught.value) == message


# --- describe_changes ---------------------------------------------------------------------


def test_describe_changes_of_other_edits() -> None:
    old = spec(["--fp16", "--seed", "1", "data.jsonl"], {"a": {"b": 1, "c": [1, 2]}})
    new = job_pb2.JobSpec()
    new.CopyFrom(old)
    assert describe_changes(old, new) == []
    new.name = "demo-2"
    new.env["NCCL_IB_DISABLE"] = "0"
    del new.args[0]
    new.args.append("--bf16")
    new.deepspeed_config_json = json.dumps({"a": {"c": [1, 2, 3]}, "d": True})
    assert describe_changes(old, new) == [
        "args: --fp16 removed (was (switch))",
        "args: --bf16 (switch) (added)",
        "deepspeed_config: a.b removed (was 1)",
        "deepspeed_config: a.c [1,2] -> [1,2,3]",
        "deepspeed_config: d true (added)",
        "name: demo -> demo-2",
        "env: NCCL_IB_DISABLE 0 (added)",
    ]


def test_describe_changes_of_positional_args_and_whole_configs() -> None:
    old = spec(["train.py", "--seed", "1"])
    new = spec(["train2.py", "--seed", "1"], {"x": 1})
    assert describe_changes(old, new) == [
        "args: train.py -> train2.py",
        "deepspeed_config added",
    ]
    assert describe_changes(new, old)[-1] == "deepspeed_config removed"


# --- end to end: the advisor's remedy on the demo job -------------------------------------


def test_oom_remedy_on_the_demo_job() -> None:
    demo = load_job_spec(ROOT / "examples" / "job-demo.yaml")
    (finding,) = evaluate(load(HERE / "oom_cuda.jsonl"))
    assert finding.remedy is not None
    edited = apply_remedy(finding.remedy, demo)
    assert describe_changes(demo, edited) == [
        "args: --per_device_train_batch_size 16 -> 8",
        "args: --gradient_accumulation_steps 1 -> 2",
    ]


def test_describe_changes_reads_every_field_from_the_one_differ() -> None:
    old = spec(["--bf16", "--lr", "1"])
    new = job_pb2.JobSpec()
    new.CopyFrom(old)
    del new.env["NCCL_DEBUG"]
    new.restart.max_restarts = 3
    new.checkpoint_dir = "/out/ckpt"
    new.args[:] = ["--lr", "1", "--bf16"]
    assert describe_changes(old, new) == [
        "args reordered",
        "env: NCCL_DEBUG removed (was INFO)",
        "restart.max_restarts: 0 -> 3",
        "checkpoint_dir: /out/ckpt (added)",
    ]
    # The agent's event phrases for the same edit (gantry.v1.spec_diff.spec_changes).
    assert spec_changes(old, new) == [
        "args reordered",
        "env NCCL_DEBUG INFO -> unset",
        "restart.max_restarts 0 -> 3",
        "checkpoint_dir unset -> /out/ckpt",
    ]
