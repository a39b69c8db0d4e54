"""What flows between the RPC layer and the decode engine (plain data, no torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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
