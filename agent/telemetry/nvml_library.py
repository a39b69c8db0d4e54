"""The NVML library as the reader sees it: error classes, constants and functions resolved once.

The library is any object with the interface of nvidia-ml-py's ``pynvml`` module. What it
lacks is replaced: a missing error class by ``NoSuchError`` (never raised by the library), a
missing constant by NVML's documented value, a missing function by one that raises
FunctionNotFound, so the reader treats an old library like a GPU without the feature.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any


class NoSuchError(Exception):
    """Stands in for an NVMLError subclass the injected library does not define."""


def text(value: object) -> str:
    """An NVML string (bytes in old bindings) as text."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def handle_key(handle: object) -> object:
    """A hashable key for a device handle: the address for a ctypes pointer handle."""
    if isinstance(handle, ctypes._Pointer):
        return ctypes.cast(handle, ctypes.c_void_p).value
    try:
        hash(handle)
    except TypeError:
        return id(handle)
    return handle


def describe(exc: BaseException) -> str:
    """An exception as "Type: message", for logs and sample errors."""
    return f"{type(exc).__name__}: {exc}"


class NvmlLibrary:
    """One library's exception classes, constants and device functions."""

    def __init__(self, lib: Any) -> None:
        self.lib: Any = lib
        err = getattr(lib, "NVMLError", None)
        self.NVMLError: type[BaseException] = err if isinstance(err, type) else NoSuchError

        def cls(name: str) -> type[BaseException]:
            found = getattr(lib, name, None)
            return found if isinstance(found, type) else NoSuchError

        self.Timeout = cls("NVMLError_Timeout")
        self.FunctionNotFound = cls("NVMLError_FunctionNotFound")
        self.unsupported_errors: tuple[type[BaseException], ...] = (
            cls("NVMLError_NotSupported"),
            self.FunctionNotFound,
        )
        self.link_end_errors: tuple[type[BaseException], ...] = (
            *self.unsupported_errors,
            cls("NVMLError_InvalidArgument"),
        )
        self.fatal_errors: tuple[type[BaseException], ...] = (
            cls("NVMLError_GpuIsLost"),
            cls("NVMLError_ResetRequired"),
            cls("NVMLError_Uninitialized"),
        )

        def const(name: str, default: int) -> int:
            return int(getattr(lib, name, default))

        self.TEMPERATURE_GPU = const("NVML_TEMPERATURE_GPU", 0)
        self.CLOCK_SM = const("NVML_CLOCK_SM", 1)
        self.CORRECTED = const("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
        self.UNCORRECTED = const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        self.VOLATILE = const("NVML_VOLATILE_ECC", 0)
        self.AGGREGATE = const("NVML_AGGREGATE_ECC", 1)
        self.PCIE_TX = const("NVML_PCIE_UTIL_TX_BYTES", 0)
        self.PCIE_RX = const("NVML_PCIE_UTIL_RX_BYTES", 1)
        self.NVLINK_MAX = const("NVML_NVLINK_MAX_LINKS", 36)
        self.NVL_REPLAY = const("NVML_NVLINK_ERROR_DL_REPLAY", 0)
        self.NVL_RECOVERY = const("NVML_NVLINK_ERROR_DL_RECOVERY", 1)
        self.NVL_CRC_FLIT = const("NVML_NVLINK_ERROR_DL_CRC_FLIT", 2)
        self.XID = const("nvmlEventTypeXidCriticalError", 0x8)

        fn = self.function
        self.f_handle = fn("nvmlDeviceGetHandleByIndex")
        self.f_name = fn("nvmlDeviceGetName")
        self.f_uuid = fn("nvmlDeviceGetUUID")
        self.f_pci = fn("nvmlDeviceGetPciInfo")
        self.f_util = fn("nvmlDeviceGetUtilizationRates")
        self.f_mem = fn("nvmlDeviceGetMemoryInfo")
        self.f_temp = fn("nvmlDeviceGetTemperature")
        self.f_power = fn("nvmlDeviceGetPowerUsage")
        self.f_power_limit = fn("nvmlDeviceGetEnforcedPowerLimit")
        self.f_clock = fn("nvmlDeviceGetClockInfo")
        self.f_clk_events = fn("nvmlDeviceGetCurrentClocksEventReasons")
        self.f_clk_throttle = fn("nvmlDeviceGetCurrentClocksThrottleReasons")
        self.f_ecc = fn("nvmlDeviceGetTotalEccErrors")
        self.f_pcie_tp = fn("nvmlDeviceGetPcieThroughput")
        self.f_pcie_gen = fn("nvmlDeviceGetCurrPcieLinkGeneration")
        self.f_pcie_width = fn("nvmlDeviceGetCurrPcieLinkWidth")
        self.f_nvl_state = fn("nvmlDeviceGetNvLinkState")
        self.f_nvl_error = fn("nvmlDeviceGetNvLinkErrorCounter")
        self.f_register = fn("nvmlDeviceRegisterEvents")
        wait = getattr(lib, "nvmlEventSetWait_v2", None)
        self.f_wait = wait if wait is not None else fn("nvmlEventSetWait")

    def function(self, name: str) -> Callable[..., Any]:
        """The library's function ``name``, or one raising FunctionNotFound when absent."""
        found = getattr(self.lib, name, None)
        if callable(found):
            return found  # type: ignore[no-any-return]
        not_found = self.FunctionNotFound

        def missing(*_args: Any) -> Any:
            if not_found is NoSuchError:
                raise NoSuchError(f"{name} is not in the NVML library")
            raise not_found()

        return missing
