"""A GPU-lost message the driver splits over lines, its address on the first: the rank
scanner (log_scan.py) carries the address to the finding the later line raises, as the
node's kernel-log reader (agent/telemetry/kernel_log.py) joins the lines."""

from __future__ import annotations

import re

from agent.jobs.node.log_findings import Hit
from agent.jobs.node.log_signatures import PCI, PCI_ADDRESS

# The driver's message split over lines, the address on the first: "NVRM: The NVIDIA GPU
# 0000:b3:00.0" / "NVRM: (PCI ID: 10de:26b5) installed in this system has" / "NVRM: fallen off
# the bus and is not responding to commands.", the later lines indented (dmesg, journalctl) or
# under the first's prefix less its time (syslog's "Jan  3 07:39:45 host kernel: [1.5] ").
_SPLIT_OPENS = re.compile(r"NVRM: The NVIDIA GPU (?P<pci>" + PCI + ")")
SPLIT_LINES = 4  # what happened is said at most this many lines after the address
_STAMP = re.compile(
    r"\[\s*\+?\d+\.\d+\]|\d{4}-\d\d-\d\dT\S+|\[?(?:\w{3} )?\w{3} [ \d]\d [\d:]{8}(?: \d{4})?\]?"
)


def _gpu(pci: str) -> str:  # "0000:B3:00.0", an Xid's "0000:b3:00", "000:b3:00.0": one GPU
    return pci.lower().split(".")[0].lstrip("0")


class SplitGpuMessage:
    """A stream's open split message: ``see`` each line (while ``pci`` or with "NVRM"), then
    ``carry`` its address to a lost-GPU finding without one: within SPLIT_LINES lines, of the
    same prefix or an indent, and with no line naming another GPU between."""

    pci, _style, _left, _here = "", "", 0, ""

    def see(self, line: str) -> None:
        self._here, at = "", line.find("NVRM:")
        style = " ".join(_STAMP.sub(" ", line[:at]).split()) if at >= 0 else None
        opened = _SPLIT_OPENS.search(line, at) if style is not None else None
        if opened is not None and style is not None:
            self.pci, self._style, self._left = opened["pci"], style, SPLIT_LINES
        elif self.pci:
            self._left -= 1
            named = PCI_ADDRESS.search(line, max(at, 0)) if at >= 0 or "GPU" in line else None
            if self._left < 0 or (named is not None and _gpu(named[0]) != _gpu(self.pci)):
                self.pci = ""
            elif style == self._style or (at > 0 and line[:at].isspace()):
                self._here = self.pci

    def carry(self, hit: Hit) -> Hit:
        if hit.alert != "gpu_missing" or hit.fields.get("pci") or not self._here:
            return hit
        pci, self.pci, self._here = self._here, "", ""
        cause = f"the GPU at PCI {pci}" + hit.cause.removeprefix("a GPU")
        return Hit(hit.alert, hit.severity, cause, {"pci": pci, **hit.fields}, key=pci)
