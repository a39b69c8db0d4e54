"""Counters behind GetServerStats and /metrics: totals, rates over a sliding window,
batch sizes, request latencies.

Thread-safe (the decode thread records steps and tokens, the event loop records
requests); the clock is injected so tests need no sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

WINDOW_S = 10.0
# Upper bounds of the request latency histogram (/metrics), seconds.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class StatsSnapshot:
    requests_total: int
    errors_total: int
    requests_per_s: float
    tokens_per_s: float
    batch_size_histogram: dict[int, int] = field(default_factory=dict)
    tokens_total: int = 0
    completed_total: int = 0
    latency_counts: tuple[int, ...] = ()  # per LATENCY_BUCKETS_S bound, then above the last
    latency_sum_s: float = 0.0
    prompt_tokens_total: int = 0  # of the completed requests
    cached_prompt_tokens_total: int = 0  # of those, found in the prefix cache


class StepRecorder(Protocol):
    """What the decode engine records: ServerStats, or in the engine process the relay
    that sends the figures to the server's ServerStats (agent.serve.engine_worker)."""

    def step(self, batch_size: int, tokens: int) -> None: ...

    def request_completed(
        self, latency_s: float = 0.0, prompt_tokens: int = 0, cached_tokens: int = 0
    ) -> None: ...


class ServerStats:
    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._requests_total = 0
        self._errors_total = 0
        self._completed: deque[float] = deque()  # completion times
        self._tokens: deque[tuple[float, int]] = deque()  # (time, tokens generated)
        self._histogram: Counter[int] = Counter()
        self._tokens_total = 0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._latency_sum_s = 0.0
        self._prompt_tokens = 0
        self._cached_tokens = 0

    def request_received(self) -> None:
        with self._lock:
            self._requests_total += 1

    def request_failed(self) -> None:
        with self._lock:
            self._errors_total += 1

    def request_completed(
        self, latency_s: float = 0.0, prompt_tokens: int = 0, cached_tokens: int = 0
    ) -> None:
        """A request ended; `latency_s`: received to its last token; of its `prompt_tokens`,
        `cached_tokens` came from the prefix cache."""
        bucket = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS_S) if latency_s <= bound),
            len(LATENCY_BUCKETS_S),
        )
        with self._lock:
            self._completed.append(self._clock())
            self._latency_counts[bucket] += 1
            self._latency_sum_s += latency_s
            self._prompt_tokens += prompt_tokens
            self._cached_tokens += cached_tokens

    def step(self, batch_size: int, tokens: int) -> None:
        """A decode step of `batch_size` sequences; `tokens` generated since the last call."""
        with self._lock:
            if batch_size > 0:
                self._histogram[batch_size] += 1
            if tokens:
                self._tokens.append((self._clock(), tokens))
                self._tokens_total += tokens

    def snapshot(self) -> StatsSnapshot:
        now = self._clock()
        horizon = now - self._window_s
        with self._lock:
            while self._completed and self._completed[0] <= horizon:
                self._completed.popleft()
            while self._tokens and self._tokens[0][0] <= horizon:
                self._tokens.popleft()
            # A server up for less than the window is measured over its uptime.
            span = max(min(self._window_s, now - self._started), 1e-3)
            return StatsSnapshot(
                requests_total=self._requests_total,
                errors_total=self._errors_total,
                requests_per_s=len(self._completed) / span,
                tokens_per_s=sum(n for _, n in self._tokens) / span,
                batch_size_histogram=dict(self._histogram),
                tokens_total=self._tokens_total,
                completed_total=sum(self._latency_counts),
                latency_counts=tuple(self._latency_counts),
                latency_sum_s=self._latency_sum_s,
                prompt_tokens_total=self._prompt_tokens,
                cached_prompt_tokens_total=self._cached_tokens,
            )
