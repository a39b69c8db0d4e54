"""Checkpoint retention in the job spec: `checkpoint: {keep_last: N}`, its older spelling
`keep_checkpoints: N`, and the default of 5 whenever the job has a checkpoint_dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from gantry.v1 import job_pb2
from gantry.v1.rules import ValidationError, validate_job_spec

from console.model.job_spec import JobSpecError, job_spec_to_yaml, parse_job_spec

BASE = """\
name: demo-moe
nodes: [node-a slots=1]
command: [python, -m, agent.train]
"""


def parse(text: str, base_dir: Path) -> job_pb2.JobSpec:
    return parse_job_spec(BASE + text, base_dir, {"node-a"}, source="job.yaml")


@pytest.mark.parametrize(
    ("text", "keep"),
    [
        ("checkpoint_dir: out\ncheckpoint: {keep_last: 3}\n", 3),
        ("checkpoint_dir: out\nkeep_checkpoints: 3\n", 3),  # the older spelling
        ("checkpoint_dir: out\n", 5),  # the default with a checkpoint_dir
        ("args: [--output_dir, out]\n", 5),  # checkpoint_dir from the args' output dir
        ("checkpoint_dir: out\ncheckpoint: {keep_last: 0}\n", 0),  # keep all, said so
        ("checkpoint_dir: out\ncheckpoint: {}\n", 5),
        ("", 0),  # no checkpoint_dir: nothing to keep
    ],
)
def test_keep_last_its_old_spelling_and_its_default(tmp_path: Path, text: str, keep: int) -> None:
    spec = parse(text, tmp_path)
    assert spec.keep_checkpoints == keep
    assert parse_job_spec(job_spec_to_yaml(spec), tmp_path, {"node-a"}) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "checkpoint_dir: out\ncheckpoint: {keep_last: 3}\nkeep_checkpoints: 3\n",
            "keep_checkpoints: is checkpoint.keep_last written the old way; give one of the two",
        ),
        ("checkpoint: {keep_last: 2}\n", "checkpoint.keep_last: needs checkpoint_dir"),
        ("checkpoint_dir: out\ncheckpoint: {keep_last: -1}\n", "-1 must be a whole number >= 0"),
        ("checkpoint_dir: out\ncheckpoint: {keep: 2}\n", "keep_last"),
        ("checkpoint_dir: out\ncheckpoint: 3\n", "checkpoint"),
    ],
)
def test_bad_retention_is_refused_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(JobSpecError) as refused:
        parse(text, tmp_path)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_contract_bounds_the_count() -> None:
    spec = job_pb2.JobSpec(name="j", nodes=[job_pb2.NodeSlots(node="a", slots=1)], command=["p"])
    spec.keep_checkpoints = 100_001
    with pytest.raises(ValidationError, match="keep_checkpoints: 100001 is too large"):
        validate_job_spec(spec)
