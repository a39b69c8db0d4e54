"""Capacity search (pure: no I/O): the highest open-loop rate whose SLOs hold.

The search, driven by console.loadtest.sweep_run (or any caller with a "server"):

1. Ceiling: closed loop at PROBE_START_CONCURRENCY requests in flight, then PROBE_FACTOR
   times as many while answers/s still rise by PROBE_GAIN (at most PROBE_MAX_CONCURRENCY).
   The ceiling is the most answers/s seen (successes only).
2. Open-loop steps, at most MAX_STEPS: the first at the ceiling; while no rate has passed,
   each next one DOWN_FACTOR times the last failing rate (not below the ceiling /
   FLOOR_DIVISOR); while none has failed, UP_FACTOR times the last passing one (not above
   UP_LIMIT times the ceiling); once a passing and a failing rate bracket the answer,
   bisection, until the failing rate is within TOLERANCE of the passing one. Once a rate
   has passed, a rate above it that fails with a goodput of CONFIRM_GOODPUT_PCT or more
   is run once more, and fails only if both runs do: a one-off stall (a shared machine's,
   the load tester's) would otherwise end the search low, while a server that cannot hold
   the rate fails twice (and one far past its limit, answering almost nothing in time,
   needs no second run).

A step passes when goodput (requests answered OK within every given SLO, over requests
sent; latency and TTFT run from the scheduled send) is at least GOODPUT_PCT, and the load
tester kept up: a rate it could not send is not the server's capacity. Kept up = at least
KEPT_UP_SHARE of the asked rate sent, and send lag p99 at most the larger of LATE_SEND_MS
(where a report warns the client sent late) and LAG_SLO_SHARE of the tightest SLO (late
sends then use up little of the SLO, and the server saw the load asked for).

`max_rate_within_slo` is the highest passing rate below every failing one (None when no
step passed). A rate passes when one of its runs did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from console.loadtest.histogram import Dist
from console.loadtest.notes import LATE_SEND_MS
from console.loadtest.report import Report

GOODPUT_PCT = 99.0
LAG_SLO_SHARE = 0.1
KEPT_UP_SHARE = 0.95
PROBE_START_CONCURRENCY = 32
PROBE_FACTOR = 4
PROBE_MAX_CONCURRENCY = 512
PROBE_GAIN = 0.1  # answers/s must rise by 10 % for another, larger, probe
MAX_STEPS = 12
TOLERANCE = 0.025
CONFIRM_GOODPUT_PCT = 10.0
DOWN_FACTOR = 0.5
UP_FACTOR = 1.5
UP_LIMIT = 4.0
FLOOR_DIVISOR = 64.0


@dataclass(frozen=True)
class Slo:
    ttft_ms: float | None
    latency_ms: float | None
    goodput_pct: float = GOODPUT_PCT

    @property
    def lag_limit_ms(self) -> float:
        """The send lag p99 up to which the load tester counts as keeping up."""
        given = [ms for ms in (self.ttft_ms, self.latency_ms) if ms is not None]
        return max(LATE_SEND_MS, LAG_SLO_SHARE * min(given)) if given else LATE_SEND_MS

    def describe(self) -> str:
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"TTFT <= {self.ttft_ms:g} ms")
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        return " and ".join(parts) + f" for >= {self.goodput_pct:g}% of requests"

    def to_json(self) -> dict[str, float | None]:
        return {
            "ttft_ms": self.ttft_ms,
            "latency_ms": self.latency_ms,
            "goodput_pct": self.goodput_pct,
        }


@dataclass(frozen=True)
class StepFigures:
    """What one open-loop step measured."""

    rate_rps: float  # asked
    achieved_rps: float  # sent
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    goodput_pct: float
    send_lag_p99_ms: float

    @classmethod
    def from_report(cls, rate_rps: float, report: Report) -> StepFigures:
        ttft: Dist | None = report.ttft_ms if report.ttft_ms and report.ttft_ms.count else None
        lag = report.send_lag_ms
        return cls(
            rate_rps=rate_rps,
            achieved_rps=report.achieved_rps,
            p50_ms=report.latency_ms.p50,
            p99_ms=report.latency_ms.p99,
            ttft_p50_ms=ttft.p50 if ttft else None,
            ttft_p99_ms=ttft.p99 if ttft else None,
            goodput_pct=report.goodput_pct,
            send_lag_p99_ms=lag.p99 if lag is not None else 0.0,
        )


@dataclass(frozen=True)
class Step:
    figures: StepFigures
    ok: bool
    why: str  # "" when ok; else one line

    def to_json(self) -> dict[str, Any]:
        f = self.figures
        return {
            "rate_rps": round(f.rate_rps, 4),
            "p50_ms": round(f.p50_ms, 3),
            "p99_ms": round(f.p99_ms, 3),
            "ttft_p50_ms": None if f.ttft_p50_ms is None else round(f.ttft_p50_ms, 3),
            "ttft_p99_ms": None if f.ttft_p99_ms is None else round(f.ttft_p99_ms, 3),
            "goodput_pct": round(f.goodput_pct, 4),
            "send_lag_p99_ms": round(f.send_lag_p99_ms, 3),
            "ok": self.ok,
        }


def judge(figures: StepFigures, slo: Slo) -> Step:
    """Whether the step passes; why not, in one line. A step that fails its SLOs while the
    load tester also sent late fails on the SLOs: latencies run from the scheduled send,
    and an overloaded server slows the load tester's own loop too."""
    lag_ms, lag_limit = figures.send_lag_p99_ms, slo.lag_limit_ms
    if figures.achieved_rps < KEPT_UP_SHARE * figures.rate_rps:
        why = (
            f"the load tester sent {figures.achieved_rps:.1f}/s of {figures.rate_rps:.1f}/s: "
            "not the server's limit; more --workers may help"
        )
        return Step(figures, False, why)
    if figures.goodput_pct < slo.goodput_pct:
        why = f"goodput {figures.goodput_pct:.1f}% < {slo.goodput_pct:g}%"
        if lag_ms > lag_limit:
            why += f" (and the load tester sent late: send lag p99 {lag_ms:.1f} ms)"
        return Step(figures, False, why)
    if lag_ms > lag_limit:
        why = (
            f"the load tester fell behind (send lag p99 {lag_ms:.1f} ms > {lag_limit:g} ms): "
            "not the server's limit; more --workers may help"
        )
        return Step(figures, False, why)
    return Step(figures, True, "")


