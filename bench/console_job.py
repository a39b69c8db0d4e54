"""Console under a big job: 1,024 ranks on 128 nodes reporting metrics at 1 Hz, one
rank's log at 5,000 lines/s, and an operator pressing keys.

The agents' side runs in a child process, so its CPU is not counted: 128 grpc.aio
servers on 127.0.0.1 implementing AgentService behind the agents' own token check
(agent.security.auth.TokenAuthInterceptor). Each streams its node's telemetry at 1 Hz (the
agent's Sampler over the fake NVML, 8 GPUs). node-000 leads `bench-job`, 8 ranks per
node: ListJobs and DescribeJob return the job with one attempt and every rank with its
latest metrics (as a leader keeps them), plus its checkpoints; WatchJobEvents, through
the agent's own EventBus (agent.jobs.event_bus: batches of what is at hand when the reader
asks for them, the metric tail it asks for), replays the job's events (submitted,
attempt and ranks started, --backlog steps of metrics), then follows with one METRICS
event per rank per second (published every 50 ms, as due). The metrics are a recording
written once as JSONL into a temp dir (loss decaying with noise, grad norm, lr, ~1 s
steps, collective time by op, tokens/s; seeded), replayed with the replay's time
stamps, each rank at its own phase in the second; a checkpoint event every 50 steps.
The log rank's TailRankLog answers the last 10,000 lines (the agent's bound), then
streams 5,000 lines/s of DeepSpeed/NCCL-style text (some WARN/ERROR lines) in batches
every 50 ms.

The console (GantryApp, refresh 0.1 s) runs headless under App.run_test() at 160x48 in
this process, connects to every agent, opens the job and waits until every rank has
its row and the event stream flows (not for the whole backlog: a console slower than
the stream would never be through it), then measures two phases of --seconds/2 each:

  job screen: the ranks table and its tabs, while the console also follows the log
      rank's log into a LogBuffer (JobsSession.tail_log, what the log screen runs; the
      console itself only tails a log while its screen is open);
  log screen: that rank's log (app.open_logs) with a search for "NCCL WARN" active,
      the job still followed underneath.

Keypress -> repaint: a key every --key-interval s (jittered, seeded), but never before
the previous one was shown, posted to the app as the terminal driver posts one (not
pilot.press, which then waits for the app to go idle: up to 2 s a key under these
streams): down/up in the ranks table, 2/3/1 to switch tabs (back on the ranks tab the
bench gives the table the focus again, untimed: the screen leaves nothing focused);
n, n, N, G in the log.
A sample is the time from just before the key event is posted to the end of the first
screen update (App._display) after the widget the key changes has rendered lines while
the change holds (its render_lines called once the cursor is on the next row, the tab
is shown, the search moved to another match, the view follows again): the first frame
that shows the key's effect. Headless, Textual skips turning an update into terminal
output; the probe does that itself (CompositorUpdate.render_segments, output thrown
away) so both latency and CPU include it. A key not shown within 30 s is a miss.

CPU: time.process_time() of this process (every thread, gRPC's included), plus the
children it reaped meanwhile (the advisor's forked runs), over the two
measured windows, per wall-second; start-up, the backlog and the switch between the
phases are left out. This machine's other load (the agents' process among it) is shown
beside it. --profile DIR writes a cProfile of each phase (event-loop thread) and prints
the costliest functions to stderr; profiled figures are inflated.

    .venv/bin/python bench/console_job.py [--nodes 128] [--ranks-per-node 8]
        [--seconds 30] [--log-lines-per-s 5000] [--quick] [--profile DIR]

Last line: {"console_cpu_s_per_s": ..., "keypress_repaint_p99_ms": ...}, the CPU over
both windows and the higher of the two phases' p99 (pooled, the screen that answers
faster would get more keys in and outweigh the other).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeAlias

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as the console's main does
import grpc
import psutil
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2
from textual import events

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests/fakes, which is not an installed package

from agent.jobs.event_bus import EventBus  # noqa: E402
from agent.rpc.jobs import event_responses  # noqa: E402

if TYPE_CHECKING:
    from textual.widget import Widget

    from agent.telemetry.sampler import Sampler
    from console.ui.app import GantryApp

JOB = "bench-job"
TOKEN = "bench-token-" + "x" * 32
STEP_S = 1.0
CHECKPOINT_EVERY = 50
# What an agent answers at most for a tail (agent.jobs.node.supervisor, agent.jobs.node.tailer).
MAX_TAIL_LINES = 10_000
MAX_TAIL_BYTES = 1 << 20
LOG_KEEP = 200_000
EVENTS_KEEP = 1_000_000
TICK_S = 0.05
SEARCH = "NCCL WARN"
KEY_TIMEOUT_S = 30.0
GIB = 1024**3
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def console_cpu_s() -> float:
    """This process's CPU time and that of its reaped children: the console's forked
    advisor runs (the agents' process is reaped only at the end)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


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


# -- the log -------------------------------------------------------------------------------
class LogFeed:
    """One rank's stdout, written at `rate` lines/s (a deterministic sequence)."""

    def __init__(self, node: str, rank: int, rate: float, start: float, seed: int = 99) -> None:
        self.node, self.rank, self.rate, self.start = node, rank, rate, start
        self.rng = random.Random(seed)
        self.pid = 40_000 + rank
        self.first = 0  # absolute index of texts[0]
        self.end = 0
        self.texts: list[str] = []
        self.offsets: list[int] = []
        self.next_offset = 0
        self.grown = asyncio.Event()
        self._second = -1
        self._clock = ""

    def line_text(self, when: float) -> str:
        rng = self.rng
        second = int(when)
        if second != self._second:
            self._second = second
            self._clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        ms = int((when - second) * 1000)
        step = int((when - self.start) / STEP_S) + 1
        head = f"[{self._clock},{ms:03d}]"
        nccl = f"{self.node}:{self.pid}:{self.pid + 71} [{self.rank % 8}]"
        roll = rng.random()
        if roll < 0.40:
            return (
                f"{head} [INFO] [logging.py:128:log_dist] [Rank {self.rank}] step={step}, "
                f"skipped=0, lr=[{3e-4 * min(1.0, step / 100):.6e}], mom=[[0.9, 0.95]]"
            )
        if roll < 0.60:
            cur = 4 / (1.0 + rng.gauss(0.0, 0.01))
            return (
                f"{head} [INFO] [timer.py:264:stop] epoch=0/micro_step={step * 4}/"
                f"global_step={step}, RunningAvgSamplesPerSec={cur * 1024:.3f}, "
                f"CurrSamplesPerSec={cur:.3f}, MemAllocated={58 + rng.random():.2f}GB, "
                f"MaxMemAllocated={61.4:.2f}GB"
            )
        if roll < 0.85:
            peer = rng.randrange(1024)
            return (
                f"{nccl} NCCL INFO Channel {rng.randrange(32):02d}/0 : "
                f"{self.rank}[{self.rank % 8}] -> {peer}[{peer % 8}] [send] via "
                f"NET/IB/{rng.randrange(8)}/GDRDMA"
            )
        if roll < 0.95:
            return (
                f"{nccl} NCCL INFO AllGather: opCount {rng.randrange(1 << 20):x} sendbuff "
                f"0x7f3a{rng.randrange(1 << 24):06x} recvbuff 0x7f3b{rng.randrange(1 << 24):06x} "
                f"count {rng.randrange(1 << 22)} datatype 9 op 0 root 0 comm 0x55d0c8e1a2b0 "
                f"[nranks=1024] stream 0x55d0c9f3c010"
            )
        if roll < 0.985:
            return (
                f"[rank{self.rank}]:[W{time.strftime('%m%d', time.localtime(second))} "
                f"{self._clock[11:]}.{ms:03d}000 {self.pid} torch/csrc/distributed/c10d/"
                f"ProcessGroupNCCL.cpp:4561] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1 has no "
                f"effect for point-to-point collectives. (function operator())"
            )
        if roll < 0.995:
            return (
                f"{head} [WARNING] [stage3.py:2090:step] 3 pytorch allocator cache flushes "
                f"since last step. this happens when there is high memory pressure and is "
                f"detrimental to performance."
            )
        if roll < 0.999:
            return (
                f"{nccl} NCCL WARN NET/IB : Got completion from peer 10.0.{rng.randrange(128)}."
                f"{rng.randrange(256)}<{rng.randrange(40000, 60000)}> with status=12 opcode=0 "
                f"len=0 vendor err 129 (Recv) localGid ::ffff:10.0.0.1"
            )
        return (
            f"{head} [ERROR] [engine.py:2211:_take_model_step] RuntimeError: CUDA error: an "
            f"illegal memory access was encountered (retrying the step)"
        )

    def advance(self, now: float) -> None:
        due = int((now - self.start) * self.rate)
        if due <= self.end:
            return
        if due - self.end > LOG_KEEP:  # the history before the console came: keep the tail
            skipped = due - LOG_KEEP - self.end
            self.next_offset += skipped * 150
            self.end += skipped
            self.first = self.end
        for index in range(self.end, due):
            text = self.line_text(self.start + index / self.rate)
            self.texts.append(text)
            self.offsets.append(self.next_offset)
            self.next_offset += len(text.encode()) + 1
        self.end = due
        if len(self.texts) > LOG_KEEP + LOG_KEEP // 2:
            drop = len(self.texts) - LOG_KEEP
            del self.texts[:drop], self.offsets[:drop]
            self.first += drop
        self.grown.set()
        self.grown = asyncio.Event()

    def start_index(self, tail_lines: int, from_offset: int) -> int:
        """Where a TailRankLog starts: at `from_offset`, else the last `tail_lines` lines
        (bounded as the agent bounds them)."""
        if from_offset:
            return self.first + bisect.bisect_left(self.offsets, from_offset)
        count = min(tail_lines or 100, MAX_TAIL_LINES)
        index, size = self.end, 0
        while index > max(self.first, self.end - count):
            size += len(self.texts[index - 1 - self.first]) + 1
            if size > MAX_TAIL_BYTES:
                break
            index -= 1
        return index

    def chunk(self, index: int) -> list[job_pb2.LogLine]:
        index = max(index, self.first)
        stop = min(self.end, index + MAX_TAIL_LINES)
        lo, hi = index - self.first, stop - self.first
        return [
            job_pb2.LogLine(offset=offset, text=text, stream="stdout")
            for offset, text in zip(self.offsets[lo:hi], self.texts[lo:hi], strict=True)
        ]


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


class SimAgent(agent_service_pb2_grpc.AgentServiceServicer):  # type: ignore[misc]
    """One node's agent: its telemetry; the job's RPCs when it leads; its ranks' logs."""

    def __init__(
        self, index: int, per_node: int, sampler: Sampler, job: JobSim | None, log: LogFeed | None
    ) -> None:
        self.name = node_name(index)
        self.ranks = range(index * per_node, (index + 1) * per_node)
        self.sampler = sampler
        self.job = job  # set on the leader only
        self.log = log  # set on the log rank's node only

    async def GetNodeInfo(
        self, request: agent_service_pb2.GetNodeInfoRequest, context: Context
    ) -> agent_service_pb2.GetNodeInfoResponse:
        reply = agent_service_pb2.GetNodeInfoResponse(info=self.sampler.node_info())
        latest = self.sampler.latest()
        if latest is not None:
            reply.latest.CopyFrom(latest)
        return reply

    async def WatchNode(
        self, request: agent_service_pb2.WatchNodeRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchNodeResponse]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def on_sample(sample: Any) -> None:  # on the sampler's thread
            loop.call_soon_threadsafe(queue.put_nowait, sample)

        unsubscribe = self.sampler.subscribe(on_sample)
        try:
            last = -1
            if request.replay_history:
                for sample in self.sampler.history(request.history_s or None):
                    yield agent_service_pb2.WatchNodeResponse(sample=sample, replayed=True)
                    last = sample.seq
            while True:
                sample = await queue.get()
                if sample.seq > last:
                    last = sample.seq
                    yield agent_service_pb2.WatchNodeResponse(sample=sample)
        finally:
            unsubscribe()

    async def ListJobs(
        self, request: agent_service_pb2.ListJobsRequest, context: Context
    ) -> agent_service_pb2.ListJobsResponse:
        return agent_service_pb2.ListJobsResponse(jobs=[self.job.job] if self.job else [])

    async def DescribeJob(
        self, request: agent_service_pb2.DescribeJobRequest, context: Context
    ) -> agent_service_pb2.DescribeJobResponse:
        if self.job is None or request.name != JOB:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no job named {request.name}")
            raise AssertionError("unreachable")
        return agent_service_pb2.DescribeJobResponse(
            job=self.job.job, checkpoints=self.job.checkpoints
        )

    async def WatchJobEvents(
        self, request: agent_service_pb2.WatchJobEventsRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.WatchJobEventsResponse]:
        job = self.job
        if job is None or request.job_name not in ("", JOB):
            if request.follow:
                await asyncio.Event().wait()
            return
        async for response in event_responses(job.bus, request):  # as the agent answers
            yield response

    async def TailRankLog(
        self, request: agent_service_pb2.TailRankLogRequest, context: Context
    ) -> AsyncIterator[agent_service_pb2.TailRankLogResponse]:
        if request.job_name != JOB or request.rank not in self.ranks:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"{request.job_name} has no rank {request.rank} here"
            )
            return
        log = self.log
        if log is None or log.rank != request.rank:  # a quiet rank
            yield agent_service_pb2.TailRankLogResponse()
            if request.follow:
                await asyncio.Event().wait()
            return
        index = log.start_index(request.tail_lines, request.from_offset)
        while True:
            lines = log.chunk(index)
            if lines:
                index += len(lines)
                yield agent_service_pb2.TailRankLogResponse(lines=lines)
            if not request.follow:
                return
            if index >= log.end:
                await log.grown.wait()


