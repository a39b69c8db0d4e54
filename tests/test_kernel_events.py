"""Kernel-log facts in the node's telemetry: kernel XIDs beside NVML's (one occurrence, not
two), XIDs on a node without a GPU, GPUs that fail to start, and the kernel hook."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from gantry.v1 import telemetry_pb2 as pb

from agent.telemetry.kernel_events import KernelEvents, KernelNotice
from agent.telemetry.kernel_follow import KernelLogFollower
from agent.telemetry.kernel_log import GpuInitFailure, KernelOomKill, KernelXid
from agent.telemetry.nvml import NvmlReader
from agent.telemetry.sampler import Sampler
from tests.fakes import FakeNvml
from tests.test_kernel_log import OOM_KILLED, RM_INIT_SYSLOG, XID_79, wait_until

T0 = 1_750_000_000_000_000_000
S = 1_000_000_000
GPU1_PCI = "0000:28:00"  # the fake's GPU 1 (bus 0x18 + 0x10 per index)


class WallClock:
    def __init__(self) -> None:
        self.ns = T0

    def __call__(self) -> int:
        return self.ns


Node = tuple[Sampler, FakeNvml, WallClock]


@pytest.fixture
def node() -> Iterator[tuple[Sampler, FakeNvml, WallClock]]:
    fake, wall = FakeNvml(gpu_count=4), WallClock()
    sampler = Sampler("node-a", nvml_lib=fake, clock=lambda: wall.ns / 1e9, wall_clock_ns=wall)
    sampler.sample_once()
    yield sampler, fake, wall
    sampler.stop()


def xid(code: int, pci: str = GPU1_PCI, pid: int | None = 4242) -> KernelXid:
    return KernelXid(pci, code, pid, "python", f"NVRM: Xid (PCI:{pci}): {code}, pid={pid}")


def test_nvml_knows_each_gpus_pci_address() -> None:
    reader = NvmlReader(FakeNvml(gpu_count=4))
    assert reader.open() == ""
    assert reader.gpu_for_pci("00000000:28:00.0") == 1
    assert reader.gpu_for_pci("PCI:0000:28:00") == 1 and reader.gpu_for_pci("0000:48:00") == 3
    assert reader.gpu_for_pci("0000:99:00") is None and reader.gpu_for_pci("") is None
    assert reader.gpu_uuid(1).startswith("GPU-") and reader.gpu_uuid(9) == ""


def test_a_kernel_xid_and_nvmls_event_are_one_occurrence(node: Node) -> None:
    sampler, fake, wall = node
    notice = sampler._kernel.add(xid(79), wall.ns)
    assert (notice.gpu_index, notice.xid and notice.xid.action) == (1, "drain_node")
    fake.fire_xid(1, 79)
    wall.ns += S
    events = list(sampler.sample_once().xid_events)
    assert len(events) == 1
    event = events[0]
    assert (event.source, event.gpu_index, event.gpu_known, event.xid) == ("nvml", 1, True, 79)
    assert (event.pid, event.pci_bus_id) == (4242, GPU1_PCI) and event.text.startswith("NVRM")
    # NVML's event first, the kernel's line a tick later: still one.
    fake.fire_xid(1, 48)
    wall.ns += S
    assert [e.xid for e in sampler.sample_once().xid_events] == [48]
    sampler.on_kernel_event(xid(48))
    wall.ns += S
    assert list(sampler.sample_once().xid_events) == []
    # A kernel line without an NVML twin (events off, or a repeat) is kept as the kernel's.
    sampler.on_kernel_event(xid(48))
    wall.ns += 6 * S
    (alone,) = sampler.sample_once().xid_events
    assert (alone.source, alone.gpu_known, alone.gpu_index, alone.xid) == ("kernel", True, 1, 48)
    assert alone.gpu_uuid == fake.gpus[1].uuid
    assert [e.xid for e in sampler.xid_events()] == [79, 48, 48]


def test_twins_are_paired_one_to_one_and_only_within_the_window() -> None:
    events = KernelEvents(lambda pci: 1 if pci == GPU1_PCI else None, lambda i: "GPU-x")
    for _ in range(2):
        events.add(xid(31), T0)
    nvml = pb.XidEvent(xid=31, source="nvml", gpu_index=1, gpu_known=True)
    nvml.time.FromNanoseconds(T0)
    out = events.merge([nvml], T0)
    assert [e.source for e in out] == ["nvml", "kernel"]  # two kernel lines, one NVML event
    late = pb.XidEvent(xid=31, source="nvml", gpu_index=1, gpu_known=True)
    late.time.FromNanoseconds(T0 + 6 * S)
    assert [e.source for e in events.merge([late], T0 + 6 * S)] == ["nvml"]


def test_a_node_without_a_gpu_still_records_kernel_xids(tmp_path: Path) -> None:
    wall = WallClock()
    sampler = Sampler(
        "cpu-node", nvml_lib=FakeNvml(no_driver=True), clock=lambda: 1.0, wall_clock_ns=wall
    )
    try:
        log_file = tmp_path / "kern.log"
        log_file.write_text(XID_79 + "\n")
        assert (
            sampler.attach_kernel_log(
                KernelLogFollower.follow_file(str(log_file), sampler.on_kernel_event)
            )
            == "file"
        )
        info = sampler.node_info()
        assert (info.kernel_log_source, info.kernel_log_error) == ("file", "")
        assert wait_until(lambda: bool(sampler._kernel._pending))
        sample = sampler.sample_once()
        (event,) = sample.xid_events
        assert (event.source, event.gpu_known, event.xid) == ("kernel", False, 79)
        assert (event.pci_bus_id, event.pid) == ("0000:c6:00", 1101234)
        assert "fallen off the bus" in event.text
        assert len(sample.gpus) == 0
    finally:
        sampler.stop()
    assert sampler.node_info().kernel_log_source == "none"


def test_kernel_hook_gets_every_fact_with_its_gpu(node: Node) -> None:
    sampler, _fake, _wall = node
    got: list[KernelNotice] = []
    unsubscribe = sampler.subscribe_kernel(got.append)

    def broken(notice: KernelNotice) -> None:
        raise RuntimeError("subscriber bug")

    sampler.subscribe_kernel(broken)  # logged, not fatal
    oom = KernelOomKill(698405, "python", 12918388, OOM_KILLED)
    for item in (xid(79), oom, xid(13, pci="0000:99:00")):
        sampler.on_kernel_event(item)
    assert [(n.item, n.gpu_index, n.time_ns) for n in got] == [
        (xid(79), 1, T0),
        (oom, None, T0),
        (xid(13, pci="0000:99:00"), None, T0),
    ]
    assert got[0].gpu_uuid.startswith("GPU-") and got[1].xid is None
    assert got[2].xid is not None and got[2].xid.action == "restart_job"
    unsubscribe()
    sampler.on_kernel_event(xid(79))
    assert len(got) == 3


def test_gpus_that_cannot_be_opened_or_started_do_not_vanish() -> None:
    fake, wall = FakeNvml(gpu_count=3, failing={2: pynvml.NVMLError_GpuIsLost}), WallClock()
    sampler = Sampler("node-a", nvml_lib=fake, clock=lambda: 1.0, wall_clock_ns=wall)
    try:
        sample = sampler.sample_once()
        assert [g.index for g in sample.gpus] == [0, 1, 2]
        assert "GpuIsLost" in sample.gpus[2].error
        assert list(sample.gpu_problems) == [f"GPU 2: {sample.gpus[2].error}"]
        # The kernel says a GPU NVML does not list failed to start: it appears, failed.
        sampler.on_kernel_event(GpuInitFailure("0000:0a:00", RM_INIT_SYSLOG.split("] ")[1]))
        # ... and that GPU 1 fell off the bus; NVML still reads it, so it is back.
        sampler.on_kernel_event(GpuInitFailure("0000:28:00", "NVRM: GPU 0000:28:00.0: lost"))
        sample = sampler.sample_once()
        assert [g.index for g in sample.gpus] == [0, 1, 2, 3]
        ghost = sample.gpus[3]
        assert ghost.name == "PCI 0000:0a:00" and "RmInitAdapter failed!" in ghost.error
        assert sample.gpus[1].error == ""
        assert sample.gpu_problems[1] == (
            "PCI 0000:0a:00: NVRM: GPU 0000:0a:00.0: RmInitAdapter failed! (0x24:0x72:1568)"
        )
        assert len(sample.gpu_problems) == 2
        fake.fail_gpu(1)
        sampler.on_kernel_event(GpuInitFailure("0000:28:00", "NVRM: GPU 0000:28:00.0: lost"))
        sample = sampler.sample_once()
        assert sample.gpu_problems[0].startswith("GPU 1: ")
        assert sample.gpu_problems[0].endswith("(kernel: NVRM: GPU 0000:28:00.0: lost)")
    finally:
        sampler.stop()
