"""bench/console_job.py's report: the readable table of both phases, then the last
line, one JSON object."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable

from bench.console_job_probes import Phase, percentile


def report(args: argparse.Namespace, phases: list[Phase]) -> None:
    """The table, then the JSON line. CPU and rates are over both windows together;
    latencies are the worse phase's: pooled, the screen that answers faster would get
    more keys in and outweigh the other."""
    wall = sum(p.wall_s for p in phases)
    world = args.nodes * args.ranks_per_node

    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000

    def worst(of: Callable[[Phase], float]) -> float:
        values = [of(p) for p in phases if not math.isnan(of(p))]
        return max(values, default=math.nan)

    def rate(of: Callable[[Phase], float]) -> tuple[float, float, float]:
        a, b = phases
        return of(a) / a.wall_s, of(b) / b.wall_s, sum(of(p) for p in phases) / wall

    def latency(q: float) -> tuple[float, float, float]:
        a, b = phases
        return ms(a.delays, q), ms(b.delays, q), worst(lambda p: ms(p.delays, q))

    def count(of: Callable[[Phase], float]) -> tuple[float, float, float]:
        a, b = phases
        return of(a), of(b), sum(of(p) for p in phases)

    rows: list[tuple[str, tuple[float, float, float], str, str]] = [
        ("console CPU-s per wall-s", rate(lambda p: p.cpu_s), "", ".3f"),
        ("keypress -> repaint p50 (ms)", latency(50), "", ".1f"),
        ("keypress -> repaint p99 (ms)", latency(99), "< 100", ".1f"),
        ("keypress -> repaint max (ms)", latency(100), "", ".1f"),
        ("keys shown", count(lambda p: len(p.delays)), "", ".0f"),
        ("keys not shown within 30 s", count(lambda p: len(p.misses)), "0", ".0f"),
        ("job events applied per s", rate(lambda p: p.events), f"{world}", ".0f"),
        (
            "log lines received per s",
            rate(lambda p: p.log_lines),
            f"{args.log_lines_per_s:g}",
            ".0f",
        ),
        ("screen updates per s", rate(lambda p: p.updates), "", ".1f"),
        ("terminal output (kB/s)", rate(lambda p: p.output_chars / 1000), "", ".1f"),
        (
            "job metrics behind, at the end (s)",
            (phases[0].lag_s, phases[1].lag_s, phases[1].lag_s),
            "",
            ".1f",
        ),
        (
            "longest event-loop stall (ms)",
            (
                phases[0].stall_max_s * 1000,
                phases[1].stall_max_s * 1000,
                worst(lambda p: p.stall_max_s * 1000),
            ),
            "",
            ".0f",
        ),
        ("agents' process CPU-s per s", rate(lambda p: p.agents_cpu_s), "", ".3f"),
        ("other processes' CPU-s per s", rate(lambda p: p.others_cpu_s), "", ".3f"),
    ]
    print(
        f"console under a job: {world:,} ranks on {args.nodes} nodes at 1 Hz, one rank's log "
        f"at {args.log_lines_per_s:,.0f} lines/s; 2 x {args.seconds / 2:g} s measured, "
        f"160x48 headless, a key every {args.key_interval:g} s, {os.cpu_count()} CPUs"
        + (" (profiled: figures inflated)" if args.profile else "")
    )
    print(f"{'figure':36} {phases[0].name:>11} {phases[1].name:>11} {'both':>9} {'goal':>7}")
    for name, (a, b, both), goal, spec in rows:
        print(f"{name:36} {a:11{spec}} {b:11{spec}} {both:9{spec}} {goal:>7}")
    print("(both: CPU and rates over both windows; latencies and stalls: the worse phase)")
    print(f"{'per key (ms)':36} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9} {'missed':>7}")
    for phase in phases:
        for key in dict.fromkeys([*phase.by_key, *phase.misses]):
            values = phase.by_key.get(key, [])
            label = f"  {phase.name}: {key}"
            print(
                f"{label:36} {len(values):5d} {ms(values, 50):9.1f} {ms(values, 99):9.1f} "
                f"{ms(values, 100):9.1f} {phase.misses.count(key):7d}"
            )
    cpu = sum(p.cpu_s for p in phases)
    p99 = latency(99)[2]
    print(
        json.dumps(
            {
                "console_cpu_s_per_s": round(cpu / wall, 4),
                "keypress_repaint_p99_ms": None if math.isnan(p99) else round(p99, 1),
            }
        )
    )
