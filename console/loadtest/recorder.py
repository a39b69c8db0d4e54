"""One worker's measurements since its last snapshot, handed to the parent as a Snapshot.

Warm-up requests are counted but never recorded into the run's histograms. Latency is from
the scheduled send time (response time) and service time from the actual send; in closed
loop the two are the same and only the first is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from console.loadtest.histogram import Histogram

# Where what a run does not measure would go (nothing records into it: each use is gated
# by the same mode that decides `used`).
_UNUSED = Histogram()
HISTOGRAMS = (
    "latency",
    "service",
    "send_lag",
    "ttft",
    "itl",
    "tokens_per_s",
    "completion_tokens",
    "warmup_latency",
)


@dataclass
class Snapshot:
    """What one worker measured since its previous snapshot (histograms encoded)."""

    worker: int
    at: float  # time.monotonic(), shared by every process on the machine
    hists: dict[str, Histogram] = field(default_factory=dict)  # pickled encoded, exactly
    sent: int = 0  # measured requests sent
    completed: int = 0  # measured requests answered, ok or not
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    good: int = 0  # ok and within the SLOs
    tokens: int = 0
    finishes: dict[str, int] = field(default_factory=dict)  # answers by why they ended
    warmup_sent: int = 0
    warmup_done: int = 0
    in_flight: int = 0
    last_send: float = 0.0  # the latest measured actual send
    last_completion: float = 0.0
    final: bool = False
    unfinished: int = 0  # final: cut off by a stop or by the drain timeout
    window_end: float = 0.0  # final: when sending was due to stop (or was stopped)
    stopped: bool = False


class Recorder:
    def __init__(
        self,
        worker: int,
        open_loop: bool,
        slo_ttft_ms: float | None,
        slo_latency_ms: float | None,
        *,
        streaming: bool = True,
        warmup: bool = True,
    ) -> None:
        self.worker = worker
        self.open_loop = open_loop
        self.streaming = streaming
        # A new HDR histogram costs ~0.5 ms: only those this run records into are made.
        self.used = {"latency"}
        if open_loop:
            self.used |= {"service", "send_lag"}
        if streaming:
            self.used |= {"ttft", "itl", "tokens_per_s", "completion_tokens"}
        if warmup:
            self.used.add("warmup_latency")
        self.slo_ttft_ms = slo_ttft_ms
        self.slo_latency_ms = slo_latency_ms
        self.in_flight = 0
        self.last_end = 0.0  # the latest measured answer of the whole run
        self._reset()

    def _reset(self) -> None:
        self.hists = {name: Histogram() for name in HISTOGRAMS if name in self.used}
        get = self.hists.get
        self.latency = self.hists["latency"]
        self.service = get("service", _UNUSED)
        self.send_lag = get("send_lag", _UNUSED)
        self.ttft = get("ttft", _UNUSED)
        self.itl = get("itl", _UNUSED)
        self.tokens_per_s = get("tokens_per_s", _UNUSED)
        self.completion_tokens = get("completion_tokens", _UNUSED)
        self.warmup_latency = get("warmup_latency", _UNUSED)
        self.snap = Snapshot(self.worker, 0.0)

    def sent(self, warm: bool, scheduled: float, actual: float) -> None:
        self.in_flight += 1
        snap = self.snap
        if warm:
            snap.warmup_sent += 1
            return
        snap.sent += 1
        snap.last_send = actual
        if self.open_loop:
            self.send_lag.record((actual - scheduled) * 1000)

    def done(
        self,
        warm: bool,
        scheduled: float,
        actual: float,
        end: float,
        code: str,
        first: float | None,
        tokens: int,
        finish: str = "",
    ) -> None:
        """One request answered: `first` is when its first token came (streams only),
        `finish` why it ended ("eos", "length"...; "" when the endpoint does not say)."""
        self.in_flight -= 1
        snap = self.snap
        latency_ms = (end - scheduled) * 1000
        if warm:
            snap.warmup_done += 1
            self.warmup_latency.record(latency_ms)
            return
        snap.completed += 1
        if end > snap.last_completion:
            snap.last_completion = end
            self.last_end = end
        if code != "OK":
            snap.errors[code] = snap.errors.get(code, 0) + 1
            return
        snap.ok += 1
        self.latency.record(latency_ms)
        if self.open_loop:
            self.service.record((end - actual) * 1000)
        ttft_ms = latency_ms
        if first is not None:
            ttft_ms = (first - scheduled) * 1000
            self.ttft.record(ttft_ms)
        if self.streaming:
            self.completion_tokens.record(tokens)
        if finish:
            snap.finishes[finish] = snap.finishes.get(finish, 0) + 1
        if tokens:
            snap.tokens += tokens
            if end > actual:
                self.tokens_per_s.record(tokens / (end - actual))
        if (self.slo_ttft_ms is None or ttft_ms <= self.slo_ttft_ms) and (
            self.slo_latency_ms is None or latency_ms <= self.slo_latency_ms
        ):
            snap.good += 1

    def snapshot(self, now: float) -> Snapshot:
        """The measurements since the previous snapshot; starts a new interval."""
        snap = self.snap
        snap.at = now
        snap.in_flight = self.in_flight
        snap.hists = {name: h for name, h in self.hists.items() if h.count}
        self._reset()
        return snap

    def cancelled(self, warm: bool) -> None:
        """A request cut off by a stop or the drain timeout: neither an answer nor an error."""
        self.in_flight -= 1
        if not warm:
            self.snap.unfinished += 1
