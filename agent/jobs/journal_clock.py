"""A leader's record of its peers' times, kept from running ahead of its own clock. Pure.

A peer stamps its events and rank rows with its own wall clock. A time after the moment the
leader records it can only come from a clock that runs ahead (a node minutes ahead would
put its events after the ones that follow them, in the future, and its ranks' heartbeats
too): such a time takes that moment instead. A clock that runs behind cannot be told apart
from a late delivery here; its times are kept as stamped.
"""

from __future__ import annotations

from collections.abc import Sequence

from gantry.v1 import job_pb2
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["ORIGIN", "event_not_after", "ranks_not_after"]

ORIGIN = "origin"  # the detail of a peer's event copied by a leader (agent.jobs.leader)


def _clamp(stamp: Timestamp, now_ns: int) -> bool:
    if stamp.ToNanoseconds() > now_ns:
        stamp.FromNanoseconds(now_ns)
        return True
    return False


def event_not_after(event: job_pb2.JobEvent, now: float) -> bool:
    """A copied peer event (and its metrics) stamped after ``now`` moved back to ``now``, in
    place; whether it was. The leader's own events are left as they are."""
    if ORIGIN not in event.details:
        return False
    now_ns = int(now * 1e9)
    moved = _clamp(event.time, now_ns)
    if event.HasField("metrics"):
        moved = _clamp(event.metrics.time, now_ns) or moved
    return moved


def ranks_not_after(ranks: Sequence[job_pb2.Rank], now: float) -> list[job_pb2.Rank]:
    """Copies of ``ranks`` with every time after ``now`` (heartbeat, phase, unknown-since,
    metrics) moved back to ``now``."""
    now_ns = int(now * 1e9)
    out = []
    for rank in ranks:
        copy = job_pb2.Rank()
        copy.CopyFrom(rank)
        for field in ("last_heartbeat", "phase_since", "unknown_since"):
            if copy.HasField(field):
                _clamp(getattr(copy, field), now_ns)
        if copy.HasField("metrics") and copy.metrics.HasField("time"):
            _clamp(copy.metrics.time, now_ns)
        out.append(copy)
    return out
