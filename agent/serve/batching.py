"""Admission for the inference server's continuous batching (pure: no model, no threads).

Requests wait in a FIFO queue; at every decode step the decode loop asks `plan(now)`
which queued requests join the running batch and which running ones leave it.

- Idle (nothing running) after a pause: the queue is held for up to `max_queue_delay_s`
  after its oldest request arrived, or until `max_batch_size` requests wait, so that a
  burst starts as one batch instead of one request followed by stragglers.
- Idle under load (the oldest waiting request arrived within LOAD_GAP_S, or the window
  if longer, of the last step that ran): admitted at once. The batch has just drained
  and its clients are coming back one by one; each joins at the next step anyway, and
  holding them left the engine idle (bench/serving.py at concurrency 32 on 2 cores:
  8,040 tokens/s with a 10 ms window held after every drain, 8,270 with this rule, and
  8,350 with no window at all).
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

# A request arriving this soon after the last step is taken for traffic, not a burst: the
# round trip of a client that got its answer and sends again (loopback to a far region).
LOAD_GAP_S = 0.1


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
        self._last_step: float | None = None  # the last plan that left a batch to run

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
        admitted: list[K] = []
        free = self.max_batch_size - len(self._running)
        if free > 0 and self._queue and (self._running or self._window_closed(now)):
            admitted = list(self._queue)[:free]
            for key in admitted:
                del self._queue[key]
                self._running[key] = None
        if self._running:  # a step runs now
            self._last_step = now
        return Plan(admitted, evicted)

    def wake_at(self) -> float | None:
        """When the delay window of an idle batch closes (None: nothing waits on time)."""
        if self._running or self._cancelled or not self._queue:
            return None
        oldest = next(iter(self._queue.values()))
        if len(self._queue) >= self.max_batch_size or self._under_load(oldest):
            return oldest
        return oldest + self.max_queue_delay_s

    def _window_closed(self, now: float) -> bool:
        if len(self._queue) >= self.max_batch_size:
            return True
        oldest = next(iter(self._queue.values()))
        return self._under_load(oldest) or now - oldest >= self.max_queue_delay_s

    def _under_load(self, arrived: float) -> bool:
        """The request came soon after the last step: traffic, not a burst."""
        last = self._last_step
        return last is not None and arrived - last <= max(self.max_queue_delay_s, LOAD_GAP_S)
