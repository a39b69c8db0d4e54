"""bench/console_job.py's simulated job, as its leader keeps it: the metrics recording
(`record_stream` writes it as JSONL, `load_recording` reads it back) and `JobSim`, the
job, its event log (through the agent's own EventBus) and its checkpoints, advanced by
the wall clock."""

from __future__ import annotations

import array
import json
import math
import random
from pathlib import Path
from typing import Any

from gantry.v1 import job_pb2

from agent.jobs.event_bus import EventBus

ROOT = Path(__file__).resolve().parent.parent
JOB = "bench-job"
STEP_S = 1.0
CHECKPOINT_EVERY = 50
EVENTS_KEEP = 1_000_000
GIB = 1024**3


def node_name(i: int) -> str:
    return f"node-{i:03d}"


def stamp(when: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    out = Timestamp()
    out.FromNanoseconds(int(when * 1e9))
    return out


# -- the recording -----------------------------------------------------------------------
# Per step, one array per field with every rank's value (columnar: compact to keep).
FIELDS = (
    "loss",
    "grad_norm",
    "learning_rate",
    "step_time_s",
    "forward_s",
    "backward_s",
    "allreduce_s",
    "optimizer_step_s",
    "collective_time_s",
    "all_gather_s",
    "reduce_scatter_s",
    "tokens_per_s",
    "samples_per_s",
    "memory_gib",
)
TOKENS_PER_STEP = 4 * 4096  # micro-batch 4 x 4,096 tokens per rank


def record_stream(path: Path, ranks: int, steps: int, seed: int = 1234) -> None:
    """Writes a plausible run of `steps` steps of `ranks` ranks as JSONL (one line a step)."""
    rng = random.Random(seed)
    slow = {rng.randrange(ranks) for _ in range(max(1, ranks // 256))}  # a few stragglers
    gauss = rng.gauss

    def r5(x: float) -> float:
        return float(f"{x:.5g}")

    with path.open("w") as out:
        for step in range(1, steps + 1):
            batch = gauss(0.0, 0.015)  # the same batch difficulty for every rank
            base_loss = 1.55 + 1.9 * math.exp(-step / 350.0) + batch
            lr = 3e-4 * min(1.0, step / 100) * (0.5 + 0.5 * math.cos(math.pi * step / 100_000))
            spike = 2.5 if rng.random() < 0.01 else 1.0
            columns: dict[str, list[float]] = {name: [] for name in FIELDS}
            for rank in range(ranks):
                forward = 0.28 + gauss(0.0, 0.006)
                backward = 0.47 + gauss(0.0, 0.009)
                optim = 0.07 + gauss(0.0, 0.002)
                gather = 0.09 + abs(gauss(0.0, 0.01))
                scatter = 0.08 + abs(gauss(0.0, 0.01))
                if rank in slow:
                    backward += 0.05
                allreduce = gather + scatter
                step_time = forward + backward + optim + 0.12 + abs(gauss(0.0, 0.01))
                row = {
                    "loss": base_loss + gauss(0.0, 0.04),
                    "grad_norm": spike * (0.6 + 0.5 * math.exp(-step / 200.0)) + gauss(0.0, 0.03),
                    "learning_rate": lr,
                    "step_time_s": step_time,
                    "forward_s": forward,
                    "backward_s": backward,
                    "allreduce_s": allreduce,
                    "optimizer_step_s": optim,
                    "collective_time_s": allreduce + 0.01,
                    "all_gather_s": gather,
                    "reduce_scatter_s": scatter,
                    "tokens_per_s": TOKENS_PER_STEP / step_time,
                    "samples_per_s": 4 / step_time,
                    "memory_gib": 61.0 + gauss(0.0, 0.3),
                }
                for name in FIELDS:
                    columns[name].append(r5(row[name]))
            out.write(json.dumps({"step": step, **columns}) + "\n")


def load_recording(path: Path) -> list[dict[str, array.array[float]]]:
    steps = []
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            steps.append({name: array.array("d", record[name]) for name in FIELDS})
    return steps


# -- the job (the leader's side) ----------------------------------------------------------
class JobSim:
    """The job as its leader keeps it, and its event log, advanced by the wall clock."""

    def __init__(
        self,
        nodes: int,
        per_node: int,
        recording: list[dict[str, array.array[float]]],
        start: float,
    ) -> None:
        self.world = nodes * per_node
        self.per_node = per_node
        self.recording = recording
        self.start = start  # step 1 began here
        self.events: list[job_pb2.JobEvent] = []
        self.first_seq = 1
        self.seq = 0
        # The agent's own event bus: followers get batches and metric tails as a real
        # leader's WatchJobEvents gives them.
        self.bus = EventBus(self._append, lambda after_seq, job: self.history(after_seq))
        self.checkpoints: list[job_pb2.Checkpoint] = []
        # Each rank reports at its own moment in the second, as real ranks do.
        phase = [(r * 0.6180339887) % 1.0 for r in range(self.world)]
        self.order = sorted(range(self.world), key=lambda r: phase[r])
        self.phase = phase
        self.next_step, self.next_pos = 1, 0
        ds_config = (ROOT / "examples" / "ds_config_zero3.json").read_text()
        spec = job_pb2.JobSpec(
            name=JOB,
            nodes=[job_pb2.NodeSlots(node=node_name(i), slots=per_node) for i in range(nodes)],
            command=["python", "-m", "agent.train"],
            args=[
                *("--deepspeed_config", "ds_config.json", "--model", "moe-8x22b"),
                *("--max_steps", "100000", "--micro_batch", "4", "--seq_len", "4096"),
            ],
            env={"NCCL_DEBUG": "INFO", "NCCL_IB_HCA": "mlx5"},
            restart=job_pb2.RestartPolicy(max_restarts=3, backoff_s=30, resume="latest"),
            hang_timeout_s=300,
            collective_timeout_s=600,
            checkpoint_dir="/ckpt/bench-job",
            deepspeed_config_json=ds_config,
            working_dir="/work/train",
            cost=job_pb2.CostPolicy(
                price_per_gpu_hour=2.5, instance_type="p5.48xlarge", pricing="on-demand"
            ),
        )
        ranks = [
            job_pb2.Rank(
                rank=r,
                local_rank=r % per_node,
                node=node_name(r // per_node),
                pid=40_000 + r,
                state=job_pb2.RankState.RANK_STATE_RUNNING,
                gpu_indices=[r % per_node],
            )
            for r in range(self.world)
        ]
        attempt = job_pb2.Attempt(
            number=1,
            state=job_pb2.JobState.JOB_STATE_RUNNING,
            started=stamp(start - 30),
            master_port=29500,
            ranks=ranks,
        )
        self.job = job_pb2.Job(
            spec=spec,
            state=job_pb2.JobState.JOB_STATE_RUNNING,
            leader=node_name(0),
            created=stamp(start - 40),
            attempts=[attempt],
        )
        ek = job_pb2.JobEventKind
        self.publish(ek.JOB_EVENT_KIND_SUBMITTED, start - 40, node_name(0), -1, "submitted")
        self.publish(ek.JOB_EVENT_KIND_ATTEMPT_STARTED, start - 30, node_name(0), -1, "attempt 1")
        for r in range(self.world):
            self.publish(
                ek.JOB_EVENT_KIND_RANK_STARTED, start - 20, node_name(r // per_node), r, "started"
            )

    def publish(
        self,
        kind: int,
        when: float,
        node: str,
        rank: int,
        message: str = "",
        details: dict[str, str] | None = None,
        metrics: job_pb2.RankMetrics | None = None,
    ) -> None:
        event = job_pb2.JobEvent(
            job_name=JOB,
            attempt=1,
            kind=kind,  # type: ignore[arg-type]
            time=stamp(when),
            node=node,
            rank=rank,
            message=message,
            details=details or {},
            metrics=metrics,
        )
        self.bus.publish(event)

    def _append(self, event: job_pb2.JobEvent) -> int:
        self.seq += 1
        self.events.append(event)
        if len(self.events) > EVENTS_KEEP + EVENTS_KEEP // 4:
            drop = len(self.events) - EVENTS_KEEP
            del self.events[:drop]
            self.first_seq += drop
        return self.seq

    def history(self, after_seq: int) -> list[job_pb2.JobEvent]:
        return self.events[max(0, after_seq + 1 - self.first_seq) :]

    def metrics(self, step: int, rank: int, when: float) -> job_pb2.RankMetrics:
        columns = self.recording[(step - 1) % len(self.recording)]

        def v(name: str) -> float:
            return columns[name][rank]

        collective = v("collective_time_s")
        m = job_pb2.RankMetrics(
            step=step,
            epoch=step / 20_000,
            loss=v("loss"),
            grad_norm=v("grad_norm"),
            learning_rate=v("learning_rate"),
            loss_scale=65536.0,
            step_time_s=v("step_time_s"),
            samples_per_s=v("samples_per_s"),
            tokens_per_s=v("tokens_per_s"),
            collective_time_s=collective,
            collective_time_by_op_s={
                "all_gather": v("all_gather_s"),
                "reduce_scatter": v("reduce_scatter_s"),
                "all_reduce": max(0.0, collective - v("allreduce_s")),
            },
            forward_s=v("forward_s"),
            backward_s=v("backward_s"),
            allreduce_s=v("allreduce_s"),
            optimizer_step_s=v("optimizer_step_s"),
            memory_bytes=int(v("memory_gib") * GIB),
            time=stamp(when),
        )
        return m

    def advance(self, now: float) -> None:
        """Publishes every metric record due by `now` (and the checkpoints)."""
        ranks = self.job.attempts[0].ranks
        ek = job_pb2.JobEventKind
        while True:
            step, pos = self.next_step, self.next_pos
            rank = self.order[pos]
            when = self.start + (step - 1 + self.phase[rank]) * STEP_S + STEP_S
            if when > now:
                return
            node = node_name(rank // self.per_node)
            m = self.metrics(step, rank, when)
            details = {} if rank < self.per_node else {"origin": node, "origin_seq": str(step)}
            self.publish(ek.JOB_EVENT_KIND_METRICS, when, node, rank, "", details, m)
            ranks[rank].metrics.CopyFrom(m)
            ranks[rank].last_heartbeat.CopyFrom(m.time)
            if rank == 0 and step % CHECKPOINT_EVERY == 0:
                self.checkpoint(step, when)
            self.next_pos += 1
            if self.next_pos == self.world:
                self.next_step, self.next_pos = step + 1, 0

    def checkpoint(self, step: int, when: float) -> None:
        tag = f"global_step{step}"
        path = f"{self.job.spec.checkpoint_dir}/{tag}"
        for c in self.checkpoints:
            c.latest = False
        self.checkpoints.append(
            job_pb2.Checkpoint(
                tag=tag,
                step=step,
                path=path,
                size_bytes=1024 * 2 * GIB + step,
                saved=stamp(when),
                latest=True,
            )
        )
        self.publish(
            job_pb2.JobEventKind.JOB_EVENT_KIND_CHECKPOINT_SAVED,
            when,
            node_name(0),
            0,
            f"checkpoint {tag} saved",
            {"tag": tag, "path": path, "step": str(step)},
        )
