"""Host figures through psutil: CPU, load, memory, network and disk rates."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import psutil
from gantry.v1 import telemetry_pb2 as pb

__all__ = ["HostReader"]

log = logging.getLogger("gantry.agent")


class _Counters(NamedTuple):
    t: float
    net_rx: int
    net_tx: int
    disk_read: int
    disk_write: int


def _rate(now: int, before: int, dt: float) -> float:
    # A counter that went backwards (reset, interface gone) gives no rate rather than a
    # negative one.
    return (now - before) / dt if now >= before else 0.0


class HostReader:
    """Reads host figures; rates are taken between consecutive ``sample`` calls.

    The time of each call is given by the caller (an injected clock), so rates are exact
    for the sampler's schedule and tests need no sleeping. The first call reports 0 rates.
    Loopback interfaces are left out of the network figures.
    """

    def __init__(self) -> None:
        self._cpu_count = psutil.cpu_count() or os.cpu_count() or 1
        self._mem_total = int(psutil.virtual_memory().total)
        psutil.cpu_percent(None)  # prime: the next non-blocking call measures from here
        self._prev: _Counters | None = None

    @property
    def cpu_count(self) -> int:
        return self._cpu_count

    @property
    def mem_total_bytes(self) -> int:
        return self._mem_total

    def sample(self, now_s: float) -> pb.HostSample:
        """Read the host figures at time ``now_s`` (seconds, any monotonic origin)."""
        out = pb.HostSample()
        self.fill(out, now_s)
        return out

    def fill(self, out: pb.HostSample, now_s: float) -> None:
        """Like ``sample`` but writes into an existing message."""
        out.cpu_percent = psutil.cpu_percent(None)
        out.cpu_count = self._cpu_count
        try:
            out.load1, out.load5, out.load15 = psutil.getloadavg()
        except OSError as exc:  # pragma: no cover - platforms without a load average
            log.debug("load average unavailable: %s", exc)
        mem = psutil.virtual_memory()
        out.mem_total_bytes = int(mem.total)
        out.mem_used_bytes = int(mem.total - mem.available)

        cur = self._counters(now_s)
        prev = self._prev
        self._prev = cur
        if prev is not None and cur.t > prev.t:
            dt = cur.t - prev.t
            out.net_rx_bytes_per_s = _rate(cur.net_rx, prev.net_rx, dt)
            out.net_tx_bytes_per_s = _rate(cur.net_tx, prev.net_tx, dt)
            out.disk_read_bytes_per_s = _rate(cur.disk_read, prev.disk_read, dt)
            out.disk_write_bytes_per_s = _rate(cur.disk_write, prev.disk_write, dt)

    @staticmethod
    def _counters(now_s: float) -> _Counters:
        rx = tx = 0
        try:
            for name, nic in psutil.net_io_counters(pernic=True).items():
                if name == "lo" or name.startswith("lo0"):
                    continue
                rx += nic.bytes_recv
                tx += nic.bytes_sent
        except (OSError, RuntimeError) as exc:  # pragma: no cover - no /proc/net/dev
            log.debug("network counters unavailable: %s", exc)
        read = write = 0
        try:
            disk = psutil.disk_io_counters(perdisk=False)
        except (OSError, RuntimeError) as exc:  # pragma: no cover - no /proc/diskstats
            log.debug("disk counters unavailable: %s", exc)
            disk = None
        if disk is not None:
            read = int(disk.read_bytes)
            write = int(disk.write_bytes)
        return _Counters(now_s, rx, tx, read, write)
