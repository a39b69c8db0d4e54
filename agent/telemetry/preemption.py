"""Where a node learns of its own preemption: one small class per source, one interface.

``--preemption-notice SPEC`` (repeatable) names them: ``sigterm`` (the instance's shutdown
hook sends the agent SIGTERM), ``file:PATH`` (a notice file appears; it may hold the
deadline), ``url:URL`` (a metadata URL polled every few seconds: GCE's
``.../instance/preempted`` answers ``TRUE``, AWS's ``.../spot/instance-action`` answers 200
with JSON). Each source's ``wait()`` returns the first notice it sees; parsing is pure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

__all__ = [
    "FileNotice",
    "NoticeSpecError",
    "PreemptionNotice",
    "SigtermNotice",
    "UrlNotice",
    "first_notice",
    "parse_deadline",
    "parse_notice_spec",
    "parse_url_answer",
]

log = logging.getLogger("gantry.agent")

FILE_POLL_S = 1.0
URL_POLL_S = 5.0
URL_TIMEOUT_S = 2.0
MAX_NOTICE_BYTES = 4096
# GCE answers only requests that carry this header; AWS ignores it.
METADATA_HEADERS = {"Metadata-Flavor": "Google"}


@dataclass(frozen=True)
class PreemptionNotice:
    source: str  # "sigterm", "file:PATH", "url:URL"
    deadline: float | None = None  # wall-clock seconds the instance goes, when the notice says


class NoticeSource(Protocol):
    name: str

    async def wait(self) -> PreemptionNotice:
        """The first notice this source sees (runs until then)."""
        ...


class NoticeSpecError(ValueError):
    pass


def parse_deadline(text: str) -> float | None:
    """A deadline in a notice's text: epoch seconds, an ISO time, or JSON with ``time`` or
    ``deadline`` holding either; None when it says none."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        value = data.get("deadline", data.get("time")) if isinstance(data, dict) else None
        return parse_deadline(str(value)) if value is not None else None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_url_answer(status: int, body: str) -> tuple[bool, float | None]:
    """(preempted, deadline) from a metadata server's answer: GCE's ``TRUE``/``FALSE``,
    AWS's 200 with ``{"action": ..., "time": ...}`` (404 while none is scheduled)."""
    if status != 200:
        return False, None
    text = body.strip()
    if text.upper() == "TRUE":
        return True, None
    if text.upper() in ("FALSE", ""):
        return False, None
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return False, None
        if isinstance(data, dict) and data.get("action") in ("terminate", "stop", "hibernate"):
            return True, parse_deadline(text)
    return False, None


class FileNotice:
    """A notice file appears (its content may hold the deadline)."""

    def __init__(self, path: Path, poll_s: float = FILE_POLL_S) -> None:
        self.path = path
        self.poll_s = poll_s
        self.name = f"file:{path}"

    async def wait(self) -> PreemptionNotice:
        while True:
            try:
                with self.path.open("rb") as handle:
                    text = handle.read(MAX_NOTICE_BYTES).decode(errors="replace")
            except FileNotFoundError:
                await asyncio.sleep(self.poll_s)
                continue
            except OSError as exc:
                log.warning("preemption notice file %s: %s", self.path, exc)
                await asyncio.sleep(self.poll_s)
                continue
            return PreemptionNotice(self.name, parse_deadline(text))


class UrlNotice:
    """A metadata URL polled every few seconds, with a short timeout."""

    def __init__(
        self, url: str, poll_s: float = URL_POLL_S, timeout_s: float = URL_TIMEOUT_S
    ) -> None:
        self.url = url
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.name = f"url:{url}"

    async def wait(self) -> PreemptionNotice:
        import httpx  # only an agent that polls a URL pays for its import

        async with httpx.AsyncClient(timeout=self.timeout_s, headers=METADATA_HEADERS) as client:
            while True:
                try:
                    reply = await client.get(self.url)
                    preempted, deadline = parse_url_answer(reply.status_code, reply.text)
                except httpx.HTTPError as exc:
                    log.debug("preemption notice URL %s: %s", self.url, exc)
                    preempted, deadline = False, None
                if preempted:
                    return PreemptionNotice(self.name, deadline)
                await asyncio.sleep(self.poll_s)


class SigtermNotice:
    """SIGTERM from the instance's shutdown hook: the agent's handler calls ``received``."""

    name = "sigterm"

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def received(self) -> None:
        self._event.set()

    async def wait(self) -> PreemptionNotice:
        await self._event.wait()
        return PreemptionNotice(self.name)


def parse_notice_spec(spec: str) -> NoticeSource:
    """One ``--preemption-notice`` value; NoticeSpecError names what to fix."""
    kind, _, value = spec.partition(":")
    if spec == "sigterm":
        return SigtermNotice()
    if kind == "file" and value:
        return FileNotice(Path(value))
    if kind == "url" and value.startswith(("http://", "https://")):
        return UrlNotice(value)
    raise NoticeSpecError(
        f"--preemption-notice {spec!r}: give sigterm, file:PATH or url:http(s)://..."
    )


async def first_notice(
    sources: Sequence[NoticeSource],
    on_notice: Callable[[PreemptionNotice], Awaitable[None]],
    clock: Callable[[], float] = time.time,
) -> None:
    """Waits on every source; the first notice is handed to ``on_notice``, once."""
    if not sources:
        return
    waits = {asyncio.create_task(s.wait(), name=f"notice:{s.name}") for s in sources}
    notice: PreemptionNotice | None = None
    try:
        while notice is None and waits:
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                try:
                    notice = notice or task.result()
                except Exception:  # one broken source must not silence the others
                    log.exception("preemption notice source %s failed", task.get_name())
    finally:
        for task in waits:
            task.cancel()
    if notice is None:
        return
    log.warning(
        "preemption notice from %s%s",
        notice.source,
        f" (in {notice.deadline - clock():.0f} s)" if notice.deadline is not None else "",
    )
    await on_notice(notice)
