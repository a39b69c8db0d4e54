"""The messages between the inference server and its engine process (pure: no I/O).

The server (agent.serve.engine_process) and the engine process (agent.serve.engine_worker)
exchange pickled tuples over a socket pair, one message per decode iteration the other
way: a step of 32 sequences is one message of 32 events, not 32 messages. Events travel
as plain tuples because pickling 32 dataclasses costs seven times as much (measured:
47 us against 7 us a step), paid by both processes at every step.

Server to engine: ("submit", key, Request, ignore_eos), ("cancel", key), ("stop",).
Engine to server: ("ready", max_batch_size, context_tokens) once loaded, or ("failed",
message); then ("iteration", events, figures, (queued, running)) and at the end
("stopped",).
"""

from __future__ import annotations

import threading
from dataclasses import astuple
from typing import Any

from agent.serve.events import Chunk, Done, Event, Failed, Usage

WireEvent = tuple[Any, ...]
# ("step", batch_size, tokens) or ("completed", latency_s, prompt_tokens, cached_tokens):
# agent.serve.stats.ServerStats.
Figure = tuple[Any, ...]


def event_to_wire(key: int, event: Event) -> WireEvent:
    if isinstance(event, Chunk):
        return (key, event.text, event.token_ids)
    if isinstance(event, Done):
        return (key, event.text, event.token_ids, astuple(event.usage))
    return (key, event.message)


def event_from_wire(wire: WireEvent) -> tuple[int, Event]:
    if len(wire) == 3:
        return wire[0], Chunk(wire[1], tuple(wire[2]))
    if len(wire) == 4:
        return wire[0], Done(wire[1], tuple(wire[2]), Usage(*wire[3]))
    if len(wire) == 2:
        return wire[0], Failed(str(wire[1]))
    raise ValueError(f"not an engine event: {wire!r}")


class FigureRecorder:
    """The engine's `StepRecorder` in the engine process: keeps the figures for the next
    message (the server's ServerStats records them, the one table of them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures: list[Figure] = []

    def step(self, batch_size: int, tokens: int) -> None:
        with self._lock:
            self._figures.append(("step", batch_size, tokens))

    def request_completed(
        self, latency_s: float = 0.0, prompt_tokens: int = 0, cached_tokens: int = 0
    ) -> None:
        with self._lock:
            self._figures.append(("completed", latency_s, prompt_tokens, cached_tokens))

    def take(self) -> list[Figure]:
        with self._lock:
            taken, self._figures = self._figures, []
        return taken
