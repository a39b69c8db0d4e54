"""The NVML layer against the fake NVML library (and the real pynvml where present)."""

from __future__ import annotations

import inspect
import logging

import pynvml
import pytest
from gantry.v1 import telemetry_pb2 as pb

from agent.telemetry.nvml import NvmlReader, decode_clock_event_reasons, format_cuda_version
from tests.fakes import FakeEventData, FakeNvml

ALL_OPTIONAL = (
    "gpu_util_percent",
    "mem_util_percent",
    "mem_used_bytes",
    "mem_total_bytes",
    "temperature_c",
    "power_draw_w",
    "power_limit_w",
    "sm_clock_mhz",
    "throttle_reasons",
    "ecc_corrected_volatile",
    "ecc_uncorrected_volatile",
    "ecc_corrected_aggregate",
    "ecc_uncorrected_aggregate",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "pcie_link_gen",
    "pcie_link_width",
)

NOW_NS = 1_700_000_000_123_456_789


def opened(fake: FakeNvml) -> NvmlReader:
    reader = NvmlReader(fake)
    assert reader.open() == ""
    return reader


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gantry.agent" and r.levelno == logging.WARNING
    ]


# --------------------------------------------------------------------------- the fake itself
def test_fake_has_the_real_names_constants_and_exceptions() -> None:
    fake = FakeNvml()
    names = [n for n in dir(FakeNvml) if n.startswith("nvml") or n.startswith("NVML")]
    assert names
    for name in names:
        assert hasattr(pynvml, name), f"{name} is not a pynvml name"
        value = getattr(FakeNvml, name)
        real = getattr(pynvml, name)
        if isinstance(value, int):
            assert value == real, name
        elif isinstance(value, type):
            assert value is real, name
        else:
            # same leading positional parameters as the real function
            fake_params = list(inspect.signature(getattr(fake, name)).parameters)
            real_params = list(inspect.signature(real).parameters)
            assert fake_params == real_params[: len(fake_params)], name
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_fake_figures_move_between_calls() -> None:
    fake = FakeNvml(gpu_count=1)
    fake.nvmlInit()
    h = fake.nvmlDeviceGetHandleByIndex(0)
    seen = {fake.nvmlDeviceGetUtilizationRates(h).gpu for _ in range(50)}
    assert len(seen) > 5
    assert all(0 <= u <= 100 for u in seen)


# --------------------------------------------------------------------------- reading GPUs
def test_every_figure_of_a_healthy_gpu_is_read_and_converted() -> None:
    fake = FakeNvml(gpu_count=8)
    reader = opened(fake)
    assert reader.driver_version == "570.86.15"
    assert reader.cuda_driver_version == "12.8"
    samples = reader.sample_gpus(NOW_NS)
    assert [g.index for g in samples] == list(range(8))
    for g, fg in zip(samples, fake.gpus, strict=True):
        assert g.uuid == fg.uuid and g.uuid.startswith("GPU-")
        assert g.name == "NVIDIA H100 80GB HBM3"
        assert g.error == ""
        for field in ALL_OPTIONAL:
            assert g.HasField(field), field
        assert 0.0 <= g.gpu_util_percent <= 100.0
        assert g.mem_total_bytes == 80 * 1024**3
        assert 0 < g.mem_used_bytes < g.mem_total_bytes
        assert g.power_limit_w == 700.0  # 700,000 mW
        assert 70.0 <= g.power_draw_w <= 700.0
        assert g.pcie_link_gen == 5 and g.pcie_link_width == 16
        assert g.ecc_corrected_aggregate == 2 and g.ecc_uncorrected_volatile == 0
        assert [link.link for link in g.nvlinks] == [0, 1, 2, 3]
        for link in g.nvlinks:
            assert link.HasField("active") and link.active
            assert link.HasField("replay_errors") and link.HasField("crc_errors")
            assert link.HasField("recovery_errors")


