"""The NVML layer: GPU figures and XID events as ``gantry.v1`` protos.

Written in nvitop's style: it never imports anything UI, it takes the NVML library as an
injected object with the interface of nvidia-ml-py's ``pynvml`` module (the real module by
default, imported lazily), and a query helper turns every NVML error of a single field into a
sentinel (``None``), so callers never see NVML exceptions. A field the GPU does not support is
left unset in the proto, never reported as zero.

Static facts (handles, names, UUIDs, PCI bus ids) are read once; fields found unsupported are
remembered and not asked again, so a tick costs only the dynamic queries.

This module holds the reader's life (open, close, GPU handles), its samples and the XID
events; ``nvml_library`` resolves the injected library, ``nvml_fields`` reads one GPU's fields.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from gantry.v1 import telemetry_pb2 as pb
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from agent.telemetry.kernel_log import normalize_pci
from agent.telemetry.nvml_fields import (
    CLOCK_EVENT_REASONS,
    FieldReader,
    GpuFatal,
    GpuState,
    decode_clock_event_reasons,
)
from agent.telemetry.nvml_library import NoSuchError, NvmlLibrary, describe, handle_key, text

__all__ = [
    "CLOCK_EVENT_REASONS",
    "NvmlReader",
    "decode_clock_event_reasons",
    "format_cuda_version",
]

log = logging.getLogger("gantry.agent")


def format_cuda_version(version: int) -> str:
    """NVML's CUDA driver version integer (e.g. 12040) as "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


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
        self._gpus: list[GpuState] = []
        self._by_handle: dict[object, GpuState] = {}
        self._by_uuid: dict[str, GpuState] = {}
        self._by_pci: dict[str, int] = {}
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
            except self._nv.NVMLError as exc:
                return self._fail_open(f"NVML could not be initialised: {describe(exc)}")
            self._initialized = True
            try:
                count = int(lib.nvmlDeviceGetCount())
            except self._nv.NVMLError as exc:
                return self._fail_open(f"NVML could not count the GPUs: {describe(exc)}")
            self._driver_version = self._system_text("nvmlSystemGetDriverVersion")
            cuda = self._system_value("nvmlSystemGetCudaDriverVersion")
            self._cuda_driver_version = format_cuda_version(int(cuda)) if cuda is not None else ""
            self._create_event_set()
            self._gpus = [GpuState(i) for i in range(count)]
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
                except self._nv.NVMLError as exc:
                    log.debug("nvmlEventSetFree failed: %s", describe(exc))
                self._event_set = None
            if self._initialized:
                try:
                    lib.nvmlShutdown()
                except self._nv.NVMLError as exc:
                    log.debug("nvmlShutdown failed: %s", describe(exc))
                self._initialized = False
            self._gpus = []
            self._by_handle.clear()
            self._by_uuid.clear()
            self._by_pci.clear()
            self._opened = False
            self._error = ""

    def _fail_open(self, message: str) -> str:
        self._error = message
        self._gpus = []
        log.warning("%s; reporting no GPUs", message)
        return message

    def _bind(self, lib: Any) -> None:
        """Resolve the library's exception classes, constants and functions once."""
        self._nv = NvmlLibrary(lib)
        self._fields = FieldReader(self._nv, read_pcie_throughput=self._read_pcie_throughput)

    def _system_value(self, name: str) -> Any:
        try:
            return self._nv.function(name)()
        except (self._nv.NVMLError, NoSuchError) as exc:
            log.debug("%s failed: %s", name, describe(exc))
            return None

    def _system_text(self, name: str) -> str:
        value = self._system_value(name)
        return "" if value is None else text(value)

    def _create_event_set(self) -> None:
        try:
            self._event_set = self._nv.function("nvmlEventSetCreate")()
        except (self._nv.NVMLError, NoSuchError) as exc:
            log.info("NVML events unavailable, XID errors will not be seen: %s", describe(exc))
            self._event_set = None

    def _attach(self, gpu: GpuState) -> bool:
        """Get the handle and the static facts of a GPU; False (and handle_error) if it fails."""
        try:
            handle = self._nv.f_handle(gpu.index)
        except (self._nv.NVMLError, NoSuchError) as exc:
            # Reported (once) by the sample that carries the error.
            gpu.handle_error = f"no NVML handle: {describe(exc)}"
            return False
        gpu.handle = handle
        gpu.handle_error = ""
        for attr, fn in (("name", self._nv.f_name), ("uuid", self._nv.f_uuid)):
            try:
                setattr(gpu, attr, text(fn(handle)))
            except (self._nv.NVMLError, NoSuchError) as exc:
                log.debug("GPU %d: %s unavailable: %s", gpu.index, attr, describe(exc))
        try:
            gpu.pci_bus_id = text(self._nv.f_pci(handle).busId)
        except (self._nv.NVMLError, NoSuchError, AttributeError) as exc:
            log.debug("GPU %d: PCI info unavailable: %s", gpu.index, exc)
        pci = normalize_pci(gpu.pci_bus_id)
        if pci:
            self._by_pci[pci] = gpu.index
        try:
            gpu.mem_total = int(self._nv.f_mem(handle).total)
        except (self._nv.NVMLError, NoSuchError, AttributeError) as exc:
            log.debug("GPU %d: memory info unavailable: %s", gpu.index, exc)
        self._by_handle[handle_key(handle)] = gpu
        if gpu.uuid:
            self._by_uuid[gpu.uuid] = gpu
        if self._event_set is not None and not gpu.events_registered:
            try:
                self._nv.f_register(handle, self._nv.XID, self._event_set)
                gpu.events_registered = True
            except (self._nv.NVMLError, NoSuchError) as exc:
                log.info("GPU %d: XID events unavailable: %s", gpu.index, describe(exc))
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

    def gpu_for_pci(self, pci_bus_id: str) -> int | None:
        """The index of the GPU at a PCI address (NVML's or the kernel's form), or None."""
        return self._by_pci.get(normalize_pci(pci_bus_id))

    def gpu_uuid(self, index: int) -> str:
        """The UUID of GPU ``index``, or "" when unknown."""
        gpus = self._gpus
        return gpus[index].uuid if 0 <= index < len(gpus) else ""

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

    def _fill_gpu(self, g: pb.GpuSample, gpu: GpuState) -> None:
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
            self._fields.read_fields(g, gpu)
        except GpuFatal as fatal:
            self._set_failed(g, gpu, describe(fatal.error))
            return
        if gpu.ok == 0 and gpu.first_error is not None:
            self._set_failed(g, gpu, describe(gpu.first_error))
            return
        counts = self._xid_counts.get(gpu.index)
        if counts:
            g.xid_counts.update(counts)
        if gpu.failed:
            gpu.failed = False
            log.warning("GPU %d: readable again", gpu.index)

    def _set_failed(self, g: pb.GpuSample, gpu: GpuState, error: str) -> None:
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

    # ------------------------------------------------------------------ XID events
    def poll_xid_events(self, now_ns: int, limit: int = 10_000) -> list[pb.XidEvent]:
        """Drain NVML's event queue without waiting; returns the new XID events.

        The events are also counted per GPU and code, kept in the recent list and queued
        for ``take_xid_events``.
        """
        es = self._event_set
        if es is None or self._events_broken:
            return []
        wait = self._nv.f_wait
        new: list[pb.XidEvent] = []
        for _ in range(limit):
            try:
                data = wait(es, 0)
            except self._nv.Timeout:
                break
            except (self._nv.NVMLError, NoSuchError) as exc:
                log.warning("NVML event wait failed, XID events off: %s", describe(exc))
                self._events_broken = True
                break
            if not int(data.eventType) & self._nv.XID:
                continue
            gpu = self._event_gpu(data.device)
            event = pb.XidEvent(xid=int(data.eventData), source="nvml")
            event.time.FromNanoseconds(now_ns)
            if gpu is not None:
                event.gpu_index = gpu.index
                event.gpu_uuid = gpu.uuid
                event.gpu_known = True
                event.pci_bus_id = normalize_pci(gpu.pci_bus_id)
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

    def _event_gpu(self, device: object) -> GpuState | None:
        gpu = self._by_handle.get(handle_key(device))
        if gpu is not None:
            return gpu
        try:
            gpu = self._by_uuid.get(text(self._nv.f_uuid(device)))
        except (self._nv.NVMLError, NoSuchError):
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
