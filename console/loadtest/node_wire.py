"""A load test run from the cluster's nodes, as the contract carries it (pure): the task
spec of one worker (`gantry.v1.LoadTestTaskSpec`) from the resolved target and the plan, and
back; a worker's Snapshot as a `LoadTestSnapshot` and back.

A node's clock is its own: the start travels as wall-clock time and every time in a
snapshot as seconds from the start, which each side maps onto its own time.monotonic().
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gantry.v1 import task_pb2
from google.protobuf import json_format

from console.loadtest.config import LoadTestError
from console.loadtest.histogram import Histogram
from console.loadtest.plan import Plan
from console.loadtest.recorder import HISTOGRAMS, Snapshot
from console.loadtest.schedule import Phase, Schedule
from console.loadtest.targets import TargetSpec
from console.loadtest.tls import TlsSettings

READY_MESSAGE = "ready"  # the line a node's worker prints once connected to the target
# What the task spec carries of a TargetSpec. A field added to TargetSpec (TLS, metadata...)
# must be carried too before a run from the nodes may use it: see `task_spec`.
CARRIED_TARGET_FIELDS = frozenset(
    {
        "kind",
        "address",
        "method",
        "streaming",
        "bodies",
        "token",
        "timeout_s",
        "prompt_set",
        "metadata",
        "tls",
        "client_streaming",
    }
)


@dataclasses.dataclass(frozen=True)
class WorkerRun:
    """What a node's worker runs: the target, the plan, its index and the SLOs."""

    target: TargetSpec
    plan: Plan
    worker: int
    slo_ttft_ms: float | None
    slo_latency_ms: float | None
    start_unix_s: float


def _unsupported_target_fields(target: TargetSpec) -> list[str]:
    default = {f.name: f.default for f in dataclasses.fields(TargetSpec)}
    return sorted(
        name
        for name, value in dataclasses.asdict(target).items()
        if name not in CARRIED_TARGET_FIELDS and value not in (default[name], (), None, "")
    )


def task_spec(run: WorkerRun) -> task_pb2.LoadTestTaskSpec:
    """The task spec of one worker; LoadTestError if the target needs what it cannot carry."""
    target, plan = run.target, run.plan
    missing = _unsupported_target_fields(target)
    if missing:
        raise LoadTestError(f"--from-nodes cannot carry the target's {', '.join(missing)} yet")
    spec = task_pb2.LoadTestTaskSpec(
        target=target.address,
        kind=target.kind,
        method=target.method,
        streaming=target.streaming,
        client_streaming=target.client_streaming,
        bodies=list(target.bodies),
        token=target.token,
        timeout_s=target.timeout_s,
        prompt_set=target.prompt_set,
        open_loop=plan.open_loop,
        arrival=plan.arrival,
        seed=plan.seed,
        concurrency=plan.concurrency,
        warmup_s=plan.warmup_s,
        run_s=plan.run_s or 0.0,
        requests=plan.requests or 0,
        worker=run.worker,
        workers=plan.workers,
        slo_ttft_ms=run.slo_ttft_ms or 0.0,
        slo_latency_ms=run.slo_latency_ms or 0.0,
        start_unix_s=run.start_unix_s,
    )
    for key, value in target.metadata:
        spec.metadata.add(key=key, value=value)
    if target.tls is not None:
        tls = target.tls
        spec.tls.ca_pem = tls.ca_pem or b""
        spec.tls.cert_pem = tls.cert_pem or b""
        spec.tls.key_pem = tls.key_pem or b""
        spec.tls.insecure = tls.insecure
        spec.tls.server_name = tls.server_name
    for phase in plan.timeline.phases if plan.timeline is not None else ():
        spec.phases.add(
            start_rate=phase.start_rate,
            end_rate=phase.end_rate,
            duration_s=0.0 if phase.duration_s == math.inf else phase.duration_s,
        )
    return spec


