"""A stand-in for the ``pynvml`` module of nvidia-ml-py.

``FakeNvml`` has the same function names, the same constants (values copied from the real
module) and raises the real ``pynvml.NVMLError`` subclasses, so code under test catches
exactly what it would catch on a machine with GPUs. It is the one allowed stand-in for the
NVIDIA driver.

It is configurable (GPU count, unsupported functions per GPU, failing GPUs, missing
functions, no driver at all) and its figures move on every call so charts in a demo move.
Every call is a few attribute lookups: a benchmark runs 128 nodes x 8 GPUs of these.
"""

from __future__ import annotations

import random
import threading
import uuid as uuidlib
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import pynvml

__all__ = ["FakeEventData", "FakeEventSet", "FakeGpu", "FakeMemory", "FakeNvml", "FakeUtilization"]

GIB = 1024**3


class FakeUtilization:
    """Shaped like ``pynvml.c_nvmlUtilization_t``."""

    __slots__ = ("gpu", "memory")

    def __init__(self, gpu: int, memory: int) -> None:
        self.gpu = gpu
        self.memory = memory


class FakeMemory:
    """Shaped like ``pynvml.c_nvmlMemory_t``."""

    __slots__ = ("free", "total", "used")

    def __init__(self, total: int, free: int, used: int) -> None:
        self.total = total
        self.free = free
        self.used = used


class FakePciInfo:
    """Shaped like ``pynvml.nvmlPciInfo_t`` (the fields used by Gantry)."""

    __slots__ = ("bus", "busId", "busIdLegacy", "device", "domain", "pciDeviceId")

    def __init__(self, index: int) -> None:
        self.domain = 0
        self.bus = 0x18 + index * 0x10
        self.device = 0
        self.pciDeviceId = 0x233010DE
        self.busId = f"00000000:{self.bus:02X}:00.0"
        self.busIdLegacy = self.busId[4:]


class FakeEventData:
    """Shaped like ``pynvml.c_nvmlEventData_t``."""

    __slots__ = ("computeInstanceId", "device", "eventData", "eventType", "gpuInstanceId")

    def __init__(self, device: FakeGpu, event_type: int, event_data: int) -> None:
        self.device = device
        self.eventType = event_type
        self.eventData = event_data
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


class FakeEventSet:
    """What ``nvmlEventSetCreate`` returns: registrations and a queue of pending events."""

    __slots__ = ("freed", "queue", "registered")

    def __init__(self) -> None:
        self.registered: dict[int, int] = {}  # GPU index -> event type mask
        self.queue: deque[FakeEventData] = deque()
        self.freed = False


class FakeGpu:
    """One fake GPU; it is also the device handle the fake hands out.

    Its attributes are the figures the fake reports; tests may set them directly.
    """

    def __init__(self, index: int, *, seed: int, nvlinks: int) -> None:
        rng = random.Random(seed * 1000 + index)
        self.index = index
        self.rng = rng
        self.name = "NVIDIA H100 80GB HBM3"
        self.uuid = f"GPU-{uuidlib.UUID(int=rng.getrandbits(128))}"
        self.pci = FakePciInfo(index)
        self.mem_total = 80 * GIB
        self.util = rng.uniform(20.0, 90.0)
        self.mem_used = int(self.mem_total * rng.uniform(0.3, 0.8))
        self.power_limit_mw = 700_000
        self.max_sm_clock_mhz = 1980
        self.clocks_event_reasons = 0
        # (error type, counter type) -> count
        self.ecc: dict[tuple[int, int], int] = {(0, 0): 0, (1, 0): 0, (0, 1): 2, (1, 1): 0}
        self.pcie_gen = 5
        self.pcie_width = 16
        self.nvlinks = nvlinks
        self.nvlink_active = [1] * nvlinks
        # (link, counter) -> count
        self.nvlink_errors: dict[tuple[int, int], int] = {}
        self.unsupported: set[str] = set()
        self.failure: type[Exception] | None = None

    def step(self) -> None:
        """Advance the random walk of the moving figures (called by the utilization query)."""
        u = self.util + self.rng.uniform(-8.0, 8.0)
        self.util = 0.0 if u < 0.0 else 100.0 if u > 100.0 else u
        m = self.mem_used + int(self.rng.uniform(-0.01, 0.01) * self.mem_total)
        self.mem_used = max(GIB, min(self.mem_total - GIB, m))
        reasons = 0
        if self.util < 5.0:
            reasons |= FakeNvml.nvmlClocksEventReasonGpuIdle
        if self.util > 95.0:
            reasons |= FakeNvml.nvmlClocksEventReasonSwPowerCap
        self.clocks_event_reasons = reasons


