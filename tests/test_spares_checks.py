# ruff: noqa: E501  (the tables of refusals read best one case a line)
"""Hot spares checked before anything runs: the spec's `spares:` key (console), the same
rules at the agent's RPC door, and a spare that cannot see the checkpoint refused plainly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import ValidationError

from agent.jobs.leader.attempt_start import NodeCheckFailed, check_nodes
from agent.jobs.leader.led_job import LedJob
from agent.jobs.leader.peers import NodeRefused
from agent.rpc.validation import validate_request
from console.model.job_spec import JobSpecError, job_spec_to_yaml, parse_job_spec

BASE = """\
name: demo-moe
nodes: [node-a slots=1, node-b slots=1]
command: [python, -m, agent.train]
"""
CLUSTER = {"node-a", "node-b", "node-c", "node-d"}


def parse(text: str, tmp_path: Path) -> job_pb2.JobSpec:
    return parse_job_spec(text, tmp_path, CLUSTER, source="job.yaml")


def test_spares_parse_and_round_trip(tmp_path: Path) -> None:
    spec = parse(BASE + "spares: [node-c, node-d]\n", tmp_path)
    assert list(spec.spares) == ["node-c", "node-d"]
    assert parse(job_spec_to_yaml(spec), tmp_path) == spec
    assert list(parse(BASE, tmp_path).spares) == []


@pytest.mark.parametrize(
    ("spares", "said"),
    [
        ("[node-x]", "job.yaml line 4: spares[0]: unknown node node-x (the cluster has node-a, node-b, node-c, node-d)"),
        ("[node-b]", "job.yaml line 4: spares[0]: node-b is also in nodes: a spare runs no ranks of its own"),
        ("[node-c, node-c]", "job.yaml line 4: spares[1]: node-c is listed twice; list each spare once"),
        ("node-c", "job.yaml line 4: spares: expected a list of node names, e.g. [node-c], got text 'node-c'"),
        ("[3]", "job.yaml line 4: spares[0]: expected a node name, got a number (3)"),
    ],
)  # fmt: skip
def test_bad_spares_are_refused_in_one_line(tmp_path: Path, spares: str, said: str) -> None:
    with pytest.raises(JobSpecError) as refused:
        parse(BASE + f"spares: {spares}\n", tmp_path)
    assert str(refused.value) == said


def test_the_agent_refuses_bad_spares_too() -> None:
    spec = job_pb2.JobSpec(name="j", command=["python"], spares=["node-b"])
    spec.nodes.add(node="node-a", slots=1)
    spec.nodes.add(node="node-b", slots=1)
    with pytest.raises(ValidationError) as refused:
        validate_request("SubmitJob", agent_service_pb2.SubmitJobRequest(spec=spec))
    assert (
        str(refused.value) == "spares[0]: node-b is also a node of the job; a spare holds no ranks"
    )
    spec.spares[:] = ["node-c", "node-c"]
    with pytest.raises(ValidationError, match="spares\\[1\\]: node-c is listed twice"):
        validate_request("SubmitJob", agent_service_pb2.SubmitJobRequest(spec=spec))
    bad = agent_service_pb2.RestartJobRequest(name="j", replace_nodes={"node-b": "Node C!"})
    with pytest.raises(ValidationError, match="replace_nodes\\[node-b\\]"):
        validate_request("RestartJob", bad)
    fine = agent_service_pb2.RestartJobRequest(name="j", replace_nodes={"node-b": "node-c"})
    validate_request("RestartJob", fine)


class Node:
    """A node that answers pings and refuses (or accepts) the ranks it is asked to check."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.asked: list[list[int]] = []

    async def ping(self) -> None:
        return None

    async def start_ranks(
        self, request: agent_service_pb2.StartRanksRequest
    ) -> agent_service_pb2.StartRanksResponse:
        self.asked.append(list(request.ranks))
        if self.refuse:
            raise NodeRefused(self.refuse)
        return agent_service_pb2.StartRanksResponse()


def test_a_spare_that_cannot_see_the_checkpoint_says_why() -> None:
    spec = job_pb2.JobSpec(name="j", checkpoint_dir="/local/ckpt", spares=["node-c"])
    spec.nodes.add(node="node-a", slots=1)
    spec.nodes.add(node="node-b", slots=1)
    missing = "node-c: checkpoint /local/ckpt/step5 to resume from does not exist"
    nodes = {"node-a": Node(), "node-b": Node(), "node-c": Node(missing)}
    led = LedJob("j", peers={}, nodes=nodes)  # type: ignore[arg-type]
    with pytest.raises(NodeCheckFailed) as refused:
        asyncio.run(
            check_nodes(led, spec, "/local/ckpt/step5", "node-a", swaps={"node-b": "node-c"})
        )
    assert str(refused.value) == (
        f"{missing} (spare node-c must see the job's checkpoint_dir /local/ckpt:"
        " a node-local checkpoint_dir cannot be resumed on a spare)"
    )
    # The spare was asked for node-b's rank; node-b itself was not asked.
    assert nodes["node-c"].asked == [[1]] and nodes["node-b"].asked == []
