"""The telemetry sampler: one thread, a fixed interval, a ring buffer, subscribers.

Each tick builds one ``gantry.v1.NodeSample`` (host figures, every GPU, the XID events that
arrived since the previous tick, from NVML and from the kernel log, and the GPUs that cannot
be read or failed to start), appends it to the ring buffer and hands it to every subscriber.
Samples are shared, not copied: subscribers and readers must not modify them.

With ``kernel_log=True`` the sampler follows the kernel log (``KernelLogFollower``); every
fact it finds is also handed, with its GPU resolved, to the ``subscribe_kernel`` callbacks.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from gantry.v1 import telemetry_pb2 as pb

from agent.telemetry.host import HostReader
from agent.telemetry.kernel_events import KernelEvents, KernelNotice
from agent.telemetry.kernel_follow import KernelLogFollower
from agent.telemetry.kernel_log import KernelItem
from agent.telemetry.nvml import NvmlReader
from agent.telemetry.ring import Ring

__all__ = ["Sampler", "agent_version"]

log = logging.getLogger("gantry.agent")

Subscriber = Callable[[pb.NodeSample], None]
KernelSubscriber = Callable[[KernelNotice], None]


def agent_version() -> str:
    """The installed version of the ``gantry`` distribution, or "0+unknown"."""
    try:
        return importlib.metadata.version("gantry")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Sampler:
    """Samples a node's host and GPUs every ``interval_s`` seconds on a daemon thread.

    Args:
        node_name: the node's name in Gantry (reported in every sample).
        nvml_lib: an object with the interface of ``pynvml`` (default: the real module).
        interval_s: seconds between samples.
        history_s: how many seconds of samples the ring buffer keeps.
        clock: monotonic seconds; schedules ticks and stamps the ring buffer.
        wall_clock_ns: wall-clock nanoseconds, for the samples' timestamps.
        kernel_log: follow the kernel log from ``start()`` (``/dev/kmsg`` or journalctl).
        xid_history: how many recent XID events ``xid_events()`` keeps.
    """

    def __init__(
        self,
        node_name: str,
        *,
        nvml_lib: object | None = None,
        interval_s: float = 1.0,
        history_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        kernel_log: bool = False,
        xid_history: int = 1000,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.node_name = node_name
        self.interval_s = interval_s
        self.history_s = history_s
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._nvml = NvmlReader(nvml_lib)
        self._host = HostReader()
        self._ring: Ring[pb.NodeSample] = Ring(history_s, interval_s)
        self._started_ns = wall_clock_ns()
        self._hostname = socket.gethostname()
        self._version = agent_version()
        self._seq = 0
        self._tick_lock = threading.Lock()
        self._opened = False
        self._subscribers: tuple[tuple[Subscriber, list[int]], ...] = ()
        self._sub_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = KernelEvents(self._nvml.gpu_for_pci, self._nvml.gpu_uuid)
        self._kernel_log = kernel_log
        self._follower: KernelLogFollower | None = None
        self._kernel_subscribers: tuple[KernelSubscriber, ...] = ()
        self._xid_recent: deque[pb.XidEvent] = deque(maxlen=xid_history)
        self._xid_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def _ensure_open(self) -> None:
        if not self._opened:
            self._nvml.open()
            self._opened = True

    def start(self) -> None:
        """Take a first sample now, then sample every ``interval_s`` on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self.sample_once()
        if self._kernel_log and self._follower is None:
            self.attach_kernel_log(KernelLogFollower(self.on_kernel_event))
        self._thread = threading.Thread(
            target=self._run, name=f"gantry-sampler-{self.node_name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (joins it) and shut NVML down. Safe to call more than once."""
        self._stop.set()
        thread = self._thread
        if thread is threading.current_thread():
            # stop() from a subscriber: the loop ends after this tick; NVML stays open
            # until stop() is called again from another thread.
            return
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():  # pragma: no cover - a tick stuck in the driver
                log.warning("sampler thread did not stop within %.1f s", timeout_s)
            self._thread = None
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.stop(timeout_s)
        with self._tick_lock:
            if self._opened:
                self._nvml.close()
                self._opened = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        interval = self.interval_s
        clock = self._clock
        deadline = clock() + interval
        while not self._stop.wait(max(0.0, deadline - clock())):
            try:
                self.sample_once()
            except Exception:
                log.exception("sampler tick failed")
            # The schedule is deadline-based: a slow tick does not push later ones back,
            # and ticks missed entirely are skipped rather than run in a burst.
            deadline += interval
            now = clock()
            if deadline <= now:
                deadline += (int((now - deadline) / interval) + 1) * interval

    # ------------------------------------------------------------------ sampling
    def sample_once(self) -> pb.NodeSample:
        """Take one sample now: build it, append it to the ring, notify subscribers."""
        with self._tick_lock:
            self._ensure_open()
            t = self._clock()
            now_ns = self._wall_clock_ns()
            sample = pb.NodeSample(node_name=self.node_name)
            self._seq += 1
            sample.seq = self._seq
            sample.time.FromNanoseconds(now_ns)
            self._host.fill(sample.host, t)
            nvml = self._nvml
            nvml.fill_gpus(sample.gpus, now_ns)
            events = self._kernel.merge(nvml.take_xid_events(), now_ns)
            if events:
                sample.xid_events.extend(events)
                with self._xid_lock:
                    self._xid_recent.extend(events)
            extra, problems = self._kernel.failed_gpus(sample.gpus, nvml.gpu_count)
            sample.gpus.extend(extra)
            sample.gpu_problems.extend(problems)
            self._ring.append(t, sample)
        self._notify(sample)
        return sample

    def _notify(self, sample: pb.NodeSample) -> None:
        for callback, failures in self._subscribers:
            try:
                callback(sample)
            except Exception:
                failures[0] += 1
                if failures[0] == 1 or failures[0] % 1000 == 0:
                    log.exception(
                        "sampler subscriber %r failed (%d time(s))", callback, failures[0]
                    )

    # ------------------------------------------------------------------ reading
    def latest(self) -> pb.NodeSample | None:
        """The newest sample, or ``None`` before the first tick."""
        return self._ring.latest()

    def history(self, since_s: float | None = None) -> list[pb.NodeSample]:
        """Buffered samples, oldest first: those of the last ``since_s`` seconds, or all
        when ``since_s`` is ``None`` or not positive."""
        if since_s is None or since_s <= 0:
            return self._ring.items()
        return self._ring.items(self._clock() - since_s)

    def xid_events(self) -> list[pb.XidEvent]:
        """The recent XID events (NVML's and the kernel's, as samples carried them), newest
        last (bounded)."""
        with self._xid_lock:
            return list(self._xid_recent)

    # ------------------------------------------------------------------ kernel log
    def attach_kernel_log(self, follower: KernelLogFollower) -> str:
        """Use ``follower`` (built with ``self.on_kernel_event`` as its callback) as the
        kernel-log source, start it and return its source; stopped by ``stop()``."""
        self._follower = follower
        return follower.start()

    def on_kernel_event(self, item: KernelItem) -> None:
        """A parsed kernel-log fact (the follower's callback; any thread)."""
        notice = self._kernel.add(item, self._wall_clock_ns())
        for callback in self._kernel_subscribers:
            try:
                callback(notice)
            except Exception:
                log.exception("kernel-log subscriber %r failed", callback)

    def subscribe_kernel(self, callback: KernelSubscriber) -> Callable[[], None]:
        """Call ``callback(notice)`` for every kernel-log fact, on the follower's thread
        (cheap, non-blocking, like ``subscribe``). Returns a function that unsubscribes."""
        with self._sub_lock:
            self._kernel_subscribers = (*self._kernel_subscribers, callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                self._kernel_subscribers = tuple(
                    c for c in self._kernel_subscribers if c is not callback
                )

        return unsubscribe

    def node_info(self) -> pb.NodeInfo:
        """The node's static facts (a fresh message)."""
        with self._tick_lock:
            self._ensure_open()
        nvml = self._nvml
        gpus = nvml.identities()
        info = pb.NodeInfo(
            node_name=self.node_name,
            hostname=self._hostname,
            agent_version=self._version,
            driver_version=nvml.driver_version,
            cuda_driver_version=nvml.cuda_driver_version,
            nvml_error=nvml.error,
            gpu_count=len(gpus),
            cpu_count=self._host.cpu_count,
            mem_total_bytes=self._host.mem_total_bytes,
            sample_interval_s=self.interval_s,
            history_s=self.history_s,
            gpus=gpus,
            accelerator="cuda" if gpus else "cpu",
        )
        follower = self._follower
        if follower is not None:
            info.kernel_log_source = follower.source
            info.kernel_log_error = follower.why
        else:
            info.kernel_log_source = "none"
            info.kernel_log_error = "the agent does not follow the kernel log"
        info.agent_started.FromNanoseconds(self._started_ns)
        return info

    # ------------------------------------------------------------------ subscribers
    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(sample)`` after every tick, on the sampler thread.

        The callback must be cheap and must not block (e.g. hand the sample to an event
        loop with ``loop.call_soon_threadsafe``); one that raises is logged and kept.
        Returns a function that unsubscribes (idempotent).
        """
        entry = (callback, [0])
        with self._sub_lock:
            self._subscribers = (*self._subscribers, entry)

        def unsubscribe() -> None:
            with self._sub_lock:
                self._subscribers = tuple(e for e in self._subscribers if e is not entry)

        return unsubscribe
