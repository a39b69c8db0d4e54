"""console.model.remedies' kinds from issue 15: turning on gradient checkpointing (the OOM fix
once the micro batch is 1) and going on without a node (a fatal XID), and `plan_remedy`,
which says what either restarts the job with."""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2

from console.model.advisor import Remedy
from console.model.remedies import (
    RemedyError,
    apply_remedy,
    gradient_checkpointing_on,
    plan_remedy,
)
from tests.test_remedies import HALVE, spec

CHECKPOINTING = Remedy("enable-gradient-checkpointing", "Turn on gradient checkpointing", "...")


def without(node: str) -> Remedy:
    return Remedy("exclude-node", f"Go on without {node}", "...", {"node": node})


def on_nodes(*nodes: str) -> job_pb2.JobSpec:
    out = spec(["--per_device_train_batch_size", "8"])
    out.nodes.extend(job_pb2.NodeSlots(node=n) for n in nodes)
    return out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--per_device_train_batch_size", "1"],
            ["--per_device_train_batch_size", "1", "--gradient_checkpointing"],
        ),
        (
            ["--gradient_checkpointing", "False", "--bf16"],
            ["--gradient_checkpointing", "true", "--bf16"],
        ),
        (["--gradient_checkpointing=false"], ["--gradient_checkpointing=true"]),
    ],
)
def test_enable_gradient_checkpointing(args: list[str], expected: list[str]) -> None:
    before = spec(args)
    assert not gradient_checkpointing_on(list(before.args))
    edited = apply_remedy(CHECKPOINTING, before)
    assert list(edited.args) == expected and list(before.args) == args
    assert gradient_checkpointing_on(list(edited.args))
    plan = plan_remedy(CHECKPOINTING, before)
    assert plan.spec == edited and plan.exclude == ()
    assert plan.changes and all("gradient_checkpointing" in line for line in plan.changes)


@pytest.mark.parametrize(
    "args",
    [
        ["--gradient_checkpointing"],
        ["--gradient_checkpointing", "--bf16"],
        ["--gradient_checkpointing", "True"],
        ["--gradient_checkpointing=1"],
        ["--gradient_checkpointing", "no", "--gradient_checkpointing"],  # the last one wins
    ],
)
def test_gradient_checkpointing_already_on(args: list[str]) -> None:
    assert gradient_checkpointing_on(args)
    with pytest.raises(RemedyError) as caught:
        apply_remedy(CHECKPOINTING, spec(args))
    assert str(caught.value) == "--gradient_checkpointing is on already in args"


def test_exclude_node_is_a_restart_not_a_spec_edit() -> None:
    job = on_nodes("node-a", "node-b")
    plan = plan_remedy(without("node-b"), job)
    assert plan.exclude == ("node-b",) and plan.spec == job
    assert plan.changes == ["nodes: without node-b (a smaller world, resumed)"]
    with pytest.raises(RemedyError) as caught:
        apply_remedy(without("node-b"), job)
    assert "(a restart: see plan_remedy)" in str(caught.value)


@pytest.mark.parametrize(
    ("nodes", "node", "message"),
    [
        (("node-a", "node-b"), "node-c", "no node 'node-c' to go on without: the job runs on"),
        (("node-a",), "node-a", "cannot go on without node-a: the job has no other node"),
        (("node-a", "node-b"), "", "no node '' to go on without"),
    ],
)
def test_exclude_node_refuses(nodes: tuple[str, ...], node: str, message: str) -> None:
    with pytest.raises(RemedyError) as caught:
        plan_remedy(without(node), on_nodes(*nodes))
    assert str(caught.value).startswith(message)


def test_plan_of_a_spec_edit() -> None:
    plan = plan_remedy(HALVE, spec(["--per_device_train_batch_size", "8"]))
    assert plan.exclude == ()
    assert plan.changes == [
        "args: --per_device_train_batch_size 8 -> 4",
        "args: --gradient_accumulation_steps 2 (added)",
    ]
