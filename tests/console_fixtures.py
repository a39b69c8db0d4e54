"""Deterministic cluster stores for console tests: no agents, no network, no sleeping."""

from __future__ import annotations

import math

from gantry.v1 import telemetry_pb2

from console.model.cluster import ClusterStore
from console.net.cluster_file import NodeTarget

# 2024-06-01 12:00:00 UTC: every fixture time is relative to this.
FIXED = 1_717_243_200.0
GIB = 1024**3
LOST_ERROR = "agent unreachable (connection refused or dropped)"
UNAUTHORIZED_ERROR = "token refused: bad token (check the token file)"
GPU_ERROR = "Unknown Error: GPU is lost"
NVML_ERROR = "NVML Shared Library Not Found"


def timestamp(t: float) -> tuple[int, int]:
    seconds = int(t)
    return seconds, round((t - seconds) * 1e9)


def make_gpu(
    index: int,
    step: int,
    node: int,
    *,
    supported: bool = True,
    error: str = "",
) -> telemetry_pb2.GpuSample:
    gpu = telemetry_pb2.GpuSample(
        index=index,
        uuid=f"GPU-{node:04d}-{index:02d}",
        name="NVIDIA H100 80GB HBM3" if supported else "NVIDIA GeForce RTX 4090",
    )
    if error:
        gpu.error = error
        return gpu
    # A slow wave around a level of its own for each GPU, always 0-100.
    level = 35 + (node * 37 + index * 13) % 60
    util = max(0, min(100, round(level + 12 * math.sin(step / 5 + index))))
    if supported:
        gpu.gpu_util_percent = float(util)
    total = (80 if supported else 24) * GIB
    gpu.mem_total_bytes = total
    gpu.mem_used_bytes = int(total * ((node * 11 + index * 17 + 30) % 100) / 100)
    gpu.sm_clock_mhz = 1410 + 30 * (step % 10)
    gpu.pcie_link_gen = 5 if supported else 4
    gpu.pcie_link_width = 16
    gpu.pcie_rx_bytes_per_s = 1.5e9 + 1e8 * index
    gpu.pcie_tx_bytes_per_s = 8.4e8 + 1e7 * step
    if supported:
        gpu.mem_util_percent = float(util) / 2
        gpu.temperature_c = 45.0 + (util % 30)
        gpu.power_draw_w = 120.0 + 5.5 * util
        gpu.power_limit_w = 700.0
        gpu.throttle_reasons = 0
        gpu.ecc_corrected_volatile = 0
        gpu.ecc_uncorrected_volatile = 0
        gpu.ecc_corrected_aggregate = 3 if index == 0 else 0
        gpu.ecc_uncorrected_aggregate = 0
    else:
        # A MIG-like slice: no utilisation, ECC, power limit or throttle bitmask.
        gpu.temperature_c = 60.0
    return gpu


def make_host(node: int, step: int) -> telemetry_pb2.HostSample:
    return telemetry_pb2.HostSample(
        cpu_percent=float((node * 23 + step * 3) % 100),
        cpu_count=64,
        load1=12.1,
        load5=11.8,
        load15=10.2,
        mem_used_bytes=(300 + node * 10) * GIB,
        mem_total_bytes=1024 * GIB,
        net_rx_bytes_per_s=1.2e9 + node * 1e6,
        net_tx_bytes_per_s=3.4e8,
        disk_read_bytes_per_s=1.2e8,
        disk_write_bytes_per_s=4.0e7,
    )


def make_info(name: str, gpu_count: int, *, driver: bool = True) -> telemetry_pb2.NodeInfo:
    info = telemetry_pb2.NodeInfo(
        node_name=name,
        hostname=f"{name}.cluster.example",
        agent_version="0.1.0",
        gpu_count=gpu_count,
        cpu_count=64,
        mem_total_bytes=1024 * GIB,
        sample_interval_s=1.0,
        history_s=900.0,
        accelerator="cuda" if driver else "cpu",
    )
    if driver:
        info.driver_version = "550.54.15"
        info.cuda_driver_version = "12.4"
    else:
        info.nvml_error = NVML_ERROR
    for i in range(gpu_count):
        info.gpus.add(index=i, uuid=f"GPU-{i:02d}", name="NVIDIA H100 80GB HBM3")
    return info


