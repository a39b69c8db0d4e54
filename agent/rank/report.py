"""What a training rank reports to its Gantry agent: JSON lines in a file.

Standard library only: a user's own training script imports it (copy this one file
beside a script whose interpreter does not have Gantry installed). Two lines in any
training loop:

    from agent.rank.report import report

    report(step=step, loss=loss, lr=lr)   # GANTRY_METRICS_FILE unset: a no-op

The first call opens one reporter for the process (a start record, then a heartbeat
every GANTRY_HEARTBEAT_S seconds); the process's exit writes the end record ("failed"
when an uncaught exception ended it). `report_checkpoint(step, path)` and
`report_phase(name)` write the other records; values with an `.item()` (0-d tensors,
numpy scalars) are written as numbers. A Hugging Face `Trainer` reports through
`agent.hf_callback.GantryCallback` instead.

The same records, by hand (what Gantry's own trainer, agent.train, does):

    from agent.rank.report import Reporter, install_stack_dump

    install_stack_dump()                 # SIGUSR1 -> every thread's Python stack on stderr
    with Reporter() as rep:              # GANTRY_METRICS_FILE unset: every call is a no-op
        rep.start(world_size=2)
        for step in ...:
            rep.metrics(step, loss=..., lr=...)
        rep.checkpoint(step, tag="step100", path="/out/checkpoints/step100")
    # leaving the block writes {"kind": "end", "status": "completed"} (or "failed")

Records, one per line, each written whole by one write() to a file opened O_APPEND,
so a tailer never sees a partial line:

    {"kind": "start", "time": unix_s, "rank": R, "step": S, "pid", ...}
    {"kind": "phase", "time", "rank", "phase": P}   P: started, importing, building_ops,
        joining, loading_checkpoint, first_step, training (what the rank is doing now)
    {"kind": "metrics", "time", "rank", "step", "epoch", "loss", "grad_norm", "lr",
     "loss_scale", "step_time_s", "samples_per_s", "tokens_per_s",
     "collective_s": {op: s}, "collective_total_s", "forward_s", "backward_s",
     "optimizer_step_s", "memory_bytes", "eval_loss"}  (a field not measured is absent;
        two records of one step complete each other)
    {"kind": "heartbeat", "time", "rank", "step", "moved"}  every GANTRY_HEARTBEAT_S (5) s;
        moved: whether the rank advanced since the last one, once it has stepped
        (see Reporter.heartbeat)
    {"kind": "checkpoint", "time", "rank", "step", "tag", "path"}
    {"kind": "end", "time", "rank", "step", "status": "completed" | "failed", ...}

One heartbeat thread per process and file: when $GANTRY_HEARTBEAT_PID holds this
process's id, something else in it already beats for $GANTRY_METRICS_FILE, and a
reporter writing to that file starts no thread of its own.

Non-finite floats are written as JSON's NaN/Infinity extensions (Python reads them).
"""

from __future__ import annotations

import atexit
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

METRICS_FILE_ENV = "GANTRY_METRICS_FILE"
HEARTBEAT_ENV = "GANTRY_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 5.0
# A main thread that used this share of a heartbeat's interval in CPU time worked.
BUSY_SHARE = 0.1
# Set (to its pid) by whatever already runs a heartbeat thread in this process.
HEARTBEAT_PID_ENV = "GANTRY_HEARTBEAT_PID"
PHASES = (
    "started",
    "importing",
    "building_ops",
    "joining",
    "loading_checkpoint",
    "first_step",
    "training",
)


def install_stack_dump(sig: int = signal.SIGUSR1) -> None:
    """On `sig`, print every thread's Python stack to stderr (the process goes on)."""
    faulthandler.register(sig, all_threads=True, file=sys.stderr, chain=False)


def memory_bytes() -> int | None:
    """Peak accelerator memory on a GPU, else this process's resident set size."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except (ImportError, OSError):
        pass
    try:  # Linux without psutil: resident pages are statm's second field
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _json_default(value: object) -> object:
    """A 0-d tensor or numpy scalar as its number; anything else as its str()."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            number = item()
        except (TypeError, ValueError, RuntimeError):
            pass
        else:
            if isinstance(number, int | float | bool):
                return number
    return str(value)


