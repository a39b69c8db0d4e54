"""The NVML layer: GPU figures and XID events as ``gantry.v1`` protos.

Written in nvitop's style: it never imports anything UI, it takes the NVML library as an
injected object with the interface of nvidia-ml-py's ``pynvml`` module (the real module by
default, imported lazily), and a query helper turns every NVML error of a single field into a
sentinel (``None``), so callers never see NVML exceptions. A field the GPU does not support is
left unset in the proto, never reported as zero.

Static facts (handles, names, UUIDs, PCI bus ids) are read once; fields found unsupported are
remembered and not asked again, so a tick costs only the dynamic queries.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from gantry.v1 import telemetry_pb2 as pb
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

__all__ = [
    "CLOCK_EVENT_REASONS",
    "NvmlReader",
    "decode_clock_event_reasons",
    "format_cuda_version",
]

log = logging.getLogger("gantry.agent")

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


def format_cuda_version(version: int) -> str:
    """NVML's CUDA driver version integer (e.g. 12040) as "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _handle_key(handle: object) -> object:
    """A hashable key for a device handle: the address for a ctypes pointer handle."""
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    try:
        hash(handle)
    except TypeError:
        return id(handle)
    return handle


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _NoSuchError(Exception):
    """Stands in for an NVMLError subclass the injected library does not define."""