@dataclass
class CapacitySearch:
    """The search's state: ask `next_probe` / `next_rate`, report back what was measured."""

    slo: Slo
    max_steps: int = MAX_STEPS
    tolerance: float = TOLERANCE
    min_concurrency: int = 1  # e.g. the number of workers
    probes: list[tuple[int, float]] = field(default_factory=list)  # (in flight, answers/s)
    steps: list[Step] = field(default_factory=list)  # in the order run

    def next_probe(self) -> int | None:
        """The next closed-loop concurrency to measure, or None: the ceiling is known."""
        if not self.probes:
            return max(PROBE_START_CONCURRENCY, self.min_concurrency)
        concurrency, rps = self.probes[-1]
        if concurrency >= PROBE_MAX_CONCURRENCY:
            return None
        if len(self.probes) >= 2 and rps < self.probes[-2][1] * (1 + PROBE_GAIN):
            return None
        if rps <= 0:
            return None
        return min(concurrency * PROBE_FACTOR, PROBE_MAX_CONCURRENCY)

    def record_probe(self, concurrency: int, ok_rps: float) -> None:
        self.probes.append((concurrency, ok_rps))

    @property
    def ceiling_rps(self) -> float:
        return max((rps for _, rps in self.probes), default=0.0)

    def _passed(self) -> dict[float, bool]:
        """Each rate run: whether one of its runs passed."""
        passed: dict[float, bool] = {}
        for s in self.steps:
            rate = s.figures.rate_rps
            passed[rate] = passed.get(rate, False) or s.ok
        return passed

    @property
    def bracket(self) -> tuple[float | None, float | None]:
        """(highest passing rate below every failing one, lowest failing rate)."""
        passed = self._passed()
        failing = min((rate for rate, ok in passed.items() if not ok), default=None)
        passing = [
            rate for rate, ok in passed.items() if ok and (failing is None or rate < failing)
        ]
        return (max(passing) if passing else None), failing

    @property
    def max_rate_within_slo(self) -> float | None:
        return self.bracket[0]

    def next_rate(self) -> float | None:
        """The next open-loop rate to measure, or None: the search is over."""
        ceiling = self.ceiling_rps
        if ceiling <= 0 or len(self.steps) >= self.max_steps:
            return None
        if not self.steps:
            return ceiling
        passing, failing = self.bracket
        last = self.steps[-1].figures
        runs = sum(1 for s in self.steps if s.figures.rate_rps == last.rate_rps)
        marginal = last.goodput_pct >= CONFIRM_GOODPUT_PCT
        if passing is not None and last.rate_rps == failing and runs == 1 and marginal:
            return last.rate_rps  # confirm the failure
        if passing is None:
            assert failing is not None
            rate = failing * DOWN_FACTOR
            return rate if rate >= ceiling / FLOOR_DIVISOR else None
        if failing is None:
            rate = passing * UP_FACTOR
            return rate if rate <= ceiling * UP_LIMIT else None
        if failing - passing <= self.tolerance * passing:
            return None
        return (passing + failing) / 2

    def record(self, figures: StepFigures) -> Step:
        step = judge(figures, self.slo)
        self.steps.append(step)
        return step

    def why_none(self) -> str:
        """Why no rate holds the SLOs, or "" when one does."""
        if self.max_rate_within_slo is not None:
            return ""
        if self.ceiling_rps <= 0:
            return "no request was answered OK in the closed-loop probe"
        if not self.steps:
            return "no open-loop step ran"
        lowest = min(self.steps, key=lambda s: s.figures.rate_rps)
        return f"even {lowest.figures.rate_rps:.1f}/s fails: {lowest.why}"


