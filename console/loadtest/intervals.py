"""The run second by second: the workers' snapshots binned by when they were taken (pure).

Each worker snapshots twice a second; a snapshot's counts and histograms go to the interval
holding its time, so one interval merges every worker's figures exactly. Times are seconds
since the measured window began; warm-up figures are not measured and are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from console.loadtest.histogram import Dist, Histogram
from console.loadtest.recorder import Snapshot

INTERVAL_S = 1.0
# The histograms an interval keeps (the recorder's names) and the Interval field of each.
KEPT = {"latency": "latency_ms", "ttft": "ttft_ms", "itl": "itl_ms", "send_lag": "send_lag_ms"}


@dataclass(frozen=True)
class Interval:
    """One interval of the measured window: counts, and the summaries of its histograms."""

    start_s: float  # since the measured window began
    end_s: float  # the interval's end; in the last one, the run's last snapshot
    sent: int
    completed: int
    ok: int
    errors: int
    good: int  # ok and within the SLOs
    tokens: int
    in_flight: int  # at the interval's end, summed over the workers
    latency_ms: Dist | None = None
    ttft_ms: Dist | None = None
    itl_ms: Dist | None = None
    send_lag_ms: Dist | None = None

    @property
    def length_s(self) -> float:
        return max(self.end_s - self.start_s, 0.0)

    def per_s(self, n: int) -> float:
        return n / self.length_s if self.length_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "sent": self.sent,
            "completed": self.completed,
            "ok": self.ok,
            "errors": self.errors,
            "good": self.good,
            "tokens": self.tokens,
            "in_flight": self.in_flight,
        }
        for name in KEPT.values():
            dist: Dist | None = getattr(self, name)
            out[name] = dist.to_json() if dist is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Interval:
        dists = {name: Dist.from_json(data[name]) for name in KEPT.values() if data.get(name)}
        return cls(
            start_s=float(data["start_s"]),
            end_s=float(data["end_s"]),
            sent=int(data["sent"]),
            completed=int(data["completed"]),
            ok=int(data["ok"]),
            errors=int(data["errors"]),
            good=int(data["good"]),
            tokens=int(data["tokens"]),
            in_flight=int(data["in_flight"]),
            **dists,
        )


@dataclass
class _Bin:
    last_at_s: float = 0.0
    sent: int = 0
    completed: int = 0
    ok: int = 0
    errors: int = 0
    good: int = 0
    tokens: int = 0
    in_flight: dict[int, int] = field(default_factory=dict)  # worker -> at its last snapshot
    hists: dict[str, Histogram] = field(default_factory=dict)

    def merge(self, other: _Bin) -> None:
        self.last_at_s = max(self.last_at_s, other.last_at_s)
        self.sent += other.sent
        self.completed += other.completed
        self.ok += other.ok
        self.errors += other.errors
        self.good += other.good
        self.tokens += other.tokens
        self.in_flight = other.in_flight or self.in_flight
        for name, hist in other.hists.items():
            self.hists.setdefault(name, Histogram()).merge(hist)


class IntervalLog:
    """Collects snapshots (`add`, as Aggregate.add gets them) into intervals."""

    def __init__(self, measure_start: float, interval_s: float = INTERVAL_S) -> None:
        """`measure_start`: when the measured window began, on the snapshots' clock."""
        if interval_s <= 0:
            raise ValueError("the interval must be longer than 0 s")
        self.measure_start = measure_start
        self.interval_s = interval_s
        self._bins: dict[int, _Bin] = {}

    def add(self, snap: Snapshot) -> None:
        at_s = snap.at - self.measure_start
        measured = snap.sent or snap.completed or snap.unfinished
        if at_s < 0 and not measured:
            return  # the warm-up
        index = max(0, math.floor(at_s / self.interval_s))
        b = self._bins.setdefault(index, _Bin())
        b.last_at_s = max(b.last_at_s, at_s)
        b.sent += snap.sent
        b.completed += snap.completed
        b.ok += snap.ok
        b.errors += sum(snap.errors.values())
        b.good += snap.good
        b.tokens += snap.tokens
        b.in_flight[snap.worker] = snap.in_flight
        for name in KEPT:
            hist = snap.hists.get(name)
            if hist is not None and hist.count:
                b.hists.setdefault(name, Histogram()).merge(hist)

    def intervals(self) -> list[Interval]:
        """Every interval from the first to the last, those with no snapshot as zeros."""
        if not self._bins:
            return []
        last = max(self._bins)
        bins = [self._bins.get(index, _Bin()) for index in range(last + 1)]
        starts = [index * self.interval_s for index in range(last + 1)]
        # The last snapshot (the drain's) just past an interval's end would make a sliver
        # whose per-second rates mean nothing: it joins the interval before.
        if last and bins[-1].last_at_s - starts[-1] < self.interval_s / 2:
            bins[-2].merge(bins.pop())
            starts.pop()
        out = []
        for index, (start_s, b) in enumerate(zip(starts, bins, strict=True)):
            end_s = start_s + self.interval_s
            if index == len(bins) - 1:
                end_s = max(b.last_at_s, start_s)
            dists = {KEPT[name]: h.summary() for name, h in b.hists.items()}
            out.append(
                Interval(
                    start_s=start_s,
                    end_s=end_s,
                    sent=b.sent,
                    completed=b.completed,
                    ok=b.ok,
                    errors=b.errors,
                    good=b.good,
                    tokens=b.tokens,
                    in_flight=sum(b.in_flight.values()),
                    **dists,
                )
            )
        return out

    def to_json(self) -> list[dict[str, Any]]:
        return [interval.to_json() for interval in self.intervals()]


def report_intervals(report: object) -> list[Interval]:
    """A report's intervals; none for a report saved before it kept them."""
    raw = getattr(report, "intervals", None) or []
    return [Interval.from_json(item) for item in raw]
