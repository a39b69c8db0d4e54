"""HDR histograms of latencies (ms, kept to the microsecond) and rates, merged exactly.

Every histogram has the same layout, so an encoded one (base64 text) can be added to any
other bucket by bucket: merging the workers' histograms gives exactly the histogram of all
their values, not an average of percentiles.
"""

from __future__ import annotations

import array
import itertools
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

SCALE = 1000  # integer units per value unit: ms -> us, tokens/s -> milli-tokens/s
HIGHEST = 3_600_000_000  # one hour in us
SIGNIFICANT_FIGURES = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True)
class Dist:
    """A summary of one histogram, in its value unit (ms for latencies)."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    def to_json(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": round(self.mean, 3),
            "p50": round(self.p50, 3),
            "p90": round(self.p90, 3),
            "p99": round(self.p99, 3),
            "p99.9": round(self.p999, 3),
            "max": round(self.max, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dist:
        return cls(
            int(data["count"]),
            float(data["mean"]),
            float(data["p50"]),
            float(data["p90"]),
            float(data["p99"]),
            float(data["p99.9"]),
            float(data["max"]),
        )


class Histogram:
    def __init__(self) -> None:
        self._h = HdrHistogram(1, HIGHEST, SIGNIFICANT_FIGURES)

    def record(self, value: float) -> None:
        scaled = int(value * SCALE)
        if scaled > HIGHEST:
            scaled = HIGHEST
        elif scaled < 0:
            scaled = 0
        self._h.record_value(scaled)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def __bool__(self) -> bool:
        return self.count > 0

    def counts(self) -> list[tuple[float, int]]:
        """(value, count) of every non-empty bucket, the value being the bucket's highest
        equivalent value (as HDR reports percentiles). Two histograms with the same counts
        hold the same values to the histogram's precision."""
        # hdrh's own iterators cost ~50 ms a histogram; this pass over a copy of the raw
        # counts ~1 ms, which matters at two progress updates a second.
        raw = array.array("Q", bytes(self._h.counts))
        values = bucket_values(self._h)
        return [(values[i], raw[i]) for i in itertools.compress(range(len(raw)), raw)]

    def max(self) -> float:
        recorded = self.counts()
        return recorded[-1][0] if recorded else 0.0

    def percentiles(self, percentiles: tuple[float, ...] = PERCENTILES) -> dict[float, float]:
        return _percentiles(self.counts(), percentiles)

    def summary(self) -> Dist:
        recorded = self.counts()
        total = sum(c for _, c in recorded)
        if not total:
            return Dist(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p = _percentiles(recorded, PERCENTILES)
        mean = sum(v * c for v, c in recorded) / total
        return Dist(total, mean, p[50.0], p[90.0], p[99.0], p[99.9], recorded[-1][0])

    def encode(self) -> str:
        return bytes(self._h.encode()).decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Histogram:
        made = cls()
        made.merge_encoded(text)
        return made

    def merge_encoded(self, text: str) -> None:
        other = HdrHistogram.decode(text.encode("ascii"))
        if other.get_total_count():
            self._h.add(other)

    # Across processes a histogram travels encoded; decoding restores every count.
    def __getstate__(self) -> str:
        return self.encode()

    def __setstate__(self, state: str) -> None:
        self._h = HdrHistogram(1, HIGHEST, SIGNIFICANT_FIGURES)
        self.merge_encoded(state)

    def merge(self, other: Histogram) -> None:
        if other.count:
            self._h.add(other._h)

    def buckets(self, n: int = 20) -> list[tuple[float, int]]:
        """n log-spaced buckets from the smallest to the largest value: (upper bound, count)."""
        recorded = self.counts()
        if not recorded:
            return []
        low = max(recorded[0][0], 1.0 / SCALE)
        high = max(recorded[-1][0], low)
        ratio = (high / low) ** (1.0 / n) if high > low else 1.0
        bounds = [low * ratio ** (i + 1) for i in range(n)]
        bounds[-1] = high
        out = [0] * n
        i = 0
        for value, count in recorded:
            while i < n - 1 and value > bounds[i]:
                i += 1
            out[i] += count
        return [(round(b, 3), c) for b, c in zip(bounds, out, strict=True)]


def _percentiles(
    recorded: list[tuple[float, int]], percentiles: tuple[float, ...]
) -> dict[float, float]:
    total = sum(c for _, c in recorded)
    out = dict.fromkeys(percentiles, 0.0)
    if not total:
        return out
    for p in percentiles:
        target = max(1, int(p * total / 100 + 0.5))  # HdrHistogram's own rounding
        seen = 0
        for value, count in recorded:
            seen += count
            if seen >= target:
                out[p] = value
                break
    return out


_BUCKET_VALUES: list[float] = []


def bucket_values(h: HdrHistogram) -> list[float]:
    """Each counts index's highest equivalent value, the same for every histogram here: what
    h.get_highest_equivalent_value(h.get_value_from_index(i)) gives, 20x faster."""
    if not _BUCKET_VALUES:
        half_magnitude = h.sub_bucket_half_count_magnitude
        half = h.sub_bucket_half_count
        unit = h.unit_magnitude
        for index in range(h.counts_len):
            bucket = (index >> half_magnitude) - 1
            sub = (index & (half - 1)) + half
            if bucket < 0:
                sub -= half
                bucket = 0
            lowest = sub << (bucket + unit)
            _BUCKET_VALUES.append((lowest + (1 << (bucket + unit)) - 1) / SCALE)
    return _BUCKET_VALUES
