"""Followers of the event bus read the journal by seq: one far behind still gets every
event, in order, once, and the bus holds nothing for it meanwhile."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path

import pytest
from gantry.v1 import job_pb2

from agent.jobs.event_bus import EventBus
from agent.jobs.journal import Journal

EK = job_pb2.JobEventKind
BEHIND = 20_000


def event(job: str, kind: int, rank: int = 0, step: int = 0) -> job_pb2.JobEvent:
    out = job_pb2.JobEvent(job_name=job, attempt=1, kind=kind, node="n", rank=rank)  # type: ignore[arg-type]
    if kind == EK.JOB_EVENT_KIND_METRICS:
        out.metrics.step = step
    return out


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path)


async def test_a_follower_far_behind_gets_every_event_once_in_order(journal: Journal) -> None:
    bus = EventBus(journal)
    for step in range(10):
        bus.publish(event("j", EK.JOB_EVENT_KIND_METRICS, step=step))
    stream = bus.follow_batches("j", 0)
    idle = bus.follow_batches("j", 0)  # another follower, never read until the end
    first = await anext(stream)
    assert [e.seq for e in first] == list(range(1, 11))
    waiting = asyncio.ensure_future(anext(stream))  # the follower is live, waiting
    await asyncio.sleep(0)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    # Nothing awaited in between: the follower falls BEHIND events back (and another
    # job's events are mixed in), the last a failure.
    with journal.transaction():
        for n in range(BEHIND):
            kind = EK.JOB_EVENT_KIND_RANK_FAILED if n == BEHIND - 1 else EK.JOB_EVENT_KIND_METRICS
            bus.publish(event("j", kind, rank=n % 8, step=10 + n))
            if n % 100 == 0:
                bus.publish(event("other", EK.JOB_EVENT_KIND_ALERT))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 1_000_000, f"the bus held {held} bytes for a follower behind"

    got = [await waiting]
    while sum(len(b) for b in got) < BEHIND:
        got.append(await asyncio.wait_for(anext(stream), 5))
    events = [e for b in got for e in b]
    assert [e.metrics.step for e in events[:-1]] == list(range(10, 10 + BEHIND - 1))
    assert events[-1].kind == EK.JOB_EVENT_KIND_RANK_FAILED
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == BEHIND
    assert all(e.job_name == "j" for e in events)
    assert max(len(b) for b in got) <= 1_000  # one batch at a time

    # The idle follower, read only now, gets the same, from the start.
    late: list[job_pb2.JobEvent] = []
    while len(late) < BEHIND + 10:
        late += await asyncio.wait_for(anext(idle), 5)
    assert [e.seq for e in late] == [*range(1, 11), *seqs]
    await stream.aclose()
    await idle.aclose()
    assert bus.followers() == 0
    journal.close()


async def test_events_after_the_journal_was_read_are_not_missed(journal: Journal) -> None:
    """Published between a follower's read of the journal and its wait: woken, read."""
    bus = EventBus(journal)
    stream = bus.follow_batches("j", 0)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)  # it read an empty journal and waits
    bus.publish(event("j", EK.JOB_EVENT_KIND_SUBMITTED))
    batch = await asyncio.wait_for(pending, 5)
    assert [e.seq for e in batch] == [1]
    # An event journaled by someone else (the node supervisor) wakes it through notify.
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    other = event("j", EK.JOB_EVENT_KIND_RANK_STARTED)
    journal.append_event(other)
    bus.notify(other)
    assert [e.seq for e in await asyncio.wait_for(pending, 5)] == [2]
    await stream.aclose()
    journal.close()


async def test_a_bus_over_an_in_memory_log_still_works() -> None:
    """`EventBus(append, history)`: how bench/console_job.py builds one."""
    log: list[job_pb2.JobEvent] = []

    def append(e: job_pb2.JobEvent) -> int:
        log.append(e)
        return len(log)

    bus = EventBus(append, lambda after, job: log[after:])
    for step in range(1, 6):
        bus.publish(event("j", EK.JOB_EVENT_KIND_METRICS, step=step))
    bus.publish(event("j", EK.JOB_EVENT_KIND_ALERT))
    assert [e.seq for e in bus.replay("j", 0, metrics_tail=2)] == [4, 5, 6]
    stream = bus.follow_batches("j", 3, max_batch=2)
    assert [[e.seq for e in await anext(stream)] for _ in range(2)] == [[4, 5], [6]]
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    bus.publish(event("j", EK.JOB_EVENT_KIND_SUCCEEDED))
    assert [e.seq for e in await asyncio.wait_for(pending, 5)] == [7]
    await stream.aclose()