class _GpuFatal(Exception):
    """Raised inside one GPU's read when the GPU as a whole is gone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Gpu:
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


class NvmlReader:
    """Reads GPU figures and XID events through an NVML library object.

    Args:
        lib: an object with the interface of nvidia-ml-py's ``pynvml`` module; ``None``
            imports ``pynvml`` on ``open()``.
        read_pcie_throughput: query ``nvmlDeviceGetPcieThroughput`` (on real hardware each
            call samples a byte counter over ~20 ms, so it adds wall time to a tick).
        xid_history: how many recent XID events to keep.

    All methods are safe to call from any thread; ``sample_gpus`` is meant for one thread
    (the sampler's) at a time.
    """

    def __init__(
        self,
        lib: Any | None = None,
        *,
        read_pcie_throughput: bool = True,
        xid_history: int = 1000,
    ) -> None:
        self._lib: Any = lib
        self._read_pcie_throughput = read_pcie_throughput
        self._opened = False
        self._initialized = False
        self._error = ""
        self._driver_version = ""
        self._cuda_driver_version = ""
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[object, _Gpu] = {}
        self._by_uuid: dict[str, _Gpu] = {}
        self._event_set: Any = None
        self._events_broken = False
        self._xid_lock = threading.Lock()
        self._xid_recent: deque[pb.XidEvent] = deque(maxlen=xid_history)
        self._xid_pending: list[pb.XidEvent] = []
        self._xid_counts: dict[int, dict[int, int]] = {}
        self._open_lock = threading.Lock()
        self._bind(lib)  # again on open() once the default library is imported

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> str:
        """Initialise NVML and read the static facts of every GPU.

        Returns "" on success, else why NVML is unusable (the reader then reports no GPUs;
        one warning is logged). Calling it again returns the same answer without retrying.
        """
        with self._open_lock:
            if self._opened:
                return self._error
            self._opened = True
            lib = self._lib
            if lib is None:
                try:
                    import pynvml
                except ImportError as exc:
                    return self._fail_open(f"pynvml is not installed ({exc})")
                lib = self._lib = pynvml
                self._bind(lib)
            try:
                lib.nvmlInit()
            except self._NVMLError as exc:
                return self._fail_open(f"NVML could not be initialised: {_describe(exc)}")
            self._initialized = True
            try:
                count = int(lib.nvmlDeviceGetCount())
            except self._NVMLError as exc:
                return self._fail_open(f"NVML could not count the GPUs: {_describe(exc)}")
            self._driver_version = self._system_text("nvmlSystemGetDriverVersion")
            cuda = self._system_value("nvmlSystemGetCudaDriverVersion")
            self._cuda_driver_version = format_cuda_version(int(cuda)) if cuda is not None else ""
            self._create_event_set()
            self._gpus = [_Gpu(i) for i in range(count)]
            for gpu in self._gpus:
                self._attach(gpu)
            log.info(
                "NVML ready: %d GPU(s), driver %s, CUDA %s",
                count,
                self._driver_version or "?",
                self._cuda_driver_version or "?",
            )
            return ""

    def close(self) -> None:
        """Free the event set and shut NVML down; ``open()`` may be called again later."""
        with self._open_lock:
            lib = self._lib
            if self._event_set is not None:
                try:
                    lib.nvmlEventSetFree(self._event_set)
                except self._NVMLError as exc:
                    log.debug("nvmlEventSetFree failed: %s", _describe(exc))
                self._event_set = None
            if self._initialized:
                try:
                    lib.nvmlShutdown()
                except self._NVMLError as exc:
                    log.debug("nvmlShutdown failed: %s", _describe(exc))
                self._initialized = False
            self._gpus = []
            self._by_handle.clear()
            self._by_uuid.clear()
            self._opened = False
            self._error = ""

    def _fail_open(self, message: str) -> str:
        self._error = message
        self._gpus = []
        log.warning("%s; reporting no GPUs", message)
        return message

    def _bind(self, lib: Any) -> None:
        """Resolve the library's exception classes, constants and functions once."""
        err = getattr(lib, "NVMLError", None)
        self._NVMLError: type[BaseException] = err if isinstance(err, type) else _NoSuchError

        def cls(name: str) -> type[BaseException]:
            found = getattr(lib, name, None)
            return found if isinstance(found, type) else _NoSuchError

        self._Timeout = cls("NVMLError_Timeout")
        self._FunctionNotFound = cls("NVMLError_FunctionNotFound")
        self._unsupported_errors: tuple[type[BaseException], ...] = (
            cls("NVMLError_NotSupported"),
            self._FunctionNotFound,
        )
        self._link_end_errors: tuple[type[BaseException], ...] = (
            *self._unsupported_errors,
            cls("NVMLError_InvalidArgument"),
        )
        self._fatal_errors: tuple[type[BaseException], ...] = (
            cls("NVMLError_GpuIsLost"),
            cls("NVMLError_ResetRequired"),
            cls("NVMLError_Uninitialized"),
        )

        def const(name: str, default: int) -> int:
            return int(getattr(lib, name, default))

        self._TEMPERATURE_GPU = const("NVML_TEMPERATURE_GPU", 0)
        self._CLOCK_SM = const("NVML_CLOCK_SM", 1)
        self._CORRECTED = const("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
        self._UNCORRECTED = const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        self._VOLATILE = const("NVML_VOLATILE_ECC", 0)
        self._AGGREGATE = const("NVML_AGGREGATE_ECC", 1)
        self._PCIE_TX = const("NVML_PCIE_UTIL_TX_BYTES", 0)
        self._PCIE_RX = const("NVML_PCIE_UTIL_RX_BYTES", 1)
        self._NVLINK_MAX = const("NVML_NVLINK_MAX_LINKS", 36)
        self._NVL_REPLAY = const("NVML_NVLINK_ERROR_DL_REPLAY", 0)
        self._NVL_RECOVERY = const("NVML_NVLINK_ERROR_DL_RECOVERY", 1)
        self._NVL_CRC_FLIT = const("NVML_NVLINK_ERROR_DL_CRC_FLIT", 2)
        self._XID = const("nvmlEventTypeXidCriticalError", 0x8)

        fn = self._function
        self._f_handle = fn("nvmlDeviceGetHandleByIndex")
        self._f_name = fn("nvmlDeviceGetName")
        self._f_uuid = fn("nvmlDeviceGetUUID")
        self._f_pci = fn("nvmlDeviceGetPciInfo")
        self._f_util = fn("nvmlDeviceGetUtilizationRates")
        self._f_mem = fn("nvmlDeviceGetMemoryInfo")
        self._f_temp = fn("nvmlDeviceGetTemperature")
        self._f_power = fn("nvmlDeviceGetPowerUsage")
        self._f_power_limit = fn("nvmlDeviceGetEnforcedPowerLimit")
        self._f_clock = fn("nvmlDeviceGetClockInfo")
        self._f_clk_events = fn("nvmlDeviceGetCurrentClocksEventReasons")
        self._f_clk_throttle = fn("nvmlDeviceGetCurrentClocksThrottleReasons")
        self._f_ecc = fn("nvmlDeviceGetTotalEccErrors")
        self._f_pcie_tp = fn("nvmlDeviceGetPcieThroughput")
        self._f_pcie_gen = fn("nvmlDeviceGetCurrPcieLinkGeneration")
        self._f_pcie_width = fn("nvmlDeviceGetCurrPcieLinkWidth")
        self._f_nvl_state = fn("nvmlDeviceGetNvLinkState")
        self._f_nvl_error = fn("nvmlDeviceGetNvLinkErrorCounter")
        self._f_register = fn("nvmlDeviceRegisterEvents")
        wait = getattr(lib, "nvmlEventSetWait_v2", None)
        self._f_wait = wait if wait is not None else fn("nvmlEventSetWait")

    def _function(self, name: str) -> Callable[..., Any]:
        """The library's function ``name``, or one raising FunctionNotFound when absent."""
        found = getattr(self._lib, name, None)
        if callable(found):
            return found  # type: ignore[no-any-return]
        not_found = self._FunctionNotFound

        def missing(*_args: Any) -> Any:
            if not_found is _NoSuchError:
                raise _NoSuchError(f"{name} is not in the NVML library")
            raise not_found()

        return missing

    def _system_value(self, name: str) -> Any:
        try:
            return self._function(name)()
        except (self._NVMLError, _NoSuchError) as exc:
            log.debug("%s failed: %s", name, _describe(exc))
            return None

    def _system_text(self, name: str) -> str:
        value = self._system_value(name)
        return "" if value is None else _text(value)

    def _create_event_set(self) -> None:
        try:
            self._event_set = self._function("nvmlEventSetCreate")()
        except (self._NVMLError, _NoSuchError) as exc:
            log.info("NVML events unavailable, XID errors will not be seen: %s", _describe(exc))
            self._event_set = None

    def _attach(self, gpu: _Gpu) -> bool:
        """Get the handle and the static facts of a GPU; False (and handle_error) if it fails."""
        try:
            handle = self._f_handle(gpu.index)
        except (self._NVMLError, _NoSuchError) as exc:
            # Reported (once) by the sample that carries the error.
            gpu.handle_error = f"no NVML handle: {_describe(exc)}"
            return False
        gpu.handle = handle
        gpu.handle_error = ""
        for attr, fn in (("name", self._f_name), ("uuid", self._f_uuid)):
            try:
                setattr(gpu, attr, _text(fn(handle)))
            except (self._NVMLError, _NoSuchError) as exc:
                log.debug("GPU %d: %s unavailable: %s", gpu.index, attr, _describe(exc))
        try:
            gpu.pci_bus_id = _text(self._f_pci(handle).busId)
        except (self._NVMLError, _NoSuchError, AttributeError) as exc:
            log.debug("GPU %d: PCI info unavailable: %s", gpu.index, exc)
        try:
            gpu.mem_total = int(self._f_mem(handle).total)
        except (self._NVMLError, _NoSuchError, AttributeError) as exc:
            log.debug("GPU %d: memory info unavailable: %s", gpu.index, exc)
        self._by_handle[_handle_key(handle)] = gpu
        if gpu.uuid:
            self._by_uuid[gpu.uuid] = gpu
        if self._event_set is not None and not gpu.events_registered:
            try:
                self._f_register(handle, self._XID, self._event_set)
                gpu.events_registered = True
            except (self._NVMLError, _NoSuchError) as exc:
                log.info("GPU %d: XID events unavailable: %s", gpu.index, _describe(exc))
        return True

    # ------------------------------------------------------------------ static facts
    @property
    def error(self) -> str:
        """Why NVML is unusable, or ""."""
        return self._error

    @property
    def driver_version(self) -> str:
        return self._driver_version

    @property
    def cuda_driver_version(self) -> str:
        return self._cuda_driver_version

    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def identities(self) -> list[pb.GpuIdentity]:
        """One ``GpuIdentity`` per GPU (fresh messages; fields unknown stay empty)."""
        out = []
        for gpu in list(self._gpus):
            ident = pb.GpuIdentity(
                index=gpu.index, uuid=gpu.uuid, name=gpu.name, pci_bus_id=gpu.pci_bus_id
            )
            if gpu.mem_total is not None:
                ident.mem_total_bytes = gpu.mem_total
            out.append(ident)
        return out

    # ------------------------------------------------------------------ sampling
    def sample_gpus(self, now_ns: int) -> list[pb.GpuSample]:
        """Drain pending XID events, then read every GPU; never raises an NVML error."""
        holder = pb.NodeSample()
        self.fill_gpus(holder.gpus, now_ns)
        return list(holder.gpus)

    def fill_gpus(self, out: RepeatedCompositeFieldContainer[pb.GpuSample], now_ns: int) -> None:
        """Like ``sample_gpus`` but adds the samples to ``out`` (no copying)."""
        if not self._gpus:
            return
        self.poll_xid_events(now_ns)
        for gpu in self._gpus:
            self._fill_gpu(out.add(), gpu)

    def _q(self, gpu: _Gpu, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call one NVML query for one field; ``None`` when it fails for any reason."""
        if key in gpu.unsupported:
            return None
        try:
            value = fn(*args)
        except self._NVMLError as exc:
            if isinstance(exc, self._unsupported_errors):
                gpu.unsupported.add(key)
            elif isinstance(exc, self._fatal_errors):
                raise _GpuFatal(exc) from exc
            elif gpu.first_error is None:
                gpu.first_error = exc
            return None
        gpu.ok += 1
        return value

    def _fill_gpu(self, g: pb.GpuSample, gpu: _Gpu) -> None:
        g.index = gpu.index
        if gpu.handle is None and not self._attach(gpu):
            self._set_failed(g, gpu, gpu.handle_error)
            return
        if gpu.uuid:
            g.uuid = gpu.uuid
        if gpu.name:
            g.name = gpu.name
        gpu.ok = 0
        gpu.first_error = None
        try:
            self._read_fields(g, gpu)
        except _GpuFatal as fatal:
            self._set_failed(g, gpu, _describe(fatal.error))
            return
        if gpu.ok == 0 and gpu.first_error is not None:
            self._set_failed(g, gpu, _describe(gpu.first_error))
            return
        counts = self._xid_counts.get(gpu.index)
        if counts:
            g.xid_counts.update(counts)
        if gpu.failed:
            gpu.failed = False
            log.warning("GPU %d: readable again", gpu.index)

    def _set_failed(self, g: pb.GpuSample, gpu: _Gpu, error: str) -> None:
        g.Clear()
        g.index = gpu.index
        if gpu.uuid:
            g.uuid = gpu.uuid
        if gpu.name:
            g.name = gpu.name
        g.error = error or "unknown NVML error"
        counts = self._xid_counts.get(gpu.index)
        if counts:
            g.xid_counts.update(counts)
        if not gpu.failed:
            gpu.failed = True
            log.warning("GPU %d: cannot be read: %s", gpu.index, g.error)

    def _read_fields(self, g: pb.GpuSample, gpu: _Gpu) -> None:
        q = self._q
        h = gpu.handle

        util = q(gpu, "util", self._f_util, h)
        if util is not None:
            g.gpu_util_percent = float(util.gpu)
            g.mem_util_percent = float(util.memory)
        mem = q(gpu, "mem", self._f_mem, h)
        if mem is not None:
            g.mem_used_bytes = int(mem.used)
            g.mem_total_bytes = int(mem.total)
        temp = q(gpu, "temp", self._f_temp, h, self._TEMPERATURE_GPU)
        if temp is not None:
            g.temperature_c = float(temp)
        power = q(gpu, "power", self._f_power, h)
        if power is not None:
            g.power_draw_w = power / 1000.0
        limit = q(gpu, "power_limit", self._f_power_limit, h)
        if limit is not None:
            g.power_limit_w = limit / 1000.0
        clock = q(gpu, "sm_clock", self._f_clock, h, self._CLOCK_SM)
        if clock is not None:
            g.sm_clock_mhz = int(clock)

        reasons = q(gpu, "clk_events", self._f_clk_events, h)
        if reasons is None and "clk_events" in gpu.unsupported:
            reasons = q(gpu, "clk_throttle", self._f_clk_throttle, h)
        if reasons is not None:
            mask = int(reasons)
            g.throttle_reasons = mask
            if mask:
                g.throttle_reason_names.extend(decode_clock_event_reasons(mask))

        ecc = self._f_ecc
        value = q(gpu, "ecc_cv", ecc, h, self._CORRECTED, self._VOLATILE)
        if value is not None:
            g.ecc_corrected_volatile = int(value)
        value = q(gpu, "ecc_uv", ecc, h, self._UNCORRECTED, self._VOLATILE)
        if value is not None:
            g.ecc_uncorrected_volatile = int(value)
        value = q(gpu, "ecc_ca", ecc, h, self._CORRECTED, self._AGGREGATE)
        if value is not None:
            g.ecc_corrected_aggregate = int(value)
        value = q(gpu, "ecc_ua", ecc, h, self._UNCORRECTED, self._AGGREGATE)
        if value is not None:
            g.ecc_uncorrected_aggregate = int(value)

        if self._read_pcie_throughput:
            tx = q(gpu, "pcie_tx", self._f_pcie_tp, h, self._PCIE_TX)
            if tx is not None:
                g.pcie_tx_bytes_per_s = tx * 1024.0  # NVML reports KB/s
            rx = q(gpu, "pcie_rx", self._f_pcie_tp, h, self._PCIE_RX)
            if rx is not None:
                g.pcie_rx_bytes_per_s = rx * 1024.0
        gen = q(gpu, "pcie_gen", self._f_pcie_gen, h)
        if gen is not None:
            g.pcie_link_gen = int(gen)
        width = q(gpu, "pcie_width", self._f_pcie_width, h)
        if width is not None:
            g.pcie_link_width = int(width)

        if gpu.nvlink_count is None:
            self._discover_nvlinks(gpu)
        if gpu.nvlink_keys:
            self._read_nvlinks(g, gpu)

    def _discover_nvlinks(self, gpu: _Gpu) -> None:
        """Count the GPU's NVLinks: links answer until the first one NVML does not support."""
        h = gpu.handle
        count = 0
        for link in range(self._NVLINK_MAX):
            try:
                self._f_nvl_state(h, link)
            except self._NVMLError as exc:
                if isinstance(exc, self._link_end_errors):
                    break
                if isinstance(exc, self._fatal_errors):
                    raise _GpuFatal(exc) from exc
                if gpu.first_error is None:
                    gpu.first_error = exc
                return  # a transient error: try again next tick
            count += 1
        gpu.nvlink_count = count
        gpu.nvlink_keys = [
            (f"nvl{n}", f"nvl{n}_replay", f"nvl{n}_crc", f"nvl{n}_recovery") for n in range(count)
        ]

    def _read_nvlinks(self, g: pb.GpuSample, gpu: _Gpu) -> None:
        q = self._q
        h = gpu.handle
        state_fn = self._f_nvl_state
        error_fn = self._f_nvl_error
        replay, crc, recovery = self._NVL_REPLAY, self._NVL_CRC_FLIT, self._NVL_RECOVERY
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

    # ------------------------------------------------------------------ XID events
    def poll_xid_events(self, now_ns: int, limit: int = 10_000) -> list[pb.XidEvent]:
        """Drain NVML's event queue without waiting; returns the new XID events.

        The events are also counted per GPU and code, kept in the recent list and queued
        for ``take_xid_events``.
        """
        es = self._event_set
        if es is None or self._events_broken:
            return []
        wait = self._f_wait
        new: list[pb.XidEvent] = []
        for _ in range(limit):
            try:
                data = wait(es, 0)
            except self._Timeout:
                break
            except (self._NVMLError, _NoSuchError) as exc:
                log.warning("NVML event wait failed, XID events off: %s", _describe(exc))
                self._events_broken = True
                break
            if not int(data.eventType) & self._XID:
                continue
            gpu = self._event_gpu(data.device)
            event = pb.XidEvent(xid=int(data.eventData))
            event.time.FromNanoseconds(now_ns)
            if gpu is not None:
                event.gpu_index = gpu.index
                event.gpu_uuid = gpu.uuid
            new.append(event)
        if new:
            with self._xid_lock:
                for event in new:
                    counts = self._xid_counts.setdefault(event.gpu_index, {})
                    counts[event.xid] = counts.get(event.xid, 0) + 1
                    log.warning("XID %d on GPU %d (%s)", event.xid, event.gpu_index, event.gpu_uuid)
                self._xid_recent.extend(new)
                self._xid_pending.extend(new)
        return new

    def _event_gpu(self, device: object) -> _Gpu | None:
        gpu = self._by_handle.get(_handle_key(device))
        if gpu is not None:
            return gpu
        try:
            gpu = self._by_uuid.get(_text(self._f_uuid(device)))
        except (self._NVMLError, _NoSuchError):
            gpu = None
        if gpu is None:
            log.warning("an NVML event came from a device Gantry does not know")
        return gpu

    def take_xid_events(self) -> list[pb.XidEvent]:
        """The XID events drained since the previous call (oldest first)."""
        with self._xid_lock:
            events, self._xid_pending = self._xid_pending, []
        return events

    def xid_events(self) -> list[pb.XidEvent]:
        """The recent XID events, newest last (bounded)."""
        with self._xid_lock:
            return list(self._xid_recent)

    def xid_counts(self, gpu_index: int) -> dict[int, int]:
        """Cumulative XID count per code for one GPU."""
        with self._xid_lock:
            return dict(self._xid_counts.get(gpu_index, {}))
