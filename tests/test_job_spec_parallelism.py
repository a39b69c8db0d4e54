"""The job spec's `parallelism: {tensor: T, expert: E}`: parsed, written back, and a layout
that does not fit the world (or the model's experts) refused before launch in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from console.model.job_spec import JobSpecError, job_spec_to_yaml, parse_job_spec

BASE = """\
name: demo-moe
nodes:
  - node-a slots=2
  - node-b slots=2
command: [python, -m, agent.train]
args: [--model_name_or_path, tiny-moe]
"""


def parse(text: str, base_dir: Path) -> job_pb2.JobSpec:
    return parse_job_spec(text, base_dir, {"node-a", "node-b"}, source="job.yaml")


def test_parallelism_is_parsed_and_written_back(tmp_path: Path) -> None:
    spec = parse(BASE + "parallelism: {tensor: 2, expert: 2}\n", tmp_path)
    assert (spec.parallelism.tensor, spec.parallelism.expert) == (2, 2)
    assert parse(job_spec_to_yaml(spec), tmp_path) == spec
    only_expert = parse(BASE + "parallelism: {expert: 4}\n", tmp_path)
    assert (only_expert.parallelism.tensor, only_expert.parallelism.expert) == (1, 4)
    plain = parse(BASE, tmp_path)
    assert not plain.HasField("parallelism")
    assert "\nparallelism:" not in job_spec_to_yaml(plain)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "parallelism: {tensor: 3}\n",
            "job.yaml line 7: parallelism: tensor parallel 3 does not divide the world of 4 ranks",
        ),
        (
            "parallelism: {tensor: 2, expert: 4}\n",
            "job.yaml line 7: parallelism: expert parallel 4 does not divide the 2 "
            "data-parallel ranks (world 4 / tensor 2)",
        ),
        (
            "parallelism: {expert: 0}\n",
            "job.yaml line 7: parallelism.expert: 0 must be at least 1 (1: no expert parallelism)",
        ),
        (
            "parallelism: {experts: 2}\n",
            "job.yaml line 7: parallelism: unknown key 'experts'; did you mean 'expert'?",
        ),
        ("expert: 2\n", "job.yaml line 7: unknown key 'expert'; it belongs under parallelism"),
    ],
)
def test_a_bad_layout_is_refused_naming_the_numbers(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(JobSpecError) as err:
        parse(BASE + extra, tmp_path)
    assert str(err.value).startswith(message), str(err.value)


def test_the_models_experts_must_split_evenly(tmp_path: Path) -> None:
    text = BASE.replace("slots=2", "slots=3") + "parallelism: {expert: 3}\n"
    with pytest.raises(JobSpecError, match="expert parallel 3 does not divide the model's 32"):
        parse(text, tmp_path)
    # A model whose experts Gantry does not know: the world decides alone.
    other = text.replace("tiny-moe", "/models/mixtral")
    assert parse(other, tmp_path).parallelism.expert == 3
