"""Kernel-log lines parsed into XIDs, oom-kills and GPU failures, and the follower that reads
them. Every line below is real, copied from the public source cited beside it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.telemetry.kernel_follow import KernelLogFollower
from agent.telemetry.kernel_log import (
    GpuInitFailure,
    KernelItem,
    KernelLogParser,
    KernelOomKill,
    KernelXid,
    kmsg_text,
    normalize_pci,
    parse_line,
)

# https://github.com/kubernetes-sigs/dra-driver-nvidia-gpu/issues/904
XID_43_DMESG = (
    "[1231741.378609] NVRM: Xid (PCI:0009:01:00): 43, pid=3188489, name=trigger_xid, "
    "channel 0x0b00000a"
)
# https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1150
XID_45_JOURNAL = (
    "kernel: NVRM: Xid (PCI:0000:dc:00): 45, pid=1818990, name=python3, Ch 00000001 "
    "caused by previous Xid 149"
)
# https://modal.com/docs/guide/gpu-health
XID_79 = (
    "NVRM: Xid (PCI:0000:c6:00): 79, pid=1101234, name=nvc:[driver], GPU has fallen off the bus."
)
# https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1151
XID_79_NO_PID = "NVRM: Xid (PCI:0000:06:00): 79, GPU has fallen off the bus."
# https://pastebin.com/gn6mYmM4 (an older driver: no "PCI:", no pid or name)
XID_13_OLD = (
    "May 6 00:38:27 alex kernel: [ 4909.922970] NVRM: Xid (0000:01:00): 13, 0005 00000000 "
    "0000502d 00000104 00000000 00000100"
)
# https://github.com/stas00/ml-engineering/blob/master/compute/accelerator/nvidia/debug.md
XID_63 = (
    "NVRM: Xid (PCI:0000:10:1c): 63, pid=1896, Row Remapper: New row marked for remapping, "
    "reset gpu to activate."
)
# https://github.com/leptonai/gpud/pull/1174
XID_145 = (
    "NVRM: Xid (PCI:0018:01:00): 145, RLW_RXPIPE Nonfatal XC0 i0 Link 13 "
    "(0x0409a0c2 0x00000008 0x00000001 0x00000000 0x00100000 0x00000004)"
)
# https://github.com/NVIDIA/gpu-operator/issues/1146
RM_INIT_SYSLOG = (
    "Dec  2 11:49:53 worker4 kernel: [  885.242168] NVRM: GPU 0000:0a:00.0: "
    "RmInitAdapter failed! (0x24:0x72:1568)"
)
RM_INIT_MINOR = (
    "Dec  2 11:49:53 worker4 kernel: [  885.242457] NVRM: GPU 0000:0a:00.0: "
    "rm_init_adapter failed, device minor number 5"
)
# https://github.com/NVIDIA/NVSentinel/issues/155 (one message over three lines, no Xid)
FALLEN_MULTILINE = (
    "[ 1843.308145] NVRM: The NVIDIA GPU 0000:b3:00.0",
    "               NVRM: (PCI ID: 10de:26b5) installed in this system has",
    "               NVRM: fallen off the bus and is not responding to commands.",
    "[ 1843.439662] NVRM: The NVIDIA probe routine failed for 1 device(s).",
)
# https://github.com/ShengcaiLiao/QAConv/issues/19
OOM_KILL = (
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
    "task_memcg=/user.slice/user-1000.slice/user@1000.service,task=python,pid=698405,uid=1000"
)
OOM_KILLED = (
    "[441280.839852] Out of memory: Killed process 698405 (python) total-vm:49978204kB, "
    "anon-rss:12918388kB, file-rss:68668kB, shmem-rss:53352kB, UID:1000 pgtables:49772kB "
    "oom_score_adj:0"
)
OOM_REAPED = (
    "[441281.626336] oom_reaper: reaped process 698405 (python), now anon-rss:0kB, "
    "file-rss:68664kB, shmem-rss:53172kB"
)
# Lines that mention NVRM or memory but report nothing of ours:
NOISE = (
    # https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1230
    "[   84.738339] NVRM: GPU6 RPC event history (CPU <- GSP):",
    # https://github.com/NVIDIA/open-gpu-kernel-modules/issues/1151
    "NVRM: GPU at PCI:0000:06:00: GPU-0b6b7808-c002-f593-ac86-cd8e57757b94",
    "NVRM: kgspRcAndNotifyAllChannels_IMPL: RC all channels for critical error 79.",
    OOM_REAPED,
)


def test_xid_lines_in_every_framing() -> None:
    assert parse_line(XID_43_DMESG) == KernelXid(
        "0009:01:00", 43, 3188489, "trigger_xid", XID_43_DMESG.split("] ", 1)[1]
    )
    item = parse_line(XID_45_JOURNAL)
    assert isinstance(item, KernelXid)
    assert (item.pci, item.xid, item.pid, item.process) == ("0000:dc:00", 45, 1818990, "python3")
    assert item.text.startswith("NVRM: Xid") and "caused by previous Xid 149" in item.text
    item = parse_line(XID_79)
    assert isinstance(item, KernelXid)
    assert (item.xid, item.pid, item.process) == (79, 1101234, "nvc:[driver]")
    assert parse_line(XID_79_NO_PID) == KernelXid("0000:06:00", 79, None, "", XID_79_NO_PID)
    old = parse_line(XID_13_OLD)
    assert isinstance(old, KernelXid)
    assert (old.pci, old.xid, old.pid, old.process) == ("0000:01:00", 13, None, "")
    item = parse_line(XID_63)
    assert isinstance(item, KernelXid) and (item.xid, item.pid, item.process) == (63, 1896, "")
    item = parse_line(XID_145)
    assert isinstance(item, KernelXid) and (item.pci, item.xid) == ("0018:01:00", 145)


def test_noise_is_not_reported() -> None:
    for line in NOISE:
        assert parse_line(line) is None, line
    assert parse_line("") is None
    assert parse_line(RM_INIT_MINOR) is None  # the second line of the pair: one failure, once


def test_pci_addresses_in_every_form_agree() -> None:
    for form in ("00000000:3B:00.0", "0000:3B:00.0", "0000:3b:00", "PCI:0000:3b:00", "3b:00"):
        assert normalize_pci(form) == "0000:3b:00", form
    assert normalize_pci("0009:01:00") == "0009:01:00"
    assert normalize_pci("GPU-0b6b7808") == "" and normalize_pci("") == ""


def test_gpu_init_failures() -> None:
    assert parse_line(RM_INIT_SYSLOG) == GpuInitFailure(
        "0000:0a:00", "NVRM: GPU 0000:0a:00.0: RmInitAdapter failed! (0x24:0x72:1568)"
    )
    parser = KernelLogParser()
    found = [item for line in FALLEN_MULTILINE for item in parser.feed_line(line)]
    assert len(found) == 1  # the probe-routine summary of the same GPU adds nothing
    failure = found[0]
    assert isinstance(failure, GpuInitFailure) and failure.pci == "0000:b3:00"
    assert "fallen off the bus" in failure.text
    # A lone summary line, with no GPU named before it, is still a failure.
    assert KernelLogParser().feed_line(FALLEN_MULTILINE[3]) == [
        GpuInitFailure("", "NVRM: The NVIDIA probe routine failed for 1 device(s).")
    ]


def test_an_oom_kill_is_one_fact_with_its_memory() -> None:
    parser = KernelLogParser()
    assert parser.feed_line(OOM_KILL) == []  # held: its Killed process line follows
    killed = parser.feed_line(OOM_KILLED)
    assert killed == [KernelOomKill(698405, "python", 12918388, OOM_KILLED.split("] ", 1)[1])]
    assert parser.feed_line(OOM_REAPED) == [] and parser.flush() == []
    # The oom-kill line alone (its partner lost) comes out on the next line or when idle.
    parser.feed_line(OOM_KILL)
    assert parser.flush() == [KernelOomKill(698405, "python", None, OOM_KILL)]
    parser.feed_line(OOM_KILL)
    assert parser.feed_line(XID_79) == [
        KernelOomKill(698405, "python", None, OOM_KILL),
        parse_line(XID_79),
    ]


def test_iso_dmesg_oom_lines() -> None:
    # https://github.com/equinor/ert/issues/7797 (dmesg --time-format iso)
    line = (
        "2024-04-29T14:55:41,679700+02:00 Out of memory: Killed process 1440763 (perl) "
        "total-vm:87033376kB, anon-rss:60356340kB, file-rss:0kB, shmem-rss:0kB, UID:21417 "
        "pgtables:169956kB oom_score_adj:0"
    )
    item = parse_line(line)
    assert isinstance(item, KernelOomKill)
    assert (item.pid, item.process, item.anon_rss_kb) == (1440763, "perl", 60356340)
    assert item.text.startswith("Out of memory: Killed process 1440763")


def test_kmsg_records() -> None:
    # The framing of https://www.kernel.org/doc/Documentation/ABI/testing/dev-kmsg around the
    # real lines above; a record may carry more prefix fields, and escapes newlines.
    assert kmsg_text(f"4,1227,5678901234,-;{XID_79}\n") == XID_79
    assert kmsg_text(f"4,1227,5678901234,c,1,-;{XID_79}") == XID_79
    assert kmsg_text(" SUBSYSTEM=pci") is None and kmsg_text("no framing here") is None
    parser = KernelLogParser()
    assert parser.feed_kmsg(f"3,4471,3023054882,-;{XID_145}\n") == [parse_line(XID_145)]
    assert parser.feed_kmsg(" DEVICE=+pci:0000:18:01.0\n") == []
    joined = "\\x0a".join(line.strip() for line in FALLEN_MULTILINE[:3])
    found = parser.feed_kmsg(f"3,4472,3023054900,-;{joined}\n")
    assert found and isinstance(found[0], GpuInitFailure) and found[0].pci == "0000:b3:00"


# --------------------------------------------------------------------------- the follower
def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_follow_file_hands_out_lines_as_they_are_appended(tmp_path: Path) -> None:
    log_file = tmp_path / "kern.log"
    log_file.write_text(XID_43_DMESG + "\n" + NOISE[0] + "\n")
    got: list[KernelItem] = []
    lock = threading.Lock()

    def keep(item: KernelItem) -> None:
        with lock:
            got.append(item)

    follower = KernelLogFollower.follow_file(str(log_file), keep)
    assert follower.start() == "file" and follower.running
    try:
        assert wait_until(lambda: len(got) == 1)
        with log_file.open("a") as out:
            out.write(OOM_KILL + "\n" + OOM_KILLED[:40])  # a line cut mid-write
            out.flush()
            time.sleep(0.2)
            out.write(OOM_KILLED[40:] + "\n" + RM_INIT_SYSLOG + "\n")
        assert wait_until(lambda: len(got) == 3)
    finally:
        follower.stop()
    assert not follower.running
    assert isinstance(got[0], KernelXid) and got[0].xid == 43
    assert isinstance(got[1], KernelOomKill) and got[1].anon_rss_kb == 12918388
    assert isinstance(got[2], GpuInitFailure) and got[2].pci == "0000:0a:00"


def test_a_failing_callback_does_not_stop_the_follower(tmp_path: Path) -> None:
    log_file = tmp_path / "kern.log"
    log_file.write_text(f"{XID_79}\n{XID_63}\n")
    seen: list[int] = []

    def flaky(item: KernelItem) -> None:
        assert isinstance(item, KernelXid)
        seen.append(item.xid)
        if item.xid == 79:
            raise RuntimeError("subscriber bug")

    follower = KernelLogFollower.follow_file(str(log_file), flaky)
    follower.start()
    try:
        assert wait_until(lambda: seen == [79, 63])
    finally:
        follower.stop()


def test_a_missing_file_is_no_source(tmp_path: Path) -> None:
    follower = KernelLogFollower.follow_file(str(tmp_path / "absent"), lambda item: None)
    assert follower.start() == "none" and "cannot open" in follower.why
    assert not follower.running
    follower.stop()


def test_on_this_machine_it_picks_a_source_and_does_not_crash() -> None:
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        kmsg_opens = False
    else:
        os.close(fd)
        kmsg_opens = True
    follower = KernelLogFollower(lambda item: None)
    source = follower.start()
    try:
        assert source in ("kmsg", "journalctl", "none")
        assert (source == "kmsg") == kmsg_opens
        assert follower.running == (source != "none")
        assert bool(follower.why) == (source == "none")
        time.sleep(0.3)
        assert follower.running == (source != "none")
    finally:
        follower.stop()
    assert not follower.running


def test_no_source_at_all_says_why(tmp_path: Path) -> None:
    follower = KernelLogFollower(
        lambda item: None, kmsg_path=str(tmp_path / "no-kmsg"), journalctl="no-such-journalctl"
    )
    assert follower.start() == "none"
    assert "no-kmsg" in follower.why and "no-such-journalctl not found" in follower.why


@pytest.mark.parametrize("size", [1, 3])
def test_an_overlong_line_is_dropped_not_buffered(tmp_path: Path, size: int) -> None:
    log_file = tmp_path / "kern.log"
    log_file.write_text("x" * (40_000 * size) + "\n" + XID_63 + "\n")
    got: list[KernelItem] = []
    follower = KernelLogFollower.follow_file(str(log_file), got.append)
    follower.start()
    try:
        assert wait_until(lambda: len(got) == 1)
    finally:
        follower.stop()
    assert isinstance(got[0], KernelXid) and got[0].xid == 63
