"""A time-bounded ring buffer: keeps the items of the last ``history_s`` seconds."""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Ring"]

T = TypeVar("T")


class Ring(Generic[T]):
    """Items stamped with a time (seconds on any monotonic clock), oldest first.

    Bounded twice: by count (a ``deque`` whose ``maxlen`` is derived from
    ``history_s / interval_s`` plus some slack, so memory is bounded even if the clock
    misbehaves) and by age (items older than ``history_s`` before the newest are dropped on
    every append). Thread-safe: one writer and any number of readers.
    """

    def __init__(self, history_s: float = 900.0, interval_s: float = 1.0) -> None:
        if history_s <= 0 or interval_s <= 0:
            raise ValueError("history_s and interval_s must be positive")
        self.history_s = history_s
        self.maxlen = math.ceil(history_s / interval_s) + 2
        self._items: deque[tuple[float, T]] = deque(maxlen=self.maxlen)
        self._lock = threading.Lock()

    def append(self, t: float, item: T) -> None:
        """Add ``item`` stamped ``t`` and drop what is older than ``t - history_s``."""
        horizon = t - self.history_s
        with self._lock:
            items = self._items
            items.append((t, item))
            while items[0][0] < horizon:
                items.popleft()

    def items(self, since: float | None = None) -> list[T]:
        """Items stamped at or after ``since`` (all when ``None``), oldest first."""
        with self._lock:
            if since is None:
                return [item for _, item in self._items]
            out: list[T] = []
            for t, item in reversed(self._items):
                if t < since:
                    break
                out.append(item)
        out.reverse()
        return out

    def latest(self) -> T | None:
        """The newest item, or ``None`` when empty."""
        with self._lock:
            return self._items[-1][1] if self._items else None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