def make_sample(
    name: str,
    node: int,
    step: int,
    t: float,
    gpus: int,
    *,
    unsupported_gpu: int | None = None,
    error_gpu: int | None = None,
) -> telemetry_pb2.NodeSample:
    sample = telemetry_pb2.NodeSample(node_name=name, seq=step + 1, host=make_host(node, step))
    sample.time.seconds, sample.time.nanos = timestamp(t)
    for i in range(gpus):
        sample.gpus.append(
            make_gpu(
                i,
                step,
                node,
                supported=i != unsupported_gpu,
                error=GPU_ERROR if i == error_gpu else "",
            )
        )
    return sample


def add_xids(sample: telemetry_pb2.NodeSample, t: float) -> None:
    """XID 13 twice on GPU 1 and XID 79 on GPU 5, with matching cumulative counts."""
    for gpu_index, xid, dt in ((1, 13, -300.0), (1, 13, -120.0), (5, 79, -30.0)):
        event = sample.xid_events.add(gpu_index=gpu_index, gpu_uuid=f"GPU-{gpu_index:02d}", xid=xid)
        event.time.seconds, event.time.nanos = timestamp(t + dt)
    sample.gpus[1].xid_counts[13] = 2
    sample.gpus[5].xid_counts[79] = 1


def fill_node(
    store: ClusterStore,
    name: str,
    node: int,
    *,
    gpus: int,
    history: int,
    end: float,
    driver: bool = True,
    unsupported_gpu: int | None = None,
    error_gpu: int | None = None,
    xids: bool = False,
) -> None:
    """Adds a live node with `history` samples one second apart, the last taken at `end`."""
    start = end - history + 1
    store.add_node(name, f"10.0.0.{node + 1}:50051", start - 1)
    store.set_live(name, make_info(name, gpus, driver=driver), start - 1)
    for step in range(history):
        t = start + step
        sample = make_sample(
            name, node, step, t, gpus, unsupported_gpu=unsupported_gpu, error_gpu=error_gpu
        )
        if xids and step == history - 1:
            add_xids(sample, t)
        store.apply_sample(name, sample, t)


def cluster_store(*, gpus: int = 8, history: int = 60, now: float = FIXED) -> ClusterStore:
    """Eight nodes covering every row kind the console draws.

    node-00, node-06: healthy; node-01: GPU 2 is a consumer card (unsupported
    fields); node-02: GPU 5 failed to read, XID events; node-03: lost 12 s ago;
    node-04: unauthorized 3 s ago, never sampled; node-05: no NVIDIA driver, no
    GPUs; node-07: still connecting.
    """
    store = ClusterStore()
    fill_node(store, "node-00", 0, gpus=gpus, history=history, end=now)
    fill_node(store, "node-01", 1, gpus=gpus, history=history, end=now, unsupported_gpu=2)
    fill_node(store, "node-02", 2, gpus=gpus, history=history, end=now, error_gpu=5, xids=True)
    fill_node(store, "node-03", 3, gpus=gpus, history=history, end=now - 20)
    store.set_lost("node-03", now - 12, LOST_ERROR)
    store.add_node("node-04", "10.0.0.5:50051", now - 30)
    store.set_unauthorized("node-04", now - 3, UNAUTHORIZED_ERROR)
    fill_node(store, "node-05", 5, gpus=0, history=history, end=now, driver=False)
    fill_node(store, "node-06", 6, gpus=gpus, history=history, end=now)
    store.add_node("node-07", "10.0.0.8:50051", now - 1)
    return store


def big_store(
    nodes: int = 128, gpus: int = 8, *, history: int = 2, now: float = FIXED
) -> ClusterStore:
    store = ClusterStore()
    for i in range(nodes):
        fill_node(store, f"gpu-node-{i:03d}", i, gpus=gpus, history=history, end=now)
    return store


def advance(store: ClusterStore, t: float, step: int) -> None:
    """A new sample for every node, taken and received at `t`."""
    for i, name in enumerate(store.names()):
        view = store.node(name)
        gpus = len(view.latest.gpus) if view.latest is not None else 0
        store.apply_sample(name, make_sample(name, i, step, t, gpus), t)


def targets_for(store: ClusterStore) -> list[NodeTarget]:
    return [NodeTarget(view.name, view.address) for view in store]
