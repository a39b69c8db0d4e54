"""Load test reports to look at: a CSV of every interval and one self-contained HTML page
(a run, a capacity search, or two runs compared).

The plotting library is imported only inside the writers: the console never loads it at
start-up. The page inlines it, so it opens with no network.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from console.loadtest.compare import compare, incomparable
from console.loadtest.histogram import Dist
from console.loadtest.intervals import Interval, report_intervals
from console.loadtest.report import NodeFigures, Report

CSV_COLUMNS: list[tuple[str, Callable[[Interval], object]]] = [
    ("start_s", lambda iv: iv.start_s),
    ("end_s", lambda iv: iv.end_s),
    ("sent", lambda iv: iv.sent),
    ("completed", lambda iv: iv.completed),
    ("ok", lambda iv: iv.ok),
    ("errors", lambda iv: iv.errors),
    ("good", lambda iv: iv.good),
    ("tokens", lambda iv: iv.tokens),
    ("in_flight", lambda iv: iv.in_flight),
    ("sent_per_s", lambda iv: round(iv.per_s(iv.sent), 3)),
    ("ok_per_s", lambda iv: round(iv.per_s(iv.ok), 3)),
    ("tokens_per_s", lambda iv: round(iv.per_s(iv.tokens), 3)),
    *[
        (f"{name}_{field}_ms", lambda iv, d=name, f=field: _dist_value(iv, d, f))
        for name in ("latency", "ttft", "itl", "send_lag")
        for field in ("p50", "p90", "p99", "max", "mean")
    ],
]


def _dist_value(interval: Interval, name: str, field: str) -> object:
    dist: Dist | None = getattr(interval, f"{name}_ms")
    return round(getattr(dist, field), 3) if dist is not None and dist.count else ""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    tmp.replace(path)


def write_csv(report: Report, path: Path) -> None:
    """One row per interval of the measured window (empty cells where nothing was measured)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([name for name, _ in CSV_COLUMNS])
        for interval in report_intervals(report):
            writer.writerow([get(interval) for _, get in CSV_COLUMNS])
    tmp.replace(path)


def write_html(report: Report, path: Path, sweep: dict[str, Any] | None = None) -> None:
    """One page: the summary table and the plots; with `sweep` (a SweepReport's JSON), the
    capacity search's curve and steps first."""
    from console.loadtest import report_plots as plots

    run = plots.Run("run", report, report_intervals(report))
    body = []
    if sweep is not None:
        body += [
            "<h2>Capacity search</h2>",
            _sweep_summary(sweep),
            plots.sweep_curve(sweep),
            _sweep_steps(sweep),
            f"<h2>Run: {_e(report.load)}</h2>",
        ]
    body += [_summary_table(report), _notes(report.notes)]
    body += _run_plots([run])
    title = "capacity search" if sweep is not None else "load test"
    _write_atomic(path, _page(f"Gantry {title}: {report.target}", body, plots.plotly_js()))


def write_compare_html(a: Report, b: Report, label_a: str, label_b: str, path: Path) -> None:
    """Two runs on one page: the differences (B against A) and both runs overlaid."""
    from console.loadtest import report_plots as plots

    runs = [
        plots.Run(f"A {label_a}", a, report_intervals(a)),
        plots.Run(f"B {label_b}", b, report_intervals(b)),
    ]
    body = [
        "<table class='kv'>",
        _kv("A", f"{label_a} — {a.target} {a.method}, {a.load}, {a.started_at}"),
        _kv("B", f"{label_b} — {b.target} {b.method}, {b.load}, {b.started_at}"),
        "</table>",
    ]
    warnings = incomparable(a, b)
    if warnings:
        items = "".join(f"<li>not comparable: {_e(w)}</li>" for w in warnings)
        body.append(f"<ul class='warn'>{items}</ul>")
    body.append(_differences(a, b))
    body += _run_plots(runs)
    _write_atomic(
        path, _page(f"Gantry load test: {label_a} against {label_b}", body, plots.plotly_js())
    )


def _run_plots(runs: list[Any]) -> list[str]:
    from console.loadtest import report_plots as plots

    out = [plots.latency_over_time(runs), plots.latency_histogram(runs)]
    tokens = plots.token_latencies(runs)
    if tokens is not None:
        out.append(tokens)
    return out


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _kv(key: str, value: object) -> str:
    return f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>"


