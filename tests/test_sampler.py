"""The sampler against the fake NVML library: samples, ring buffer, thread, subscribers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
from gantry.v1 import telemetry_pb2 as pb

from agent.telemetry.host import HostReader, _rate
from agent.telemetry.ring import Ring
from agent.telemetry.sampler import Sampler
from tests.fakes import FakeNvml

WALL_NS = 1_750_000_000_000_000_000


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def wall_ns(clock: ManualClock) -> int:
    return WALL_NS + int((clock.t - 1000.0) * 1e9)


@pytest.fixture
def samplers() -> Iterator[list[Sampler]]:
    """Collects the samplers a test makes and stops them all afterwards."""
    made: list[Sampler] = []
    yield made
    for sampler in made:
        sampler.stop()


def make(
    samplers: list[Sampler],
    fake: FakeNvml | None = None,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> Sampler:
    clk = clock or ManualClock()
    sampler = Sampler(
        "node-a",
        nvml_lib=fake if fake is not None else FakeNvml(),
        clock=clk,
        wall_clock_ns=lambda: wall_ns(clk),
        **kwargs,
    )
    samplers.append(sampler)
    return sampler


def gantry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gantry.agent" and r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- one sample
def test_sample_has_node_host_and_gpus(samplers: list[Sampler]) -> None:
    clock = ManualClock()
    sampler = make(samplers, FakeNvml(gpu_count=8), clock)
    assert sampler.latest() is None
    first = sampler.sample_once()
    clock.advance(1.0)
    second = sampler.sample_once()
    assert first.node_name == "node-a"
    assert (first.seq, second.seq) == (1, 2)
    assert first.time.ToNanoseconds() == WALL_NS
    assert second.time.ToNanoseconds() == WALL_NS + 1_000_000_000
    assert len(second.gpus) == 8 and all(g.error == "" for g in second.gpus)
    host = second.host
    assert host.cpu_count >= 1
    assert 0 < host.mem_used_bytes < host.mem_total_bytes
    assert 0.0 <= host.cpu_percent <= 100.0
    assert host.load1 >= 0.0 and host.net_rx_bytes_per_s >= 0.0
    assert sampler.latest() is second
    assert [s.seq for s in sampler.history()] == [1, 2]


def test_unsupported_fields_unset_and_a_failing_gpu(samplers: list[Sampler]) -> None:
    fake = FakeNvml(
        gpu_count=8,
        unsupported={1: {"nvmlDeviceGetTotalEccErrors"}, 6: {"nvmlDeviceGetTemperature"}},
        failing={4: pynvml.NVMLError_Unknown},
    )
    sampler = make(samplers, fake)
    sample = sampler.sample_once()
    g1, g4, g6 = sample.gpus[1], sample.gpus[4], sample.gpus[6]
    assert not g1.HasField("ecc_corrected_volatile")
    assert not g1.HasField("ecc_uncorrected_aggregate")
    assert g1.HasField("temperature_c") and g1.temperature_c > 0
    assert not g6.HasField("temperature_c") and g6.HasField("ecc_corrected_volatile")
    assert g4.index == 4 and "Unknown" in g4.error
    assert not g4.HasField("gpu_util_percent")
    assert [g.index for g in sample.gpus if g.error] == [4]
    assert sample.gpus[0].HasField("ecc_corrected_volatile")


def test_xid_events_appear_in_exactly_one_sample(samplers: list[Sampler]) -> None:
    fake = FakeNvml(gpu_count=8)
    sampler = make(samplers, fake)
    assert len(sampler.sample_once().xid_events) == 0
    fake.fire_xid(3, 79)
    fake.fire_xid(3, 79)
    with_events = sampler.sample_once()
    assert [(e.gpu_index, e.xid) for e in with_events.xid_events] == [(3, 79), (3, 79)]
    assert with_events.xid_events[0].gpu_uuid == fake.gpus[3].uuid
    assert dict(with_events.gpus[3].xid_counts) == {79: 2}
    after = sampler.sample_once()
    assert len(after.xid_events) == 0
    assert dict(after.gpus[3].xid_counts) == {79: 2}  # cumulative
    fake.fire_xid(3, 79)
    again = sampler.sample_once()
    assert len(again.xid_events) == 1 and dict(again.gpus[3].xid_counts) == {79: 3}
    assert sum(len(s.xid_events) for s in sampler.history()) == 3
    assert [e.xid for e in sampler.xid_events()] == [79, 79, 79]


def test_no_driver_zero_gpus_host_present_warning_once(
    samplers: list[Sampler], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gantry.agent")
    clock = ManualClock()
    sampler = make(samplers, FakeNvml(no_driver=True), clock)
    for _ in range(50):
        sample = sampler.sample_once()
        clock.advance(1.0)
        assert len(sample.gpus) == 0
        assert sample.host.mem_total_bytes > 0 and sample.host.cpu_count >= 1
    info = sampler.node_info()
    assert info.gpu_count == 0 and len(info.gpus) == 0
    assert info.accelerator == "cpu"
    assert "Not Found" in info.nvml_error
    assert info.driver_version == ""
    records = gantry_warnings(caplog)
    assert len(records) == 1 and "NVML" in records[0].getMessage()


def test_node_info(samplers: list[Sampler]) -> None:
    fake = FakeNvml(gpu_count=8)
    sampler = make(samplers, fake, interval_s=2.0, history_s=60.0)
    info = sampler.node_info()
    assert info.node_name == "node-a" and info.hostname
    assert info.agent_version
    assert info.agent_started.ToNanoseconds() == WALL_NS
    assert info.driver_version == "570.86.15" and info.cuda_driver_version == "12.8"
    assert info.nvml_error == ""
    assert info.gpu_count == 8 and info.accelerator == "cuda"
    assert [g.uuid for g in info.gpus] == [g.uuid for g in fake.gpus]
    assert info.cpu_count >= 1 and info.mem_total_bytes > 0
    assert (info.sample_interval_s, info.history_s) == (2.0, 60.0)
    # identity is static: asking again costs no NVML call
    sampler.node_info()
    sampler.sample_once()
    assert fake.calls["nvmlDeviceGetUUID"] == 8


# --------------------------------------------------------------------------- history
def test_history_is_trimmed_by_age(samplers: list[Sampler]) -> None:
    clock = ManualClock()
    sampler = make(samplers, FakeNvml(gpu_count=1), clock, interval_s=1.0, history_s=10.0)
    for _ in range(30):
        sampler.sample_once()
        clock.advance(1.0)
    # ticks at t=1000..1029; the newest is 1029, so those from 1019 on are kept
    seqs = [s.seq for s in sampler.history()]
    assert seqs == list(range(20, 31))
    clock.t = 1029.0
    assert [s.seq for s in sampler.history(5.0)] == list(range(25, 31))
    assert [s.seq for s in sampler.history(0)] == seqs
    # a gap longer than the history drops everything older on the next tick
    clock.advance(100.0)
    sampler.sample_once()
    assert [s.seq for s in sampler.history()] == [31]


def test_ring_bounds() -> None:
    ring: Ring[str] = Ring(history_s=5.0, interval_s=1.0)
    assert ring.maxlen == 7
    assert ring.latest() is None and len(ring) == 0
    for i in range(20):  # ten per second: the count bound holds even if time does not pass
        ring.append(100.0 + i / 10, f"x{i}")
    assert len(ring) == 7 and ring.items()[0] == "x13" and ring.latest() == "x19"
    ring.append(200.0, "late")
    assert ring.items() == ["late"]
    ring.append(203.0, "a")
    ring.append(205.0, "b")
    assert ring.items(since=203.0) == ["a", "b"]
    assert ring.items(since=206.0) == []
    ring.append(210.0, "c")  # 205.0 is exactly 5 s old: kept
    assert ring.items() == ["b", "c"]
    ring.clear()
    assert len(ring) == 0
    with pytest.raises(ValueError):
        Ring(history_s=0)


# --------------------------------------------------------------------------- subscribers
def test_subscribe_unsubscribe_and_a_raising_callback(
    samplers: list[Sampler], caplog: pytest.LogCaptureFixture
) -> None:
    sampler = make(samplers, FakeNvml(gpu_count=2))
    got: list[int] = []
    calls = [0]

    def bad(sample: pb.NodeSample) -> None:
        calls[0] += 1
        raise RuntimeError("subscriber bug")

    unsubscribe_bad = sampler.subscribe(bad)
    unsubscribe = sampler.subscribe(lambda s: got.append(s.seq))
    for _ in range(3):
        sampler.sample_once()
    assert got == [1, 2, 3] and calls[0] == 3
    # logged once with its traceback, not on every tick
    failures = [r for r in gantry_warnings(caplog) if "subscriber" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    unsubscribe()
    unsubscribe()  # idempotent
    sampler.sample_once()
    assert got == [1, 2, 3] and calls[0] == 4
    unsubscribe_bad()
    sampler.sample_once()
    assert calls[0] == 4


def test_thread_ticks_survives_a_raising_callback_and_stops_promptly(
    samplers: list[Sampler],
) -> None:
    fake = FakeNvml(gpu_count=8)
    sampler = Sampler("node-b", nvml_lib=fake, interval_s=0.02)
    samplers.append(sampler)
    seen = threading.Event()
    seqs: list[int] = []

    def collect(sample: pb.NodeSample) -> None:
        seqs.append(sample.seq)
        if len(seqs) >= 6:
            seen.set()

    def bad(sample: pb.NodeSample) -> None:
        raise ValueError("boom")

    sampler.subscribe(bad)
    sampler.subscribe(collect)
    sampler.start()
    first = sampler.latest()
    assert first is not None and first.seq == 1  # start() samples synchronously
    assert sampler.running
    threads = [t for t in threading.enumerate() if t.name == "gantry-sampler-node-b"]
    assert len(threads) == 1 and threads[0].daemon
    assert seen.wait(2.0), "the sampler thread did not tick"
    t0 = time.monotonic()
    sampler.stop()
    assert time.monotonic() - t0 < 1.0
    assert not sampler.running and not threads[0].is_alive()
    assert fake.initialized == 0  # nvmlShutdown was called
    assert seqs[:6] == list(range(1, 7))
    count = len(seqs)
    time.sleep(0.06)
    assert len(seqs) == count  # no tick after stop
    sampler.stop()  # idempotent


def test_thread_keeps_a_fixed_rate(samplers: list[Sampler]) -> None:
    sampler = Sampler("node-c", nvml_lib=FakeNvml(gpu_count=1), interval_s=0.05)
    samplers.append(sampler)
    times: list[float] = []
    done = threading.Event()

    def on_sample(sample: pb.NodeSample) -> None:
        times.append(time.monotonic())
        if len(times) >= 11:
            done.set()

    sampler.subscribe(on_sample)
    sampler.start()
    assert done.wait(2.0)
    sampler.stop()
    # ten intervals after the first sample: a drifting loop would take longer
    elapsed = times[10] - times[0]
    assert 0.45 <= elapsed < 0.9


def test_tick_cost_is_small(samplers: list[Sampler]) -> None:
    sampler = make(samplers, FakeNvml(gpu_count=8))
    sampler.sample_once()
    n = 50
    t0 = time.process_time()
    for _ in range(n):
        sampler.sample_once()
    per_tick = (time.process_time() - t0) / n
    assert per_tick < 0.010, f"{per_tick * 1e3:.2f} ms CPU per tick"


# --------------------------------------------------------------------------- host
def test_host_rates_between_calls() -> None:
    reader = HostReader()
    first = reader.sample(10.0)
    assert first.net_rx_bytes_per_s == 0.0 and first.disk_write_bytes_per_s == 0.0
    second = reader.sample(11.0)
    for value in (
        second.net_rx_bytes_per_s,
        second.net_tx_bytes_per_s,
        second.disk_read_bytes_per_s,
        second.disk_write_bytes_per_s,
    ):
        assert value >= 0.0
    same_time = reader.sample(11.0)  # no time passed: no rate rather than a division by 0
    assert same_time.net_rx_bytes_per_s == 0.0
    assert reader.cpu_count == second.cpu_count >= 1
    assert reader.mem_total_bytes == second.mem_total_bytes
    assert len(second.ListFields()) >= 5
    assert _rate(3_000, 1_000, 2.0) == 1_000.0
    assert _rate(10, 50, 1.0) == 0.0  # a counter reset is not a negative rate


def test_stop_from_a_subscriber_ends_the_thread(samplers: list[Sampler]) -> None:
    fake = FakeNvml(gpu_count=1)
    sampler = Sampler("node-d", nvml_lib=fake, interval_s=0.01)
    samplers.append(sampler)
    stopped = threading.Event()

    def stop_at_three(sample: pb.NodeSample) -> None:
        if sample.seq == 3:
            sampler.stop()
            stopped.set()

    sampler.subscribe(stop_at_three)
    sampler.start()
    assert stopped.wait(2.0)
    deadline = time.monotonic() + 2.0
    while sampler.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not sampler.running
    latest = sampler.latest()
    assert latest is not None and latest.seq == 3
    sampler.stop()
    assert fake.initialized == 0
