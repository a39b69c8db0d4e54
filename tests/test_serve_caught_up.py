"""The gRPC stream's catching up (agent.serve.rpc.caught_up): the events already waiting
behind a token go in its message; a loop that keeps up sends one token a message."""

from __future__ import annotations

import asyncio

from agent.serve.events import Chunk, Done, Event, Failed, Usage
from agent.serve.rpc import caught_up

USAGE = Usage(1, 3, 1.0, 2.0, "length")


def queue(*events: Event) -> asyncio.Queue[Event]:
    q: asyncio.Queue[Event] = asyncio.Queue()
    for event in events:
        q.put_nowait(event)
    return q


def test_nothing_waiting_sends_the_token_alone() -> None:
    first = Chunk("a", (1,))
    assert caught_up(first, queue()) == (first, None)


def test_waiting_tokens_and_the_end_go_in_one_message() -> None:
    q = queue(Chunk("b", (2,)), Done("c", (3,), USAGE), Chunk("late", (9,)))
    merged, held = caught_up(Chunk("a", (1,)), q)
    assert merged == Done("abc", (1, 2, 3), USAGE) and held is None
    assert q.qsize() == 1  # nothing past the end is taken


def test_a_failure_waiting_follows_the_tokens_before_it() -> None:
    failed = Failed("generation failed: boom")
    merged, held = caught_up(Chunk("a", (1,)), queue(Chunk("b", (2,)), failed))
    assert merged == Chunk("ab", (1, 2)) and held is failed
