"""What flows between the RPC layer and the decode engine (plain data, no torch)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    received: float  # the engine's clock when the request arrived (for time to first token)
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_ms: float
    total_time_ms: float
    finish_reason: str  # "length", "stop", "eos", "cancelled"


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


def submit_to_queue(
    engine: Submits, request: Request, ignore_eos: bool
) -> tuple[int, asyncio.Queue[Event]]:
    """Submits ``request`` from the event loop; its events, sent from the decode thread,
    arrive in the returned queue (the gRPC and HTTP front ends read it). Raises the
    engine's RuntimeError when it has stopped."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    return engine.submit(request, sink, ignore_eos=ignore_eos), events
