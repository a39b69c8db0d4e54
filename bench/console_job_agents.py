"""bench/console_job.py's agents' side, run in a child process (`--serve-agents`): one
grpc.aio AgentService server per node (`SimAgent`: its telemetry, the job's RPCs on the
leader, the log rank's log) behind the agents' token check, the log rank's stdout
(`LogFeed`), and `serve_agents`, which starts them all and advances the job and the log."""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2

from agent.rpc.jobs import event_responses
from bench.console_job_leader import (
    JOB,
    STEP_S,
    JobSim,
    load_recording,
    node_name,
    record_stream,
)

if TYPE_CHECKING:
    from agent.telemetry.sampler import Sampler

TOKEN = "bench-token-" + "x" * 32
# What an agent answers at most for a tail (agent.jobs.node.supervisor, agent.jobs.node.tailer).
MAX_TAIL_LINES = 10_000
MAX_TAIL_BYTES = 1 << 20
LOG_KEEP = 200_000
TICK_S = 0.05
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


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
