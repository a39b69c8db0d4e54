"""Two reports side by side, with the differences (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from console.loadtest.histogram import Dist
from console.loadtest.report import Report

SAME_WITHIN_PCT = 1.0


@dataclass(frozen=True)
class CompareRow:
    metric: str
    a: float | None
    b: float | None
    better: str  # "lower" or "higher"

    @property
    def diff(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return 100.0 * (self.b - self.a) / abs(self.a)

    @property
    def verdict(self) -> str:
        """'better' or 'worse' (B against A), 'same' within 1 %, '' when not comparable."""
        if self.a is None or self.b is None:
            return ""
        pct = self.pct
        if self.a == self.b or (pct is not None and abs(pct) < SAME_WITHIN_PCT):
            return "same"
        improved = self.b < self.a if self.better == "lower" else self.b > self.a
        return "better" if improved else "worse"


def _pick(dist: Callable[[Report], Dist | None], field: str) -> Callable[[Report], float | None]:
    def get(report: Report) -> float | None:
        d = dist(report)
        return None if d is None or not d.count else float(getattr(d, field))

    return get


METRICS: list[tuple[str, Callable[[Report], float | None], str]] = [
    ("target req/s", lambda r: r.target_rps, "higher"),
    ("achieved req/s", lambda r: r.achieved_rps, "higher"),
    ("throughput req/s", lambda r: r.throughput_rps, "higher"),
    ("errors %", lambda r: r.error_pct, "lower"),
    *[
        (f"latency {p} ms", _pick(lambda r: r.latency_ms, f), "lower")
        for p, f in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"))
    ],
    ("latency max ms", _pick(lambda r: r.latency_ms, "max"), "lower"),
    ("service p50 ms", _pick(lambda r: r.service_ms, "p50"), "lower"),
    ("service p99 ms", _pick(lambda r: r.service_ms, "p99"), "lower"),
    ("send lag p99 ms", _pick(lambda r: r.send_lag_ms, "p99"), "lower"),
    ("TTFT p50 ms", _pick(lambda r: r.ttft_ms, "p50"), "lower"),
    ("TTFT p99 ms", _pick(lambda r: r.ttft_ms, "p99"), "lower"),
    ("inter-token p50 ms", _pick(lambda r: r.itl_ms, "p50"), "lower"),
    ("inter-token p99 ms", _pick(lambda r: r.itl_ms, "p99"), "lower"),
    ("tokens/s overall", lambda r: r.tokens_per_s if r.tokens else None, "higher"),
    ("tokens/s/req p50", _pick(lambda r: r.tokens_per_s_request, "p50"), "higher"),
    ("goodput req/s", lambda r: r.goodput_rps if _has_slo(r) else None, "higher"),
    ("goodput %", lambda r: r.goodput_pct if _has_slo(r) else None, "higher"),
]


def _has_slo(report: Report) -> bool:
    return report.slo_ttft_ms is not None or report.slo_latency_ms is not None


def incomparable(a: Report, b: Report) -> list[str]:
    """What differs between the two runs beyond the load, so that their figures do not
    measure the same thing (a field a report lacks is not compared)."""
    warnings = []
    if a.mode != b.mode:
        warnings.append(
            f"A is {a.mode} loop and B is {b.mode} loop: closed loop hides stalls "
            "(coordinated omission), so its latencies read lower than open loop's"
        )
    checks: list[tuple[str, object, object]] = [
        ("targets", a.target, b.target),
        ("methods", a.method, b.method),
        ("prompt sets", a.prompt_set or None, b.prompt_set or None),
        ("max_tokens", a.max_tokens, b.max_tokens),
        ("ignore-EOS settings", a.ignore_eos, b.ignore_eos),
    ]
    for what, va, vb in checks:
        if va is not None and vb is not None and va != vb:
            warnings.append(f"the {what} differ (A: {_said(va)}, B: {_said(vb)})")
    return warnings


def _said(value: object) -> str:
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)


def compare(a: Report, b: Report) -> list[CompareRow]:
    """Every metric either report has, in a fixed order."""
    rows = []
    for name, get, better in METRICS:
        va, vb = get(a), get(b)
        if va is not None or vb is not None:
            rows.append(CompareRow(name, va, vb, better))
    return rows


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def format_compare(
    rows: list[CompareRow],
    a_name: str = "A",
    b_name: str = "B",
    warnings: list[str] | None = None,
) -> str:
    width = max([len(a_name), len(b_name), 10])
    lines = [f"A: {a_name}", f"B: {b_name}", ""]
    if warnings:
        lines += [f"warning: not comparable: {w}" for w in warnings] + [""]
    lines += [
        f"{'metric':<20}{'A':>{width}}{'B':>{width}}{'B-A':>11}{'change':>9}  verdict (B)",
    ]
    for row in rows:
        pct = f"{row.pct:+.1f}%" if row.pct is not None else "-"
        lines.append(
            f"{row.metric:<20}{_fmt(row.a):>{width}}{_fmt(row.b):>{width}}"
            f"{_fmt(row.diff, sign=True):>11}{pct:>9}  {row.verdict}"
        )
    return "\n".join(lines)


def compare_json(rows: list[CompareRow]) -> list[dict[str, object]]:
    return [
        {
            "metric": r.metric,
            "a": r.a,
            "b": r.b,
            "diff": r.diff,
            "pct": r.pct,
            "better": r.better,
            "verdict": r.verdict,
        }
        for r in rows
    ]
