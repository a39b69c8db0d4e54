"""Kernel-log facts turned into telemetry: XID events beside NVML's, and GPUs that failed.

Pure: the caller passes the time and the GPU look-ups. A kernel XID and NVML's event for the
same GPU and code within ``DEDUPE_WINDOW_S`` are one occurrence: the NVML event keeps its
place and gains the kernel's line, PID and PCI address; whichever arrives second is dropped.
A kernel XID whose PCI address maps to no GPU NVML knows is kept with ``gpu_known`` false, so
a node without NVML still shows it. GPUs the kernel says failed to start or fell off the bus
are remembered (bounded) until NVML reads them healthy again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gantry.v1 import telemetry_pb2 as pb
from gantry.v1.xid_catalog import XidInfo, xid_info_for_line

from agent.telemetry.kernel_log import GpuInitFailure, KernelItem, KernelXid

__all__ = ["DEDUPE_WINDOW_S", "KernelEvents", "KernelNotice"]

DEDUPE_WINDOW_S = 5.0
MAX_PENDING = 1000
MAX_FAILED_GPUS = 64


@dataclass(frozen=True)
class KernelNotice:
    """A kernel-log fact with the GPU it concerns, for whoever ties it to jobs and ranks."""

    item: KernelItem
    time_ns: int
    gpu_index: int | None  # None: no GPU NVML knows (or not a GPU fact)
    gpu_uuid: str
    xid: XidInfo | None  # the catalogue's entry, read with the line, for a KernelXid


class KernelEvents:
    """Holds kernel XIDs until the next sample and the GPUs the kernel says failed.

    Args:
        gpu_for_pci: a PCI address (any form) → the NVML GPU index, or None.
        gpu_uuid: a GPU index → its UUID ("" when unknown).
    """

    def __init__(
        self,
        gpu_for_pci: Callable[[str], int | None],
        gpu_uuid: Callable[[int], str],
        *,
        dedupe_window_s: float = DEDUPE_WINDOW_S,
    ) -> None:
        self._gpu_for_pci = gpu_for_pci
        self._gpu_uuid = gpu_uuid
        self._window_ns = int(dedupe_window_s * 1e9)
        self._lock = threading.Lock()
        self._pending: deque[pb.XidEvent] = deque(maxlen=MAX_PENDING)
        # events already handed out, per source, for pairing with the other source's
        self._sent: deque[pb.XidEvent] = deque(maxlen=MAX_PENDING)
        self._failed: OrderedDict[str, str] = OrderedDict()  # pci → the kernel's line

    # ------------------------------------------------------------------ input
    def add(self, item: KernelItem, now_ns: int) -> KernelNotice:
        """Takes one parsed kernel fact (any thread); returns it with its GPU resolved."""
        pci = item.pci if isinstance(item, KernelXid | GpuInitFailure) else ""
        index = self._gpu_for_pci(pci) if pci else None
        uuid = self._gpu_uuid(index) if index is not None else ""
        info = None
        if isinstance(item, KernelXid):
            info = xid_info_for_line(item.xid, item.text)
            event = pb.XidEvent(
                xid=item.xid,
                source="kernel",
                pci_bus_id=item.pci,
                text=item.text,
                pid=item.pid or 0,
                gpu_known=index is not None,
                gpu_index=index or 0,
                gpu_uuid=uuid,
            )
            event.time.FromNanoseconds(now_ns)
            with self._lock:
                self._pending.append(event)
        elif isinstance(item, GpuInitFailure):
            with self._lock:
                key = item.pci or "?" + item.text
                self._failed.pop(key, None)
                self._failed[key] = item.text
                while len(self._failed) > MAX_FAILED_GPUS:
                    self._failed.popitem(last=False)
        return KernelNotice(item, now_ns, index, uuid, info)

    # ------------------------------------------------------------------ per sample
    def merge(self, nvml_events: Sequence[pb.XidEvent], now_ns: int) -> list[pb.XidEvent]:
        """This sample's XID events: NVML's (enriched) and the kernel's not seen by NVML."""
        with self._lock:
            kernel = list(self._pending)
            self._pending.clear()
            cutoff = now_ns - self._window_ns
            while self._sent and self._sent[0].time.ToNanoseconds() < cutoff:
                self._sent.popleft()
            out: list[pb.XidEvent] = []
            for event in nvml_events:
                twin = self._take_twin(kernel, event)
                if twin is not None:
                    event.text, event.pid = twin.text, twin.pid
                    event.pci_bus_id = event.pci_bus_id or twin.pci_bus_id
                elif self._take_twin(self._sent, event) is not None:
                    continue  # the kernel's line went out in an earlier sample
                out.append(event)
            for event in kernel:
                if self._take_twin(self._sent, event) is None:
                    out.append(event)
            self._sent.extend(out)
        return out

    def _take_twin(
        self, pool: deque[pb.XidEvent] | list[pb.XidEvent], event: pb.XidEvent
    ) -> pb.XidEvent | None:
        """Removes and returns the other source's event for the same GPU and code, if any."""
        if not event.gpu_known:
            return None
        t = event.time.ToNanoseconds()
        for other in pool:
            if (
                other.source != event.source
                and other.xid == event.xid
                and other.gpu_index == event.gpu_index
                and other.gpu_known
                and abs(other.time.ToNanoseconds() - t) <= self._window_ns
            ):
                pool.remove(other)
                return other
        return None

    def failed_gpus(
        self, gpus: Sequence[pb.GpuSample], first_free_index: int
    ) -> tuple[list[pb.GpuSample], list[str]]:
        """GPU samples for GPUs the kernel says failed and NVML does not list, and the node's
        problem lines (NVML's unreadable GPUs first). A kernel failure of a GPU NVML reads
        healthy is forgotten: the GPU is back."""
        by_index = {g.index: g for g in gpus}
        problems = [f"GPU {g.index}: {g.error}" for g in gpus if g.error]
        extra: list[pb.GpuSample] = []
        with self._lock:
            for key, text in list(self._failed.items()):
                index = self._gpu_for_pci(key)
                if index is not None:
                    sample = by_index.get(index)
                    if sample is not None and not sample.error:
                        del self._failed[key]
                    elif sample is not None:
                        problems[problems.index(f"GPU {index}: {sample.error}")] += (
                            f" (kernel: {text})"
                        )
                    continue
                if key.startswith("?"):  # no PCI address: the line is all we know
                    problems.append(f"a GPU failed: {text}")
                    continue
                index = first_free_index + len(extra)
                extra.append(pb.GpuSample(index=index, name=f"PCI {key}", error=f"kernel: {text}"))
                problems.append(f"PCI {key}: {text}")
        return extra, problems
