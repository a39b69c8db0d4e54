"""One request through the serving engine's decode loop, on its own thread, for tests:
the events its sink got, the last a Done (asserted)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any


def run_request(
    model: Any,
    tokenizer: Any,
    request: Any,
    eos: Collection[int],
    *,
    ignore_eos: bool = False,
    stream_interval: int = 1,
) -> list[Any]:
    """`request`: an agent.serve.events.Request; the engine batches up to 4."""
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.events import Done, Event, Failed
    from agent.serve.stats import ServerStats

    engine = Engine(
        model, tokenizer, Scheduler(4, 0.0), ServerStats(), eos, stream_interval=stream_interval
    )
    events: list[Event] = []
    ended = threading.Event()

    def sink(event: Event) -> None:
        events.append(event)
        if isinstance(event, Done | Failed):
            ended.set()

    engine.start()
    try:
        engine.submit(request, sink, ignore_eos=ignore_eos)
        assert ended.wait(60), "the engine did not finish the request"
    finally:
        engine.stop()
    assert isinstance(events[-1], Done), events[-1]
    return events