def _summary_table(r: Report) -> str:
    stopped = " (partial: stopped early)" if r.partial else ""
    target = f"target {r.target_rps:.1f}/s, " if r.target_rps is not None else ""
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items()))
    rows = [
        _kv("target", f"{r.target}  {r.method}"),
        _kv("load", f"{r.load}; {r.mode} loop; workers {r.workers}; warm-up {r.warmup_s:g} s"),
        _kv("measured", f"{r.duration_s:.2f} s from {r.started_at}{stopped}"),
        _kv(
            "rate",
            f"{target}achieved {r.achieved_rps:.1f}/s, throughput {r.throughput_rps:.1f}/s",
        ),
        _kv(
            "requests",
            f"sent {r.sent}, ok {r.ok}, errors {r.error_count}"
            + (f" ({errors})" if errors else "")
            + f", unfinished {r.unfinished}, warm-up {r.warmup_requests}",
        ),
    ]
    if r.tokens:
        rows.append(_kv("tokens", f"{r.tokens} in all, {r.tokens_per_s:.1f}/s overall"))
    if r.slo_ttft_ms is not None or r.slo_latency_ms is not None:
        rows.append(_kv("goodput", f"{r.goodput_rps:.1f}/s, {r.goodput_pct:.1f}% within the SLOs"))
    dists: list[tuple[str, Dist | None]] = [
        ("latency", r.latency_ms),
        ("service", r.service_ms if r.mode == "open" else None),
        ("send lag", r.send_lag_ms),
        ("TTFT", r.ttft_ms),
        ("inter-token", r.itl_ms),
    ]
    head = "".join(f"<th>{h}</th>" for h in ("ms", "p50", "p90", "p99", "p99.9", "max", "mean"))
    lines = [
        f"<tr><th>{_e(name)}</th>"
        + "".join(f"<td>{v:.2f}</td>" for v in (d.p50, d.p90, d.p99, d.p999, d.max, d.mean))
        + f"<td>{d.count}</td></tr>"
        for name, d in dists
        if d is not None and d.count
    ]
    return (
        f"<h2>Summary</h2><table class='kv'>{''.join(rows)}</table>"
        f"<table class='num' id='summary'><tr>{head}<th>count</th></tr>{''.join(lines)}</table>"
        + _nodes_table(r.nodes)
    )


def _nodes_table(nodes: list[NodeFigures]) -> str:
    """Each node's share of a run from the cluster: a generator that could not keep up
    stands out by its send lag."""
    if not nodes:
        return ""
    head = "".join(
        f"<th>{h}</th>"
        for h in ("node", "workers", "sent", "ok", "errors", "send lag p99 ms", "latency p99 ms")
    )
    rows = [
        f"<tr><th>{_e(n.node)}</th><td>{n.workers}</td><td>{n.sent}</td><td>{n.ok}</td>"
        f"<td>{n.errors}</td><td>{_num(n.send_lag_p99_ms)}</td><td>{_num(n.latency_p99_ms)}</td>"
        "</tr>"
        for n in nodes
    ]
    return f"<h3>By node</h3><table class='num' id='nodes'><tr>{head}</tr>{''.join(rows)}</table>"


def _notes(notes: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f"<ul class='notes'>{items}</ul>" if items else ""


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(float(value))


def _sweep_summary(sweep: dict[str, Any]) -> str:
    slo = sweep.get("slo") or {}
    wanted = [
        f"{what} <= {float(slo[key]):g} ms"
        for key, what in (("ttft_ms", "TTFT"), ("latency_ms", "latency"))
        if slo.get(key) is not None
    ]
    wanted.append(f"goodput >= {_num(slo.get('goodput_pct'), '{:g}')} %")
    found = sweep.get("max_rate_within_slo")
    return (
        "<table class='kv'>"
        + "".join(
            [
                _kv(
                    "max rate within SLO",
                    "none of the rates tried"
                    if found is None
                    else f"{float(found):.1f} requests/s",
                ),
                _kv(
                    "closed-loop ceiling", f"{_num(sweep.get('ceiling_rps'), '{:.1f}')} requests/s"
                ),
                _kv("SLOs", " and ".join(wanted)),
            ]
        )
        + "</table>"
    )


SWEEP_COLUMNS = (
    ("rate_rps", "rate /s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("goodput_pct", "goodput %"),
    ("send_lag_p99_ms", "send lag p99 ms"),
)


def _sweep_steps(sweep: dict[str, Any]) -> str:
    head = "".join(f"<th>{_e(t)}</th>" for _, t in SWEEP_COLUMNS) + "<th>SLOs held</th>"
    rows = [
        "<tr>"
        + "".join(f"<td>{_num(step.get(key))}</td>" for key, _ in SWEEP_COLUMNS)
        + f"<td>{'yes' if step.get('ok') else 'no'}</td></tr>"
        for step in sweep.get("steps") or []
    ]
    return f"<table class='num' id='sweep-steps'><tr>{head}</tr>{''.join(rows)}</table>"


def _differences(a: Report, b: Report) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("metric", "A", "B", "B-A", "change", "verdict (B)"))
    rows = []
    for row in compare(a, b):
        pct = f"{row.pct:+.1f}%" if row.pct is not None else "-"
        diff = "-" if row.diff is None else f"{row.diff:+.2f}"
        rows.append(
            f"<tr class='{row.verdict}'><th>{_e(row.metric)}</th><td>{_num(row.a)}</td>"
            f"<td>{_num(row.b)}</td><td>{diff}</td><td>{pct}</td><td>{row.verdict}</td></tr>"
        )
    return (
        f"<h2>Differences</h2><table class='num' id='differences'><tr>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: left; }
table.num td { text-align: right; font-variant-numeric: tabular-nums; }
tr.better td:last-child { color: #1a7f37; } tr.worse td:last-child { color: #c62828; }
ul.warn { color: #c62828; } ul.notes { color: #8a6d00; }
"""


def _page(title: str, body: list[str], plotly_js: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style>"
        f"<script>{plotly_js}</script></head>\n<body><h1>{_e(title)}</h1>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )
