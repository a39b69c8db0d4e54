"""Kernel-log lines as facts: NVIDIA XIDs, the oom-killer's kills and GPUs that fail to start.

Pure: no I/O, no clock. Reads both framings a node offers:

- a ``/dev/kmsg`` record, ``PRIORITY,SEQ,USEC,FLAGS[,...];TEXT`` with non-printable bytes
  escaped as ``\\xNN`` and continuation lines (key=value dictionary) starting with a space
  (https://www.kernel.org/doc/Documentation/ABI/testing/dev-kmsg);
- a ``journalctl -k -o short-precise``, ``dmesg`` or syslog line: any prefix (time, host,
  ``kernel:``, ``[12345.678901]``) before the driver's own words.

``KernelLogParser`` keeps the little state that multi-line messages need (the driver's
"The NVIDIA GPU ... has fallen off the bus" spread over three lines; the oom-killer's
``oom-kill:`` line followed by its ``Killed process`` line) in constant memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "GpuInitFailure",
    "KernelItem",
    "KernelLogParser",
    "KernelOomKill",
    "KernelXid",
    "kmsg_text",
    "normalize_pci",
    "parse_line",
]

MAX_TEXT_CHARS = 2000


@dataclass(frozen=True)
class KernelXid:
    """An ``NVRM: Xid`` line: the GPU's PCI address (normalised), the code, who was running."""

    pci: str
    xid: int
    pid: int | None
    process: str
    text: str


@dataclass(frozen=True)
class KernelOomKill:
    """The kernel's oom-killer killed a process (host memory, not GPU memory)."""

    pid: int
    process: str
    anon_rss_kb: int | None
    text: str


@dataclass(frozen=True)
class GpuInitFailure:
    """The driver could not start a GPU, or lost it outside an Xid; ``pci`` may be ""."""

    pci: str
    text: str


KernelItem = KernelXid | KernelOomKill | GpuInitFailure

# domain:bus:device[.function], with or without "PCI:", domain optional (old drivers).
_PCI_RE = re.compile(
    r"(?:PCI:)?(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):"
    r"(?P<dev>[0-9a-fA-F]{1,2})(?:\.(?P<fn>[0-7]))?\Z"
)


def normalize_pci(bus_id: str) -> str:
    """A PCI address as ``dddd:bb:dd`` (lower case, function dropped); "" when unreadable.

    NVML's ``00000000:3B:00.0``, its legacy ``0000:3B:00.0`` and the kernel's ``0000:3b:00``
    or ``PCI:0000:3b:00`` all give ``0000:3b:00``.
    """
    found = _PCI_RE.match(bus_id.strip())
    if found is None:
        return ""
    domain = int(found.group("domain") or "0", 16)
    return f"{domain:04x}:{int(found.group('bus'), 16):02x}:{int(found.group('dev'), 16):02x}"


_ESCAPE_RE = re.compile(r"\\x([0-9a-fA-F]{2})")


def kmsg_text(record: str) -> str | None:
    """The text of one ``/dev/kmsg`` record, unescaped; None for a continuation line or a
    record without the ``;`` framing."""
    if not record or record[0] == " ":
        return None
    head, sep, text = record.partition(";")
    if not sep or "," not in head or not head.split(",", 1)[0].isdigit():
        return None
    text = text.rstrip("\n")
    if "\\x" in text:
        text = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return text


# "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
# "NVRM: Xid (0000:01:00): 13, 0005 00000000 ..." (older drivers: no "PCI:", no pid/name)
_XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f:.]+)\): (\d+)(?:,\s*(.*))?")
_PID_RE = re.compile(r"\bpid=(?:'?<unknown>'?|(\d+))")
_NAME_RE = re.compile(r"\bname=([^,]*)")
# "Out of memory: Killed process 698405 (python) total-vm:49978204kB, anon-rss:12918388kB, ..."
# also "Memory cgroup out of memory: Killed process ..." and pre-5.x "Killed process ...".
_KILLED_RE = re.compile(r"\bKilled process (\d+) \((.*?)\)")
_ANON_RSS_RE = re.compile(r"anon-rss:([\d,]+)kB")
# "oom-kill:constraint=CONSTRAINT_NONE,...,task=python,pid=698405,uid=1000"
_OOM_KILL_RE = re.compile(r"\boom-kill:.*?\btask=([^,]*),pid=(\d+)")
_GPU_PCI_RE = re.compile(
    r"\bGPU (?:at )?(?:PCI:)?([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)"
)
_INIT_FAILED_RE = re.compile(
    r"RmInitAdapter failed|fail(?:ed)? to initiali[sz]e|probe routine failed", re.IGNORECASE
)
_FALLEN_RE = re.compile(r"fallen off the bus", re.IGNORECASE)


