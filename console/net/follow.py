"""Following a stream that never ends by itself (a job's events, a rank's log) until what
it follows has ended: the stream is read in a task of its own, and each time it has been
quiet for a while, the caller is asked whether to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = ["FOLLOW_CHECK_S", "until_ended"]

T = TypeVar("T")
FOLLOW_CHECK_S = 1.0  # how long the stream is quiet before the caller is asked


class _End:
    """The stream ended by itself."""


async def until_ended(
    stream: AsyncIterator[T],
    ended: Callable[[], Awaitable[bool]],
    quiet_s: float = FOLLOW_CHECK_S,
) -> AsyncIterator[T]:
    """The items of ``stream`` until it ends, or until ``ended()`` says so after it has been
    quiet for ``quiet_s`` (what is still in flight then is the caller's to read another way).
    The stream's errors are raised here; the stream is closed on leaving."""
    queue: asyncio.Queue[T | _End | BaseException] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(_End())
        except Exception as exc:  # raised to the reader, in its own task
            await queue.put(exc)

    reader = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), quiet_s)
            except TimeoutError:
                if await ended():
                    return
                continue
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
