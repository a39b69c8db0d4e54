"""The HTML report's figures, drawn with plotly; imported only when a report is written.

Every function takes one run or several (a comparison overlays them) and returns the
figure's <div>; `plotly_js()` is the library itself, inlined once per page so that the
page needs no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]
from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]
from plotly.subplots import make_subplots  # type: ignore[import-untyped]

from console.loadtest.histogram import Histogram
from console.loadtest.intervals import Interval
from console.loadtest.report import Report

HEIGHT_PX = 420
HIST_BINS = 40
# No logo link to plotly.com: the page links nowhere.
CONFIG = {"displaylogo": False, "responsive": True}
DASHES = ("solid", "dash", "dot")  # one per run; a metric keeps its colour across runs
COLORS = {
    "p50": "#1f77b4",
    "p99": "#d62728",
    "max": "#2ca02c",
    "ok": "#7f7f7f",
    "errors": "#ff7f0e",
    "ttft": "#9467bd",
    "itl": "#17becf",
    "goodput": "#8c564b",
}


@dataclass(frozen=True)
class Run:
    """A report with its name on the page and its intervals."""

    label: str
    report: Report
    intervals: list[Interval]


def plotly_js() -> str:
    return str(get_plotlyjs())


def _div(fig: Any, div_id: str) -> str:
    fig.update_layout(height=HEIGHT_PX, margin={"t": 60, "b": 50, "l": 60, "r": 60})
    return str(
        fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config=CONFIG,
            default_height=f"{HEIGHT_PX}px",
        )
    )


def _name(run: Run, what: str, runs: list[Run]) -> str:
    return f"{run.label}: {what}" if len(runs) > 1 else what


def latency_over_time(runs: list[Run], div_id: str = "latency-over-time") -> str:
    """Latency percentiles of each interval, with the answers per second on the right axis."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, run in enumerate(runs):
        dash = DASHES[i % len(DASHES)]
        ends = [iv.end_s for iv in run.intervals]
        for pick, what in (("p50", "latency p50"), ("p99", "latency p99"), ("max", "max")):
            values = [
                getattr(iv.latency_ms, pick) if iv.latency_ms and iv.latency_ms.count else None
                for iv in run.intervals
            ]
            fig.add_trace(
                go.Scatter(
                    x=ends,
                    y=values,
                    name=_name(run, f"{what} ms", runs),
                    mode="lines+markers",
                    line={"dash": dash, "color": COLORS[pick]},
                ),
                secondary_y=False,
            )
        fig.add_trace(
            go.Scatter(
                x=ends,
                y=[iv.per_s(iv.ok) for iv in run.intervals],
                name=_name(run, "ok/s", runs),
                mode="lines",
                line={"dash": dash, "width": 1, "color": COLORS["ok"]},
                opacity=0.6,
            ),
            secondary_y=True,
        )
        if any(iv.errors for iv in run.intervals):
            fig.add_trace(
                go.Scatter(
                    x=ends,
                    y=[iv.per_s(iv.errors) for iv in run.intervals],
                    name=_name(run, "errors/s", runs),
                    mode="lines",
                    line={"dash": dash, "width": 1, "color": COLORS["errors"]},
                ),
                secondary_y=True,
            )
    fig.update_layout(title="Latency over time (each interval's successes)")
    fig.update_xaxes(title_text="s since the measured window began")
    fig.update_yaxes(title_text="ms", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="requests/s", rangemode="tozero", secondary_y=True)
    return _div(fig, div_id)


def _hist(report: Report, name: str) -> Histogram | None:
    encoded = report.histograms.get(name)
    return Histogram.decode(encoded) if encoded else None


def _log_edges(hists: list[Histogram], n: int = HIST_BINS) -> list[float]:
    """n + 1 log-spaced bucket edges covering every histogram's values."""
    values = [v for h in hists for v, _ in h.counts()]
    high = max(max(values), 0.001)  # a log axis has no 0
    low = min(max(min(values), 0.001), high * 0.999)
    ratio = (high / low) ** (1.0 / n)
    return [low * ratio**i for i in range(n)] + [high]


def _binned(hist: Histogram, edges: list[float]) -> list[int]:
    """Counts per bucket (edges[i], edges[i + 1]]; the lowest value goes to the first."""
    out = [0] * (len(edges) - 1)
    i = 0
    for value, count in hist.counts():
        while i < len(out) - 1 and value > edges[i + 1]:
            i += 1
        out[i] += count
    return out