def _clip(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _driver_text(line: str) -> str:
    """The line from the driver's ``NVRM:`` on (drops time, host and ``kernel:`` prefixes)."""
    at = line.find("NVRM:")
    return line[at:] if at > 0 else line


def _parse_xid(line: str) -> KernelXid | None:
    found = _XID_RE.search(line)
    if found is None:
        return None
    rest = found.group(3) or ""
    pid_match = _PID_RE.search(rest)
    pid = int(pid_match.group(1)) if pid_match and pid_match.group(1) else None
    name_match = _NAME_RE.search(rest)
    process = name_match.group(1).strip() if name_match else ""
    if process == "<unknown>":
        process = ""
    return KernelXid(
        normalize_pci(found.group(1)), int(found.group(2)), pid, process, _clip(_driver_text(line))
    )


def _parse_killed(line: str) -> KernelOomKill | None:
    found = _KILLED_RE.search(line)
    if found is None:
        return None
    rss = _ANON_RSS_RE.search(line)
    anon = int(rss.group(1).replace(",", "")) if rss else None
    start = line.find("Out of memory")
    text = line[start:] if start >= 0 else line[found.start() :]
    return KernelOomKill(int(found.group(1)), found.group(2), anon, _clip(text))


def _parse_init_failure(line: str) -> GpuInitFailure | None:
    if "NVRM" not in line:
        return None
    if not (_INIT_FAILED_RE.search(line) or _FALLEN_RE.search(line)):
        return None
    found = _GPU_PCI_RE.search(line)
    return GpuInitFailure(normalize_pci(found.group(1)) if found else "", _clip(_driver_text(line)))


def parse_line(line: str) -> KernelItem | None:
    """One kernel-log line (any prefix) as a fact, or None. Stateless: the oom-killer's
    ``oom-kill:`` line gives a kill without its memory figure."""
    if "NVRM" in line:
        return _parse_xid(line) or _parse_init_failure(line)
    if "Killed process" in line:
        return _parse_killed(line)
    if "oom-kill:" in line:
        found = _OOM_KILL_RE.search(line)
        if found is not None:
            start = line.find("oom-kill:")
            return KernelOomKill(int(found.group(2)), found.group(1), None, _clip(line[start:]))
    return None


# "NVRM: The NVIDIA GPU 0000:b3:00.0" opens a message whose third line says "fallen off the bus".
_THE_GPU_RE = re.compile(r"NVRM: The NVIDIA GPU ([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2})")


class KernelLogParser:
    """Parses kernel-log lines or kmsg records one at a time, joining multi-line messages.

    ``feed_line``/``feed_kmsg`` return the facts complete so far; ``flush`` hands out one held
    back (an ``oom-kill:`` line waiting for its ``Killed process`` line) when the log is idle.
    """

    def __init__(self) -> None:
        self._pending_oom: KernelOomKill | None = None
        self._open_gpu_pci = ""
        self._open_gpu_lines = 0
        self._last_init_failure: GpuInitFailure | None = None

    def feed_kmsg(self, record: str) -> list[KernelItem]:
        """One ``/dev/kmsg`` record (continuation lines are ignored)."""
        text = kmsg_text(record)
        if text is None:
            return []
        out: list[KernelItem] = []
        for line in text.split("\n"):
            out.extend(self.feed_line(line))
        return out

    def feed_line(self, line: str) -> list[KernelItem]:
        """One journalctl/dmesg/syslog line."""
        out: list[KernelItem] = []
        item = parse_line(line)
        pending = self._pending_oom
        if pending is not None:
            self._pending_oom = None
            if isinstance(item, KernelOomKill) and item.pid == pending.pid:
                return [item]  # the Killed process line, with the memory figure
            out.append(pending)
        if isinstance(item, KernelOomKill) and item.anon_rss_kb is None:
            self._pending_oom = item
            return out
        item = self._join_gpu_message(line, item)
        if isinstance(item, GpuInitFailure):
            if item == self._last_init_failure or self._repeats_init_failure(item):
                return out
            self._last_init_failure = item
        if item is not None:
            out.append(item)
        return out

    def flush(self) -> list[KernelItem]:
        """The fact held back waiting for a line that did not come."""
        pending, self._pending_oom = self._pending_oom, None
        return [pending] if pending is not None else []

    def _join_gpu_message(self, line: str, item: KernelItem | None) -> KernelItem | None:
        opened = _THE_GPU_RE.search(line)
        if opened is not None:
            self._open_gpu_pci = normalize_pci(opened.group(1))
            self._open_gpu_lines = 0
            return item
        if not self._open_gpu_pci:
            return item
        self._open_gpu_lines += 1
        if isinstance(item, GpuInitFailure) and not item.pci:
            item = GpuInitFailure(self._open_gpu_pci, item.text)
            self._open_gpu_pci = ""
        elif self._open_gpu_lines >= 4:
            self._open_gpu_pci = ""
        return item

    def _repeats_init_failure(self, item: GpuInitFailure) -> bool:
        # "The NVIDIA probe routine failed for 1 device(s)." follows the failure it sums up.
        last = self._last_init_failure
        return not item.pci and last is not None and "probe routine" in item.text
