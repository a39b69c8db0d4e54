"""Admission for the inference server's continuous batching (pure: no model, no threads).

Requests wait in a FIFO queue; at every decode step the decode loop asks `plan(now)`
which queued requests join the running batch and which running ones leave it.

- Idle (nothing running): the queue is held for up to `max_queue_delay_s` after its
  oldest request arrived, or until `max_batch_size` requests wait, so that a burst
  starts as one batch instead of one request followed by stragglers.
- Running: queued requests join at the next step while there are free places
  (iteration-level batching); holding them back would only add latency, as the step
  in progress already gathers them.
- A cancelled request leaves the queue at once; a cancelled running one is handed
  back by the next `plan` (evicted), so its place is free from the next step on.

The scheduler only holds keys; the caller keeps the requests and serializes calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Plan(Generic[K]):
    admitted: list[K] = field(default_factory=list)
    evicted: list[K] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.admitted or self.evicted)


class Scheduler(Generic[K]):
    def __init__(self, max_batch_size: int, max_queue_delay_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self._queue: OrderedDict[K, float] = OrderedDict()  # key -> arrival time
        self._running: dict[K, None] = {}  # insertion-ordered set
        self._cancelled: dict[K, None] = {}

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued(self) -> list[K]:
        """The waiting requests, oldest first."""
        return list(self._queue)

    @property
    def running(self) -> list[K]:
        return list(self._running)

    def __contains__(self, key: object) -> bool:
        return key in self._queue or key in self._running

    def submit(self, key: K, now: float) -> None:
        if key in self:
            raise KeyError(f"request {key!r} is already scheduled")
        self._queue[key] = now

    def cancel(self, key: K) -> bool:
        """True when `key` was queued or running. A queued request is gone at once."""
        if self._queue.pop(key, None) is not None:
            return True
        if key in self._running:
            self._cancelled[key] = None
            return True
        return False

    def finish(self, key: K) -> None:
        """A running request ended by itself (end of text, length, stop): its place is free."""
        self._running.pop(key, None)
        self._cancelled.pop(key, None)

    def plan(self, now: float) -> Plan[K]:
        """What changes before the next step; the caller applies it."""
        evicted = list(self._cancelled)
        for key in evicted:
            del self._running[key]
        self._cancelled.clear()
        free = self.max_batch_size - len(self._running)
        if free <= 0 or not self._queue:
            return Plan([], evicted)
        if not self._running and not self._window_closed(now):
            return Plan([], evicted)
        admitted = list(self._queue)[:free]
        for key in admitted:
            del self._queue[key]
            self._running[key] = None
        return Plan(admitted, evicted)

    def wake_at(self) -> float | None:
        """When the delay window of an idle batch closes (None: nothing waits on time)."""
        if self._running or self._cancelled or not self._queue:
            return None
        if len(self._queue) >= self.max_batch_size:
            return next(iter(self._queue.values()))
        return next(iter(self._queue.values())) + self.max_queue_delay_s

    def _window_closed(self, now: float) -> bool:
        if len(self._queue) >= self.max_batch_size:
            return True
        oldest = next(iter(self._queue.values()))
        return now - oldest >= self.max_queue_delay_s
