"""The parent's side: merges the workers' snapshots exactly into live progress and totals.

Live figures come from the same merged histograms and counters as the report, through the
same functions: the last progress of a run shows the report's numbers.
"""

from __future__ import annotations

from console.loadtest.config import LoadTestConfig
from console.loadtest.histogram import Dist, Histogram
from console.loadtest.intervals import IntervalLog
from console.loadtest.notes import (
    LATE_SEND_MS,
    closed_loop_note,
    send_lag_note,
    short_completions_note,
    unfinished_note,
)
from console.loadtest.plan import Plan
from console.loadtest.progress import IntervalRates, Progress
from console.loadtest.recorder import HISTOGRAMS, Snapshot
from console.loadtest.report import NodeFigures, Report

LIVE_PERCENTILES = (50.0, 90.0, 99.0)


def _per_s(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else 0.0


class NodeTally:
    """One node's workers merged (`--from-nodes`): its counts and its histograms."""

    def __init__(self, node: str, workers: int) -> None:
        self.node, self.workers = node, workers
        self.sent = self.completed = self.ok = self.errors = 0
        self.send_lag, self.latency = Histogram(), Histogram()

    def add(self, snap: Snapshot) -> None:
        self.sent += snap.sent
        self.completed += snap.completed
        self.ok += snap.ok
        self.errors += sum(snap.errors.values())
        if "send_lag" in snap.hists:
            self.send_lag.merge(snap.hists["send_lag"])
        if "latency" in snap.hists:
            self.latency.merge(snap.hists["latency"])

    def figures(self, open_loop: bool) -> NodeFigures:
        def p99(hist: Histogram) -> float | None:
            return hist.percentiles((99.0,))[99.0] if hist.count else None

        return NodeFigures(
            self.node,
            self.workers,
            self.sent,
            self.completed,
            self.ok,
            self.errors,
            p99(self.send_lag) if open_loop else None,
            p99(self.latency),
        )


def late_node_notes(nodes: list[NodeFigures]) -> list[str]:
    """A note for each node whose send lag p99 is over LATE_SEND_MS while another's is not:
    that generator was overloaded, not the target."""
    lags = {n.node: n.send_lag_p99_ms for n in nodes if n.send_lag_p99_ms is not None}
    if len(lags) < 2 or min(lags.values()) > LATE_SEND_MS:
        return []
    best = min(lags.values())
    return [
        f"{node}'s send lag p99 is {lag:.1f} ms (the best node's {best:.1f} ms): it could not "
        "keep up with its share; give it fewer --workers or load from more nodes"
        for node, lag in lags.items()
        if lag > LATE_SEND_MS
    ]


class Aggregate:
    def __init__(
        self,
        plan: Plan,
        start_at: float,
        workers: int,
        *,
        max_tokens: int | None = None,
        ignore_eos: bool = False,
        node_of: dict[int, str] | None = None,
    ) -> None:
        """`max_tokens`: what each request asks for (None where the requests are not
        completions), for the short-completions warning; `node_of`: each worker's node,
        for a run from the cluster (figures by node)."""
        self.plan = plan
        self.start_at = start_at
        self.workers = workers
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.totals = {name: Histogram() for name in HISTOGRAMS}
        self.sent = self.completed = self.ok = self.good = self.tokens = 0
        self.warmup_sent = self.warmup_done = self.unfinished = 0
        self.errors: dict[str, int] = {}
        self.finishes: dict[str, int] = {}
        self.in_flight: dict[int, int] = {}
        self.last_send = self.last_completion = self.window_end = 0.0
        self.finished: set[int] = set()
        self.stopped = False
        self._rates = IntervalRates(start_at)
        self.intervals = IntervalLog(start_at + plan.warmup_s)
        self.node_of = node_of or {}
        self.nodes: dict[str, NodeTally] = {}
        for node in self.node_of.values():
            if node not in self.nodes:
                self.nodes[node] = NodeTally(node, list(self.node_of.values()).count(node))

    def add(self, snap: Snapshot) -> None:
        self.intervals.add(snap)
        if snap.worker in self.node_of:
            self.nodes[self.node_of[snap.worker]].add(snap)
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
        for reason, n in snap.finishes.items():
            self.finishes[reason] = self.finishes.get(reason, 0) + n
        self.in_flight[snap.worker] = snap.in_flight
        self.last_send = max(self.last_send, snap.last_send)
        self.last_completion = max(self.last_completion, snap.last_completion)
        if snap.final:
            self.finished.add(snap.worker)
            self.window_end = max(self.window_end, snap.window_end)
            self.stopped = self.stopped or snap.stopped
        self._rates.add(
            snap.worker,
            snap.sent + snap.warmup_sent,
            snap.completed + snap.warmup_done,
            snap.at,
            snap.final,
        )

    @property
    def all_finished(self) -> bool:
        return len(self.finished) == self.workers

    def _windows(self) -> tuple[float, float, float]:
        """(when sending was due to end, measured sending window s, time to the last
        answer s), as the report counts them."""
        measure_start = self.start_at + self.plan.warmup_s
        due_end = self.window_end or max(self.last_send, self.last_completion)
        window = max(0.0, max(due_end, self.last_send) - measure_start)
        return due_end, window, max(0.0, self.last_completion - measure_start)

    def progress(self, now: float, *, done: bool = False) -> Progress:
        """The run so far; its rates over the time the latest snapshots cover."""
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
        sent_rate, answered_rate = self._rates.rates()
        if done:
            _, window, answered_in = self._windows()
            sent_rate = _per_s(self.sent, window)
            answered_rate = _per_s(self.completed, answered_in)
        shown = self.totals["warmup_latency" if phase == "warmup" else "latency"]
        p = shown.percentiles(LIVE_PERCENTILES)
        return Progress(
            elapsed_s=elapsed,
            target_rps=self.plan.target_rate_at(elapsed) if phase in ("warmup", "run") else None,
            achieved_rps=sent_rate,
            sent=self.sent,
            completed=self.completed,
            errors=dict(self.errors),
            in_flight=sum(self.in_flight.values()),
            latency_ms={"p50": p[50.0], "p90": p[90.0], "p99": p[99.0]},
            histogram=self.totals["latency"].buckets(),
            done=done,
            phase=phase,
            warmup_sent=self.warmup_sent,
            throughput_rps=answered_rate,
            notes=self._live_notes(),
        )

    def _live_notes(self) -> list[str]:
        notes = [] if self.plan.open_loop else [closed_loop_note(self.plan.concurrency)]
        short = self._short_completions()
        return notes + ([short] if short else [])

    def _short_completions(self) -> str | None:
        completions = self.totals["completion_tokens"]
        return short_completions_note(
            completions.summary() if completions.count else None,
            self.max_tokens,
            self.finishes,
            self.ignore_eos,
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
        prompt_set: str = "",
    ) -> Report:
        plan = self.plan
        due_end, window, answered_in = self._windows()
        totals = self.totals

        def dist(name: str, wanted: bool = True) -> Dist | None:
            return totals[name].summary() if wanted else None

        latency = totals["latency"].summary()
        send_lag = dist("send_lag", plan.open_loop)
        computed = [
            send_lag_note(send_lag),
            unfinished_note(self.unfinished, self.stopped, config.timeout_s),
            self._short_completions(),
        ]
        if not plan.open_loop:
            computed.insert(0, closed_loop_note(plan.concurrency))
        nodes = [tally.figures(plan.open_loop) for tally in self.nodes.values()]
        computed += late_node_notes(nodes)
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
            achieved_rps=_per_s(self.sent, window),
            throughput_rps=_per_s(self.completed, answered_in),
            sent=self.sent,
            completed=self.completed,
            ok=self.ok,
            errors=dict(sorted(self.errors.items())),
            unfinished=self.unfinished,
            warmup_requests=self.warmup_sent,
            latency_ms=latency,
            service_ms=totals["service"].summary() if plan.open_loop else latency,
            send_lag_ms=send_lag,
            ttft_ms=dist("ttft", streaming),
            itl_ms=dist("itl", streaming),
            tokens_per_s_request=dist("tokens_per_s", streaming),
            tokens=self.tokens,
            tokens_per_s=_per_s(self.tokens, answered_in),
            slo_ttft_ms=config.slo_ttft_ms,
            slo_latency_ms=config.slo_latency_ms,
            good=self.good,
            goodput_rps=_per_s(self.good, answered_in),
            histograms={n: totals[n].encode() for n in kept if totals[n].count},
            notes=[*notes, *(note for note in computed if note)],
            completion_tokens=dist("completion_tokens", streaming),
            finishes=dict(sorted(self.finishes.items())),
            max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos,
            prompt_set=prompt_set,
            nodes=nodes,
            intervals=self.intervals.to_json(),
        )