def test_units_are_converted() -> None:
    fake = FakeNvml(gpu_count=1)
    reader = opened(fake)
    h = fake.gpus[0]
    g = reader.sample_gpus(NOW_NS)[0]
    # the fake derives these from the utilization the reader just read
    util = h.util
    assert g.power_draw_w == pytest.approx(int(70_000 + util * 6_000) / 1000.0)
    tx_kb = fake.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES)
    assert g.pcie_tx_bytes_per_s == pytest.approx(tx_kb * 1024.0)
    assert g.temperature_c == float(int(32 + util * 0.45))


def test_throttle_reasons_are_decoded() -> None:
    fake = FakeNvml(gpu_count=1)
    reader = opened(fake)
    fake.gpus[0].step = lambda: None  # type: ignore[method-assign]
    fake.gpus[0].clocks_event_reasons = (
        pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    )
    g = reader.sample_gpus(NOW_NS)[0]
    assert g.throttle_reasons == 0x44
    assert list(g.throttle_reason_names) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_clock_event_reasons(0) == ()
    assert decode_clock_event_reasons(0x1 | 0x10000) == ("gpu_idle", "unknown_0x10000")
    assert format_cuda_version(12040) == "12.4"


def test_clocks_event_reasons_fall_back_to_throttle_reasons() -> None:
    fake = FakeNvml(gpu_count=2, missing={"nvmlDeviceGetCurrentClocksEventReasons"})
    reader = opened(fake)
    fake.gpus[1].step = lambda: None  # type: ignore[method-assign]
    fake.gpus[1].clocks_event_reasons = pynvml.nvmlClocksThrottleReasonHwSlowdown
    for _ in range(3):
        g = reader.sample_gpus(NOW_NS)[1]
    assert g.throttle_reasons == 0x8 and list(g.throttle_reason_names) == ["hw_slowdown"]
    # the missing function is asked once per GPU, then remembered as unsupported
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 2
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 6


def test_unsupported_fields_are_unset_not_zero_and_asked_once() -> None:
    fake = FakeNvml(
        gpu_count=8,
        unsupported={
            2: {"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPowerUsage"},
            3: {"nvmlDeviceGetPcieThroughput", "nvmlDeviceGetNvLinkState"},
            4: {"nvmlDeviceGetNvLinkErrorCounter", "nvmlDeviceGetEnforcedPowerLimit"},
        },
    )
    reader = opened(fake)
    for _ in range(5):
        samples = reader.sample_gpus(NOW_NS)
    g2, g3, g4 = samples[2], samples[3], samples[4]
    for field in ("ecc_corrected_volatile", "ecc_uncorrected_aggregate", "power_draw_w"):
        assert not g2.HasField(field)
    assert g2.HasField("power_limit_w") and g2.HasField("gpu_util_percent")
    assert not g3.HasField("pcie_tx_bytes_per_s") and not g3.HasField("pcie_rx_bytes_per_s")
    assert len(g3.nvlinks) == 0
    assert not g4.HasField("power_limit_w")
    assert len(g4.nvlinks) == 4
    for link in g4.nvlinks:
        assert link.HasField("active")
        assert not link.HasField("replay_errors") and not link.HasField("crc_errors")
    for g in (g2, g3, g4):
        assert g.error == ""
    for other in (samples[0], samples[7]):
        for field in ALL_OPTIONAL:
            assert other.HasField(field), field
    # 7 GPUs x 5 ticks x 4 counters, plus GPU 2 asking each of its 4 counters once
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 7 * 5 * 4 + 4


def test_nvlinks_stop_at_the_first_unsupported_link() -> None:
    fake = FakeNvml(gpu_count=2, nvlinks=18)
    fake.gpus[1].nvlinks = 6
    fake.gpus[1].nvlink_active = [1, 1, 0, 1, 1, 1]
    fake.gpus[1].nvlink_errors[(2, pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT)] = 7
    reader = opened(fake)
    for _ in range(3):
        a, b = reader.sample_gpus(NOW_NS)
    assert len(a.nvlinks) == 18
    assert [link.active for link in b.nvlinks] == [True, True, False, True, True, True]
    assert b.nvlinks[2].crc_errors == 7 and b.nvlinks[2].replay_errors == 0
    # discovery asked links 0..18 and 0..6 once; then only the known links each tick
    assert fake.calls["nvmlDeviceGetNvLinkState"] == (19 + 7) + 3 * (18 + 6)


