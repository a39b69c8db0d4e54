"""Console under a big job (the bench's runner, just past 400 lines: its agents, leader,
probes and report live in bench/console_job_*.py): 1,024 ranks on 128 nodes reporting
metrics at 1 Hz, one rank's log at 5,000 lines/s, and an operator pressing keys.

The agents' side runs in a child process, so its CPU is not counted: 128 grpc.aio
servers on 127.0.0.1 implementing AgentService behind the agents' own token check
(agent.security.auth.TokenAuthInterceptor). Each streams its node's telemetry at 1 Hz (the
agent's Sampler over the fake NVML, 8 GPUs). node-000 leads `bench-job`, 8 ranks per
node: ListJobs and DescribeJob return the job with one attempt and every rank with its
latest metrics (as a leader keeps them), plus its checkpoints; WatchJobEvents, through
the agent's own EventBus (agent.jobs.event_bus: batches of what is at hand when the reader
asks for them, the metric tail it asks for), replays the job's events (submitted,
attempt and ranks started, --backlog steps of metrics), then follows with one METRICS
event per rank per second (published every 50 ms, as due). The metrics are a recording
written once as JSONL into a temp dir (loss decaying with noise, grad norm, lr, ~1 s
steps, collective time by op, tokens/s; seeded), replayed with the replay's time
stamps, each rank at its own phase in the second; a checkpoint event every 50 steps.
The log rank's TailRankLog answers the last 10,000 lines (the agent's bound), then
streams 5,000 lines/s of DeepSpeed/NCCL-style text (some WARN/ERROR lines) in batches
every 50 ms.

The console (GantryApp, refresh 0.1 s) runs headless under App.run_test() at 160x48 in
this process, connects to every agent, opens the job and waits until every rank has
its row and the event stream flows (not for the whole backlog: a console slower than
the stream would never be through it), then measures two phases of --seconds/2 each:

  job screen: the ranks table and its tabs, while the console also follows the log
      rank's log into a LogBuffer (JobsSession.tail_log, what the log screen runs; the
      console itself only tails a log while its screen is open);
  log screen: that rank's log (app.open_logs) with a search for "NCCL WARN" active,
      the job still followed underneath.

Keypress -> repaint: a key every --key-interval s (jittered, seeded), but never before
the previous one was shown, posted to the app as the terminal driver posts one (not
pilot.press, which then waits for the app to go idle: up to 2 s a key under these
streams): down/up in the ranks table, 2/3/1 to switch tabs (back on the ranks tab the
bench gives the table the focus again, untimed: the screen leaves nothing focused);
n, n, N, G in the log.
A sample is the time from just before the key event is posted to the end of the first
screen update (App._display) after the widget the key changes has rendered lines while
the change holds (its render_lines called once the cursor is on the next row, the tab
is shown, the search moved to another match, the view follows again): the first frame
that shows the key's effect. Headless, Textual skips turning an update into terminal
output; the probe does that itself (CompositorUpdate.render_segments, output thrown
away) so both latency and CPU include it. A key not shown within 30 s is a miss.

CPU: time.process_time() of this process (every thread, gRPC's included), plus the
children it reaped meanwhile (the advisor's forked runs), over the two
measured windows, per wall-second; start-up, the backlog and the switch between the
phases are left out. This machine's other load (the agents' process among it) is shown
beside it. --profile DIR writes a cProfile of each phase (event-loop thread) and prints
the costliest functions to stderr; profiled figures are inflated.

    .venv/bin/python bench/console_job.py [--nodes 128] [--ranks-per-node 8]
        [--seconds 30] [--log-lines-per-s 5000] [--quick] [--profile DIR]

Last line: {"console_cpu_s_per_s": ..., "keypress_repaint_p99_ms": ...}, the CPU over
both windows and the higher of the two phases' p99 (pooled, the screen that answers
faster would get more keys in and outweigh the other).

The agents' side is in bench/console_job_agents.py, the job it serves (and its metrics
recording) in bench/console_job_leader.py, the instruments in bench/console_job_probes.py
and the table in bench/console_job_report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# As the console's main does; before grpc is imported (by bench.console_job_agents).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for bench and tests/fakes, which are not installed packages

from bench.console_job_agents import MAX_TAIL_LINES, TOKEN, serve_agents  # noqa: E402
from bench.console_job_leader import JOB, node_name  # noqa: E402
from bench.console_job_probes import (  # noqa: E402
    Key,
    Phase,
    RepaintProbe,
    console_cpu_s,
    machine_busy_s,
    stall_monitor,
    until,
)
from bench.console_job_report import report  # noqa: E402

SEARCH = "NCCL WARN"


async def measure_phase(
    phase: Phase,
    probe: RepaintProbe,
    keys: list[Key],
    seconds: float,
    interval_s: float,
    counters: Callable[[], tuple[int, int]],
    lag: Callable[[], float],
    rng: random.Random,
    profile_dir: Path | None,
    agents: psutil.Process,
    trace_ms: float = 0.0,
) -> None:
    stalls: list[float] = []
    stop = asyncio.Event()
    monitor = asyncio.create_task(stall_monitor(0.01, stalls, stop, trace_ms))
    gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_started = [0.0]

    def on_gc(what: str, info: dict[str, int]) -> None:
        if what == "start":
            gc_started[0] = time.perf_counter()
        else:
            gc_pauses[info["generation"]].append(time.perf_counter() - gc_started[0])

    if trace_ms:
        gc.callbacks.append(on_gc)
    profiler = cProfile.Profile() if profile_dir else None
    events0, lines0 = counters()
    updates0, chars0 = probe.updates, probe.output_chars
    busy0, agents0 = machine_busy_s(), sum(agents.cpu_times()[:2])
    if profiler:
        profiler.enable()
    cpu0, wall0 = console_cpu_s(), time.monotonic()
    n = 0
    while time.monotonic() - wall0 < seconds:
        key = keys[n % len(keys)]
        n += 1
        delay = await probe.press(key)
        if delay is None:
            phase.misses.append(key.key)
        else:
            phase.delays.append(delay)
            phase.by_key.setdefault(key.key, []).append(delay)
        key.after()
        due = wall0 + n * interval_s + rng.uniform(-interval_s / 3, interval_s / 3)
        await asyncio.sleep(max(0.0, min(due, wall0 + seconds) - time.monotonic()))
    cpu1, wall1 = console_cpu_s(), time.monotonic()
    if profiler:
        profiler.disable()
    busy1, agents1 = machine_busy_s(), sum(agents.cpu_times()[:2])
    stop.set()
    await monitor
    if trace_ms:
        gc.callbacks.remove(on_gc)
        for gen, pauses in gc_pauses.items():
            print(
                f"== {phase.name}: gc generation {gen}: {len(pauses)} collections, "
                f"{sum(pauses) * 1000:.0f} ms in all, "
                f"longest {max(pauses, default=0) * 1000:.0f} ms",
                file=sys.stderr,
            )
    events1, lines1 = counters()
    phase.wall_s, phase.cpu_s = wall1 - wall0, cpu1 - cpu0
    phase.agents_cpu_s = agents1 - agents0
    phase.others_cpu_s = max(0.0, busy1 - busy0 - phase.cpu_s - phase.agents_cpu_s)
    phase.events, phase.log_lines = events1 - events0, lines1 - lines0
    phase.updates, phase.output_chars = probe.updates - updates0, probe.output_chars - chars0
    phase.stall_max_s = max(stalls, default=float("nan"))
    phase.lag_s = lag()
    if profiler and profile_dir:
        path = profile_dir / f"{phase.name.replace(' ', '-')}.pstats"
        profiler.dump_stats(path)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
        stats.print_stats(25)
        print(f"== profile: {phase.name} ({path}) ==\n{out.getvalue()}", file=sys.stderr)


async def measure_console(
    ports: list[int], args: argparse.Namespace, agents: psutil.Process
) -> list[Phase]:

    from console.model.cluster import ConnState
    from console.model.log_buffer import LogBuffer
    from console.net.cluster_file import NodeTarget
    from console.ui.app import GantryApp, tune_gc
    from console.ui.screens.job import JobScreen
    from console.ui.screens.logs import LogScreen
    from console.ui.widgets.chart_panel import ChartPanel
    from console.ui.widgets.rank_table import RankTable

    token_dir = Path(tempfile.mkdtemp(prefix="gantry-console-job-"))
    try:
        token_file = token_dir / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        targets = [
            NodeTarget(node_name(i), f"127.0.0.1:{port}", token_file)
            for i, port in enumerate(ports)
        ]
        world = args.nodes * args.ranks_per_node
        rng = random.Random(5)
        tune_gc()  # as `gantry` does before it runs the console
        if args.gc_threshold:  # an experiment: other collection thresholds than tune_gc's
            gc.set_threshold(*(int(n) for n in args.gc_threshold.split(",")))
        app = GantryApp(targets, refresh_interval_s=0.1)
        phases = [Phase("job screen"), Phase("log screen")]
        async with app.run_test(size=(160, 48)) as pilot:
            probe = RepaintProbe(app)
            await until(
                "every agent live", lambda: all(n.state is ConnState.LIVE for n in app.store), 90
            )
            await until(f"{JOB} listed", lambda: JOB in app.jobs, 30)
            screen = app.open_job(JOB)
            view = app.jobs.get(JOB)
            assert view is not None and app.jobs_session is not None

            await until("the job screen", lambda: bool(screen.query("#rank-table")), 30)
            await pilot.pause()
            ranks = screen.query_one("#rank-table", RankTable)
            # The job screen drawn with every rank, and the event stream flowing. Not the
            # whole backlog: a console slower than the stream would never be through it.
            await until(
                "every rank's row", lambda: ranks.row_count == world and view.last_seq > 0, 120
            )

            def lag() -> float:
                """Seconds from the newest metric record applied to now."""
                newest = max((r.time for r in view.ranks.values()), default=0.0)
                return time.time() - newest if newest else math.nan

            # Phase 1: the job screen, with the log rank's log followed in the background.
            side = LogBuffer()
            tail = asyncio.create_task(
                app.jobs_session.tail_log(JOB, args.log_rank, 1, side.extend), name="bench:tail"
            )
            await until("the log", lambda: side.end_index > 0, 30)
            await asyncio.sleep(args.warmup)
            charts = screen.query_one("#chart-panel", ChartPanel)
            events = screen.query_one("#event-table", RankTable)

            def cursor(delta: int) -> Callable[[], Callable[[], bool]]:
                def arm() -> Callable[[], bool]:
                    target = ranks.cursor_row + delta
                    return lambda: ranks.cursor_row == target

                return arm

            def tab(name: str) -> Callable[[], Callable[[], bool]]:
                return lambda: lambda: screen.active_tab == name

            # Back on the ranks tab JobScreen.action_tab gives the table the focus (timed,
            # with the key); the bench makes sure of it, untimed, so down/up always move.
            def refocus() -> None:
                screen.set_focus(ranks)

            job_keys = [
                Key("down", ranks, cursor(1)),
                Key("2", charts, tab("charts")),
                Key("1", ranks, tab("ranks"), refocus),
                Key("down", ranks, cursor(1)),
                Key("3", events, tab("events")),
                Key("1", ranks, tab("ranks"), refocus),
                Key("up", ranks, cursor(-1)),
            ]
            half = args.seconds / 2
            await measure_phase(
                phases[0],
                probe,
                job_keys,
                half,
                args.key_interval,
                lambda: (view.last_seq, side.end_index),
                lag,
                rng,
                args.profile,
                agents,
                args.trace_stalls,
            )
            tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tail
            # Phase 2: the log screen, searching, while everything streams.
            app.open_logs(JOB, args.log_rank, 1)
            await until("the log screen", lambda: isinstance(app.screen, LogScreen), 10)
            log_screen = app.screen
            assert isinstance(log_screen, LogScreen)
            buffer = log_screen.buffer
            await until("the log's tail", lambda: buffer.end_index >= MAX_TAIL_LINES // 2, 30)
            await pilot.press("slash", *SEARCH, "enter")
            log_view = log_screen.view
            await until("a search match", lambda: log_view.current_line is not None, 10)
            await asyncio.sleep(min(2.0, args.warmup))

            def moved() -> Callable[[], bool]:
                before = log_view.current_line
                return lambda: log_view.current_line not in (None, before)

            def live() -> Callable[[], bool]:
                return lambda: log_view.live

            log_keys = [
                Key("n", log_view, moved),
                Key("n", log_view, moved),
                Key("N", log_view, moved),
                Key("G", log_view, live),
            ]
            await measure_phase(
                phases[1],
                probe,
                log_keys,
                half,
                args.key_interval,
                lambda: (view.last_seq, buffer.end_index),
                lag,
                rng,
                args.profile,
                agents,
                args.trace_stalls,
            )
            assert isinstance(screen, JobScreen)
            await pilot.press("escape", "escape")
            await pilot.press("q")
        return phases
    finally:
        shutil.rmtree(token_dir, ignore_errors=True)


def stop_child(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--ranks-per-node", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="both phases together")
    parser.add_argument("--log-lines-per-s", type=float, default=5000.0)
    parser.add_argument("--log-rank", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=30, help="steps run before the console")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--key-interval", type=float, default=0.15)
    parser.add_argument("--quick", action="store_true", help="a 5 s smoke run")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each phase here")
    parser.add_argument(
        "--trace-stalls",
        type=float,
        default=0.0,
        metavar="MS",
        help="sample the loop's stack in stalls over MS ms; print the longest stalls and the GC "
        "pauses (stderr)",
    )
    parser.add_argument(
        "--gc-threshold",
        default="",
        metavar="G0,G1,G2",
        help="an experiment: gc.set_threshold(G0, G1, G2) after the console's own tuning",
    )
    parser.add_argument("--serve-agents", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.backlog = 5.0, 1.0, 5
    if not 0 <= args.log_rank < args.nodes * args.ranks_per_node:
        parser.error(f"--log-rank must be below {args.nodes * args.ranks_per_node}")
    if args.serve_agents:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_agents(args))
        return

    child_args = [
        f"--nodes={args.nodes}",
        f"--ranks-per-node={args.ranks_per_node}",
        f"--seconds={args.seconds}",
        f"--log-lines-per-s={args.log_lines_per_s}",
        f"--log-rank={args.log_rank}",
        f"--backlog={args.backlog}",
        f"--warmup={args.warmup}",
    ]
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-agents", *child_args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,  # Ctrl-C reaches the parent, which stops it in order
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit("console_job: the agents' process exited before it was ready")
        ports = json.loads(line)["ports"]
        phases = asyncio.run(measure_console(ports, args, psutil.Process(child.pid)))
    except KeyboardInterrupt:
        print("console_job: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        stop_child(child)
    report(args, phases)


if __name__ == "__main__":
    main()
