"""What the trainer reports of its parallel layout reaches the job: peak memory and time per
process group from the metrics file, the sizes into the ranks' environment, and each rank's
(data, tensor, expert) coordinates in the job's description."""

from __future__ import annotations

from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import _place_ranks
from agent.jobs.metrics_records import metrics_from_fields
from agent.jobs.node.launch import rank_env


def test_peak_memory_and_time_per_group_are_read_from_a_metrics_record() -> None:
    m = metrics_from_fields(
        {
            "step": 3,
            "peak_memory_bytes": 123456789,
            "collective_by_group_s": {"expert": 0.25, "data": 0.5, "bad": "x"},
        }
    )
    assert m is not None
    assert m.peak_memory_bytes == 123456789
    assert dict(m.collective_time_by_group_s) == {"expert": 0.25, "data": 0.5}


def spec(tensor: int, expert: int) -> job_pb2.JobSpec:
    s = job_pb2.JobSpec(name="moe", command=["python"])
    s.nodes.add(node="node-a", slots=4)
    if tensor or expert:
        s.parallelism.tensor, s.parallelism.expert = tensor, expert
    return s


def test_the_ranks_learn_the_sizes_from_their_environment(tmp_path: Path) -> None:
    def env(s: job_pb2.JobSpec) -> dict[str, str]:
        return rank_env(
            {},
            s,
            attempt=1,
            rank=0,
            local_rank=0,
            local_world_size=4,
            world_size=4,
            master_addr="127.0.0.1",
            master_port=29500,
            metrics_path=tmp_path / "metrics.jsonl",
            gpus=[],
            heartbeat_s=5.0,
        )

    with_sizes = env(spec(2, 1))
    assert (with_sizes["GANTRY_TENSOR_PARALLEL"], with_sizes["GANTRY_EXPERT_PARALLEL"]) == (
        "2",
        "1",
    )
    assert "GANTRY_TENSOR_PARALLEL" not in env(spec(0, 0))


def test_each_rank_gets_its_coordinates_only_in_a_parallel_job() -> None:
    job = job_pb2.Job(spec=spec(1, 2))
    attempt = job.attempts.add(number=1)
    for r in range(4):
        attempt.ranks.add(rank=r, node="node-a")
    _place_ranks(job)
    got = [(r.coordinates.data, r.coordinates.tensor, r.coordinates.expert) for r in attempt.ranks]
    assert got == [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]
    plain = job_pb2.Job(spec=spec(0, 0))
    plain.attempts.add(number=1).ranks.add(rank=1)
    _place_ranks(plain)
    assert not plain.attempts[0].ranks[0].HasField("coordinates")
