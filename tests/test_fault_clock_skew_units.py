"""A leader's record of a peer whose clock runs ahead, without servers: the peer's times after
the moment they are recorded take that moment (``agent.jobs.journal_clock``), in the events
it copies and in its view of the attempt's ranks; its own events keep their times."""

from __future__ import annotations

import time
from pathlib import Path

from gantry.v1 import job_pb2

from agent.jobs.journal import AttemptRow, Journal
from agent.jobs.journal_clock import ORIGIN, event_not_after, ranks_not_after

NOW = 1_700_000_000.0
AHEAD_S = 300.0


def peer_event(at: float, origin: bool = True) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(job_name="moe", attempt=1, node="node-b", rank=1, message="m")
    event.time.FromNanoseconds(int(at * 1e9))
    event.metrics.time.FromNanoseconds(int(at * 1e9))
    event.metrics.step = 3
    if origin:
        event.details[ORIGIN] = "node-b"
    return event


def test_a_copied_event_from_the_future_takes_the_moment_it_is_recorded() -> None:
    ahead = peer_event(NOW + AHEAD_S)
    assert event_not_after(ahead, NOW)
    assert ahead.time.ToNanoseconds() == ahead.metrics.time.ToNanoseconds() == int(NOW * 1e9)
    past = peer_event(NOW - 1)
    assert not event_not_after(past, NOW) and past.time.ToNanoseconds() == int((NOW - 1) * 1e9)
    own = peer_event(NOW + AHEAD_S, origin=False)  # not a copy: not this rule's to judge
    assert not event_not_after(own, NOW)
    bare = job_pb2.JobEvent(details={ORIGIN: "node-b"})
    bare.time.FromNanoseconds(int((NOW + 5) * 1e9))
    assert event_not_after(bare, NOW) and not bare.HasField("metrics")


def test_a_peers_rank_times_ahead_are_kept_to_now() -> None:
    rank = job_pb2.Rank(rank=1, node="node-b")
    rank.last_heartbeat.FromNanoseconds(int((NOW + AHEAD_S) * 1e9))
    rank.metrics.time.FromNanoseconds(int((NOW + AHEAD_S) * 1e9))
    rank.phase_since.FromNanoseconds(int((NOW - 10) * 1e9))
    (kept,) = ranks_not_after([rank], NOW)
    assert kept.last_heartbeat.ToNanoseconds() == kept.metrics.time.ToNanoseconds()
    assert kept.last_heartbeat.ToNanoseconds() == int(NOW * 1e9)
    assert kept.phase_since.ToNanoseconds() == int((NOW - 10) * 1e9)
    assert not kept.HasField("unknown_since")
    assert rank.last_heartbeat.ToNanoseconds() == int((NOW + AHEAD_S) * 1e9)  # a copy


def test_the_leaders_journal_records_a_skewed_peer_at_its_own_time(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.ensure_job(job_pb2.JobSpec(name="moe"))
    journal.add_attempt(AttemptRow("moe", 1, job_pb2.JOB_STATE_RUNNING))
    before = time.time()
    journal.append_event(peer_event(before + AHEAD_S))
    rank = job_pb2.Rank(rank=1, node="node-b")
    rank.last_heartbeat.FromNanoseconds(int((before + AHEAD_S) * 1e9))
    journal.set_attempt_ranks("moe", 1, [rank])
    after = time.time()
    (stored,) = journal.events_after(0)
    assert before <= stored.time.ToNanoseconds() / 1e9 <= after
    assert before <= stored.metrics.time.ToNanoseconds() / 1e9 <= after
    (kept,) = journal.attempt_ranks("moe")[1]
    assert before <= kept.last_heartbeat.ToNanoseconds() / 1e9 <= after
    journal.close()
