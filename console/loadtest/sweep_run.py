"""Running a capacity search: each probe and step through run_loadtest, the choices made by
console.loadtest.sweep, and saving the result.

    sweep = await run_sweep(config, on_step=show, on_progress=line, stop=stop_event)

Probes run closed loop for min(--duration, PROBE_MAX_S); steps open loop for --duration
(default 10 s), each with --warmup. Setting `stop` ends the step running and the search:
the sweep covers the steps finished before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from console.loadtest.cluster_workers import NodeTasks
from console.loadtest.config import DEFAULT_DURATION_S, LoadTestConfig
from console.loadtest.progress import Progress
from console.loadtest.report import Report
from console.loadtest.runner import run_loadtest
from console.loadtest.store import DEFAULT_DIR, new_report_path
from console.loadtest.sweep import CapacitySearch, Slo, Step, StepFigures, SweepReport

PROBE_MAX_S = 5.0
SWEEPS_DIR = DEFAULT_DIR / "sweeps"  # apart from the single runs, which list *.json there

# Where the search is: ("probe", concurrency) and ("step", rate) as each is about to run,
# ("ceiling", answers/s) once the probes are done.
EventHook = Callable[[str, float], None]


def probe_config(config: LoadTestConfig, concurrency: int) -> LoadTestConfig:
    step_s = config.duration_s or DEFAULT_DURATION_S
    return dataclasses.replace(
        config,
        sweep=False,
        rate=None,
        concurrency=concurrency,
        arrival="constant",
        duration_s=min(step_s, PROBE_MAX_S),
    )


def step_config(config: LoadTestConfig, rate_rps: float) -> LoadTestConfig:
    return dataclasses.replace(
        config,
        sweep=False,
        rate=rate_rps,
        concurrency=None,
        duration_s=config.duration_s or DEFAULT_DURATION_S,
    )


def ok_rps(report: Report) -> float:
    """Answers/s that were OK (errors answered fast are no capacity)."""
    if not report.completed:
        return 0.0
    return report.throughput_rps * report.ok / report.completed


async def run_sweep(
    config: LoadTestConfig,
    on_step: Callable[[Step], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop: asyncio.Event | None = None,
    *,
    on_event: EventHook | None = None,
    in_process: bool | None = None,
    nodes: NodeTasks | None = None,
) -> SweepReport:
    """LoadTestError when the first probe cannot start (bad target...)."""
    search = CapacitySearch(
        Slo(config.slo_ttft_ms, config.slo_latency_ms),
        # every worker (on every node of --from-nodes) holds one request in flight at least
        min_concurrency=config.workers * max(1, len(config.from_nodes)),
    )
    notes: list[str] = []

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    while not stopped() and (concurrency := search.next_probe()) is not None:
        if on_event is not None:
            on_event("probe", concurrency)
        report = await run_loadtest(
            probe_config(config, concurrency), on_progress, stop, in_process=in_process, nodes=nodes
        )
        if report.partial:
            break
        search.record_probe(concurrency, ok_rps(report))
    if on_event is not None and not stopped():
        on_event("ceiling", search.ceiling_rps)
    reports: list[Report] = []
    while not stopped() and (rate := search.next_rate()) is not None:
        if on_event is not None:
            on_event("step", rate)
        report = await run_loadtest(
            step_config(config, rate), on_progress, stop, in_process=in_process, nodes=nodes
        )
        if report.partial:
            break  # stopped: not judged on part of a step
        step = search.record(StepFigures.from_report(rate, report))
        reports.append(report)
        if on_step is not None:
            on_step(step)
    if stopped():
        notes.append("stopped before the search ended: the result covers the steps run")
    return SweepReport.from_search(search, reports, notes, target=config.target)


def write_sweep(sweep: SweepReport, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(sweep.to_json(), indent=2) + "\n")
    tmp.replace(path)


def save_sweep(sweep: SweepReport, dir: Path = SWEEPS_DIR, now: datetime | None = None) -> Path:
    """Under .gantry/loadtests/sweeps/, named by time and target as single runs are."""
    path = new_report_path(dir, sweep.target, now, suffix="-sweep")
    write_sweep(sweep, path)
    return path


def load_sweep(path: Path) -> SweepReport:
    """ValueError (one line) when the file is not a sweep."""
    try:
        return SweepReport.from_json(json.loads(path.read_text()))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
