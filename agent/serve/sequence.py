"""A request in the decode engine (agent/serve/engine.py): what it has generated, its
text stream and sampling, and the usage it ends with."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.serve.events import Request, Sink, Usage
from agent.serve.sampling import Sampling
from agent.serve.text import TextStream


@dataclass
class Sequence:
    request: Request
    sink: Sink
    text: TextStream
    sampling: Sampling
    ignore_eos: bool = False
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    cached_tokens: int = 0  # the prompt's, found in the prefix cache
    # Accepted but not yet sent (stream_interval > 1).
    unsent_text: str = ""
    unsent_ids: list[int] = field(default_factory=list)


def usage(sequence: Sequence, now: float, reason: str) -> Usage:
    """The request's usage as it ends at `now` (the engine's clock)."""
    received = sequence.request.received
    first = sequence.first_token_at
    return Usage(
        prompt_tokens=len(sequence.request.prompt_ids),
        completion_tokens=len(sequence.generated),
        time_to_first_token_ms=(first - received) * 1000 if first is not None else 0.0,
        total_time_ms=(now - received) * 1000,
        finish_reason=reason,
        cached_prompt_tokens=sequence.cached_tokens,
    )
