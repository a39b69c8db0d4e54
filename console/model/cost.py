"""What a job costs: GPU-hours used so far and the estimate to finish, at the job's
price per GPU-hour (its spec's `cost`). Pure: the time is passed in.

One rank holds one GPU for as long as its attempt ran; a restart's lost work therefore
shows as GPU-hours spent. A job whose ranks hold no GPU is billed the same way in
CPU-hours (one rank, one slot), at the same price per hour.

The spec's ``pricing`` says what is billed of ``price_per_gpu_hour`` (the on-demand price):
``preemptible`` (spot) instances about 30 % of it, ``on-demand`` and ``reserved`` the price
given. The time a job waits preempted (no attempt runs) is not billed, and is shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from gantry.v1 import job_pb2

from console.model.jobs import ACTIVE_JOB_STATES, JS, ts

# What each pricing mode bills of the spec's price (the on-demand one); others: all of it.
PRICE_FACTORS = {"preemptible": 0.3}


def price_factor(pricing: str) -> float:
    """The share of the on-demand price the spec's pricing mode bills."""
    return PRICE_FACTORS.get(pricing, 1.0)


@dataclass(frozen=True)
class Cost:
    gpu_hours: float
    price_per_gpu_hour: float  # 0: no price in the spec
    pricing: str
    instance_type: str
    remaining_gpu_hours: float | None  # None: no step time or no step budget yet
    unit: str = "GPU"  # "CPU" when the job's ranks hold no GPU: the hours are CPU-hours
    preempted_hours: float = 0.0  # wall-clock hours the job waited preempted: not billed

    @property
    def rate(self) -> float:
        """What one GPU-hour is billed at: the price, by the pricing mode."""
        return self.price_per_gpu_hour * price_factor(self.pricing)

    @property
    def spent(self) -> float:
        return self.gpu_hours * self.rate

    @property
    def remaining(self) -> float | None:
        if self.remaining_gpu_hours is None:
            return None
        return self.remaining_gpu_hours * self.rate

    def summary(self) -> str:
        """One line, e.g. `3.2 GPU-h $8.00 · to finish ~1.1 GPU-h $2.75 (on-demand 2.50/GPU-h)`."""
        hours = f"{self.unit}-h"
        used = f"{self.gpu_hours:.2f} {hours}"
        rest = (
            f" · to finish ~{self.remaining_gpu_hours:.2f} {hours}"
            if self.remaining_gpu_hours is not None
            else ""
        )
        if self.preempted_hours > 0:
            rest += f" · {self.preempted_hours:.2f} h preempted, not billed"
        if not self.price_per_gpu_hour:
            return used + rest + " (no price: set cost.price_per_gpu_hour in the job spec)"
        used += f" ${self.spent:,.2f}"
        if self.remaining is not None:
            rest += f" ${self.remaining:,.2f}"
        where = " ".join(p for p in (self.instance_type, self.pricing) if p)
        price = f"${self.price_per_gpu_hour:g}/{hours}"
        if self.rate != self.price_per_gpu_hour:
            share = price_factor(self.pricing) * 100
            price = f"${self.rate:.4g}/{hours}, {share:g} % of on-demand {price}"
        return f"{used}{rest} ({where + ' ' if where else ''}{price})"


def arg_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def total_steps(spec: job_pb2.JobSpec) -> int | None:
    raw = arg_value(list(spec.args), "--max_steps")
    try:
        steps = int(raw) if raw is not None else 0
    except ValueError:
        return None
    return steps if steps > 0 else None


def attempt_gpu_hours(attempt: job_pb2.Attempt, now: float) -> float:
    start = ts(attempt.started)
    if not start:
        return 0.0
    end = ts(attempt.ended) or now
    return max(0.0, end - start) * len(attempt.ranks) / 3600.0


def hours_unit(job: job_pb2.Job) -> str:
    """ "GPU" when any rank of the job holds a GPU (or no rank was placed yet), else "CPU"."""
    ranks = [r for a in job.attempts for r in a.ranks]
    return "GPU" if not ranks or any(r.gpu_indices for r in ranks) else "CPU"


def job_cost(job: job_pb2.Job, now: float, step: int, step_time_s: float | None) -> Cost:
    """`step`: the last step reached; `step_time_s`: the recent mean step time."""
    used = sum(attempt_gpu_hours(a, now) for a in job.attempts)
    remaining = None
    total = total_steps(job.spec)
    ranks = len(job.attempts[-1].ranks) if job.attempts else 0
    if job.state in ACTIVE_JOB_STATES and total is not None and step_time_s is not None and ranks:
        remaining = max(0, total - step) * step_time_s * ranks / 3600.0
    cost = job.spec.cost
    return Cost(
        used,
        cost.price_per_gpu_hour,
        cost.pricing,
        cost.instance_type,
        remaining,
        hours_unit(job),
        preempted_hours(job, now),
    )


def preempted_hours(job: job_pb2.Job, now: float) -> float:
    """The wall-clock hours from each preempted attempt's end to the next attempt's start
    (or now, while the job still waits)."""
    total = 0.0
    attempts = list(job.attempts)
    for i, attempt in enumerate(attempts):
        end = ts(attempt.ended)
        if not attempt.preempted or not end:
            continue
        if i + 1 < len(attempts):
            resumed = ts(attempts[i + 1].started)
        else:
            resumed = now if job.state == JS.JOB_STATE_PREEMPTED else end
        total += max(0.0, (resumed or end) - end)
    return total / 3600.0