@dataclass
class SweepReport:
    """A finished (or stopped) search: steps sorted by rate, each with its step's report."""

    slo: Slo
    ceiling_rps: float
    max_rate_within_slo: float | None
    steps: list[Step]
    reports: list[Report]  # reports[i] is steps[i]'s run
    notes: list[str] = field(default_factory=list)  # the terminal's only, not in the JSON
    target: str = ""  # not in the JSON either: each report names it

    @classmethod
    def from_search(
        cls,
        search: CapacitySearch,
        reports: list[Report],
        notes: list[str] | None = None,
        target: str = "",
    ) -> SweepReport:
        pairs = sorted(zip(search.steps, reports, strict=True), key=lambda p: p[0].figures.rate_rps)
        why = search.why_none()
        return cls(
            slo=search.slo,
            ceiling_rps=search.ceiling_rps,
            max_rate_within_slo=search.max_rate_within_slo,
            steps=[s for s, _ in pairs],
            reports=[r for _, r in pairs],
            notes=[*(notes or []), *([why] if why else [])],
            target=target,
        )

    def to_json(self) -> dict[str, Any]:
        best = self.max_rate_within_slo
        return {
            "max_rate_within_slo": None if best is None else round(best, 4),
            "ceiling_rps": round(self.ceiling_rps, 4),
            "slo": self.slo.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "reports": [r.to_json() for r in self.reports],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepReport:
        """ValueError when `data` is not a sweep's JSON."""
        try:
            raw = data["slo"]
            slo = Slo(raw["ttft_ms"], raw["latency_ms"], float(raw["goodput_pct"]))
            reports = [Report.from_json(r) for r in data["reports"]]
            steps = []
            for s, report in zip(data["steps"], reports, strict=True):
                figures = StepFigures.from_report(float(s["rate_rps"]), report)
                steps.append(Step(figures, bool(s["ok"]), judge(figures, slo).why))
            best = data["max_rate_within_slo"]
            ceiling = float(data["ceiling_rps"])
            found = None if best is None else float(best)
            target = reports[0].target if reports else ""
            return cls(slo, ceiling, found, steps, reports, target=target)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a capacity search ({exc})") from None

    def chosen_report(self) -> Report | None:
        """The run at max_rate_within_slo, else the lowest rate's: for CSV and HTML."""
        for step, report in zip(self.steps, self.reports, strict=True):
            if step.figures.rate_rps == self.max_rate_within_slo:
                return report
        return self.reports[0] if self.reports else None

    def to_table(self) -> str:
        method = self.reports[0].method if self.reports else ""
        lines = [f"capacity search  {self.target}  {method}".rstrip()]
        lines.append(f"SLO        {self.slo.describe()}")
        lines.append(
            f"generator  kept up: send lag p99 <= {self.slo.lag_limit_ms:g} ms and "
            f">= {KEPT_UP_SHARE:.0%} of the rate sent"
        )
        lines.append(f"ceiling    {self.ceiling_rps:.1f}/s answered (closed loop)")
        lines.append("")
        lines.extend(step_table(self.steps))
        lines.append("")
        best = self.max_rate_within_slo
        found = f"{best:.1f}/s" if best is not None else "none"
        lines.append(f"max rate within SLO  {found}")
        lines.extend(f"note       {n}" for n in self.notes)
        return "\n".join(lines)


STEP_HEADER = (
    f"{'rate/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'TTFT50':>8}{'TTFT99':>8}{'good%':>7}"
    f"{'lag99':>7}  result"
)


def step_row(step: Step) -> str:
    """One step as a line of the table (at most 80 columns with a short reason)."""
    f = step.figures

    def ms(value: float | None, width: int) -> str:
        return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"

    result = "pass" if step.ok else "fail"
    return (
        f"{f.rate_rps:8.1f}{ms(f.p50_ms, 9)}{ms(f.p99_ms, 9)}{ms(f.ttft_p50_ms, 8)}"
        f"{ms(f.ttft_p99_ms, 8)}{f.goodput_pct:7.1f}{f.send_lag_p99_ms:7.1f}  {result}"
    )


def step_table(steps: list[Step]) -> list[str]:
    lines = [STEP_HEADER]
    for step in steps:
        lines.append(step_row(step))
        if step.why:
            lines.append(f"{'':8}  {step.why}")
    return lines