def test_static_facts_are_read_once() -> None:
    fake = FakeNvml(gpu_count=8)
    reader = opened(fake)
    for _ in range(20):
        reader.sample_gpus(NOW_NS)
    assert fake.calls["nvmlDeviceGetUUID"] == 8
    assert fake.calls["nvmlDeviceGetName"] == 8
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 8
    idents = reader.identities()
    assert [i.index for i in idents] == list(range(8))
    assert idents[3].uuid == fake.gpus[3].uuid
    assert idents[3].pci_bus_id == "00000000:48:00.0"
    assert idents[3].mem_total_bytes == 80 * 1024**3


# --------------------------------------------------------------------------- failures
def test_a_gpu_without_a_handle_has_an_error_and_others_are_fine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gantry.agent")
    fake = FakeNvml(gpu_count=8, failing={5: pynvml.NVMLError_GpuIsLost})
    reader = opened(fake)
    for _ in range(10):
        samples = reader.sample_gpus(NOW_NS)
    bad = samples[5]
    assert bad.index == 5 and bad.uuid == ""
    assert "GpuIsLost" in bad.error
    for field in ALL_OPTIONAL:
        assert not bad.HasField(field)
    assert [g.error for g in samples if g.index != 5] == [""] * 7
    assert all(g.HasField("gpu_util_percent") for g in samples if g.index != 5)
    # one warning, not one per tick
    assert len([w for w in warnings(caplog) if "GPU 5" in w]) == 1
    assert reader.identities()[5].uuid == ""
    # the handle is retried: once the GPU is back, it is read again
    fake.heal_gpu(5)
    g = reader.sample_gpus(NOW_NS)[5]
    assert g.error == "" and g.uuid == fake.gpus[5].uuid and g.HasField("gpu_util_percent")
    assert reader.identities()[5].uuid == fake.gpus[5].uuid


@pytest.mark.parametrize("error", [pynvml.NVMLError_GpuIsLost, pynvml.NVMLError_Unknown])
def test_a_gpu_failing_after_start_keeps_its_identity(error: type[Exception]) -> None:
    fake = FakeNvml(gpu_count=4)
    reader = opened(fake)
    assert reader.sample_gpus(NOW_NS)[2].error == ""
    fake.fail_gpu(2, error)
    samples = reader.sample_gpus(NOW_NS)
    bad = samples[2]
    assert bad.error.startswith(error.__name__)
    assert bad.uuid == fake.gpus[2].uuid and bad.name
    assert not bad.HasField("gpu_util_percent") and len(bad.nvlinks) == 0
    assert all(g.error == "" for g in samples if g.index != 2)
    fake.heal_gpu(2)
    assert reader.sample_gpus(NOW_NS)[2].HasField("temperature_c")


def test_one_failing_field_does_not_fail_the_gpu() -> None:
    fake = FakeNvml(gpu_count=1)

    def broken(handle: object, sensor: int) -> int:
        raise pynvml.NVMLError_Unknown()

    fake.nvmlDeviceGetTemperature = broken  # type: ignore[method-assign]
    reader = opened(fake)
    for _ in range(2):
        g = reader.sample_gpus(NOW_NS)[0]
        assert g.error == "" and not g.HasField("temperature_c") and g.HasField("power_draw_w")


def test_no_driver_reports_zero_gpus_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gantry.agent")
    reader = NvmlReader(FakeNvml(no_driver=True))
    error = reader.open()
    assert "NVML Shared Library Not Found" in error
    assert reader.open() == error
    assert reader.error == error
    for _ in range(10):
        assert reader.sample_gpus(NOW_NS) == []
        assert reader.poll_xid_events(NOW_NS) == []
    assert reader.identities() == [] and reader.gpu_count == 0
    assert reader.driver_version == ""
    assert len(warnings(caplog)) == 1
    reader.close()


def test_close_frees_events_and_shuts_down() -> None:
    fake = FakeNvml(gpu_count=2)
    reader = opened(fake)
    assert fake.initialized == 1
    reader.close()
    assert fake.initialized == 0
    assert fake.event_sets[0].freed
    assert reader.open() == ""  # open again after close
    assert fake.initialized == 1 and reader.gpu_count == 2
    reader.close()


