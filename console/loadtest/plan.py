"""The run a config describes, and each worker's share of it (pure)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from console.loadtest.config import DEFAULT_DURATION_S, LoadTestConfig
from console.loadtest.schedule import Schedule, constant, parse_schedule


@dataclass(frozen=True)
class Plan:
    open_loop: bool
    timeline: Schedule | None  # open loop: send rates from the start, warm-up included
    arrival: str
    seed: int
    concurrency: int  # closed loop, all workers together
    warmup_s: float
    run_s: float | None  # measured seconds; None: until `requests` are done
    requests: int | None  # measured requests, all workers together
    workers: int

    @property
    def end_s(self) -> float | None:
        """When sending stops, from the start (warm-up included)."""
        return None if self.run_s is None else self.warmup_s + self.run_s

    def target_rate_at(self, elapsed_s: float) -> float | None:
        if self.timeline is None:
            return None
        return self.timeline.rate_at(elapsed_s)

    def target_rps(self, window_end_s: float) -> float | None:
        """The mean scheduled rate over the measured window [warm-up end, window_end_s)."""
        if self.timeline is None or window_end_s <= self.warmup_s:
            return None
        sent = self.timeline.count(window_end_s) - self.timeline.count(self.warmup_s)
        return sent / (window_end_s - self.warmup_s)

    def describe(self) -> str:
        if self.timeline is None:
            return f"closed loop, concurrency {self.concurrency}"
        measured = self.timeline.phases[1:] if self.warmup_s > 0 else self.timeline.phases
        return f"open loop ({self.arrival}): {Schedule(measured).describe()}"


def share(total: int, index: int, workers: int) -> int:
    """Worker `index`'s part of `total`, the parts differing by one at most."""
    return total // workers + (1 if index < total % workers else 0)


def make_plan(config: LoadTestConfig) -> Plan:
    """Assumes a validated config."""
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    if config.open_loop:
        if config.schedule:
            base = parse_schedule(config.schedule)
        else:
            assert config.rate is not None
            duration = config.duration_s
            if duration is None:
                duration = math.inf if config.requests is not None else DEFAULT_DURATION_S
            base = constant(config.rate, duration)
        first = base.phases[0]
        timeline = base.with_prefix((first.start_rate + first.end_rate) / 2, config.warmup_s)
        run_s: float | None = base.total_s if base.total_s != math.inf else None
        return Plan(
            True,
            timeline,
            config.arrival,
            seed,
            0,
            config.warmup_s,
            run_s,
            config.requests,
            config.workers,
        )
    run_s = config.duration_s
    if run_s is None and config.requests is None:
        run_s = DEFAULT_DURATION_S
    assert config.concurrency is not None
    return Plan(
        False,
        None,
        "closed",
        seed,
        config.concurrency,
        config.warmup_s,
        run_s,
        config.requests,
        config.workers,
    )
