"""The restart policy's decisions, pure: after a failed attempt, another one (when, and
what the job says meanwhile) or the end of the job."""

from __future__ import annotations

from dataclasses import dataclass

from gantry.v1 import job_pb2


@dataclass(frozen=True)
class AfterFailure:
    restart: bool
    restarts_used: int  # counting the restart decided here
    backoff_s: float
    message: str  # the RESTARTING event's, or the job's reason when it fails


def after_failure(reason: str, restarts_used: int, policy: job_pb2.RestartPolicy) -> AfterFailure:
    """What follows an attempt that failed for ``reason`` when ``restarts_used`` were spent."""
    if restarts_used >= policy.max_restarts:
        why = f"{reason}; out of restarts ({restarts_used}/{policy.max_restarts})"
        return AfterFailure(False, restarts_used, 0.0, why)
    used = restarts_used + 1
    message = f"restart {used}/{policy.max_restarts} in {policy.backoff_s:g}s after: {reason}"
    return AfterFailure(True, used, policy.backoff_s, message)


def excluded_after(
    previous: tuple[str, ...], exclude: tuple[str, ...], include: tuple[str, ...] = ()
) -> list[str]:
    """The nodes a new attempt goes without: the last attempt's and the operator's
    ``exclude``, but for those the operator ``include``s again."""
    return sorted((set(previous) | set(exclude)) - set(include))
