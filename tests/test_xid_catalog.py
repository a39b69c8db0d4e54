"""The XID catalogue shared by the agent and the console (gantry.v1.xid_catalog)."""

from __future__ import annotations

import pytest
from gantry.v1.telemetry_pb2 import GpuSample, NodeSample, XidEvent
from gantry.v1.xid_catalog import (
    ACTION_TEXT,
    ACTIONS,
    CATALOG_URL,
    SEVERITIES,
    known_codes,
    xid_info,
    xid_info_for_line,
)

from console.model.node_gpus import xid_counts, xid_label, xid_row, xid_style, xid_where

# The codes the issue names: each must carry NVIDIA's description and an action.
REQUIRED = (13, 31, 32, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 109, 119, 120)
REQUIRED += (121, 136, 140, 143, *range(144, 151), 154, 155)


@pytest.mark.parametrize("code", REQUIRED)
def test_every_required_code_is_described(code: int) -> None:
    info = xid_info(code)
    assert info.code == code
    assert info.name != "UNKNOWN_XID" and info.name.isupper()
    assert info.description and "not in Gantry's catalogue" not in info.description
    assert info.action in ACTIONS and info.severity in SEVERITIES
    assert info.action_text == ACTION_TEXT[info.action]


def test_entries_follow_nvidias_catalogue() -> None:
    # Immediate actions from https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html
    fallen = xid_info(79)
    assert fallen.description == "GPU has fallen off the bus"
    assert (fallen.action, fallen.severity, fallen.fatal) == ("drain_node", "critical", True)
    assert fallen.summary() == "Xid 79 GPU has fallen off the bus: drain the node and reboot it"
    assert (xid_info(48).action, xid_info(48).fatal) == ("reset_gpu", True)  # double-bit ECC
    assert xid_info(95).action == "reset_gpu"  # uncontained memory error
    assert xid_info(94).action == "restart_job" and not xid_info(94).fatal  # contained
    assert xid_info(13).action == "restart_job" and xid_info(31).severity == "warning"
    assert (xid_info(45).action, xid_info(45).severity) == ("none", "info")  # follows others
    assert xid_info(92).action == "report"
    assert xid_info(145).name == "NVLINK_RLW_ERROR" and "RLW" in xid_info(145).description
    assert xid_info(149).name == "NVLINK_NETIR_ERROR"
    assert xid_info(119).description == "GSP RPC Timeout" and xid_info(119).fatal
    assert known_codes() == tuple(sorted(known_codes())) and set(REQUIRED) <= set(known_codes())


def test_an_unknown_code_points_to_nvidias_catalogue() -> None:
    info = xid_info(9999)
    assert (info.code, info.action, info.severity) == (9999, "report", "warning")
    assert CATALOG_URL in info.description and "9999" in info.description
    assert not info.fatal


def test_nvlink5_lines_say_whether_they_were_fatal() -> None:
    # https://github.com/leptonai/gpud/pull/1174 (kmsg input quoted in the description)
    nonfatal = (
        "NVRM: Xid (PCI:0018:01:00): 145, RLW_RXPIPE Nonfatal XC0 i0 Link 13 "
        "(0x0409a0c2 0x00000008 0x00000001 0x00000000 0x00100000 0x00000004)"
    )
    fatal = (
        "NVRM: Xid (PCI:0000:00:00): 149, NETIR_LINK_EVT Fatal XC0 i0 Link 00 "
        "(0x025001c6 0x00000000 0x00000000 0x00000000 0x00000000 0x00000000)"
    )
    quiet = xid_info_for_line(145, nonfatal)
    assert (quiet.action, quiet.severity) == ("none", "warning")
    loud = xid_info_for_line(149, fatal)
    assert (loud.action, loud.severity, loud.fatal) == ("reset_gpu", "critical", True)
    assert xid_info_for_line(149, "no verdict in this text") == xid_info(149)


@pytest.mark.parametrize(
    ("wanted", "action", "severity"),
    [
        ("Node Reboot Required", "drain_node", "critical"),
        ("OS Reboot", "drain_node", "critical"),
        ("GPU Reset Required", "reset_gpu", "critical"),
        ("Drain and Reset", "reset_gpu", "critical"),
        ("None", "none", "info"),
    ],
)
def test_xid_154_takes_the_recovery_it_names(wanted: str, action: str, severity: str) -> None:
    # Shaped after the driver's wording (Xid 154 "Node Reboot Required" in the kernel log of
    # https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1134); the recovery varies.
    line = (
        "NVRM: Xid (PCI:0000:01:00): 154, GPU recovery action changed from 0x0 (None) "
        f"to 0x2 ({wanted})"
    )
    info = xid_info_for_line(154, line)
    assert (info.action, info.severity) == (action, severity)
    assert wanted in info.description
    assert xid_info_for_line(79, line) == xid_info(79)  # other codes: the catalogue as is


# --------------------------------------------------------------------------- the console's view
def event(code: int, source: str, gpu: int | None, pci: str = "", pid: int = 0) -> XidEvent:
    return XidEvent(
        xid=code,
        source=source,
        gpu_index=gpu or 0,
        gpu_known=gpu is not None,
        pci_bus_id=pci,
        pid=pid,
    )


def test_the_console_names_xids_from_the_catalogue() -> None:
    assert xid_label(79) == "GPU has fallen off the bus · drain the node and reboot it"
    assert xid_label(145).startswith("NVLINK: RLW Error")
    assert (xid_style(79), xid_style(13), xid_style(45)) == ("$error", "$warning", "$text-muted")
    row = xid_row(event(79, "kernel", 3, "0000:3b:00", pid=1234))
    assert row.startswith("GPU 3 ") and "[$error]79[/]" in row
    assert "kernel pid 1234 · GPU has fallen off the bus" in row
    assert xid_row(event(13, "", 1)).startswith("GPU 1 ")  # an old agent's event: NVML's
    assert "nvml · Graphics Engine Exception" in xid_row(event(13, "", 1))


def test_kernel_xids_without_a_gpu_are_node_events() -> None:
    assert xid_where(event(79, "kernel", None, "0000:c6:00")) == "PCI 0000:c6:00"
    assert xid_where(event(79, "kernel", None)) == "node"
    sample = NodeSample(gpus=[GpuSample(index=1)])
    sample.gpus[0].xid_counts[13] = 2
    events = [
        event(13, "nvml", 1),
        event(13, "kernel", 1),  # counted by NVML for GPU 1 already
        event(79, "kernel", None, "0000:c6:00"),
        event(48, "kernel", 1),  # NVML never counted 48 on GPU 1
    ]
    assert xid_counts(sample, events) == {13: 2, 79: 1, 48: 1}
    assert xid_counts(None, events) == {13: 2, 79: 1, 48: 1}