def _distribution_traces(runs: list[Run], name: str, what: str, color: str) -> list[Any]:
    """Each run's histogram as a filled step line (bars thin out on a log axis and hide
    each other when overlaid)."""
    hists = [(i, run, _hist(run.report, name)) for i, run in enumerate(runs)]
    present = [(i, run, h) for i, run, h in hists if h is not None and h.count]
    if not present:
        return []
    edges = _log_edges([h for _, _, h in present])
    traces = []
    for i, run, h in present:
        counts = _binned(h, edges)
        traces.append(
            go.Scatter(
                x=[round(e, 3) for e in edges],
                y=[*counts, counts[-1]],
                name=_name(run, what, runs),
                mode="lines",
                line={"shape": "hv", "color": color, "dash": DASHES[i % len(DASHES)]},
                fill="tozeroy",
                opacity=0.5,
            )
        )
    return traces


def latency_histogram(runs: list[Run], div_id: str = "latency-histogram") -> str:
    """The distribution of the successes' latency, from the run's exact histogram."""
    fig = go.Figure(_distribution_traces(runs, "latency", "latency", COLORS["p50"]))
    fig.update_layout(title="Latency histogram (log-spaced buckets)")
    fig.update_xaxes(title_text="ms", type="log")
    fig.update_yaxes(title_text="requests")
    return _div(fig, div_id)


def token_latencies(runs: list[Run], div_id: str = "token-latencies") -> str | None:
    """TTFT and inter-token latency distributions; None when no run streamed tokens."""
    ttft = _distribution_traces(runs, "ttft", "TTFT", COLORS["ttft"])
    itl = _distribution_traces(runs, "itl", "inter-token", COLORS["itl"])
    if not ttft and not itl:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("TTFT", "Inter-token latency"))
    for trace in ttft:
        fig.add_trace(trace, row=1, col=1)
    for trace in itl:
        fig.add_trace(trace, row=1, col=2)
    fig.update_layout(title="Time to first token and inter-token latency")
    fig.update_xaxes(title_text="ms", type="log")
    fig.update_yaxes(title_text="count", col=1)
    return _div(fig, div_id)


def sweep_curve(sweep: dict[str, Any], div_id: str = "sweep-curve") -> str:
    """A capacity search: each step's rate against p50/p99 and goodput, the SLOs and the
    rate found."""
    steps = sorted(sweep.get("steps") or [], key=lambda s: float(s["rate_rps"]))
    rates = [float(s["rate_rps"]) for s in steps]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    lines = (
        ("p50_ms", "p50", "p50"),
        ("p99_ms", "p99", "p99"),
        ("ttft_p99_ms", "TTFT p99", "ttft"),
    )
    for key, what, color in lines:
        values = [s.get(key) for s in steps]
        if any(v is not None for v in values):
            fig.add_trace(
                go.Scatter(
                    x=rates,
                    y=values,
                    name=f"{what} ms",
                    mode="lines+markers",
                    line={"color": COLORS[color]},
                ),
                secondary_y=False,
            )
    fig.add_trace(
        go.Scatter(
            x=rates,
            y=[s.get("goodput_pct") for s in steps],
            name="goodput %",
            mode="lines+markers",
            marker={
                "symbol": ["circle" if s.get("ok") else "x" for s in steps],
                "size": 10,
            },
            line={"dash": "dot", "color": COLORS["goodput"]},
        ),
        secondary_y=True,
    )
    slo = sweep.get("slo") or {}
    for key, what in (("latency_ms", "latency SLO"), ("ttft_ms", "TTFT SLO")):
        if slo.get(key) is not None:
            fig.add_hline(
                y=float(slo[key]),
                line_dash="dash",
                annotation_text=what,
                annotation_position="bottom left",
                secondary_y=False,
            )
    found = sweep.get("max_rate_within_slo")
    if found is not None:
        fig.add_vline(x=float(found), line_color="green", annotation_text="max within SLO")
    if sweep.get("ceiling_rps"):
        fig.add_vline(
            x=float(sweep["ceiling_rps"]), line_dash="dot", annotation_text="closed-loop ceiling"
        )
    fig.update_layout(title="Capacity search: rate against latency and goodput")
    fig.update_xaxes(title_text="offered rate, requests/s")
    fig.update_yaxes(title_text="ms", rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text="goodput %", range=[0, 105], secondary_y=True)
    return _div(fig, div_id)
