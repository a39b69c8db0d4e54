"""A rule of the contract that both sides apply, kept once beside it: what a rank's latest
figures are when its records come one step at a time, each saying part of them.

A script logs its loss every ``logging_steps`` while its progress bar moves every step, and
a log line read late may be of an earlier step than the bar's. The agent's leader (a rank's
``metrics`` in ``Job``) and the console (a rank's row) both keep, per figure, the last one
known, at the highest step seen.
"""

from __future__ import annotations

from gantry.v1 import job_pb2

__all__ = ["latest_metrics"]


def latest_metrics(
    previous: job_pb2.RankMetrics | None, new: job_pb2.RankMetrics
) -> job_pb2.RankMetrics:
    """``new``, completed by what ``previous`` said and ``new`` does not; a record of an
    earlier step than ``previous`` adds its figures without moving the step back."""
    if previous is None:
        return new
    merged = job_pb2.RankMetrics()
    merged.CopyFrom(previous)
    if new.step >= previous.step:
        merged.MergeFrom(new)
        return merged
    late = job_pb2.RankMetrics()
    late.CopyFrom(new)
    late.ClearField("step")
    late.ClearField("time")
    merged.MergeFrom(late)
    return merged