def test_real_pynvml_never_raises() -> None:
    """The default library: no driver here means zero GPUs; a GPU machine reads them."""
    reader = NvmlReader()
    error = reader.open()
    try:
        samples = reader.sample_gpus(NOW_NS)
        if error:
            assert samples == [] and reader.identities() == []
        else:
            assert len(samples) == reader.gpu_count
            assert all(g.uuid for g in samples if not g.error)
    finally:
        reader.close()


# --------------------------------------------------------------------------- XID events
def test_xid_events_every_occurrence_is_kept_and_counted() -> None:
    fake = FakeNvml(gpu_count=4)
    reader = opened(fake)
    fake.fire_xid(1, 79)
    fake.fire_xid(1, 79)
    fake.fire_xid(3, 48)
    samples = reader.sample_gpus(NOW_NS)
    new = reader.take_xid_events()
    assert [(e.gpu_index, e.xid) for e in new] == [(1, 79), (1, 79), (3, 48)]
    assert new[0].gpu_uuid == fake.gpus[1].uuid
    assert new[0].time.ToNanoseconds() == NOW_NS
    assert dict(samples[1].xid_counts) == {79: 2}
    assert dict(samples[3].xid_counts) == {48: 1}
    assert len(samples[0].xid_counts) == 0
    assert reader.take_xid_events() == []  # each event is handed out once
    fake.fire_xid(1, 79)
    samples = reader.sample_gpus(NOW_NS + 1)
    assert dict(samples[1].xid_counts) == {79: 3}
    assert [e.xid for e in reader.take_xid_events()] == [79]
    recent = reader.xid_events()
    assert [(e.gpu_index, e.xid) for e in recent] == [(1, 79), (1, 79), (3, 48), (1, 79)]
    assert reader.xid_counts(1) == {79: 3}


def test_xid_history_is_bounded() -> None:
    fake = FakeNvml(gpu_count=1)
    reader = NvmlReader(fake, xid_history=5)
    assert reader.open() == ""
    for code in range(12):
        fake.fire_xid(0, code)
    reader.sample_gpus(NOW_NS)
    assert [e.xid for e in reader.xid_events()] == [7, 8, 9, 10, 11]
    assert sum(reader.xid_counts(0).values()) == 12


def test_a_gpu_refusing_event_registration_is_skipped() -> None:
    fake = FakeNvml(gpu_count=3, unsupported={1: {"nvmlDeviceRegisterEvents"}})
    reader = opened(fake)
    fake.fire_xid(1, 13)  # not registered: NVML would not report it
    fake.fire_xid(2, 31)
    samples = reader.sample_gpus(NOW_NS)
    assert [(e.gpu_index, e.xid) for e in reader.take_xid_events()] == [(2, 31)]
    assert samples[1].error == "" and samples[1].HasField("gpu_util_percent")


def test_xid_events_on_a_failed_gpu_are_still_counted() -> None:
    fake = FakeNvml(gpu_count=2)
    reader = opened(fake)
    reader.sample_gpus(NOW_NS)
    fake.fire_xid(0, 79)
    fake.fail_gpu(0)
    g = reader.sample_gpus(NOW_NS)[0]
    assert g.error and dict(g.xid_counts) == {79: 1}


def test_xid_event_from_an_unknown_handle_is_kept() -> None:
    fake = FakeNvml(gpu_count=1)
    reader = opened(fake)
    stranger = FakeNvml(gpu_count=1, seed=99)
    stranger.nvmlInit()
    fake.nvmlDeviceGetUUID = stranger.nvmlDeviceGetUUID  # type: ignore[method-assign]
    fake.event_sets[0].queue.append(
        FakeEventData(stranger.gpus[0], pynvml.nvmlEventTypeXidCriticalError, 94)
    )
    events = reader.poll_xid_events(NOW_NS)
    assert [(e.xid, e.gpu_uuid) for e in events] == [(94, "")]
    assert isinstance(events[0], pb.XidEvent)
