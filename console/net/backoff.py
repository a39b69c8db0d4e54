"""Reconnect delays: exponential with jitter, capped. Pure; the caller sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2  # +/- this fraction, so many consoles do not retry in step
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next(self) -> float:
        base = min(self.maximum_s, self.initial_s * self.factor**self._attempt)
        self._attempt += 1
        return base * (1 + self.jitter * (2 * self.rng.random() - 1))

    def reset(self) -> None:
        self._attempt = 0