async def serve_agents(args: argparse.Namespace) -> None:
    from agent.security.auth import TokenAuthInterceptor
    from agent.telemetry.sampler import Sampler
    from tests.fakes.fake_nvml import FakeNvml

    data_root = Path(tempfile.mkdtemp(prefix="gantry-console-job-"))
    samplers: list[Sampler] = []
    servers: list[grpc.aio.Server] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # the parent went away: stdin closed
    try:
        world = args.nodes * args.ranks_per_node
        steps = args.backlog + int(args.warmup + args.seconds) + 120
        recording_path = data_root / "metrics.jsonl"
        record_stream(recording_path, world, steps)
        recording = load_recording(recording_path)
        now = time.time()
        start = now - args.backlog * STEP_S
        job = JobSim(args.nodes, args.ranks_per_node, recording, start)
        job.advance(now)
        log_node = args.log_rank // args.ranks_per_node
        log = LogFeed(node_name(log_node), args.log_rank, args.log_lines_per_s, start)
        log.advance(now)
        ports = []
        for i in range(args.nodes):
            sampler = Sampler(
                node_name(i), nvml_lib=FakeNvml(args.ranks_per_node, seed=i), interval_s=1.0
            )
            server = grpc.aio.server(
                interceptors=[TokenAuthInterceptor(TOKEN)],
                options=[
                    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                    ("grpc.max_send_message_length", 16 * 1024 * 1024),
                    ("grpc.keepalive_permit_without_calls", 1),
                    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ],
            )
            agent = SimAgent(
                i,
                args.ranks_per_node,
                sampler,
                job if i == 0 else None,
                log if i == log_node else None,
            )
            agent_service_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
            ports.append(server.add_insecure_port("127.0.0.1:0"))
            await server.start()
            samplers.append(sampler)
            servers.append(server)
        for sampler in samplers:  # phases spread over one interval, as on a real cluster
            await asyncio.sleep(1.0 / len(samplers))
            sampler.start()
        print(json.dumps({"ports": ports}), flush=True)
        while not stop.is_set():
            now = time.time()
            job.advance(now)
            log.advance(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
    finally:
        for sampler in samplers:
            sampler.stop()
        await asyncio.gather(*(s.stop(0) for s in servers))
        shutil.rmtree(data_root, ignore_errors=True)


# -- the console's side -------------------------------------------------------------------
@dataclass
class Key:
    """A key to press, the widget that shows its effect, and the effect: `arm()` (called
    just before the press) returns a test that holds once the key has taken effect."""

    key: str
    widget: Widget
    arm: Callable[[], Callable[[], bool]]
    after: Callable[[], object] = lambda: None  # once shown, untimed


@dataclass
class Press:
    key: Key
    shown: Callable[[], bool]
    t0: float = 0.0
    rendered: bool = False
    elapsed: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RepaintProbe:
    """Times keypress -> the first screen update showing the key's effect (see the
    module docstring); also counts screen updates and their terminal output."""

    def __init__(self, app: GantryApp) -> None:
        from textual._compositor import CompositorUpdate

        self.app = app
        self.pending: Press | None = None
        self.updates = 0
        self.output_chars = 0
        self._watched: set[int] = set()
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if renderable is None or app._batch_count or screen is not app.screen:
                return
            if isinstance(renderable, CompositorUpdate):
                # What a terminal driver would write (the headless driver skips it).
                self.output_chars += len(renderable.render_segments(app.console))
            self.updates += 1
            press = self.pending
            if press is not None and press.rendered:
                press.elapsed = time.perf_counter() - press.t0
                self.pending = None
                press.done.set()

        setattr(app, "_display", display)  # noqa: B010  (an instance override of a method)

    def _watch(self, widget: Widget) -> None:
        if id(widget) in self._watched:
            return
        self._watched.add(id(widget))
        original = widget.render_lines

        def render_lines(crop: Any) -> Any:
            lines = original(crop)
            press = self.pending
            if press is not None and press.key.widget is widget and not press.rendered:
                press.rendered = press.shown()
            return lines

        setattr(widget, "render_lines", render_lines)  # noqa: B010

    async def press(self, key: Key) -> float | None:
        """Seconds from the press to the frame that shows it; None when not within
        KEY_TIMEOUT_S (the next key waits for this one: its effect is judged from the
        state this one leaves)."""
        self._watch(key.widget)
        press = Press(key, key.arm())
        self.pending = press
        # As the terminal driver posts a key (pilot.press would then wait for the app to
        # go idle, up to 2 s a key, which a console under these streams never is).
        event = events.Key(key.key, key.key if len(key.key) == 1 else None)
        event.set_sender(self.app)
        press.t0 = time.perf_counter()
        self.app.post_message(event)
        try:
            await asyncio.wait_for(press.done.wait(), KEY_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self.pending = None
        return press.elapsed


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    agents_cpu_s: float = 0.0  # the agents' process
    others_cpu_s: float = 0.0  # every other process on this machine
    delays: list[float] = field(default_factory=list)
    by_key: dict[str, list[float]] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    events: int = 0
    log_lines: int = 0
    updates: int = 0
    output_chars: int = 0
    stall_max_s: float = 0.0
    lag_s: float = 0.0  # how far the job's metrics on screen are behind, at the end


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


async def stall_monitor(
    period_s: float, stalls: list[float], stop: asyncio.Event, trace_ms: float = 0.0
) -> None:
    """Records how late each tick of the loop is; with `trace_ms`, a thread also samples
    the loop's stack while a tick is over `trace_ms` late and prints where the longest
    stalls were spent (to stderr)."""
    loop = asyncio.get_running_loop()
    expected = loop.time() + period_s
    beat = [time.monotonic()]
    tracer = None
    if trace_ms:
        tracer = threading.Thread(
            target=trace_stalls,
            args=(threading.get_ident(), beat, trace_ms / 1000, stop),
            name="bench:stall-tracer",
            daemon=True,
        )
        tracer.start()
    while not stop.is_set():
        await asyncio.sleep(period_s)
        now = loop.time()
        beat[0] = time.monotonic()
        stalls.append(max(0.0, now - expected))
        expected = now + period_s
    if tracer is not None:
        await asyncio.to_thread(tracer.join)


def trace_stalls(loop_thread: int, beat: list[float], after_s: float, stop: asyncio.Event) -> None:
    """Samples `loop_thread`'s stack every 10 ms while the loop is `after_s` late; prints
    each stall's length and its most sampled frames (the console's and Textual's)."""
    found: list[tuple[float, list[tuple[str, int]]]] = []
    while not stop.is_set():
        time.sleep(0.01)
        since = time.monotonic() - beat[0]
        if since < after_s:
            continue
        start = beat[0]
        counts: dict[str, int] = {}
        while beat[0] == start and not stop.is_set():
            frames = sys._current_frames()
            for ident, top in frames.items():
                if ident == loop_thread:
                    continue
                other: FrameType | None = top
                while other is not None:
                    if other.f_code.co_filename.endswith(("advice.py", "advisor.py")):
                        what = f"(advisor thread at {Path(top.f_code.co_filename).name}:"
                        what += f"{top.f_lineno} {top.f_code.co_name})"
                        counts[what] = counts.get(what, 0) + 1
                        break
                    other = other.f_back
            frame: FrameType | None = frames.get(loop_thread)
            seen = set()
            while frame is not None:
                code = frame.f_code
                where = f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}"
                if where not in seen:
                    seen.add(where)
                    counts[where] = counts.get(where, 0) + 1
                frame = frame.f_back
            time.sleep(0.01)
        length = time.monotonic() - start
        found.append((length, sorted(counts.items(), key=lambda kv: -kv[1])[:30]))
    for length, sampled in sorted(found, key=lambda f: -f[0])[:5]:
        print(f"== stall {length * 1000:.0f} ms ==", file=sys.stderr)
        for where, n in sampled:
            print(f"  {n:4d} {where}", file=sys.stderr)


async def until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"console_job: timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def measure_phase(
    phase: Phase,
    probe: RepaintProbe,
    keys: list[Key],
    seconds: float,
    interval_s: float,
    counters: Callable[[], tuple[int, int]],
    lag: Callable[[], float],
    rng: random.Random,
    profile_dir: Path | None,
    agents: psutil.Process,
    trace_ms: float = 0.0,
) -> None:
    stalls: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(stall_monitor(0.01, stalls, stop, trace_ms))
    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_started = [0.0]

    def on_gc(what: str, info: dict[str, int]) -> None:
        if what == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses[info["generation"]].append(time.perf_counter() - gc_started[0])

    if trace_ms:
        gc.callbacks.append(on_gc)
    profiler = cProfile.Profile() if profile_dir else None
    events0, lines0 = counters()
    updates0, chars0 = probe.updates, probe.output_chars
    busy0, agents0 = machine_busy_s(), sum(agents.cpu_times()[:2])
    if profiler:
        profiler.enable()
    cpu0, wall0 = console_cpu_s(), time.monotonic()
    n = 0
    while time.monotonic() - wall0 < seconds:
        key = keys[n % len(keys)]
        n += 1
        delay = await probe.press(key)
        if delay is None:
            phase.misses.append(key.key)
        else:
            phase.delays.append(delay)
            phase.by_key.setdefault(key.key, []).append(delay)
        key.after()
        due = wall0 + n * interval_s + rng.uniform(-interval_s / 3, interval_s / 3)
        await asyncio.sleep(max(0.0, min(due, wall0 + seconds) - time.monotonic()))
    cpu1, wall1 = console_cpu_s(), time.monotonic()
    if profiler:
        profiler.disable()
    busy1, agents1 = machine_busy_s(), sum(agents.cpu_times()[:2])
    stop.set()
    await monitor
    if trace_ms:
        gc.callbacks.remove(on_gc)
        for gen, pauses in gc_pauses.items():
            print(
                f"== {phase.name}: gc generation {gen}: {len(pauses)} collections, "
                f"{sum(pauses) * 1000:.0f} ms in all, "
                f"longest {max(pauses, default=0) * 1000:.0f} ms",
                file=sys.stderr,
            )
    events1, lines1 = counters()
    phase.wall_s, phase.cpu_s = wall1 - wall0, cpu1 - cpu0
    phase.agents_cpu_s = agents1 - agents0
    phase.others_cpu_s = max(0.0, busy1 - busy0 - phase.cpu_s - phase.agents_cpu_s)
    phase.events, phase.log_lines = events1 - events0, lines1 - lines0
    phase.updates, phase.output_chars = probe.updates - updates0, probe.output_chars - chars0
    phase.stall_max_s = max(stalls, default=float("nan"))
    phase.lag_s = lag()
    if profiler and profile_dir:
        path = profile_dir / f"{phase.name.replace(' ', '-')}.pstats"
        profiler.dump_stats(path)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
        stats.print_stats(25)
        print(f"== profile: {phase.name} ({path}) ==\n{out.getvalue()}", file=sys.stderr)


