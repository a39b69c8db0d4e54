"""A deterministic job for console tests: 4 ranks on node-00/node-01 of the cluster
fixture, 60 steps of metrics, a checkpoint every 20 steps, and rank 3 hung in attempt 2."""

from __future__ import annotations

import math

from gantry.v1 import job_pb2

from console.model.jobs import EK, JS, RS, JobsStore
from tests.console_fixtures import FIXED

NODES = ("node-00", "node-01")


def demo_job(state: int = JS.JOB_STATE_RUNNING, failed: bool = True) -> job_pb2.Job:
    job = job_pb2.Job(state=state, leader=NODES[0], restarts_used=1)  # type: ignore[arg-type]
    job.created.FromSeconds(int(FIXED - 3600))
    spec = job.spec
    spec.name = "demo-moe"
    for node in NODES:
        spec.nodes.add(node=node, slots=2)
    spec.command.extend(["python", "-m", "agent.train"])
    spec.args.extend(
        [
            "--per_device_train_batch_size",
            "16",
            "--gradient_accumulation_steps",
            "1",
            "--learning_rate",
            "1e-3",
            "--max_steps",
            "300",
        ]
    )
    spec.restart.max_restarts = 3
    spec.cost.price_per_gpu_hour = 2.5
    spec.cost.instance_type = "p5.48xlarge"
    spec.cost.pricing = "on-demand"
    first = job.attempts.add(number=1, state=JS.JOB_STATE_FAILED, reason="rank 1 failed")
    first.started.FromSeconds(int(FIXED - 3600))
    first.ended.FromSeconds(int(FIXED - 1800))
    second = job.attempts.add(number=2, state=JS.JOB_STATE_RUNNING)
    second.started.FromSeconds(int(FIXED - 1700))
    second.resumed_from = "/data/out/checkpoints/step20"
    for attempt in (first, second):
        for rank in range(4):
            r = attempt.ranks.add(
                rank=rank, local_rank=rank % 2, node=NODES[rank // 2], pid=4000 + rank
            )
            r.gpu_indices.append(rank % 2)
            r.state = RS.RANK_STATE_RUNNING
            r.last_heartbeat.FromSeconds(int(FIXED - 2))
    if failed:
        second.ranks[3].state = RS.RANK_STATE_HUNG
        second.ranks[3].last_heartbeat.FromSeconds(int(FIXED - 95))
    return job


def checkpoints() -> list[job_pb2.Checkpoint]:
    out = []
    for step in (20, 40, 60):
        c = job_pb2.Checkpoint(
            tag=f"step{step}",
            step=step,
            path=f"/data/out/checkpoints/step{step}",
            size_bytes=step * 3_000_000,
            latest=step == 60,
        )
        c.saved.FromSeconds(int(FIXED - (60 - step) * 10 - 5))
        out.append(c)
    return out


def jobs_store(failed: bool = True) -> JobsStore:
    store = JobsStore()
    store.apply_job(NODES[0], demo_job(failed=failed), checkpoints(), FIXED)
    seq = 0
    for step in range(21, 61):
        for rank in range(4):
            seq += 1
            event = job_pb2.JobEvent(
                seq=seq,
                job_name="demo-moe",
                attempt=2,
                kind=EK.JOB_EVENT_KIND_METRICS,
                rank=rank,
                node=NODES[rank // 2],
            )
            m = event.metrics
            m.step = step
            m.loss = 6.0 * math.exp(-step / 25) + 0.05 * math.sin(step + rank)
            m.grad_norm = 1.5 + 0.2 * math.sin(step / 3 + rank)
            m.learning_rate = 1e-3
            m.step_time_s = 0.5 + 0.01 * rank
            m.forward_s = 0.15
            m.backward_s = 0.25
            m.allreduce_s = 0.05
            m.optimizer_step_s = 0.05
            m.collective_time_s = 0.06 + 0.01 * (step % 3)
            m.tokens_per_s = 8000 + 50 * rank
            m.time.FromSeconds(int(FIXED - (60 - step) * 0.5))
            store.apply_event(event)
    timeline = [
        (EK.JOB_EVENT_KIND_SUBMITTED, "", -1, "submitted by alice", 3600),
        (EK.JOB_EVENT_KIND_ATTEMPT_STARTED, "", -1, "attempt 1: 4 ranks on node-00, node-01", 3600),
        (EK.JOB_EVENT_KIND_RANK_FAILED, "node-00", 1, "rank 1 exited with code 1", 1800),
        (EK.JOB_EVENT_KIND_RESTARTING, "", -1, "restart 1/3 in 5 s", 1795),
        (EK.JOB_EVENT_KIND_ATTEMPT_STARTED, "", -1, "attempt 2: resuming from step20", 1700),
        (EK.JOB_EVENT_KIND_RANK_HUNG, "node-01", 3, "no progress for 90 s (hang timeout 90 s)", 5),
    ]
    for kind, node, rank, message, ago in timeline:
        seq += 1
        event = job_pb2.JobEvent(
            seq=seq, job_name="demo-moe", kind=kind, node=node, rank=rank, message=message
        )
        event.time.FromSeconds(int(FIXED - ago))
        store.apply_event(event)
    return store
