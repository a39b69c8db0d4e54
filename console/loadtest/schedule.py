"""Rates over time, and the send times they give (pure).

A schedule is a list of phases: a step holds a rate for a while, a ramp goes linearly from
the previous rate to its own. Send times come from the cumulative expected count N(t): the
k-th request of a constant arrival goes at N^-1(k); Poisson arrivals put unit-rate Poisson
points through the same inverse (time rescaling), so both follow steps and ramps exactly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, allow_zero: bool = False) -> float:
    """'30s', '2m', '500ms', '1h' or plain seconds; ValueError with the reason."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError("not a duration (e.g. 30s, 2m, 500ms)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 and not (allow_zero and seconds == 0):
        raise ValueError("a duration must be above zero")
    return seconds


def parse_rate(text: str) -> float:
    """'100' or '100/s' requests per second; ValueError with the reason."""
    body = text.strip().removesuffix("/s").strip()
    try:
        rate = float(body)
    except ValueError:
        raise ValueError("not a rate in requests per second (e.g. 100 or 100/s)") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError("a rate must be a positive number of requests per second")
    return rate


@dataclass(frozen=True)
class Phase:
    start_rate: float
    end_rate: float  # equal to start_rate for a step
    duration_s: float  # may be math.inf for the last phase

    @property
    def is_ramp(self) -> bool:
        return self.start_rate != self.end_rate

    def count(self, t: float) -> float:
        """Expected requests in the first t seconds of the phase."""
        if self.duration_s == math.inf:
            return self.start_rate * t
        slope = (self.end_rate - self.start_rate) / self.duration_s
        return self.start_rate * t + slope * t * t / 2

    def time_of(self, count: float) -> float:
        """The inverse of `count` within the phase."""
        if count <= 0:
            return 0.0
        if self.duration_s == math.inf or not self.is_ramp:
            return count / self.start_rate
        half_slope = (self.end_rate - self.start_rate) / (2 * self.duration_s)
        b = self.start_rate
        # The root of half_slope*t^2 + b*t - count = 0, in the form that stays exact
        # when half_slope is tiny.
        return 2 * count / (b + math.sqrt(max(0.0, b * b + 4 * half_slope * count)))


@dataclass(frozen=True)
class Schedule:
    phases: tuple[Phase, ...]

    @property
    def total_s(self) -> float:
        return sum(p.duration_s for p in self.phases)

    def rate_at(self, t: float) -> float:
        for phase in self.phases:
            if t < phase.duration_s:
                return phase.start_rate + (phase.end_rate - phase.start_rate) * (
                    0.0 if phase.duration_s == math.inf else t / phase.duration_s
                )
            t -= phase.duration_s
        return 0.0

    def count(self, t: float) -> float:
        """Expected requests sent in [0, t)."""
        total = 0.0
        for phase in self.phases:
            if t <= phase.duration_s:
                return total + phase.count(max(0.0, t))
            total += phase.count(phase.duration_s)
            t -= phase.duration_s
        return total

    def time_of(self, count: float) -> float:
        """When the expected count reaches `count`; math.inf past the schedule's end."""
        start = 0.0
        for phase in self.phases:
            in_phase = math.inf if phase.duration_s == math.inf else phase.count(phase.duration_s)
            if count < in_phase:
                return start + phase.time_of(count)
            count -= in_phase
            start += phase.duration_s
        return math.inf

    def with_prefix(self, rate: float, duration_s: float) -> Schedule:
        if duration_s <= 0:
            return self
        return Schedule((Phase(rate, rate, duration_s), *self.phases))

    def describe(self) -> str:
        parts = []
        for phase in self.phases:
            length = "" if phase.duration_s == math.inf else f" for {phase.duration_s:g}s"
            if phase.is_ramp:
                parts.append(f"ramp {phase.start_rate:g}->{phase.end_rate:g}/s{length}")
            else:
                parts.append(f"{phase.start_rate:g}/s{length}")
        return ", ".join(parts)


def constant(rate: float, duration_s: float = math.inf) -> Schedule:
    return Schedule((Phase(rate, rate, duration_s),))


def parse_schedule(text: str) -> Schedule:
    """'100:30s,200:30s,ramp:400:60s'; ValueError naming the bad step."""
    phases: list[Phase] = []
    previous = 0.0
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("empty schedule (e.g. 100:30s,200:30s,ramp:400:60s)")
    for number, item in enumerate(items, 1):
        fields = [f.strip() for f in item.split(":")]
        ramp = fields[0].lower() == "ramp"
        if ramp:
            fields = fields[1:]
        if len(fields) != 2:
            raise ValueError(
                f"step {number} {item!r}: expected RATE:DURATION or ramp:RATE:DURATION"
            )
        try:
            rate = float(fields[0].removesuffix("/s"))
        except ValueError:
            raise ValueError(f"step {number} {item!r}: {fields[0]!r} is not a rate") from None
        if not math.isfinite(rate) or rate < 0 or (rate == 0 and not ramp):
            raise ValueError(f"step {number} {item!r}: the rate must be above zero")
        try:
            duration = parse_duration(fields[1])
        except ValueError as exc:
            raise ValueError(f"step {number} {item!r}: {fields[1]!r} is {exc}") from None
        phases.append(Phase(previous if ramp else rate, rate, duration))
        previous = rate
    if all(p.start_rate == 0 and p.end_rate == 0 for p in phases):
        raise ValueError("the schedule sends nothing")
    return Schedule(tuple(phases))


def arrivals(schedule: Schedule, kind: str, seed: int = 0) -> Iterator[float]:
    """Send times (seconds from the start), ascending, up to the schedule's end."""
    if kind == "poisson":
        rng = random.Random(seed)
        count = rng.expovariate(1.0)
        while (t := schedule.time_of(count)) != math.inf:
            yield t
            count += rng.expovariate(1.0)
        return
    k = 0
    while (t := schedule.time_of(k)) != math.inf:
        yield t
        k += 1