async def measure_console(
    ports: list[int], args: argparse.Namespace, agents: psutil.Process
) -> list[Phase]:

    from console.model.cluster import ConnState
    from console.model.log_buffer import LogBuffer
    from console.net.cluster_file import NodeTarget
    from console.ui.app import GantryApp, tune_gc
    from console.ui.screens.job import JobScreen
    from console.ui.screens.logs import LogScreen
    from console.ui.widgets.chart_panel import ChartPanel
    from console.ui.widgets.rank_table import RankTable

    token_dir = Path(tempfile.mkdtemp(prefix="gantry-console-job-"))
    try:
        token_file = token_dir / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        targets = [
            NodeTarget(node_name(i), f"127.0.0.1:{port}", token_file)
            for i, port in enumerate(ports)
        ]
        world = args.nodes * args.ranks_per_node
        rng = random.Random(5)
        tune_gc()  # as `gantry` does before it runs the console
        if args.gc_threshold:  # an experiment: other collection thresholds than tune_gc's
            gc.set_threshold(*(int(n) for n in args.gc_threshold.split(",")))
        app = GantryApp(targets, refresh_interval_s=0.1)
        phases = [Phase("job screen"), Phase("log screen")]
        async with app.run_test(size=(160, 48)) as pilot:
            probe = RepaintProbe(app)
            await until(
                "every agent live", lambda: all(n.state is ConnState.LIVE for n in app.store), 90
            )
            await until(f"{JOB} listed", lambda: JOB in app.jobs, 30)
            screen = app.open_job(JOB)
            view = app.jobs.get(JOB)
            assert view is not None and app.jobs_session is not None

            await until("the job screen", lambda: bool(screen.query("#rank-table")), 30)
            await pilot.pause()
            ranks = screen.query_one("#rank-table", RankTable)
            # The job screen drawn with every rank, and the event stream flowing. Not the
            # whole backlog: a console slower than the stream would never be through it.
            await until(
                "every rank's row", lambda: ranks.row_count == world and view.last_seq > 0, 120
            )

            def lag() -> float:
                """Seconds from the newest metric record applied to now."""
                newest = max((r.time for r in view.ranks.values()), default=0.0)
                return time.time() - newest if newest else math.nan

            # Phase 1: the job screen, with the log rank's log followed in the background.
            side = LogBuffer()
            tail = asyncio.create_task(
                app.jobs_session.tail_log(JOB, args.log_rank, 1, side.extend), name="bench:tail"
            )
            await until("the log", lambda: side.end_index > 0, 30)
            await asyncio.sleep(args.warmup)
            charts = screen.query_one("#chart-panel", ChartPanel)
            events = screen.query_one("#event-table", RankTable)

            def cursor(delta: int) -> Callable[[], Callable[[], bool]]:
                def arm() -> Callable[[], bool]:
                    target = ranks.cursor_row + delta
                    return lambda: ranks.cursor_row == target

                return arm

            def tab(name: str) -> Callable[[], Callable[[], bool]]:
                return lambda: lambda: screen.active_tab == name

            # Back on the ranks tab JobScreen.action_tab gives the table the focus (timed,
            # with the key); the bench makes sure of it, untimed, so down/up always move.
            def refocus() -> None:
                screen.set_focus(ranks)

            job_keys = [
                Key("down", ranks, cursor(1)),
                Key("2", charts, tab("charts")),
                Key("1", ranks, tab("ranks"), refocus),
                Key("down", ranks, cursor(1)),
                Key("3", events, tab("events")),
                Key("1", ranks, tab("ranks"), refocus),
                Key("up", ranks, cursor(-1)),
            ]
            half = args.seconds / 2
            await measure_phase(
                phases[0],
                probe,
                job_keys,
                half,
                args.key_interval,
                lambda: (view.last_seq, side.end_index),
                lag,
                rng,
                args.profile,
                agents,
                args.trace_stalls,
            )
            tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tail
            # Phase 2: the log screen, searching, while everything streams.
            app.open_logs(JOB, args.log_rank, 1)
            await until("the log screen", lambda: isinstance(app.screen, LogScreen), 10)
            log_screen = app.screen
            assert isinstance(log_screen, LogScreen)
            buffer = log_screen.buffer
            await until("the log's tail", lambda: buffer.end_index >= MAX_TAIL_LINES // 2, 30)
            await pilot.press("slash", *SEARCH, "enter")
            log_view = log_screen.view
            await until("a search match", lambda: log_view.current_line is not None, 10)
            await asyncio.sleep(min(2.0, args.warmup))

            def moved() -> Callable[[], bool]:
                before = log_view.current_line
                return lambda: log_view.current_line not in (None, before)

            def live() -> Callable[[], bool]:
                return lambda: log_view.live

            log_keys = [
                Key("n", log_view, moved),
                Key("n", log_view, moved),
                Key("N", log_view, moved),
                Key("G", log_view, live),
            ]
            await measure_phase(
                phases[1],
                probe,
                log_keys,
                half,
                args.key_interval,
                lambda: (view.last_seq, buffer.end_index),
                lag,
                rng,
                args.profile,
                agents,
                args.trace_stalls,
            )
            assert isinstance(screen, JobScreen)
            await pilot.press("escape", "escape")
            await pilot.press("q")
        return phases
    finally:
        shutil.rmtree(token_dir, ignore_errors=True)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def report(args: argparse.Namespace, phases: list[Phase]) -> None:
    """The table, then the JSON line. CPU and rates are over both windows together;
    latencies are the worse phase's: pooled, the screen that answers faster would get
    more keys in and outweigh the other."""
    wall = sum(p.wall_s for p in phases)
    world = args.nodes * args.ranks_per_node

    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    def worst(of: Callable[[Phase], float]) -> float:
        values = [of(p) for p in phases if not math.isnan(of(p))]
        return max(values, default=math.nan)

    def rate(of: Callable[[Phase], float]) -> tuple[float, float, float]:
        a, b = phases
        return of(a) / a.wall_s, of(b) / b.wall_s, sum(of(p) for p in phases) / wall

    def latency(q: float) -> tuple[float, float, float]:
        a, b = phases
        return ms(a.delays, q), ms(b.delays, q), worst(lambda p: ms(p.delays, q))

    def count(of: Callable[[Phase], float]) -> tuple[float, float, float]:
        a, b = phases
        return of(a), of(b), sum(of(p) for p in phases)

    rows: list[tuple[str, tuple[float, float, float], str, str]] = [
        ("console CPU-s per wall-s", rate(lambda p: p.cpu_s), "", ".3f"),
        ("keypress -> repaint p50 (ms)", latency(50), "", ".1f"),
        ("keypress -> repaint p99 (ms)", latency(99), "< 100", ".1f"),
        ("keypress -> repaint max (ms)", latency(100), "", ".1f"),
        ("keys shown", count(lambda p: len(p.delays)), "", ".0f"),
        ("keys not shown within 30 s", count(lambda p: len(p.misses)), "0", ".0f"),
        ("job events applied per s", rate(lambda p: p.events), f"{world}", ".0f"),
        (
            "log lines received per s",
            rate(lambda p: p.log_lines),
            f"{args.log_lines_per_s:g}",
            ".0f",
        ),
        ("screen updates per s", rate(lambda p: p.updates), "", ".1f"),
        ("terminal output (kB/s)", rate(lambda p: p.output_chars / 1000), "", ".1f"),
        (
            "job metrics behind, at the end (s)",
            (phases[0].lag_s, phases[1].lag_s, phases[1].lag_s),
            "",
            ".1f",
        ),
        (
            "longest event-loop stall (ms)",
            (
                phases[0].stall_max_s * 1000,
                phases[1].stall_max_s * 1000,
                worst(lambda p: p.stall_max_s * 1000),
            ),
            "",
            ".0f",
        ),
        ("agents' process CPU-s per s", rate(lambda p: p.agents_cpu_s), "", ".3f"),
        ("other processes' CPU-s per s", rate(lambda p: p.others_cpu_s), "", ".3f"),
    ]
    print(
        f"console under a job: {world:,} ranks on {args.nodes} nodes at 1 Hz, one rank's log "
        f"at {args.log_lines_per_s:,.0f} lines/s; 2 x {args.seconds / 2:g} s measured, "
        f"160x48 headless, a key every {args.key_interval:g} s, {os.cpu_count()} CPUs"
        + (" (profiled: figures inflated)" if args.profile else "")
    )
    print(f"{'figure':36} {phases[0].name:>11} {phases[1].name:>11} {'both':>9} {'goal':>7}")
    for name, (a, b, both), goal, spec in rows:
        print(f"{name:36} {a:11{spec}} {b:11{spec}} {both:9{spec}} {goal:>7}")
    print("(both: CPU and rates over both windows; latencies and stalls: the worse phase)")
    print(f"{'per key (ms)':36} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9} {'missed':>7}")
    for phase in phases:
        for key in dict.fromkeys([*phase.by_key, *phase.misses]):
            values = phase.by_key.get(key, [])
            label = f"  {phase.name}: {key}"
            print(
                f"{label:36} {len(values):5d} {ms(values, 50):9.1f} {ms(values, 99):9.1f} "
                f"{ms(values, 100):9.1f} {phase.misses.count(key):7d}"
            )
    cpu = sum(p.cpu_s for p in phases)
    p99 = latency(99)[2]
    print(
        json.dumps(
            {
                "console_cpu_s_per_s": round(cpu / wall, 4),
                "keypress_repaint_p99_ms": None if math.isnan(p99) else round(p99, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--ranks-per-node", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="both phases together")
    parser.add_argument("--log-lines-per-s", type=float, default=5000.0)
    parser.add_argument("--log-rank", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=30, help="steps run before the console")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--key-interval", type=float, default=0.15)
    parser.add_argument("--quick", action="store_true", help="a 5 s smoke run")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each phase here")
    parser.add_argument(
        "--trace-stalls",
        type=float,
        default=0.0,
        metavar="MS",
        help="sample the loop's stack in stalls over MS ms; print the longest stalls and the GC "
        "pauses (stderr)",
    )
    parser.add_argument(
        "--gc-threshold",
        default="",
        metavar="G0,G1,G2",
        help="an experiment: gc.set_threshold(G0, G1, G2) after the console's own tuning",
    )
    parser.add_argument("--serve-agents", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.backlog = 5.0, 1.0, 5
    if not 0 <= args.log_rank < args.nodes * args.ranks_per_node:
        parser.error(f"--log-rank must be below {args.nodes * args.ranks_per_node}")
    if args.serve_agents:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_agents(args))
        return

    child_args = [
        f"--nodes={args.nodes}",
        f"--ranks-per-node={args.ranks_per_node}",
        f"--seconds={args.seconds}",
        f"--log-lines-per-s={args.log_lines_per_s}",
        f"--log-rank={args.log_rank}",
        f"--backlog={args.backlog}",
        f"--warmup={args.warmup}",
    ]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-agents", *child_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,  # Ctrl-C reaches the parent, which stops it in order
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit("console_job: the agents' process exited before it was ready")
        ports = json.loads(line)["ports"]
        phases = asyncio.run(measure_console(ports, args, psutil.Process(child.pid)))
    except KeyboardInterrupt:
        print("console_job: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        stop_child(child)
    report(args, phases)


if __name__ == "__main__":
    main()