def _main_thread_cpu_s() -> float | None:
    """The main thread's CPU seconds (None where the platform cannot tell)."""
    try:  # the main thread has an ident once it runs, which it does to have called us
        return time.clock_gettime(time.pthread_getcpuclockid(threading.main_thread().ident or 0))
    except (AttributeError, OSError, ValueError):
        return None


def _main_thread_position() -> tuple[tuple[int, int], ...]:
    """Where the main thread is: each frame's code and last instruction, innermost first."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    position: list[tuple[int, int]] = []
    while frame is not None and len(position) < 128:
        position.append((id(frame.f_code), frame.f_lasti))
        frame = frame.f_back
    return tuple(position)


class Reporter:
    """Appends JSON-line records for the agent; a no-op when no file is named.

    `path` defaults to $GANTRY_METRICS_FILE, `rank` to $RANK (0), `heartbeat_s` to
    $GANTRY_HEARTBEAT_S (5). Heartbeats come from a daemon thread started by start().
    Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        rank: int | None = None,
        heartbeat_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path is None:
            path = os.environ.get(METRICS_FILE_ENV) or None
        self.path = Path(path) if path is not None else None
        self.rank = rank if rank is not None else int(os.environ.get("RANK", "0") or 0)
        if heartbeat_s is None:
            heartbeat_s = float(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_S)
        if heartbeat_s <= 0:
            raise ValueError(f"{HEARTBEAT_ENV} must be positive, not {heartbeat_s}")
        self.heartbeat_s = heartbeat_s
        self.step = 0
        # Bumped by what sees the rank advance without a record (the start-up hook: each
        # optimizer step).
        self.ticks = 0
        self._last_position: tuple[object, ...] | None = None
        self._last_cpu: float | None = None
        self.started = False  # a start record was written
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._fd: int | None = None
        if self.path is not None:
            # Private to the agent's user, whatever umask the rank was started with.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    # --- records ----------------------------------------------------------------------

    def write(self, kind: str, **fields: Any) -> None:
        """One record: kind, time, rank, then `fields` without the None ones."""
        if self._fd is None:
            return
        record: dict[str, Any] = {"kind": kind, "time": round(self._clock(), 3), "rank": self.rank}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = (json.dumps(record, separators=(",", ":"), default=_json_default) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return
            written = os.write(self._fd, line)
            while written < len(line):  # only on a full disk or the like
                written += os.write(self._fd, line[written:])

    def start(self, step: int = 0, **fields: Any) -> None:
        """The start record (with this process's pid), then heartbeats; after an end
        record, a new run of the same reporter."""
        self.step = step
        self.started = True
        self._ended = False
        self.write("start", step=step, pid=os.getpid(), **fields)
        self.start_heartbeat()

    def phase(self, name: str) -> None:
        """What the rank is doing now: one of PHASES (others are written as given)."""
        self.write("phase", phase=name)

    def metrics(self, step: int, **fields: Any) -> None:
        """One optimizer step's figures; `collective_s` maps op -> seconds this step."""
        self.step = step
        self.write("metrics", step=step, **fields)

    def checkpoint(self, step: int, tag: str, path: str | os.PathLike[str]) -> None:
        self.write("checkpoint", step=step, tag=tag, path=str(path))

    def heartbeat(self) -> None:
        """Alive, and whether the rank moved on since the last heartbeat: a new step or
        tick, or its main thread elsewhere in its Python code. A rank blocked in one call
        (a collective whose peer hung, a lock, a stalled read) beats on from this thread
        unmoved, which the agent counts as no progress once the rank trains; a main thread
        that used CPU (BUSY_SHARE of the interval) moved on, wherever it is. Not said
        before this process has stepped (a launcher such as torchrun, whose workers train,
        waits in one call by design)."""
        position = (self.step, self.ticks, _main_thread_position())
        moved = position != self._last_position
        self._last_position = position
        # A main thread busy in one long call (an evaluation waiting on each batch's device
        # sync at the same line) uses its CPU: that is work, not a hang.
        cpu = _main_thread_cpu_s()
        if cpu is not None and self._last_cpu is not None:
            moved = moved or cpu - self._last_cpu >= BUSY_SHARE * self.heartbeat_s
        self._last_cpu = cpu
        said = self.step > 0 or self.ticks > 0
        self.write("heartbeat", step=self.step, moved=moved if said else None)

    def tick(self) -> None:
        self.ticks += 1

    def end(self, status: str = "completed", **fields: Any) -> None:
        if self._ended:
            return
        self._ended = True
        self.stop_heartbeat()
        self.write("end", step=self.step, status=status, **fields)

    # --- heartbeat thread ---------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Heartbeats from a daemon thread, unless this process already has one for
        this file (see HEARTBEAT_PID_ENV)."""
        if self._fd is None or self._thread is not None or self._beaten_elsewhere():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="gantry-heartbeat", daemon=True)
        self._thread.start()

    def _beaten_elsewhere(self) -> bool:
        if os.environ.get(HEARTBEAT_PID_ENV) != str(os.getpid()):
            return False  # unset, or inherited from the parent process: not beating here
        env_path = os.environ.get(METRICS_FILE_ENV)
        if not env_path or self.path is None:
            return False
        try:
            return os.path.samefile(env_path, self.path)
        except OSError:
            return Path(env_path).absolute() == self.path.absolute()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.heartbeat()
            except OSError:
                return

    def stop_heartbeat(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=5)

    def close(self) -> None:
        self.stop_heartbeat()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.end("completed")
        else:
            self.end("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        self.close()


class CollectiveClock:
    """Seconds each collective took since the last call, from DeepSpeed's comms logger
    (enable it with `"comms_logger": {"enabled": true, "prof_all": true}`).

    Reads `deepspeed.comm.comm.timers`, one timer per op, resetting them and the
    logger's records each time so neither grows over a long run (which also means
    `deepspeed.comm.log_summary()` only covers the time since the last call)."""

    def available(self) -> bool:
        comm = sys.modules.get("deepspeed.comm.comm")
        return comm is not None and bool(comm.comms_logger.enabled)

    def take(self) -> dict[str, float] | None:
        """{op: seconds} for the ops that ran since the last call; None when the comms
        logger is off."""
        if not self.available():
            return None
        comm = sys.modules["deepspeed.comm.comm"]
        out: dict[str, float] = {}
        for name, timer in list(comm.timers.get_timers().items()):
            if not timer.event_timers:
                continue
            out[name] = round(float(timer.elapsed(reset=True)) / 1000.0, 6)
        comm.comms_logger.reset_data()
        return out


# --- one reporter per process, for scripts that are not Gantry's trainer -------------------

_shared: Reporter | None = None
_shared_lock = threading.Lock()


def process_reporter() -> Reporter:
    """This process's one Reporter (from the environment), created by the first call:
    its heartbeat runs from then on and the process's exit writes its end record.
    Without $GANTRY_METRICS_FILE it is a no-op reporter."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Reporter()
            _shared.start_heartbeat()
            atexit.register(_end_at_exit)
        return _shared


def report(step: int, **fields: Any) -> None:
    """One optimizer step's figures (loss=, lr=, grad_norm=, tokens_per_s=, ... as in the
    metrics record); the first call also writes the start record."""
    rep = process_reporter()
    if not rep.started:
        rep.start(step=step)
    rep.metrics(step, **fields)


def report_checkpoint(step: int, path: str | os.PathLike[str], tag: str | None = None) -> None:
    """A checkpoint saved at `step` in `path`; `tag` defaults to the path's last part."""
    rep = process_reporter()
    rep.checkpoint(step, tag if tag is not None else Path(path).name, path)


def report_phase(name: str) -> None:
    """What this rank is doing now (one of PHASES), before its steps start."""
    process_reporter().phase(name)


def _end_at_exit() -> None:
    with _shared_lock:
        rep = _shared
    if rep is None:
        return
    error = getattr(sys, "last_value", None)  # set when an uncaught exception ends Python
    if error is None or isinstance(error, SystemExit):
        rep.end("completed")
    else:
        rep.end("failed", error=f"{type(error).__name__}: {error}"[:2000])
    rep.close()


def _forget_in_child() -> None:
    # A forked child (a DataLoader worker) is not the rank: it neither beats nor ends it.
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)
