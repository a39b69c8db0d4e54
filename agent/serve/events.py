"""What flows between the RPC layer and the decode engine (plain data, no torch)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    received: float  # the engine's clock when the request arrived (for time to first token)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_time_ms: float
    finish_reason: str  # "length", "stop", "eos", "cancelled"
    cached_prompt_tokens: int = 0  # of prompt_tokens, found in the prefix cache


@dataclass(frozen=True)
class Chunk:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class Done:
    """The last event of a request: its last piece of text, then the usage."""

    text: str
    token_ids: tuple[int, ...]
    usage: Usage


@dataclass(frozen=True)
class Failed:
    message: str


Event = Chunk | Done | Failed
Sink = Callable[[Event], None]  # called from the decode thread


class Submits(Protocol):
    def submit(self, request: Request, sink: Sink, *, ignore_eos: bool = False) -> int: ...


class _Poster:
    """Hands events from the decode thread to one event loop's queues, waking the loop
    once per burst: a decode step of 32 sequences makes 32 events, and a wake-up per
    event (a write to the loop's self-pipe each) cost the server more than the step's
    attention did (bench/serving.py, profiled). Each event stays its own (one streamed
    message per token, which clients' inter-token latencies count on)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Event], Event]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue[Event], event: Event) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if self._scheduled or wake_later(self):
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._deliver)

    def wake(self) -> None:
        with self._lock:
            if self._scheduled or not self._pending:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for queue, event in pending:
            queue.put_nowait(event)


class Wakes(Protocol):
    def wake(self) -> None: ...


_held = threading.local()


def wake_later(poster: Wakes) -> bool:
    """True when this thread is in `held_wakeups`: `poster.wake()` is then called at the
    block's end, once however many times it was asked."""
    held: set[Wakes] | None = getattr(_held, "posters", None)
    if held is None:
        return False
    held.add(poster)
    return True


@contextlib.contextmanager
def held_wakeups() -> Iterator[None]:
    """Events posted by this thread inside the block reach their loops at its end, one
    wake-up per loop: the decode thread holds them over a step's tokens."""
    if getattr(_held, "posters", None) is not None:  # nested: the outer block wakes
        yield
        return
    posters: set[Wakes] = set()
    _held.posters = posters
    try:
        yield
    finally:
        _held.posters = None
        for poster in posters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody listens
                poster.wake()


_posters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Poster] = (
    weakref.WeakKeyDictionary()
)
_posters_lock = threading.Lock()


def _poster(loop: asyncio.AbstractEventLoop) -> _Poster:
    with _posters_lock:
        poster = _posters.get(loop)
        if poster is None:
            poster = _posters[loop] = _Poster(loop)
        return poster


def submit_to_queue(
    engine: Submits, request: Request, ignore_eos: bool
) -> tuple[int, asyncio.Queue[Event]]:
    """Submits ``request`` from the event loop; its events, sent from the decode thread,
    arrive in the returned queue in order (the gRPC and HTTP front ends read it).
    Raises the engine's RuntimeError when it has stopped."""
    poster = _poster(asyncio.get_running_loop())
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        poster.post(events, event)

    return engine.submit(request, sink, ignore_eos=ignore_eos), events
