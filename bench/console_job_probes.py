"""bench/console_job.py's measuring instruments: the keypress -> repaint probe (`Key`,
`Press`, `RepaintProbe`), a phase's figures (`Phase`), CPU counters (`console_cpu_s`,
`machine_busy_s`), the event loop's stall monitor and tracer, `until` and
`percentile`."""

from __future__ import annotations

import asyncio
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import psutil
from textual import events

if TYPE_CHECKING:
    from textual.widget import Widget

    from console.ui.app import GantryApp

KEY_TIMEOUT_S = 30.0


def console_cpu_s() -> float:
    """This process's CPU time and that of its reaped children: the console's forked
    advisor runs (the agents' process is reaped only at the end)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass
class Key:
    """A key to press, the widget that shows its effect, and the effect: `arm()` (called
    just before the press) returns a test that holds once the key has taken effect."""

    key: str
    widget: Widget
    arm: Callable[[], Callable[[], bool]]
    after: Callable[[], object] = lambda: None  # once shown, untimed


@dataclass
class Press:
    key: Key
    shown: Callable[[], bool]
    t0: float = 0.0
    rendered: bool = False
    elapsed: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RepaintProbe:
    """Times keypress -> the first screen update showing the key's effect (see the
    module docstring); also counts screen updates and their terminal output."""

    def __init__(self, app: GantryApp) -> None:
        from textual._compositor import CompositorUpdate

        self.app = app
        self.pending: Press | None = None
        self.updates = 0
        self.output_chars = 0
        self._watched: set[int] = set()
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if renderable is None or app._batch_count or screen is not app.screen:
                return
            if isinstance(renderable, CompositorUpdate):
                # What a terminal driver would write (the headless driver skips it).
                self.output_chars += len(renderable.render_segments(app.console))
            self.updates += 1
            press = self.pending
            if press is not None and press.rendered:
                press.elapsed = time.perf_counter() - press.t0
                self.pending = None
                press.done.set()

        setattr(app, "_display", display)  # noqa: B010  (an instance override of a method)

    def _watch(self, widget: Widget) -> None:
        if id(widget) in self._watched:
            return
        self._watched.add(id(widget))
        original = widget.render_lines

        def render_lines(crop: Any) -> Any:
            lines = original(crop)
            press = self.pending
            if press is not None and press.key.widget is widget and not press.rendered:
                press.rendered = press.shown()
            return lines

        setattr(widget, "render_lines", render_lines)  # noqa: B010

    async def press(self, key: Key) -> float | None:
        """Seconds from the press to the frame that shows it; None when not within
        KEY_TIMEOUT_S (the next key waits for this one: its effect is judged from the
        state this one leaves)."""
        self._watch(key.widget)
        press = Press(key, key.arm())
        self.pending = press
        # As the terminal driver posts a key (pilot.press would then wait for the app to
        # go idle, up to 2 s a key, which a console under these streams never is).
        event = events.Key(key.key, key.key if len(key.key) == 1 else None)
        event.set_sender(self.app)
        press.t0 = time.perf_counter()
        self.app.post_message(event)
        try:
            await asyncio.wait_for(press.done.wait(), KEY_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self.pending = None
        return press.elapsed


@dataclass
class Phase:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    agents_cpu_s: float = 0.0  # the agents' process
    others_cpu_s: float = 0.0  # every other process on this machine
    delays: list[float] = field(default_factory=list)
    by_key: dict[str, list[float]] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    events: int = 0
    log_lines: int = 0
    updates: int = 0
    output_chars: int = 0
    stall_max_s: float = 0.0
    lag_s: float = 0.0  # how far the job's metrics on screen are behind, at the end


def machine_busy_s() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


async def stall_monitor(
    period_s: float, stalls: list[float], stop: asyncio.Event, trace_ms: float = 0.0
) -> None:
    """Records how late each tick of the loop is; with `trace_ms`, a thread also samples
    the loop's stack while a tick is over `trace_ms` late and prints where the longest
    stalls were spent (to stderr)."""
    loop = asyncio.get_running_loop()
    expected = loop.time() + period_s
    beat = [time.monotonic()]
    tracer = None
    if trace_ms:
        tracer = threading.Thread(
            target=trace_stalls,
            args=(threading.get_ident(), beat, trace_ms / 1000, stop),
            name="bench:stall-tracer",
            daemon=True,
        )
        tracer.start()
    while not stop.is_set():
        await asyncio.sleep(period_s)
        now = loop.time()
        beat[0] = time.monotonic()
        stalls.append(max(0.0, now - expected))
        expected = now + period_s
    if tracer is not None:
        await asyncio.to_thread(tracer.join)


def trace_stalls(loop_thread: int, beat: list[float], after_s: float, stop: asyncio.Event) -> None:
    """Samples `loop_thread`'s stack every 10 ms while the loop is `after_s` late; prints
    each stall's length and its most sampled frames (the console's and Textual's)."""
    found: list[tuple[float, list[tuple[str, int]]]] = []
    while not stop.is_set():
        time.sleep(0.01)
        since = time.monotonic() - beat[0]
        if since < after_s:
            continue
        start = beat[0]
        counts: dict[str, int] = {}
        while beat[0] == start and not stop.is_set():
            frames = sys._current_frames()
            for ident, top in frames.items():
                if ident == loop_thread:
                    continue
                other: FrameType | None = top
                while other is not None:
                    if other.f_code.co_filename.endswith(("advice.py", "advisor.py")):
                        what = f"(advisor thread at {Path(top.f_code.co_filename).name}:"
                        what += f"{top.f_lineno} {top.f_code.co_name})"
                        counts[what] = counts.get(what, 0) + 1
                        break
                    other = other.f_back
            frame: FrameType | None = frames.get(loop_thread)
            seen = set()
            while frame is not None:
                code = frame.f_code
                where = f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}"
                if where not in seen:
                    seen.add(where)
                    counts[where] = counts.get(where, 0) + 1
                frame = frame.f_back
            time.sleep(0.01)
        length = time.monotonic() - start
        found.append((length, sorted(counts.items(), key=lambda kv: -kv[1])[:30]))
    for length, sampled in sorted(found, key=lambda f: -f[0])[:5]:
        print(f"== stall {length * 1000:.0f} ms ==", file=sys.stderr)
        for where, n in sampled:
            print(f"  {n:4d} {where}", file=sys.stderr)


async def until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"console_job: timed out waiting for {what}")
        await asyncio.sleep(0.1)
