"""An optional Prometheus endpoint for the sampler's figures.

A custom collector reads ``sampler.latest()`` at scrape time, so scraping costs nothing
between scrapes and never touches NVML. It is registered on its own ``CollectorRegistry``
(not the process-wide one). A figure the GPU does not report is omitted, not exported as 0.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from gantry.v1 import telemetry_pb2 as pb
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["SampleSource", "SamplerCollector", "make_registry", "start_metrics_server"]


class SampleSource(Protocol):
    """What the collector needs from a sampler."""

    def latest(self) -> pb.NodeSample | None: ...


_GPU = ("node", "gpu", "uuid")

# (metric name, help, GpuSample field, scale); all gauges
_GPU_GAUGES: tuple[tuple[str, str, str, float], ...] = (
    ("gantry_gpu_utilization_percent", "GPU utilization", "gpu_util_percent", 1.0),
    (
        "gantry_gpu_memory_utilization_percent",
        "GPU memory controller utilization",
        "mem_util_percent",
        1.0,
    ),
    ("gantry_gpu_memory_used_bytes", "GPU memory used", "mem_used_bytes", 1.0),
    ("gantry_gpu_memory_total_bytes", "GPU memory total", "mem_total_bytes", 1.0),
    ("gantry_gpu_temperature_celsius", "GPU temperature", "temperature_c", 1.0),
    ("gantry_gpu_power_draw_watts", "GPU power draw", "power_draw_w", 1.0),
    ("gantry_gpu_power_limit_watts", "GPU enforced power limit", "power_limit_w", 1.0),
    ("gantry_gpu_sm_clock_hertz", "GPU SM clock", "sm_clock_mhz", 1e6),
    (
        "gantry_gpu_clocks_event_reasons",
        "NVML clocks-event (throttle) reason bitmask",
        "throttle_reasons",
        1.0,
    ),
    (
        "gantry_gpu_pcie_transmit_bytes_per_second",
        "GPU PCIe transmit throughput",
        "pcie_tx_bytes_per_s",
        1.0,
    ),
    (
        "gantry_gpu_pcie_receive_bytes_per_second",
        "GPU PCIe receive throughput",
        "pcie_rx_bytes_per_s",
        1.0,
    ),
    ("gantry_gpu_pcie_link_generation", "GPU PCIe link generation", "pcie_link_gen", 1.0),
    ("gantry_gpu_pcie_link_width", "GPU PCIe link width (lanes)", "pcie_link_width", 1.0),
)

# (GpuSample field, type label, counter label)
_ECC: tuple[tuple[str, str, str], ...] = (
    ("ecc_corrected_volatile", "corrected", "volatile"),
    ("ecc_uncorrected_volatile", "uncorrected", "volatile"),
    ("ecc_corrected_aggregate", "corrected", "aggregate"),
    ("ecc_uncorrected_aggregate", "uncorrected", "aggregate"),
)

# (NvLinkSample field, type label)
_NVLINK_ERRORS: tuple[tuple[str, str], ...] = (
    ("replay_errors", "replay"),
    ("crc_errors", "crc"),
    ("recovery_errors", "recovery"),
)

# (metric name, help, HostSample field)
_NODE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("gantry_node_cpu_percent", "Host CPU utilization", "cpu_percent"),
    ("gantry_node_cpu_count", "Host logical CPUs", "cpu_count"),
    ("gantry_node_load1", "Host load average over 1 minute", "load1"),
    ("gantry_node_load5", "Host load average over 5 minutes", "load5"),
    ("gantry_node_load15", "Host load average over 15 minutes", "load15"),
    ("gantry_node_memory_used_bytes", "Host memory used", "mem_used_bytes"),
    ("gantry_node_memory_total_bytes", "Host memory total", "mem_total_bytes"),
    (
        "gantry_node_network_receive_bytes_per_second",
        "Host network receive rate (loopback excluded)",
        "net_rx_bytes_per_s",
    ),
    (
        "gantry_node_network_transmit_bytes_per_second",
        "Host network transmit rate (loopback excluded)",
        "net_tx_bytes_per_s",
    ),
    ("gantry_node_disk_read_bytes_per_second", "Host disk read rate", "disk_read_bytes_per_s"),
    (
        "gantry_node_disk_write_bytes_per_second",
        "Host disk write rate",
        "disk_write_bytes_per_s",
    ),
)


class SamplerCollector:
    """A Prometheus collector over the newest sample of a sampler."""

    def __init__(self, source: SampleSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        sample = self._source.latest()
        if sample is None:
            return []
        return list(self._metrics(sample))

    def _metrics(self, sample: pb.NodeSample) -> Iterator[Metric]:
        node = sample.node_name
        host = sample.host
        for name, doc, attr in _NODE_GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["node"])
            family.add_metric([node], float(getattr(host, attr)))
            yield family
        info = GaugeMetricFamily(
            "gantry_node_sample_timestamp_seconds",
            "Wall-clock time of the sample being exported",
            labels=["node"],
        )
        info.add_metric([node], sample.time.ToNanoseconds() / 1e9)
        yield info
        seq = GaugeMetricFamily("gantry_node_sample_seq", "Sequence number", labels=["node"])
        seq.add_metric([node], float(sample.seq))
        yield seq

        gauges = [GaugeMetricFamily(name, doc, labels=_GPU) for name, doc, _, _ in _GPU_GAUGES]
        up = GaugeMetricFamily("gantry_gpu_up", "1 when the GPU could be read", labels=_GPU)
        ecc = CounterMetricFamily(
            "gantry_gpu_ecc_errors",
            "GPU memory ECC errors",
            labels=[*_GPU, "type", "counter"],
        )
        xid = CounterMetricFamily(
            "gantry_gpu_xid_errors", "XID errors since the agent started", labels=[*_GPU, "xid"]
        )
        nvl_active = GaugeMetricFamily(
            "gantry_gpu_nvlink_active", "1 when the NVLink is active", labels=[*_GPU, "link"]
        )
        nvl_errors = CounterMetricFamily(
            "gantry_gpu_nvlink_errors", "NVLink errors", labels=[*_GPU, "link", "type"]
        )
        for g in sample.gpus:
            labels = [node, str(g.index), g.uuid]
            up.add_metric(labels, 0.0 if g.error else 1.0)
            for xid_code, count in sorted(g.xid_counts.items()):
                xid.add_metric([*labels, str(xid_code)], float(count))
            if g.error:
                continue
            for family, (_, _, attr, scale) in zip(gauges, _GPU_GAUGES, strict=True):
                if g.HasField(attr):
                    family.add_metric(labels, float(getattr(g, attr)) * scale)
            for attr, kind, counter in _ECC:
                if g.HasField(attr):
                    ecc.add_metric([*labels, kind, counter], float(getattr(g, attr)))
            for link in g.nvlinks:
                link_labels = [*labels, str(link.link)]
                if link.HasField("active"):
                    nvl_active.add_metric(link_labels, 1.0 if link.active else 0.0)
                for attr, kind in _NVLINK_ERRORS:
                    if link.HasField(attr):
                        nvl_errors.add_metric([*link_labels, kind], float(getattr(link, attr)))
        for metric in (up, *gauges, ecc, xid, nvl_active, nvl_errors):
            if metric.samples:
                yield metric


def make_registry(source: SampleSource) -> CollectorRegistry:
    """A fresh registry holding only a collector over ``source``."""
    registry = CollectorRegistry()
    registry.register(SamplerCollector(source))
    return registry


def start_metrics_server(
    sampler: SampleSource, port: int, addr: str = "127.0.0.1"
) -> tuple[WSGIServer, threading.Thread, int]:
    """Serve ``/metrics`` on ``addr:port`` (port 0 picks a free one) from a daemon thread.

    Returns the server, its thread and the bound port; stop it with ``server.shutdown()``
    then ``server.server_close()``.
    """
    server, thread = start_http_server(port, addr, registry=make_registry(sampler))
    return server, thread, int(server.server_port)
