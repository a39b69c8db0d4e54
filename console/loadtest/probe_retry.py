"""The probe request's patience: a server that answers it "rate limited" (HTTP 429) or
"unavailable" (HTTP 503, gRPC UNAVAILABLE: overloaded, a full queue, a model still
loading) is asked again, after the wait it names (Retry-After, RFC 9110 section 10.2.3)
or else a short backoff: at most MAX_RETRIES times, waiting at most MAX_WAIT_S in all.

The schedule is pure (`retry_delay`); `ProbeRetries` keeps the count and does the waiting,
through an injectable sleep and clock, and says in words what it did."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

RETRY_STATUSES = (429, 503)  # rate limited; overloaded, a full queue or still loading
MAX_RETRIES = 3
MAX_WAIT_S = 10.0
BACKOFF_S = 0.5  # the first wait when the server names none; doubled each time (0.5, 1, 2)
_SECONDS = re.compile(r"\d+(?:\.\d+)?")  # delay-seconds (RFC 9110: digits; a fraction taken)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


def server_delay(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait the answer asks for, in seconds (never below 0), or None if it names none:
    `retry-after-ms` or `x-ms-retry-after-ms` (OpenAI's and Azure's; their SDKs read it
    first), else `Retry-After` as delay-seconds or an HTTP-date. A date is measured from
    the answer's own Date header where it has one (a skewed local clock then does not
    matter), else from `now` (default: this machine's clock)."""
    lower = {key.lower(): value.strip() for key, value in headers.items()}
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        millis = lower.get(name, "")
        if _SECONDS.fullmatch(millis):
            return float(millis) / 1000
    value = lower.get("retry-after", "")
    if not value:
        return None
    if _SECONDS.fullmatch(value):
        return float(value)
    when = _http_date(value)
    if when is None:
        return None  # unreadable: as if none were given
    sent = _http_date(lower.get("date", ""))
    base = sent or now or datetime.now(UTC)
    return max(0.0, (when - base).total_seconds())


def retry_delay(
    status: int, headers: Mapping[str, str], attempt: int, now: datetime | None = None
) -> float | None:
    """How long to wait before try `attempt + 1` (attempt counts the answers so far, from
    1), or None: not an answer to try again on, or MAX_RETRIES already made. The server's
    wait where it names one, else BACKOFF_S doubled per attempt. The total wait is
    ProbeRetries' to bound."""
    if status not in RETRY_STATUSES or not 1 <= attempt <= MAX_RETRIES:
        return None
    asked = server_delay(headers, now)
    return asked if asked is not None else BACKOFF_S * 2 ** (attempt - 1)


def _http_date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # HTTP-dates are GMT


def grpc_pushback(trailers: Any) -> dict[str, str]:
    """A gRPC status's `grpc-retry-pushback-ms` (gRFC A6) as the header `server_delay`
    reads ({} if none): the Retry-After of a gRPC server."""
    for key, value in trailers or ():
        if key == "grpc-retry-pushback-ms" and isinstance(value, str):
            return {"retry-after-ms": value}
    return {}


async def pause(seconds: float) -> None:
    """The wait between tries when none is injected."""
    await asyncio.sleep(seconds)


class ProbeRetries:
    """The tries of one preflight (the /models look-up and the probe share its budget)."""

    def __init__(
        self,
        sleep: Sleep | None = None,
        clock: Clock | None = None,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        self.sleep = sleep
        self.clock = clock or (lambda: datetime.now(UTC))
        self.max_wait_s = max_wait_s
        self.retries = 0
        self.waited_s = 0.0
        # The wait the last answer asked for, beyond what is left of max_wait_s: not taken.
        self.too_long: float | None = None

    async def again(self, status: int, headers: Mapping[str, str]) -> bool:
        """After an answer: whether to send the request again, having waited as it asks."""
        self.too_long = None
        now = self.clock()
        delay = retry_delay(status, headers, self.retries + 1, now)
        if delay is None:
            return False
        if self.waited_s + delay > self.max_wait_s + 1e-9:
            if server_delay(headers, now) is not None:
                self.too_long = delay
            return False
        await (self.sleep or pause)(delay)
        self.retries += 1
        self.waited_s += delay
        return True

    async def send(self, request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """The answer to `request`, sent again while it is a 429 or 503 and the budget
        lasts; the last answer either way."""
        while True:
            response = await request()
            if not await self.again(response.status_code, response.headers):
                return response

    def tried(self) -> str:
        """The retries in words, "retried 3 times over 3.5 s" ("" before any)."""
        if not self.retries:
            return ""
        times = "once" if self.retries == 1 else f"{self.retries} times"
        return f"retried {times} over {_seconds(self.waited_s)}"

    def gave_up(self, asked_by: str = "Retry-After") -> str:
        """Why the tries ended, for the one-line error; `asked_by`: what named the wait."""
        tried = self.tried()
        if self.too_long is not None:
            more = " more" if self.retries else ""
            first = f"; {tried} first" if tried else ""
            return (
                f"it asks to wait {_seconds(self.too_long)}{more} ({asked_by}), longer than "
                f"the probe waits ({_seconds(self.max_wait_s)} in all){first}"
            )
        limit = f"at most {MAX_RETRIES} retries, {_seconds(self.max_wait_s)} of waiting"
        return f"{tried} ({limit})" if tried else f"not retried ({limit})"

    def refusal(self, url: str, status: int, detail: str) -> str:
        """The one line for an HTTP probe given up on: the status, the server's words, the
        tries, and what to do."""
        fix = (
            "the server is rate limiting: wait for it, then run again (with a lower --rate "
            "or --concurrency)"
            if status == 429
            else "the server is overloaded or still loading: wait for it, then run again"
        )
        said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
        return f"{url} refused the probe request: {said}; {self.gave_up()}; {fix}"


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.3g} h"
    return f"{value:.3g} s" if value < 100 else f"{value:.0f} s"
