"""`preemption: {grace_s: N}` in a job spec: read, written back, refused when out of range;
the agent's contract refuses a negative grace too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gantry.v1 import job_pb2
from gantry.v1.rules import ValidationError, validate_job_spec

from console.model.job_spec import JobSpecError, job_spec_to_yaml, parse_job_spec


def parse(tmp_path: Path, extra: dict[str, object]) -> job_pb2.JobSpec:
    doc = {"name": "pre", "nodes": ["node-a slots=1"], "command": ["python", "x.py"], **extra}
    return parse_job_spec(json.dumps(doc), tmp_path, {"node-a"})


def test_the_grace_is_read_and_written_back(tmp_path: Path) -> None:
    spec = parse(tmp_path, {"preemption": {"grace_s": 45}})
    assert spec.preemption.grace_s == 45
    assert "grace_s: 45" in job_spec_to_yaml(spec)
    assert not parse(tmp_path, {}).HasField("preemption")
    empty = parse(tmp_path, {"preemption": {}})  # the default grace, said out loud
    assert parse_job_spec(job_spec_to_yaml(empty), tmp_path, {"node-a"}) == empty


@pytest.mark.parametrize(
    ("value", "said"),
    [({"grace_s": 7200}, "preemption.grace_s"), ({"grace": 5}, "grace"), (30, "preemption")],
)
def test_a_bad_preemption_is_one_line_naming_it(tmp_path: Path, value: object, said: str) -> None:
    with pytest.raises(JobSpecError) as refused:
        parse(tmp_path, {"preemption": value})
    assert said in str(refused.value) and "\n" not in str(refused.value)


def test_the_contract_refuses_a_negative_grace() -> None:
    spec = job_pb2.JobSpec(name="pre", command=["python"])
    spec.nodes.add(node="node-a", slots=1)
    spec.preemption.grace_s = -1
    with pytest.raises(ValidationError, match=r"preemption\.grace_s"):
        validate_job_spec(spec)