class FakeNvml:
    """A fake ``pynvml`` module.

    Args:
        gpu_count: number of GPUs.
        unsupported: GPU index -> NVML function names that raise ``NVMLError_NotSupported``
            for that GPU (e.g. ``{2: {"nvmlDeviceGetTotalEccErrors"}}``).
        failing: GPU index -> NVMLError subclass raised by every call for that GPU, the
            handle lookup included (``fail_gpu`` makes a GPU fail after the handle is known).
        missing: function names that raise ``NVMLError_FunctionNotFound`` (an old driver).
        no_driver: ``nvmlInit`` raises ``NVMLError_LibraryNotFound``.
        init_error: ``nvmlInit`` raises this NVMLError subclass instead.
        nvlinks: NVLinks per GPU; link ``nvlinks`` and above are not supported.
        seed: seed of the figures' random walks.
    """

    # --- exceptions: the real classes -------------------------------------------------
    NVMLError = pynvml.NVMLError
    NVMLError_Uninitialized = pynvml.NVMLError_Uninitialized
    NVMLError_InvalidArgument = pynvml.NVMLError_InvalidArgument
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_Timeout = pynvml.NVMLError_Timeout
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound = pynvml.NVMLError_FunctionNotFound
    NVMLError_GpuIsLost = pynvml.NVMLError_GpuIsLost
    NVMLError_ResetRequired = pynvml.NVMLError_ResetRequired
    NVMLError_Unknown = pynvml.NVMLError_Unknown

    # --- constants: values copied from nvidia-ml-py -----------------------------------
    NVML_SUCCESS = 0
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_CLOCK_VIDEO = 3
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1
    NVML_NVLINK_MAX_LINKS = 36
    NVML_NVLINK_ERROR_DL_REPLAY = 0
    NVML_NVLINK_ERROR_DL_RECOVERY = 1
    NVML_NVLINK_ERROR_DL_CRC_FLIT = 2
    NVML_NVLINK_ERROR_DL_CRC_DATA = 3
    nvmlEventTypeSingleBitEccError = 0x0000000000000001
    nvmlEventTypeDoubleBitEccError = 0x0000000000000002
    nvmlEventTypeXidCriticalError = 0x0000000000000008
    nvmlEventTypeNone = 0x0000000000000000
    nvmlClocksEventReasonGpuIdle = 0x0000000000000001
    nvmlClocksEventReasonApplicationsClocksSetting = 0x0000000000000002
    nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
    nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
    nvmlClocksEventReasonSyncBoost = 0x0000000000000010
    nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020
    nvmlClocksEventReasonHwThermalSlowdown = 0x0000000000000040
    nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x0000000000000080
    nvmlClocksEventReasonDisplayClockSetting = 0x0000000000000100
    nvmlClocksEventReasonNone = 0x0000000000000000
    nvmlClocksThrottleReasonGpuIdle = 0x0000000000000001
    nvmlClocksThrottleReasonSwPowerCap = 0x0000000000000004
    nvmlClocksThrottleReasonHwSlowdown = 0x0000000000000008

    def __init__(
        self,
        gpu_count: int = 8,
        *,
        unsupported: Mapping[int, Iterable[str]] | None = None,
        failing: Mapping[int, type[Exception]] | None = None,
        missing: Iterable[str] = (),
        no_driver: bool = False,
        init_error: type[Exception] | None = None,
        nvlinks: int = 4,
        seed: int = 0,
        driver_version: str = "570.86.15",
        cuda_driver_version: int = 12080,
    ) -> None:
        self.gpus: list[FakeGpu] = [
            FakeGpu(i, seed=seed, nvlinks=nvlinks) for i in range(gpu_count)
        ]
        for index, names in (unsupported or {}).items():
            self.gpus[index].unsupported.update(names)
        for index, exc in (failing or {}).items():
            self.gpus[index].failure = exc
        self.missing = frozenset(missing)
        self.init_error: type[Exception] | None = (
            pynvml.NVMLError_LibraryNotFound if no_driver else init_error
        )
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.initialized = 0
        self.event_sets: list[FakeEventSet] = []
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    # --- test controls ---------------------------------------------------------------
    def fire_xid(self, gpu_index: int, code: int) -> None:
        """Report XID ``code`` on a GPU to every event set registered for XID events."""
        gpu = self.gpus[gpu_index]
        xid = self.nvmlEventTypeXidCriticalError
        with self._lock:
            for es in self.event_sets:
                if not es.freed and es.registered.get(gpu_index, 0) & xid:
                    es.queue.append(FakeEventData(gpu, xid, code))

    def fail_gpu(self, gpu_index: int, exc: type[Exception] = pynvml.NVMLError_GpuIsLost) -> None:
        """From now on every call for this GPU raises ``exc``."""
        self.gpus[gpu_index].failure = exc

    def heal_gpu(self, gpu_index: int) -> None:
        self.gpus[gpu_index].failure = None

    def set_unsupported(self, gpu_index: int, *names: str) -> None:
        self.gpus[gpu_index].unsupported.update(names)

    # --- helpers ---------------------------------------------------------------------
    def _dev(self, handle: FakeGpu, fn: str) -> FakeGpu:
        calls = self.calls
        calls[fn] = calls.get(fn, 0) + 1
        if not self.initialized:
            raise pynvml.NVMLError_Uninitialized()
        if handle.failure is not None:
            raise handle.failure()
        if fn in handle.unsupported:
            raise pynvml.NVMLError_NotSupported()
        if fn in self.missing:
            raise pynvml.NVMLError_FunctionNotFound()
        return handle

    def _sys(self, fn: str) -> None:
        calls = self.calls
        calls[fn] = calls.get(fn, 0) + 1
        if not self.initialized:
            raise pynvml.NVMLError_Uninitialized()
        if fn in self.missing:
            raise pynvml.NVMLError_FunctionNotFound()

    # --- init / system ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.calls["nvmlInit"] = self.calls.get("nvmlInit", 0) + 1
        if self.init_error is not None:
            raise self.init_error()
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._sys("nvmlShutdown")
        self.initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._sys("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._sys("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._sys("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._sys("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._sys("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        gpu = self.gpus[index]
        if gpu.failure is not None:
            raise gpu.failure()
        return gpu

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._sys("nvmlDeviceGetHandleByUUID")
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise pynvml.NVMLError_NotFound()

    # --- device: identity ------------------------------------------------------------
    def nvmlDeviceGetIndex(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetIndex").index

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._dev(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._dev(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> FakePciInfo:
        return self._dev(handle, "nvmlDeviceGetPciInfo").pci

    def nvmlDeviceGetPciInfo_v3(self, handle: FakeGpu) -> FakePciInfo:
        return self._dev(handle, "nvmlDeviceGetPciInfo_v3").pci

    # --- device: figures -------------------------------------------------------------
    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> FakeUtilization:
        gpu = self._dev(handle, "nvmlDeviceGetUtilizationRates")
        gpu.step()
        return FakeUtilization(int(gpu.util), int(gpu.util * 0.6))

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu, version: int | None = None) -> FakeMemory:
        gpu = self._dev(handle, "nvmlDeviceGetMemoryInfo")
        return FakeMemory(gpu.mem_total, gpu.mem_total - gpu.mem_used, gpu.mem_used)

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetTemperature")
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError_InvalidArgument()
        return int(32 + gpu.util * 0.45)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetPowerUsage")
        return int(70_000 + gpu.util * 6_000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetPowerManagementLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, type: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetClockInfo")
        if type == self.NVML_CLOCK_MEM:
            return 2619
        if gpu.util < 5.0:
            return 345
        return int(gpu.max_sm_clock_mhz - (150 if gpu.clocks_event_reasons else 0))

    def nvmlDeviceGetMaxClockInfo(self, handle: FakeGpu, type: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetMaxClockInfo")
        return 2619 if type == self.NVML_CLOCK_MEM else gpu.max_sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeGpu) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return gpu.clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeGpu, errorType: int, counterType: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetTotalEccErrors")
        return gpu.ecc.get((errorType, counterType), 0)

    def nvmlDeviceGetPcieThroughput(self, device: FakeGpu, counter: int) -> int:
        gpu = self._dev(device, "nvmlDeviceGetPcieThroughput")
        # KB/s, as NVML reports it
        base = 2_000_000 if counter == self.NVML_PCIE_UTIL_TX_BYTES else 3_000_000
        return int(base * gpu.util / 100.0)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrPcieLinkGeneration").pcie_gen

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrPcieLinkWidth").pcie_width

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetMaxPcieLinkGeneration").pcie_gen

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeGpu) -> int:
        return self._dev(handle, "nvmlDeviceGetMaxPcieLinkWidth").pcie_width

    def nvmlDeviceGetNvLinkState(self, device: FakeGpu, link: int) -> int:
        gpu = self._dev(device, "nvmlDeviceGetNvLinkState")
        if link >= gpu.nvlinks:
            if link >= self.NVML_NVLINK_MAX_LINKS:
                raise pynvml.NVMLError_InvalidArgument()
            raise pynvml.NVMLError_NotSupported()
        return gpu.nvlink_active[link]

    def nvmlDeviceGetNvLinkErrorCounter(self, device: FakeGpu, link: int, counter: int) -> int:
        gpu = self._dev(device, "nvmlDeviceGetNvLinkErrorCounter")
        if link >= gpu.nvlinks:
            raise pynvml.NVMLError_NotSupported()
        return gpu.nvlink_errors.get((link, counter), 0)

    # --- events ----------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._sys("nvmlEventSetCreate")
        es = FakeEventSet()
        with self._lock:
            self.event_sets.append(es)
        return es

    def nvmlDeviceRegisterEvents(self, handle: FakeGpu, eventTypes: int, eventSet: Any) -> None:
        gpu = self._dev(handle, "nvmlDeviceRegisterEvents")
        es: FakeEventSet = eventSet
        with self._lock:
            es.registered[gpu.index] = es.registered.get(gpu.index, 0) | eventTypes

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeGpu) -> int:
        self._dev(handle, "nvmlDeviceGetSupportedEventTypes")
        return self.nvmlEventTypeXidCriticalError | self.nvmlEventTypeDoubleBitEccError

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> FakeEventData:
        """Pop one pending event; ``NVMLError_Timeout`` when none (never blocks)."""
        self._sys("nvmlEventSetWait_v2")
        es: FakeEventSet = eventSet
        try:
            return es.queue.popleft()
        except IndexError:
            raise pynvml.NVMLError_Timeout() from None

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> FakeEventData:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._sys("nvmlEventSetFree")
        es: FakeEventSet = eventSet
        with self._lock:
            es.freed = True
            es.queue.clear()


def nvml_function_names(lib: object) -> list[str]:
    """The ``nvml*`` callables a library object offers (used to check the fake's names)."""
    return [n for n in dir(lib) if n.startswith("nvml") and callable(getattr(lib, n))]
