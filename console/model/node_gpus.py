"""One node's GPUs as the node screen shows them: each GPU's series, kept as samples
arrive, its figures and details as text (markup), and its XID events in the words of the
shared catalogue (``gantry.v1.xid_catalog``). Pure: no Textual."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gantry.v1 import telemetry_pb2
from gantry.v1.xid_catalog import xid_info

from console.model.bars import (
    DASH,
    format_bytes_pair,
    format_percent,
    format_rate,
    percent_of,
)

_SEVERITY_STYLE = {"critical": "$error", "warning": "$warning", "info": "$text-muted"}


def xid_label(code: int) -> str:
    """An XID code in the catalogue's words: what it is and what to do."""
    info = xid_info(code)
    return f"{info.description} · {info.action_text}"


def xid_style(code: int) -> str:
    """The colour for an XID code: by its severity in the catalogue."""
    return _SEVERITY_STYLE[xid_info(code).severity]


def xid_on_gpu(event: telemetry_pb2.XidEvent) -> bool:
    """Whether the event names a GPU (NVML's always do; old agents sent no source)."""
    return event.source != "kernel" or event.gpu_known


def xid_where(event: telemetry_pb2.XidEvent) -> str:
    """Where an XID happened: "GPU 3", "PCI 0000:3b:00" (a GPU NVML does not know) or "node"."""
    if xid_on_gpu(event):
        return f"GPU {event.gpu_index}"
    return f"PCI {event.pci_bus_id}" if event.pci_bus_id else "node"


def xid_counts(
    sample: telemetry_pb2.NodeSample | None, events: Iterable[telemetry_pb2.XidEvent]
) -> Counter[int]:
    """XID counts per code: each GPU's cumulative counts, plus the events those do not
    count (a kernel XID on no GPU, or on a GPU and code NVML never counted)."""
    counts: Counter[int] = Counter()
    counted: set[tuple[int, int]] = set()
    if sample is not None:
        for gpu in sample.gpus:
            for code, count in gpu.xid_counts.items():
                counts[code] += count
                counted.add((gpu.index, code))
    for event in events:
        if xid_on_gpu(event) and (event.gpu_index, event.xid) in counted:
            continue  # in that GPU's cumulative count already
        counts[event.xid] += 1
    return counts


def xid_row(event: telemetry_pb2.XidEvent) -> str:
    """One event as markup: where, the code coloured by severity, its source, its meaning."""
    info = xid_info(event.xid)
    source = "kernel" if event.source == "kernel" else "nvml"
    pid = f" pid {event.pid}" if event.pid else ""
    return (
        f"{xid_where(event):<15} XID [{xid_style(event.xid)}]{event.xid}[/] "
        f"[$text-muted]{source}{pid} · {info.description}[/]"
    )


@dataclass
class GpuSeries:
    """The buffered history of one GPU, kept incrementally as samples arrive."""

    maxlen: int
    util: deque[float] = field(init=False)
    mem: deque[float] = field(init=False)
    temp: deque[float] = field(init=False)
    power: deque[float] = field(init=False)

    def __post_init__(self) -> None:
        self.util = deque(maxlen=self.maxlen)
        self.mem = deque(maxlen=self.maxlen)
        self.temp = deque(maxlen=self.maxlen)
        self.power = deque(maxlen=self.maxlen)

    def add(self, gpu: telemetry_pb2.GpuSample) -> None:
        if gpu.error:
            return
        if gpu.HasField("gpu_util_percent"):
            self.util.append(gpu.gpu_util_percent)
        if gpu.HasField("mem_used_bytes") and gpu.HasField("mem_total_bytes"):
            mem = percent_of(gpu.mem_used_bytes, gpu.mem_total_bytes)
            if mem is not None:
                self.mem.append(mem)
        if gpu.HasField("temperature_c"):
            self.temp.append(gpu.temperature_c)
        if gpu.HasField("power_draw_w"):
            self.power.append(gpu.power_draw_w)


def gpu_optional(gpu: telemetry_pb2.GpuSample, name: str) -> float | None:
    """A GPU sample's optional field as a float; None when the GPU does not report it."""
    return float(getattr(gpu, name)) if gpu.HasField(name) else None


def gpu_values(gpu: telemetry_pb2.GpuSample) -> dict[str, str]:
    """The figures shown beside the sparklines; a dash for what the GPU does not report."""
    if gpu.error:
        return {"util": DASH, "mem": DASH, "temp": DASH, "power": DASH}
    used, total = gpu_optional(gpu, "mem_used_bytes"), gpu_optional(gpu, "mem_total_bytes")
    mem = format_bytes_pair(used, total)
    mem_pct = percent_of(used, total)
    if mem_pct is not None:
        mem += f" {mem_pct:.0f}%"
    temp = gpu_optional(gpu, "temperature_c")
    draw, limit = gpu_optional(gpu, "power_draw_w"), gpu_optional(gpu, "power_limit_w")
    if draw is None:
        power = DASH
    elif limit is None:
        power = f"{draw:.0f} W"
    else:
        power = f"{draw:.0f}/{limit:.0f} W"
    return {
        "util": format_percent(gpu_optional(gpu, "gpu_util_percent")),
        "mem": mem,
        "temp": DASH if temp is None else f"{temp:.0f} °C",
        "power": power,
    }


def _num(gpu: telemetry_pb2.GpuSample, name: str) -> str:
    return str(getattr(gpu, name)) if gpu.HasField(name) else DASH


def gpu_details(gpu: telemetry_pb2.GpuSample) -> str:
    """Markup for clocks, PCIe, NVLink, throttling and ECC (four lines)."""
    if gpu.error:
        return "[$error b]read failed[/]\n[$error]$error[/]"
    sm = f"{gpu.sm_clock_mhz} MHz" if gpu.HasField("sm_clock_mhz") else DASH
    link = DASH
    if gpu.HasField("pcie_link_gen") and gpu.HasField("pcie_link_width"):
        link = f"gen{gpu.pcie_link_gen} x{gpu.pcie_link_width}"
    first = f"SM {sm} · PCIe {link}"
    if gpu.nvlinks:
        up = sum(1 for n in gpu.nvlinks if n.HasField("active") and n.active)
        errors = sum(n.replay_errors + n.crc_errors + n.recovery_errors for n in gpu.nvlinks)
        first += f" · NVL {up}/{len(gpu.nvlinks)}"
        if errors:
            first += f" [$error]{errors} err[/]"
    rx = format_rate(gpu_optional(gpu, "pcie_rx_bytes_per_s"))
    tx = format_rate(gpu_optional(gpu, "pcie_tx_bytes_per_s"))
    second = f"PCIe ↓{rx} ↑{tx}"
    if not gpu.HasField("throttle_reasons"):
        third = f"throttle {DASH}"
    elif gpu.throttle_reason_names:
        third = "[$warning]throttle " + ", ".join(gpu.throttle_reason_names) + "[/]"
    elif gpu.throttle_reasons:
        third = f"[$warning]throttle {gpu.throttle_reasons:#x}[/]"
    else:
        third = "throttle none"
    vol = f"{_num(gpu, 'ecc_corrected_volatile')}/{_num(gpu, 'ecc_uncorrected_volatile')}"
    agg = f"{_num(gpu, 'ecc_corrected_aggregate')}/{_num(gpu, 'ecc_uncorrected_aggregate')}"
    fourth = f"ECC c/u vol {vol} agg {agg}"
    if gpu.ecc_uncorrected_volatile or gpu.ecc_uncorrected_aggregate:
        fourth = f"[$error]{fourth}[/]"
    return "\n".join((first, second, third, fourth))
