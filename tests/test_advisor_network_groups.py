"""The advisor's network rule names the process group whose collectives dominate, where
ranks report collective time per group (data, tensor, expert)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from console.model.advisor_rules_speed import dominant_group, network_bound
from console.model.advisor_types import AdvisorInput, MetricPoint, Thresholds


def points(by_group: Mapping[str, float] | None, steps: int = 30) -> list[MetricPoint]:
    out: list[MetricPoint] = []
    for rank in range(2):
        for step in range(1, steps + 1):
            common = dict(
                rank=rank,
                node=f"node-{rank}",
                step=step,
                time=float(step),
                loss=1.0,
                grad_norm=1.0,
                loss_scale=None,
                step_time_s=1.0,
                collective_time_s=0.6,
                tokens_per_s=100.0,
            )
            if by_group is None:
                out.append(MetricPoint(**common))  # type: ignore[arg-type]
            else:
                out.append(MetricPoint(**common, collective_by_group_s=by_group))  # type: ignore[arg-type]
    return out


def advise(metrics: list[MetricPoint]) -> list[str]:
    inp = AdvisorInput(
        metrics=metrics,
        gpus=[],
        log_hits=[],
        failures=[],
        now=100.0,
        running=True,
        micro_batch=4,
        grad_accum=None,
        fp16=False,
    )
    (finding,) = network_bound(inp, Thresholds())
    assert finding.remedy is not None
    return [finding.evidence, finding.remedy.summary, finding.remedy.details]


def test_the_dominant_group_and_its_share() -> None:
    got = dominant_group(points({"data": 0.1, "expert": 0.5}))
    assert got is not None and got[0] == "expert" and got[1] == pytest.approx(0.5 / 0.6)
    assert dominant_group(points(None)) is None
    assert dominant_group(points({"data": 0.0})) is None


def test_expert_all_to_all_dominating_is_named_with_its_advice() -> None:
    evidence, summary, details = advise(points({"data": 0.1, "expert": 0.5}))
    assert "the expert group's collectives (the experts' all-to-all) took 83%" in evidence
    assert summary == "Keep the expert-parallel groups within a node; check the network path"
    assert details.startswith("Expert parallelism sends every token")


def test_tensor_group_dominating_is_named() -> None:
    evidence, summary, _ = advise(points({"data": 0.2, "tensor": 0.4}))
    assert "the tensor group's collectives (the tensor-parallel layers' all-reduce) took 67%" in (
        evidence
    )
    assert summary.startswith("Keep the tensor-parallel groups within a node")


def test_without_groups_the_rule_reads_as_before() -> None:
    evidence, summary, details = advise(points(None))
    assert "group's collectives" not in evidence
    assert summary == "Check the NCCL transport and the network path"
    assert details.startswith("NCCL may have fallen back")
    evidence, summary, _ = advise(points({"data": 0.6}))
    assert "the data group's collectives (gradient all-reduce" in evidence
    assert summary == "Check the NCCL transport and the network path"


def test_time_per_group_reaches_the_advisor_from_the_jobs_metrics_events() -> None:
    from gantry.v1 import job_pb2

    from console.model.advice import AdvisorInputs
    from console.model.cluster import ClusterStore
    from console.model.jobs import JobsStore

    store = JobsStore()
    view = store.apply_job("node-a", job_pb2.Job(spec=job_pb2.JobSpec(name="moe")))
    event = job_pb2.JobEvent(
        seq=1, job_name="moe", attempt=1, kind=job_pb2.JOB_EVENT_KIND_METRICS, node="node-a"
    )
    event.metrics.step = 5
    event.metrics.collective_time_s = 0.5
    event.metrics.collective_time_by_group_s["expert"] = 0.4
    store.apply_event(event)
    inputs = AdvisorInputs()
    built = inputs.build(inputs.take(view, ClusterStore(), 10.0))
    assert [dict(p.collective_by_group_s) for p in built.metrics] == [{"expert": 0.4}]
