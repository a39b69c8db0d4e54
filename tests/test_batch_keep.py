"""The global batch of an attempt without some nodes (agent.jobs.leader.batch_keep). Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.leader.batch_keep import batch_for_world


def job(
    slots: tuple[int, ...], args: list[str], config: Mapping[str, object] | None = None
) -> job_pb2.JobSpec:
    spec = job_pb2.JobSpec(name="j", command=["python", "train.py"], args=args)
    for i, n in enumerate(slots):
        spec.nodes.add(node=f"node-{'abc'[i]}", slots=n)
    if config is not None:
        spec.deepspeed_config_json = json.dumps(dict(config))
    return spec


def test_the_whole_world_runs_the_spec_as_it_is() -> None:
    spec = job((1, 1), ["--gradient_accumulation_steps", "1"])
    plan = batch_for_world(spec, set())
    assert plan.spec is spec and plan.message == "" and plan.details == {}


def test_a_shrink_that_divides_keeps_the_batch_in_args_either_form() -> None:
    spec = job((2, 2), ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps=3"])
    plan = batch_for_world(spec, {"node-b"})
    assert list(plan.spec.args)[-1] == "--gradient_accumulation_steps=6"
    assert plan.message == (
        "gradient accumulation 3 -> 6 on 2 of 4 ranks keeps the global batch at 96"
    )
    assert plan.details == {
        "gradient_accumulation_steps": "3->6",
        "global_batch": "96->96",
        "ranks": "4->2",
    }
    assert list(spec.args)[-1] == "--gradient_accumulation_steps=3"  # the job's spec untouched


def test_a_shrink_that_cannot_keep_the_batch_says_which_it_becomes() -> None:
    spec = job(
        (1, 1, 1), ["--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1"]
    )
    plan = batch_for_world(spec, {"node-c"})
    assert list(plan.spec.args)[-1] == "1"
    assert plan.message.startswith("the global batch becomes 32 (was 48)")
    assert plan.details["global_batch"] == "48->32"


def test_the_deepspeed_config_in_the_spec_or_in_the_file_the_args_name(tmp_path: Path) -> None:
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 16,
    }
    plan = batch_for_world(job((1, 1), [], config), {"node-b"})
    assert json.loads(plan.spec.deepspeed_config_json) == {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 4,
        "train_batch_size": 16,
    }
    (tmp_path / "ds.json").write_text(json.dumps({"gradient_accumulation_steps": 1}))
    spec = job((1, 1), ["--deepspeed_config", "ds.json"])
    spec.working_dir = str(tmp_path)
    plan = batch_for_world(spec, {"node-a"})
    assert json.loads(plan.spec.deepspeed_config_json) == {"gradient_accumulation_steps": 2}
    assert "keeps the global batch at 2 x micro batch" in plan.message


def test_no_accumulation_to_raise_is_said_plainly() -> None:
    plan = batch_for_world(job((1, 1), ["--lr", "1"]), {"node-b"})
    assert list(plan.spec.args) == ["--lr", "1"]
    assert plan.message.startswith("the global batch changes from 2 to 1 ranks' worth")
