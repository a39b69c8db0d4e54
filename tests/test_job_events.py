"""Job events as the console reads them: batched WatchJobEvents (every event, in seq
order, none lost across batches) and a replay of only the recent metric history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from gantry.v1 import agent_service_pb2, job_pb2

from agent.jobs.event_bus import EventBus, keep_metrics_tail
from agent.rpc.jobs import JobRpcs
from agent.runtime import build_job_runtime
from console.model.jobs import JobsStore

EK = job_pb2.JobEventKind
JOB = "j"


def event(kind: int, rank: int = -1, step: int = 0) -> job_pb2.JobEvent:
    out = job_pb2.JobEvent(job_name=JOB, attempt=1, kind=kind, node="n", rank=rank)  # type: ignore[arg-type]
    if kind == EK.JOB_EVENT_KIND_METRICS:
        out.metrics.step = step
        out.metrics.loss = 1.0 + step
    return out


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    rt = build_job_runtime("n", tmp_path, [])
    yield rt
    rt.journal.close()


def journal_a_job(bus: EventBus) -> list[int]:
    """Submitted, 4 ranks started, 25 steps of metrics with a checkpoint in between."""
    bus.publish(event(EK.JOB_EVENT_KIND_SUBMITTED))
    for rank in range(4):
        bus.publish(event(EK.JOB_EVENT_KIND_RANK_STARTED, rank))
    for step in range(1, 26):
        for rank in range(4):
            bus.publish(event(EK.JOB_EVENT_KIND_METRICS, rank, step))
        if step == 10:
            bus.publish(event(EK.JOB_EVENT_KIND_CHECKPOINT_SAVED, 0))
    return list(range(1, 5 + 100 + 1 + 1))


async def take(stream: AsyncIterator[Any], count: int, timeout: float = 5.0) -> list[Any]:
    out = []

    async def run() -> None:
        async for item in stream:
            out.append(item)
            if len(out) >= count:
                return

    await asyncio.wait_for(run(), timeout)
    return out


def test_metrics_tail_keeps_every_other_event(runtime: Any) -> None:
    bus: EventBus = runtime.bus
    seqs = journal_a_job(bus)
    everything = bus.replay(JOB, 0)
    assert [e.seq for e in everything] == seqs
    tail = bus.replay(JOB, 0, metrics_tail=8)
    metrics = [e for e in tail if e.kind == EK.JOB_EVENT_KIND_METRICS]
    assert [m.metrics.step for m in metrics] == [24] * 4 + [25] * 4
    others = [e.seq for e in everything if e.kind != EK.JOB_EVENT_KIND_METRICS]
    assert [e.seq for e in tail if e.kind != EK.JOB_EVENT_KIND_METRICS] == others
    assert [e.seq for e in tail] == sorted(e.seq for e in tail)
    # The journal's query and the bus's own cut agree, after any after_seq.
    for after in (0, 3, 50, 100, 106):
        for n in (1, 8, 99, 100, 1000):
            fast = bus.replay(JOB, after, metrics_tail=n)
            slow = keep_metrics_tail(bus.replay(JOB, after), n)
            assert [e.seq for e in fast] == [e.seq for e in slow], (after, n)
    assert bus.replay(JOB, 0, metrics_tail=1000) == everything
    assert bus.replay("other", 0, metrics_tail=8) == []


async def test_batches_deliver_every_event_in_order(runtime: Any) -> None:
    bus: EventBus = runtime.bus
    journal_a_job(bus)  # 106 journaled before the follower comes
    stream = bus.follow_batches(JOB, 0, max_batch=16)
    first = await take(stream, 7)  # the journal in slices of 16 at most
    assert [len(b) for b in first] == [16] * 6 + [10]
    for burst in range(20):  # live: bursts, each published within one turn of the loop
        for rank in range(4):
            bus.publish(event(EK.JOB_EVENT_KIND_METRICS, rank, 26 + burst))
        if burst % 3 == 0:
            bus.publish(event(EK.JOB_EVENT_KIND_ALERT, 1))
        bus.publish(job_pb2.JobEvent(job_name="another", kind=EK.JOB_EVENT_KIND_SUBMITTED))
        await asyncio.sleep(0)
    live: list[list[job_pb2.JobEvent]] = []
    while sum(len(b) for b in live) < 80 + 7:
        live += await take(stream, 1)
    await cast(AsyncGenerator[Any, None], stream).aclose()
    seqs = [e.seq for b in first + live for e in b]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == 106 + 87
    assert all(e.job_name == JOB for b in live for e in b)
    assert max(len(b) for b in live) > 1  # what was queued came together
    assert all(0 < len(b) <= 16 for b in live)


async def test_watch_job_events_batched_and_one_by_one(runtime: Any) -> None:
    bus: EventBus = runtime.bus
    journal_a_job(bus)
    rpcs = JobRpcs.__new__(JobRpcs)
    rpcs.jobs = runtime.jobs
    context = cast(Any, None)

    async def read(batched: bool, tail: int) -> list[agent_service_pb2.WatchJobEventsResponse]:
        request = agent_service_pb2.WatchJobEventsRequest(
            job_name=JOB, follow=False, batched=batched, metrics_tail=tail
        )
        return [m async for m in rpcs.WatchJobEvents(request, context)]

    one_by_one = await read(False, 0)
    assert len(one_by_one) == 106 and all(m.HasField("event") and not m.events for m in one_by_one)
    batched = await read(True, 0)
    assert len(batched) == 1 and not batched[0].HasField("event")
    assert [e.seq for e in batched[0].events] == [m.event.seq for m in one_by_one]
    tail = await read(True, 4)
    assert len(tail[0].events) == 6 + 4

    # The console's store applies the batches to the same state as the events one by one.
    a, b = JobsStore(), JobsStore()
    for store in (a, b):
        store.apply_job("n", job_pb2.Job(spec=job_pb2.JobSpec(name=JOB)))
    for m in one_by_one:
        a.apply_event(m.event)
    applied = b.apply_events(batched[0].events)
    assert len(applied) == 106 and not b.apply_events(batched[0].events)  # a replay: held
    va, vb = a.get(JOB), b.get(JOB)
    assert va is not None and vb is not None
    assert va.last_seq == vb.last_seq == 106
    assert list(va.events) == list(vb.events)
    assert va.step_series("loss") == vb.step_series("loss")
    assert {r: list(x.history) for r, x in va.ranks.items()} == {
        r: list(x.history) for r, x in vb.ranks.items()
    }


def test_advisor_input_reused_across_runs_equals_a_fresh_one() -> None:
    from console.model.advice import AdvisorInputs, advisor_input
    from console.model.cluster import ClusterStore
    from console.model.jobs import RANK_HISTORY

    store = JobsStore()
    store.apply_job("n", job_pb2.Job(spec=job_pb2.JobSpec(name=JOB)))
    cluster = ClusterStore()
    inputs = AdvisorInputs()
    seq = 0
    for step in range(1, RANK_HISTORY + 40, 7):  # the histories fill, then move on
        batch = []
        for s in range(step, step + 7):
            for rank in range(3):
                seq += 1
                e = event(EK.JOB_EVENT_KIND_METRICS, rank, s)
                e.seq = seq
                e.metrics.time.FromSeconds(1_000 + s)
                batch.append(e)
        store.apply_events(batch)
        view = store.get(JOB)
        assert view is not None
        reused = inputs.take(view, cluster, 2_000.0).build()
        assert reused == advisor_input(view, cluster, 2_000.0)


def test_median_without_is_the_median_of_the_others() -> None:
    import random
    import statistics

    from console.model.advisor_rules_speed import _median_without

    rng = random.Random(7)
    for _ in range(500):
        values = [rng.choice([0.5, 1.0, rng.random()]) for _ in range(rng.randrange(2, 9))]
        ordered = sorted(values)
        for i, v in enumerate(values):
            assert _median_without(ordered, v) == statistics.median(values[:i] + values[i + 1 :])
