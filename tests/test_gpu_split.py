"""The driver's "fallen off the bus" message split over lines, in a rank's log: the rank scanner
carries the address of its first line ("NVRM: The NVIDIA GPU 0000:b3:00.0") to the finding the
line that says it raises, as the node's kernel-log reader joins them (agent/telemetry/
kernel_log.py), within SPLIT_LINES lines of the same prefix and not across another GPU's line.

The split forms are real: NVIDIA/NVSentinel#155 and Bumblebee-Project/Bumblebee#905 (dmesg,
the lines after the first indented to the timestamp's width; tests/fixtures/logs/), the
journalctl form ("Mar 07 19:30:42 p51 kernel: NVRM: The NVIDIA GPU 0000:01:00.0", the later
lines indented), the syslog form (every line under "Jan  3 07:39:45 ubuntu kernel: [17257.355375]
") and the older two-line form ("NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2d04) installed
in this system has" / "NVRM: fallen off the bus ..."), the last three as pasted in public notes,
and the driver's format string (nv_printf: "NVRM: The NVIDIA GPU %04x:%02x:%02x.%x\\n" "NVRM:
(PCI ID: %04x:%04x) installed in this system has\\n" "NVRM: fallen off the bus and is not
responding to commands.\\n"). Below, those forms carry the NVSentinel message's lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.jobs.node.gpu_split import SPLIT_LINES
from agent.jobs.node.log_findings import Diagnosis
from agent.jobs.node.log_scan import LogScanner
from agent.telemetry.kernel_log import GpuInitFailure, KernelLogParser, normalize_pci

LOGS = Path(__file__).resolve().parent / "fixtures" / "logs"
INDENT = " " * 15  # dmesg's indent of a message's later lines: "[ 1843.308145] " is 15 wide

# https://github.com/NVIDIA/NVSentinel/issues/155
NVSENTINEL = (
    "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
    f"{INDENT}NVRM: (PCI ID: 10de:26b5) installed in this system has",
    f"{INDENT}NVRM: fallen off the bus and is not responding to commands.",
    "[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).",
)
OPENS, MIDDLE, FALLEN = (line.split("NVRM: ", 1)[1] for line in NVSENTINEL[:3])


def findings(lines: list[str] | tuple[str, ...], stream: str = "stderr") -> list[Diagnosis]:
    scanner = LogScanner()
    found: list[Diagnosis] = []
    for i, line in enumerate(lines):
        found += scanner.feed(stream, line, i * 0.01)
    return found + scanner.flush()


def lost(lines: list[str] | tuple[str, ...]) -> list[Diagnosis]:
    return [d for d in findings(lines) if d.alert == "gpu_missing"]


def only_lost(lines: list[str] | tuple[str, ...]) -> Diagnosis:
    (found,) = lost(lines)
    return found


def message(prefix: str, later: str | None = None) -> list[str]:
    """The three lines under ``prefix`` on the first and ``later`` (default: the same) after."""
    rest = prefix if later is None else later
    return [f"{prefix}NVRM: {OPENS}", f"{rest}NVRM: {MIDDLE}", f"{rest}NVRM: {FALLEN}"]


# --- the address is carried ------------------------------------------------------------------


def test_the_split_message_carries_its_address_to_the_finding() -> None:
    found = only_lost(NVSENTINEL)
    assert found.fields == {"pci": "0000:b3:00.0", "action": "drain_node"}
    assert found.key == "0000:b3:00.0"
    assert found.cause == (
        "the GPU at PCI 0000:b3:00.0 has fallen off the bus: it is gone until the node is "
        "drained and reset or rebooted"
    )
    assert found.line == NVSENTINEL[2].strip()  # the line that said it, as before
    assert found.details()["pci"] == "0000:b3:00.0"


def test_the_corpus_excerpts_agree_with_the_kernel_log_reader() -> None:
    for name, pci in (
        ("xid_fallen_off_bus_multiline_nvsentinel155.log", "0000:b3:00.0"),
        ("gpu_missing_split_fallen_off_bus_dmesg_bumblebee905.log", "0000:01:00.0"),
    ):
        lines = (LOGS / name).read_text().splitlines()
        assert only_lost(lines).fields["pci"] == pci, name
        parser = KernelLogParser()
        joined = [item for line in lines for item in parser.feed_line(line)]
        assert isinstance(joined[0], GpuInitFailure) and joined[0].pci == normalize_pci(pci)


@pytest.mark.parametrize(
    ("prefix", "later"),
    [
        ("", None),  # bare lines, as a wrapper's `dmesg | grep NVRM` or an older dmesg prints
        ("[ 1843.308145] ", INDENT),
        ("[  +0.000316] ", " " * 14),  # dmesg -d / --reltime
        ("[Mon Jan  1 00:00:00 2024] ", " " * 27),  # dmesg -T
        ("Jan  3 07:39:45 ubuntu kernel: [17257.355375] ", None),  # syslog: each line stamped
        ("Mar 07 19:30:42 p51 kernel: ", " " * 28),  # journalctl: the later lines indented
        ("2024-01-01T00:00:00,123456+00:00 ", " " * 33),  # dmesg --time-format iso
        ("[rank0]: [ 1843.308145] ", "[rank0]: " + INDENT),  # behind a launcher's prefix
    ],
)
def test_the_address_is_carried_under_every_prefix_style(prefix: str, later: str | None) -> None:
    assert only_lost(message(prefix, later)).fields["pci"] == "0000:b3:00.0"


def test_the_older_two_line_form_and_stamped_lines_that_differ_in_time() -> None:
    two_lines = [
        "NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2d04) installed in this system has",
        "NVRM: fallen off the bus and is not responding to commands.",
    ]
    assert only_lost(two_lines).fields["pci"] == "0000:01:00.0"
    stamped = [
        "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
        "[ 1843.308146] NVRM: (PCI ID: 10de:26b5) installed in this system has",
        "[ 1843.308147] NVRM: fallen off the bus and is not responding to commands.",
    ]
    assert only_lost(stamped).fields["pci"] == "0000:b3:00.0"


def test_the_last_line_within_the_bound_still_takes_it() -> None:
    others = [f"{INDENT}NVRM: {MIDDLE}"] * (SPLIT_LINES - 1)
    lines = [NVSENTINEL[0], *others, NVSENTINEL[2]]  # said SPLIT_LINES lines after the address
    assert only_lost(lines).fields["pci"] == "0000:b3:00.0"


def test_another_writers_line_between_counts_but_does_not_break_it() -> None:
    lines = [NVSENTINEL[0], "step 12 loss 1.25", NVSENTINEL[1], NVSENTINEL[2]]
    assert only_lost(lines).fields["pci"] == "0000:b3:00.0"


def test_a_later_line_naming_the_same_gpu_is_one_finding() -> None:
    # The same GPU in the kernel's other forms: "nvidia 0000:b3:00.0: ..." and an Xid's
    # "0000:b3:00" do not end the message; the one-line report after it is the same finding.
    lines = [
        NVSENTINEL[0],
        f"{INDENT}NVRM: Xid (PCI:0000:B3:00): 79, pid='<unknown>', name=<unknown>, GPU has "
        "fallen off the bus.",
        NVSENTINEL[2],
        "[ 1843.308200] NVRM: GPU 0000:b3:00.0: GPU has fallen off the bus.",
    ]
    found = findings(lines)
    assert [d.alert for d in found] == ["xid", "gpu_missing"]
    assert found[1].fields["pci"] == "0000:b3:00.0"


# --- and not where it does not belong ---------------------------------------------------------


def test_not_past_the_bound() -> None:
    others = [f"{INDENT}NVRM: {MIDDLE}"] * SPLIT_LINES
    lines = [NVSENTINEL[0], *others, NVSENTINEL[2]]  # one line too far
    found = only_lost(lines)
    assert "pci" not in found.fields and found.cause.startswith("a GPU has fallen off the bus")
    others = ["step 12 loss 1.25"] * SPLIT_LINES  # lines without NVRM count as well
    assert "pci" not in only_lost([NVSENTINEL[0], *others, NVSENTINEL[2]]).fields


def test_not_across_another_gpus_line() -> None:
    xid = "[ 1843.308150] NVRM: Xid (PCI:0000:3b:00): 13, pid=1, name=python, Graphics Exception"
    found = findings([NVSENTINEL[0], xid, NVSENTINEL[1], NVSENTINEL[2]])
    assert [d.alert for d in found] == ["xid", "gpu_missing"]
    assert "pci" not in found[1].fields
    smi = "Unable to determine the device handle for GPU 0000:3B:00.0: Unknown Error"
    found = findings([NVSENTINEL[0], smi, NVSENTINEL[2]])
    assert [d.fields.get("pci") for d in found] == ["0000:3B:00.0", None]


def test_a_second_message_names_its_own_gpu() -> None:
    first = message("[ 1843.308145] ", INDENT)[:2]
    second = [line.replace("0000:b3:00.0", "0000:3b:00.0") for line in message("", "")]
    assert only_lost(first + second).fields["pci"] == "0000:3b:00.0"


@pytest.mark.parametrize(
    ("prefix", "later"),
    [
        ("[rank0]: ", "[rank1]: "),  # another rank's line
        ("node-a: ", "node-b: "),  # another host's, behind pdsh
        ("[ 1843.308145] ", "[rank0]: "),
        ("Jan  3 07:39:45 host-a kernel: ", "Jan  3 07:39:45 host-b kernel: "),
    ],
)
def test_not_to_a_line_of_another_prefix(prefix: str, later: str) -> None:
    assert "pci" not in only_lost(message(prefix, later)).fields


def test_not_across_streams_and_only_once() -> None:
    scanner = LogScanner()
    scanner.feed("stdout", NVSENTINEL[0], 0.0)
    (found,) = scanner.feed("stderr", NVSENTINEL[2], 0.1)
    assert "pci" not in found.fields
    # Taken once: a second bare line of the same stream does not take the address again.
    lines = [NVSENTINEL[0], NVSENTINEL[2], "[rank0]: x", "NVRM: GPU has fallen off the bus."]
    assert [d.fields.get("pci") for d in lost(lines)] == ["0000:b3:00.0", None]


# --- the one-line forms are as they were -------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "pci"),
    [
        (
            "[Fri Apr  5 21:29:39 2024] NVRM: GPU 0000:a1:00.0: GPU has fallen off the bus.",
            "0000:a1:00.0",
        ),
        ("[   49.261458] NVRM: GPU at 0000:01:00.0 has fallen off the bus.", "0000:01:00.0"),
        ("NVRM: GPU 0000:0a:00.0: RmInitAdapter failed! (0x24:0x72:1568)", "0000:0a:00.0"),
        (
            "Unable to determine the device handle for GPU0000:A1:00.0: Unknown Error",
            "0000:A1:00.0",
        ),
        (
            "NVRM: The NVIDIA GPU 0000:01:00.0 (PCI ID: 10de:2d04) installed in this system has "
            "fallen off the bus and is not responding to commands.",
            "0000:01:00.0",
        ),
    ],
)
def test_one_line_forms_keep_their_own_address(line: str, pci: str) -> None:
    alone = only_lost([line])
    assert alone.fields == {"pci": pci, "action": "drain_node"} and alone.key == pci
    # Inside another GPU's open message, a line naming its own GPU keeps its own address.
    assert only_lost([NVSENTINEL[0], line]).fields["pci"] == pci


def test_a_bare_line_with_nothing_before_it_has_no_address() -> None:
    found = only_lost([NVSENTINEL[2]])
    assert found.fields == {"action": "drain_node"} and found.key == "fallen off the bus"
    assert found.cause.startswith("a GPU has fallen off the bus: ")


def test_an_xid_line_is_still_an_xid() -> None:
    line = "NVRM: Xid (PCI:0000:b3:00): 79, pid=1234, name=python, GPU has fallen off the bus."
    (found,) = findings([NVSENTINEL[0], line])
    assert found.alert == "xid" and found.fields["pci"] == "0000:b3:00"
