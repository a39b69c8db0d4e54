"""One GPU's dynamic NVML fields read into a ``GpuSample``, each query failing on its own.

A field whose query fails is left unset (never reported as zero); a field the GPU does not
support is remembered and not asked again; an error meaning the GPU as a whole is gone
raises ``GpuFatal`` so the reader reports the GPU failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gantry.v1 import telemetry_pb2 as pb

from agent.telemetry.nvml_library import NvmlLibrary

#: Bits of NVML's clocks-event (formerly "throttle") reason mask and their names.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x0000000000000001, "gpu_idle"),
    (0x0000000000000002, "applications_clocks_setting"),
    (0x0000000000000004, "sw_power_cap"),
    (0x0000000000000008, "hw_slowdown"),
    (0x0000000000000010, "sync_boost"),
    (0x0000000000000020, "sw_thermal_slowdown"),
    (0x0000000000000040, "hw_thermal_slowdown"),
    (0x0000000000000080, "hw_power_brake_slowdown"),
    (0x0000000000000100, "display_clock_setting"),
    (0x0000000000000200, "board_limit"),
    (0x0000000000000400, "reliability"),
)
_KNOWN_REASONS = 0
for _bit, _ in CLOCK_EVENT_REASONS:
    _KNOWN_REASONS |= _bit

_reason_cache: dict[int, tuple[str, ...]] = {}


def decode_clock_event_reasons(mask: int) -> tuple[str, ...]:
    """Names of the bits set in an NVML clocks-event reason mask (unknown bits as hex)."""
    names = _reason_cache.get(mask)
    if names is None:
        found = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
        unknown = mask & ~_KNOWN_REASONS
        if unknown:
            found.append(f"unknown_0x{unknown:x}")
        names = tuple(found)
        if len(_reason_cache) < 4096:
            _reason_cache[mask] = names
    return names


class GpuFatal(Exception):
    """Raised inside one GPU's read when the GPU as a whole is gone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class GpuState:
    """What the reader keeps about one GPU between ticks."""

    __slots__ = (
        "events_registered",
        "failed",
        "first_error",
        "handle",
        "handle_error",
        "index",
        "mem_total",
        "name",
        "nvlink_count",
        "nvlink_keys",
        "ok",
        "pci_bus_id",
        "unsupported",
        "uuid",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.handle: Any = None
        self.handle_error = ""
        self.uuid = ""
        self.name = ""
        self.pci_bus_id = ""
        self.mem_total: int | None = None
        self.unsupported: set[str] = set()
        self.nvlink_count: int | None = None  # None: not discovered yet
        self.nvlink_keys: list[tuple[str, str, str, str]] = []
        self.events_registered = False
        self.failed = False
        # per tick
        self.ok = 0
        self.first_error: BaseException | None = None


class FieldReader:
    """Reads the dynamic fields of a GPU through one library's functions."""

    def __init__(self, nv: NvmlLibrary, *, read_pcie_throughput: bool) -> None:
        self._nv = nv
        self._read_pcie_throughput = read_pcie_throughput

    def query(self, gpu: GpuState, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML query for one field; ``None`` when it fails for any reason."""
        if key in gpu.unsupported:
            return None
        nv = self._nv
        try:
            value = fn(*args)
        except nv.NVMLError as exc:
            if isinstance(exc, nv.unsupported_errors):
                gpu.unsupported.add(key)
            elif isinstance(exc, nv.fatal_errors):
                raise GpuFatal(exc) from exc
            elif gpu.first_error is None:
                gpu.first_error = exc
            return None
        gpu.ok += 1
        return value

    def read_fields(self, g: pb.GpuSample, gpu: GpuState) -> None:
        """Fill ``g`` with every field that answers; counts answers in ``gpu.ok``."""
        q = self.query
        nv = self._nv
        h = gpu.handle

        util = q(gpu, "util", nv.f_util, h)
        if util is not None:
            g.gpu_util_percent = float(util.gpu)
            g.mem_util_percent = float(util.memory)
        mem = q(gpu, "mem", nv.f_mem, h)
        if mem is not None:
            g.mem_used_bytes = int(mem.used)
            g.mem_total_bytes = int(mem.total)
        temp = q(gpu, "temp", nv.f_temp, h, nv.TEMPERATURE_GPU)
        if temp is not None:
            g.temperature_c = float(temp)
        power = q(gpu, "power", nv.f_power, h)
        if power is not None:
            g.power_draw_w = power / 1000.0
        limit = q(gpu, "power_limit", nv.f_power_limit, h)
        if limit is not None:
            g.power_limit_w = limit / 1000.0
        clock = q(gpu, "sm_clock", nv.f_clock, h, nv.CLOCK_SM)
        if clock is not None:
            g.sm_clock_mhz = int(clock)

        reasons = q(gpu, "clk_events", nv.f_clk_events, h)
        if reasons is None and "clk_events" in gpu.unsupported:
            reasons = q(gpu, "clk_throttle", nv.f_clk_throttle, h)
        if reasons is not None:
            mask = int(reasons)
            g.throttle_reasons = mask
            if mask:
                g.throttle_reason_names.extend(decode_clock_event_reasons(mask))

        ecc = nv.f_ecc
        value = q(gpu, "ecc_cv", ecc, h, nv.CORRECTED, nv.VOLATILE)
        if value is not None:
            g.ecc_corrected_volatile = int(value)
        value = q(gpu, "ecc_uv", ecc, h, nv.UNCORRECTED, nv.VOLATILE)
        if value is not None:
            g.ecc_uncorrected_volatile = int(value)
        value = q(gpu, "ecc_ca", ecc, h, nv.CORRECTED, nv.AGGREGATE)
        if value is not None:
            g.ecc_corrected_aggregate = int(value)
        value = q(gpu, "ecc_ua", ecc, h, nv.UNCORRECTED, nv.AGGREGATE)
        if value is not None:
            g.ecc_uncorrected_aggregate = int(value)

        if self._read_pcie_throughput:
            tx = q(gpu, "pcie_tx", nv.f_pcie_tp, h, nv.PCIE_TX)
            if tx is not None:
                g.pcie_tx_bytes_per_s = tx * 1024.0  # NVML reports KB/s
            rx = q(gpu, "pcie_rx", nv.f_pcie_tp, h, nv.PCIE_RX)
            if rx is not None:
                g.pcie_rx_bytes_per_s = rx * 1024.0
        gen = q(gpu, "pcie_gen", nv.f_pcie_gen, h)
        if gen is not None:
            g.pcie_link_gen = int(gen)
        width = q(gpu, "pcie_width", nv.f_pcie_width, h)
        if width is not None:
            g.pcie_link_width = int(width)

        if gpu.nvlink_count is None:
            self.discover_nvlinks(gpu)
        if gpu.nvlink_keys:
            self.read_nvlinks(g, gpu)

    def discover_nvlinks(self, gpu: GpuState) -> None:
        """Count the GPU's NVLinks: links answer until the first one NVML does not support."""
        nv = self._nv
        h = gpu.handle
        count = 0
        for link in range(nv.NVLINK_MAX):
            try:
                nv.f_nvl_state(h, link)
            except nv.NVMLError as exc:
                if isinstance(exc, nv.link_end_errors):
                    break
                if isinstance(exc, nv.fatal_errors):
                    raise GpuFatal(exc) from exc
                if gpu.first_error is None:
                    gpu.first_error = exc
                return  # a transient error: try again next tick
            count += 1
        gpu.nvlink_count = count
        gpu.nvlink_keys = [
            (f"nvl{n}", f"nvl{n}_replay", f"nvl{n}_crc", f"nvl{n}_recovery") for n in range(count)
        ]

    def read_nvlinks(self, g: pb.GpuSample, gpu: GpuState) -> None:
        """One ``NvLinkSample`` per discovered link: state and error counters."""
        q = self.query
        nv = self._nv
        h = gpu.handle
        state_fn = nv.f_nvl_state
        error_fn = nv.f_nvl_error
        replay, crc, recovery = nv.NVL_REPLAY, nv.NVL_CRC_FLIT, nv.NVL_RECOVERY
        links = g.nvlinks
        for link, (k_state, k_replay, k_crc, k_recovery) in enumerate(gpu.nvlink_keys):
            s = links.add()
            s.link = link
            state = q(gpu, k_state, state_fn, h, link)
            if state is not None:
                s.active = bool(state)
            value = q(gpu, k_replay, error_fn, h, link, replay)
            if value is not None:
                s.replay_errors = int(value)
            value = q(gpu, k_crc, error_fn, h, link, crc)
            if value is not None:
                s.crc_errors = int(value)
            value = q(gpu, k_recovery, error_fn, h, link, recovery)
            if value is not None:
                s.recovery_errors = int(value)
