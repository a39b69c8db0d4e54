"""The Prometheus endpoint: a real HTTP scrape on 127.0.0.1 of a sampler on the fake NVML."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pynvml
import pytest
from prometheus_client import REGISTRY

from agent.telemetry.prometheus import make_registry, start_metrics_server
from agent.telemetry.sampler import Sampler
from tests.fakes import FakeNvml


@pytest.fixture
def sampler() -> Iterator[Sampler]:
    fake = FakeNvml(
        gpu_count=8,
        unsupported={2: {"nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetPowerUsage"}},
        failing={6: pynvml.NVMLError_GpuIsLost},
    )
    s = Sampler("node-a", nvml_lib=fake)
    s.sample_once()
    fake.fire_xid(1, 79)
    fake.fire_xid(1, 79)
    s.sample_once()
    yield s
    s.stop()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
    return body.decode()


def series(text: str, name: str) -> dict[str, float]:
    """``{label text: value}`` of one metric in the exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def gpu_of(label_text: str) -> str:
    m = re.search(r'gpu="(\d+)"', label_text)
    assert m is not None, label_text
    return m.group(1)


def gpu_labels(text: str, name: str) -> set[str]:
    return {gpu_of(k) for k in series(text, name)}


def test_scrape_over_http(sampler: Sampler) -> None:
    server, thread, port = start_metrics_server(sampler, 0)
    try:
        assert port > 0 and thread.daemon and thread.is_alive()
        text = scrape(port)
    finally:
        server.shutdown()
        server.server_close()
    latest = sampler.latest()
    assert latest is not None
    g0 = latest.gpus[0]

    util = series(text, "gantry_gpu_utilization_percent")
    key = f'{{gpu="0",node="node-a",uuid="{g0.uuid}"}}'
    assert util[key] == g0.gpu_util_percent
    for name in (
        "gantry_gpu_memory_used_bytes",
        "gantry_gpu_memory_total_bytes",
        "gantry_gpu_temperature_celsius",
        "gantry_gpu_power_draw_watts",
        "gantry_gpu_power_limit_watts",
        "gantry_gpu_sm_clock_hertz",
        "gantry_gpu_pcie_link_generation",
    ):
        assert series(text, name), name
    assert series(text, "gantry_gpu_sm_clock_hertz")[key] == g0.sm_clock_mhz * 1e6
    assert series(text, "gantry_gpu_memory_total_bytes")[key] == 80 * 1024**3

    # unsupported on GPU 2: omitted there, present elsewhere; GPU 6 cannot be read at all
    assert gpu_labels(text, "gantry_gpu_power_draw_watts") == {"0", "1", "3", "4", "5", "7"}
    assert gpu_labels(text, "gantry_gpu_power_limit_watts") == {"0", "1", "2", "3", "4", "5", "7"}
    ecc = series(text, "gantry_gpu_ecc_errors_total")
    assert "2" not in {gpu_of(k) for k in ecc}
    assert (
        ecc[f'{{counter="aggregate",gpu="0",node="node-a",type="corrected",uuid="{g0.uuid}"}}'] == 2
    )
    assert len(ecc) == 6 * 4
    up = series(text, "gantry_gpu_up")
    assert sorted(up.values()) == [0.0] + [1.0] * 7
    assert up[f'{{gpu="6",node="node-a",uuid="{latest.gpus[6].uuid}"}}'] == 0.0

    xid = series(text, "gantry_gpu_xid_errors_total")
    uuid1 = latest.gpus[1].uuid
    assert xid == {f'{{gpu="1",node="node-a",uuid="{uuid1}",xid="79"}}': 2.0}

    assert len(series(text, "gantry_gpu_nvlink_active")) == 7 * 4
    assert len(series(text, "gantry_gpu_nvlink_errors_total")) == 7 * 4 * 3

    host = latest.host
    assert series(text, "gantry_node_cpu_count") == {'{node="node-a"}': float(host.cpu_count)}
    for name in (
        "gantry_node_cpu_percent",
        "gantry_node_load1",
        "gantry_node_load5",
        "gantry_node_load15",
        "gantry_node_memory_used_bytes",
        "gantry_node_memory_total_bytes",
        "gantry_node_network_receive_bytes_per_second",
        "gantry_node_network_transmit_bytes_per_second",
        "gantry_node_disk_read_bytes_per_second",
        "gantry_node_disk_write_bytes_per_second",
        "gantry_node_sample_seq",
    ):
        assert list(series(text, name)) == ['{node="node-a"}'], name
    assert "# TYPE gantry_gpu_ecc_errors_total counter" in text
    assert "# TYPE gantry_gpu_utilization_percent gauge" in text


def test_scrape_reads_the_latest_sample_each_time(sampler: Sampler) -> None:
    registry = make_registry(sampler)
    latest = sampler.latest()
    assert latest is not None
    labels = {"node": "node-a", "gpu": "3", "uuid": latest.gpus[3].uuid}
    assert registry.get_sample_value("gantry_node_sample_seq", {"node": "node-a"}) == 2
    assert registry.get_sample_value("gantry_gpu_utilization_percent", labels) == (
        latest.gpus[3].gpu_util_percent
    )
    new = sampler.sample_once()
    assert registry.get_sample_value("gantry_node_sample_seq", {"node": "node-a"}) == 3
    assert registry.get_sample_value("gantry_gpu_temperature_celsius", labels) == (
        new.gpus[3].temperature_c
    )
    # the process-wide registry is left alone
    assert REGISTRY.get_sample_value("gantry_node_sample_seq", {"node": "node-a"}) is None


def test_nothing_before_the_first_sample_and_no_gpus_without_a_driver() -> None:
    empty = Sampler("node-z", nvml_lib=FakeNvml(no_driver=True))
    server, _thread, port = start_metrics_server(empty, 0, "127.0.0.1")
    try:
        assert "gantry_" not in scrape(port)
        empty.sample_once()
        text = scrape(port)
    finally:
        server.shutdown()
        server.server_close()
        empty.stop()
    assert series(text, "gantry_node_memory_total_bytes")
    assert "gantry_gpu_" not in text
