"""The console's job store and cost maths, as pure logic (no servers)."""

from __future__ import annotations

import math

from gantry.v1 import job_pb2

from console.model.cost import arg_value, job_cost, total_steps
from console.model.jobs import EK, JS, RS, JobsStore

T0 = 1_800_000_000.0


def make_job(
    name: str = "train", ranks: int = 2, state: job_pb2.JobState = JS.JOB_STATE_RUNNING
) -> job_pb2.Job:
    job = job_pb2.Job(state=state)
    job.spec.name = name
    job.spec.args.extend(["--max_steps", "100", "--per_device_train_batch_size=4"])
    for i in range(ranks):
        job.spec.nodes.add(node=f"node-{i}", slots=1)
    attempt = job.attempts.add(number=1, state=state)
    attempt.started.FromSeconds(int(T0))
    for i in range(ranks):
        attempt.ranks.add(rank=i, node=f"node-{i}", state=RS.RANK_STATE_RUNNING, gpu_indices=[0])
    return job


def metrics_event(
    seq: int, rank: int, step: int, loss: float, attempt: int = 1, name: str = "train"
) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(
        seq=seq, job_name=name, attempt=attempt, kind=EK.JOB_EVENT_KIND_METRICS, rank=rank
    )
    event.node = f"node-{rank}"
    m = event.metrics
    m.step = step
    m.loss = loss
    m.step_time_s = 0.5
    m.collective_time_s = 0.1
    m.tokens_per_s = 1000.0
    m.time.FromMilliseconds(int((T0 + step) * 1000))
    return event


def test_metrics_aggregate_per_step_across_ranks() -> None:
    store = JobsStore()
    store.apply_job("node-0", make_job())
    seq = 0
    for step in (1, 2, 3):
        for rank in (0, 1):
            seq += 1
            assert store.apply_event(metrics_event(seq, rank, step, 10.0 - step + rank))
    view = store.get("train")
    assert view is not None
    assert view.step_series("loss") == [(1, 9.5), (2, 8.5), (3, 7.5)]
    assert view.step_series("tokens_per_s", how="total") == [(1, 2000.0), (2, 2000.0), (3, 2000.0)]
    assert view.step_series("loss", last=1) == [(3, 7.5)]
    assert view.last_step() == 3
    rows = view.rank_rows()
    assert [(r.rank, latest.metrics.step if latest else None) for r, latest in rows] == [
        (0, 3),
        (1, 3),
    ]
    # A replayed event (seq already held) changes nothing.
    version = store.version
    assert not store.apply_event(metrics_event(seq, 0, 3, 1.0))
    assert store.version == version
    buckets = view.time_series("loss", bucket_s=1.0, now=T0 + 3.5, buckets=4)
    assert buckets == [None, 9.5, 8.5, 7.5]


def test_resumed_attempt_replaces_repeated_steps_and_nan_is_a_hole() -> None:
    store = JobsStore()
    store.apply_job("node-0", make_job(ranks=1))
    for seq, step in enumerate((1, 2, 3, 4), start=1):
        store.apply_event(metrics_event(seq, 0, step, 5.0))
    # Attempt 2 resumes from the step-2 checkpoint: steps 3 and 4 come again.
    store.apply_event(metrics_event(5, 0, 3, 4.0, attempt=2))
    store.apply_event(metrics_event(6, 0, 4, math.nan, attempt=2))
    view = store.get("train")
    assert view is not None
    assert view.step_series("loss") == [(1, 5.0), (2, 5.0), (3, 4.0)]
    assert view.steps[4].counts.get("loss:bad") == 1
    # The leader has not described attempt 2 yet: no figures from another attempt.
    assert view.rank_rows()[0][1] is None
    job = make_job(ranks=1)
    job.attempts.add(number=2).ranks.add(rank=0, node="node-0")
    store.apply_job("node-0", job)
    latest = view.rank_rows()[0][1]
    assert latest is not None and latest.attempt == 2 and latest.metrics.step == 4


def test_bad_nodes_and_gpu_owners() -> None:
    store = JobsStore()
    job = make_job()
    job.attempts[0].ranks[1].state = RS.RANK_STATE_HUNG
    store.apply_job("node-0", job)
    done = make_job("old", state=JS.JOB_STATE_SUCCEEDED)
    store.apply_job("node-0", done)
    assert store.bad_nodes() == {"node-1"}
    owners = store.gpu_owners()
    assert owners == {"node-0": [("train", 0, (0,))], "node-1": [("train", 1, (0,))]}
    event = job_pb2.JobEvent(seq=1, job_name="train", kind=EK.JOB_EVENT_KIND_RANK_HUNG)
    assert store.apply_event(event)
    view = store.get("train")
    assert view is not None and list(view.events) == [event]
    assert not store.apply_event(job_pb2.JobEvent(seq=1, job_name="nope"))


def test_cost_used_and_to_finish() -> None:
    job = make_job(ranks=4)
    job.spec.cost.price_per_gpu_hour = 2.0
    job.spec.cost.pricing = "on-demand"
    # One hour in, at step 40 of 100, 36 s a step.
    cost = job_cost(job, T0 + 3600, step=40, step_time_s=36.0)
    assert cost.gpu_hours == 4.0 and cost.spent == 8.0
    assert cost.remaining_gpu_hours == 60 * 36.0 * 4 / 3600
    assert cost.remaining == 2 * cost.remaining_gpu_hours
    assert "4.00 GPU-h $8.00" in cost.summary() and "on-demand" in cost.summary()
    # A finished attempt counts until it ended; a finished job has nothing left to spend.
    job.attempts[0].ended.FromSeconds(int(T0 + 1800))
    job.state = JS.JOB_STATE_SUCCEEDED
    done = job_cost(job, T0 + 7200, step=100, step_time_s=36.0)
    assert done.gpu_hours == 2.0 and done.remaining_gpu_hours is None
    job.spec.cost.price_per_gpu_hour = 0
    assert "no price" in job_cost(job, T0, 0, None).summary()


def test_arg_values() -> None:
    args = ["--max_steps", "5", "--lr=0.1", "--max_steps=7"]
    assert arg_value(args, "--max_steps") == "7"
    assert arg_value(args, "--lr") == "0.1"
    assert arg_value(args, "--nope") is None
    spec = job_pb2.JobSpec(args=["--max_steps", "x"])
    assert total_steps(spec) is None
    assert total_steps(job_pb2.JobSpec(args=["--max_steps", "0"])) is None
