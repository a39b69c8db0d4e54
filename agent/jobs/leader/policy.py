"""The restart policy's decisions, pure: after a failed attempt, another one (when, and
what the job says meanwhile) or the end of the job; after a preemption notice, how long
the ranks have to checkpoint and when a preempted node counts as back."""

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


DEFAULT_PREEMPTION_GRACE_S = 30.0
# A preempted node that never stopped answering counts as back this long after its
# notice's deadline (the notice was withdrawn, or the instance outlived it).
PREEMPT_SETTLE_S = 60.0


def preemption_deadline(
    policy: job_pb2.PreemptionPolicy, noticed_at: float, notice_deadline: float | None
) -> float:
    """When the attempt stops after a notice: the spec's grace (0: 30 s) from the notice,
    or the instance's own deadline when that comes first."""
    grace = policy.grace_s if policy.grace_s > 0 else DEFAULT_PREEMPTION_GRACE_S
    deadline = noticed_at + grace
    if notice_deadline is not None and notice_deadline > noticed_at:
        deadline = min(deadline, notice_deadline)
    return deadline


def node_back(answers: bool, went_away: bool, now: float, settle_until: float) -> bool:
    """A preempted node is back when it answers again after it went away (its agent was
    restarted, or it is a replacement), or answers still once the settle time is over."""
    return answers and (went_away or now >= settle_until)