def worker_run(spec: task_pb2.LoadTestTaskSpec) -> WorkerRun:
    """The inverse of `task_spec`."""
    target = TargetSpec(
        kind=spec.kind,
        address=spec.target,
        method=spec.method,
        streaming=spec.streaming,
        bodies=tuple(spec.bodies),
        token=spec.token,
        timeout_s=spec.timeout_s,
        prompt_set=spec.prompt_set,
        metadata=tuple((m.key, m.value) for m in spec.metadata),
        tls=_tls(spec),
        client_streaming=spec.client_streaming,
    )
    timeline = None
    if spec.open_loop:
        timeline = Schedule(
            tuple(Phase(p.start_rate, p.end_rate, p.duration_s or math.inf) for p in spec.phases)
        )
    plan = Plan(
        open_loop=spec.open_loop,
        timeline=timeline,
        arrival=spec.arrival,
        seed=spec.seed,
        concurrency=spec.concurrency,
        warmup_s=spec.warmup_s,
        run_s=spec.run_s or None,
        requests=spec.requests or None,
        workers=spec.workers,
    )
    return WorkerRun(
        target,
        plan,
        spec.worker,
        spec.slo_ttft_ms or None,
        spec.slo_latency_ms or None,
        spec.start_unix_s,
    )


def _tls(spec: task_pb2.LoadTestTaskSpec) -> TlsSettings | None:
    if not spec.HasField("tls"):
        return None
    t = spec.tls
    return TlsSettings(
        ca_pem=t.ca_pem or None,
        cert_pem=t.cert_pem or None,
        key_pem=t.key_pem or None,
        insecure=t.insecure,
        server_name=t.server_name,
    )


def snapshot_message(snap: Snapshot, start_at: float, seq: int) -> task_pb2.LoadTestSnapshot:
    """`snap` (times on this machine's monotonic clock, `start_at` the run's start on it)."""
    out = task_pb2.LoadTestSnapshot(
        worker=snap.worker,
        seq=seq,
        at_s=snap.at - start_at,
        sent=snap.sent,
        completed=snap.completed,
        ok=snap.ok,
        good=snap.good,
        tokens=snap.tokens,
        warmup_sent=snap.warmup_sent,
        warmup_done=snap.warmup_done,
        in_flight=max(0, snap.in_flight),
        final=snap.final,
        unfinished=snap.unfinished,
        stopped=snap.stopped,
    )
    for name, hist in snap.hists.items():
        if hist.count:
            out.histograms[name] = hist.encode()
    out.errors.update(snap.errors)
    out.finishes.update(snap.finishes)
    if snap.last_send:
        out.last_send_s = snap.last_send - start_at
    if snap.last_completion:
        out.last_completion_s = snap.last_completion - start_at
    if snap.window_end:
        out.window_end_s = snap.window_end - start_at
    return out


def snapshot_from_message(message: task_pb2.LoadTestSnapshot, start_at: float) -> Snapshot:
    """A node's snapshot on this machine's clock (`start_at`: the run's start on it).
    Histograms other than the recorder's are dropped: a node cannot add new ones."""
    snap = Snapshot(message.worker, start_at + message.at_s)
    snap.hists = {
        name: Histogram.decode(text)
        for name, text in message.histograms.items()
        if name in HISTOGRAMS
    }
    snap.sent, snap.completed, snap.ok = message.sent, message.completed, message.ok
    snap.good, snap.tokens = message.good, message.tokens
    snap.errors = dict(message.errors)
    snap.finishes = dict(message.finishes)
    snap.warmup_sent, snap.warmup_done = message.warmup_sent, message.warmup_done
    snap.in_flight = message.in_flight
    if message.HasField("last_send_s"):
        snap.last_send = start_at + message.last_send_s
    if message.HasField("last_completion_s"):
        snap.last_completion = start_at + message.last_completion_s
    if message.HasField("window_end_s"):
        snap.window_end = start_at + message.window_end_s
    snap.final, snap.unfinished, snap.stopped = message.final, message.unfinished, message.stopped
    return snap


def snapshot_json(message: task_pb2.LoadTestSnapshot) -> dict[str, Any]:
    """As a task program prints it (the agent parses it back into TaskProgress.load)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
