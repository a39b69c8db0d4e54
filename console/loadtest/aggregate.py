"""The parent's side: merges the workers' snapshots exactly into live progress and totals."""

from __future__ import annotations

from console.loadtest.config import LoadTestConfig
from console.loadtest.histogram import Dist, Histogram
from console.loadtest.plan import Plan
from console.loadtest.progress import Progress
from console.loadtest.recorder import HISTOGRAMS, Snapshot
from console.loadtest.report import Report

LATE_SEND_MS = 10.0  # a p99 send lag above this gets a note in the report
# The histograms whose interval figures progress shows (warm-up latencies included).
LIVE = ("latency", "warmup_latency")


class Aggregate:
    def __init__(self, plan: Plan, start_at: float, workers: int) -> None:
        self.plan = plan
        self.start_at = start_at
        self.workers = workers
        self.totals = {name: Histogram() for name in HISTOGRAMS}
        self.sent = self.completed = self.ok = self.good = self.tokens = 0
        self.warmup_sent = self.warmup_done = self.unfinished = 0
        self.errors: dict[str, int] = {}
        self.in_flight: dict[int, int] = {}
        self.last_send = self.last_completion = self.window_end = 0.0
        self.finished: set[int] = set()
        self.stopped = False
        self._interval: list[Snapshot] = []
        self._interval_start = start_at

    def add(self, snap: Snapshot) -> None:
        for name, hist in snap.hists.items():
            self.totals[name].merge(hist)
        self.sent += snap.sent
        self.completed += snap.completed
        self.ok += snap.ok
        self.good += snap.good
        self.tokens += snap.tokens
        self.warmup_sent += snap.warmup_sent
        self.warmup_done += snap.warmup_done
        self.unfinished += snap.unfinished
        for code, n in snap.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        self.in_flight[snap.worker] = snap.in_flight
        self.last_send = max(self.last_send, snap.last_send)
        self.last_completion = max(self.last_completion, snap.last_completion)
        if snap.final:
            self.finished.add(snap.worker)
            self.window_end = max(self.window_end, snap.window_end)
            self.stopped = self.stopped or snap.stopped
        self._interval.append(snap)

    @property
    def all_finished(self) -> bool:
        return len(self.finished) == self.workers

    def progress(self, now: float, *, done: bool = False) -> Progress:
        """Figures over the interval since the previous call (which it closes)."""
        seconds = max(now - self._interval_start, 1e-9)
        live = Histogram()
        sent = answered = 0
        for snap in self._interval:
            for name in LIVE:
                if name in snap.hists:
                    live.merge(snap.hists[name])
            sent += snap.sent + snap.warmup_sent
            answered += snap.completed + snap.warmup_done
        self._interval = []
        self._interval_start = now
        p = live.percentiles((50.0, 90.0, 99.0))
        elapsed = now - self.start_at
        end_s = self.plan.end_s
        if done:
            phase = "done"
        elif elapsed < self.plan.warmup_s:
            phase = "warmup"
        elif end_s is not None and elapsed >= end_s:
            phase = "drain"
        else:
            phase = "run"
        return Progress(
            elapsed_s=elapsed,
            target_rps=self.plan.target_rate_at(elapsed) if phase in ("warmup", "run") else None,
            achieved_rps=sent / seconds,
            sent=self.sent,
            completed=self.completed,
            errors=dict(self.errors),
            in_flight=sum(self.in_flight.values()),
            latency_ms={"p50": p[50.0], "p90": p[90.0], "p99": p[99.0]},
            histogram=self.totals["latency"].buckets(),
            done=done,
            phase=phase,
            warmup_sent=self.warmup_sent,
            throughput_rps=answered / seconds,
        )

    def to_report(
        self,
        config: LoadTestConfig,
        *,
        method: str,
        kind: str,
        streaming: bool,
        started_at: str,
        notes: list[str],
    ) -> Report:
        plan = self.plan
        measure_start = self.start_at + plan.warmup_s
        due_end = self.window_end or max(self.last_send, self.last_completion)
        window = max(0.0, max(due_end, self.last_send) - measure_start)
        answered_in = max(0.0, self.last_completion - measure_start)
        totals = self.totals

        def per_s(n: int, seconds: float) -> float:
            return n / seconds if seconds > 0 else 0.0

        def dist(name: str, wanted: bool = True) -> Dist | None:
            return totals[name].summary() if wanted else None

        latency = totals["latency"].summary()
        notes = [
            *notes,
            *self._notes(config, totals["send_lag"].summary() if plan.open_loop else None),
        ]
        kept = ("latency", "service", "send_lag", "ttft", "itl", "tokens_per_s")
        return Report(
            target=config.target,
            method=method,
            kind=kind,
            streaming=streaming,
            mode="open" if plan.open_loop else "closed",
            load=plan.describe(),
            arrival=plan.arrival,
            concurrency=None if plan.open_loop else plan.concurrency,
            workers=plan.workers,
            started_at=started_at,
            warmup_s=plan.warmup_s,
            duration_s=window,
            partial=self.stopped,
            target_rps=plan.target_rps(due_end - self.start_at) if plan.open_loop else None,
            achieved_rps=per_s(self.sent, window),
            throughput_rps=per_s(self.completed, answered_in),
            sent=self.sent,
            completed=self.completed,
            ok=self.ok,
            errors=dict(sorted(self.errors.items())),
            unfinished=self.unfinished,
            warmup_requests=self.warmup_sent,
            latency_ms=latency,
            service_ms=totals["service"].summary() if plan.open_loop else latency,
            send_lag_ms=dist("send_lag", plan.open_loop),
            ttft_ms=dist("ttft", streaming),
            itl_ms=dist("itl", streaming),
            tokens_per_s_request=dist("tokens_per_s", streaming),
            tokens=self.tokens,
            tokens_per_s=per_s(self.tokens, answered_in),
            slo_ttft_ms=config.slo_ttft_ms,
            slo_latency_ms=config.slo_latency_ms,
            good=self.good,
            goodput_rps=per_s(self.good, answered_in),
            histograms={n: totals[n].encode() for n in kept if totals[n].count},
            notes=notes,
        )

    def _notes(self, config: LoadTestConfig, send_lag: Dist | None) -> list[str]:
        notes = []
        if send_lag is not None and send_lag.p99 > LATE_SEND_MS:
            notes.append(
                f"the client sent late (send lag p99 {send_lag.p99:.1f} ms): the latencies "
                "include that wait; more --workers may help"
            )
        if self.unfinished and not self.stopped:
            notes.append(
                f"{self.unfinished} requests were still unanswered {config.timeout_s:g} s "
                "after sending ended and were cut off"
            )
        return notes
