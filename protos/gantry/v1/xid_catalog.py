"""NVIDIA's XID catalogue, kept once for the agent and the console: code → name, description,
recommended action and severity. Pure: standard library only.

Names (NVIDIA's mnemonics), descriptions and the immediate actions come from NVIDIA's Xid
catalogue, https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html ("Resolution
Bucket (Immediate Action)"), mapped onto Gantry's five actions: RESET_GPU → ``reset_gpu``,
RESTART_BM (reboot the machine) → ``drain_node``, RESTART_APP → ``restart_job``,
CONTACT_SUPPORT → ``report``, IGNORE → ``none``. The catalogue's workflows are resolved to the
action they usually end in (WORKFLOW_XID_48: reset the GPU to remap the row; WORKFLOW_XID_45:
none, follow the Xid that caused it). Severity is Gantry's: ``critical`` when the GPU is unusable
until reset or reboot, ``warning`` when the job's work is lost or a part degrades, ``info`` for a
record with nothing to do.

NVLink5 Xids 144-150 say in their text whether the error was ``Fatal`` or ``Nonfatal``, and Xid
154 names the recovery the driver now requires; ``xid_info_for_line`` reads both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "ACTION_TEXT",
    "CATALOG_URL",
    "SEVERITIES",
    "XidInfo",
    "known_codes",
    "xid_info",
    "xid_info_for_line",
]

CATALOG_URL = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"

ACTIONS = ("reset_gpu", "drain_node", "restart_job", "report", "none")
SEVERITIES = ("critical", "warning", "info")

#: What each action asks of the operator, as a console shows it.
ACTION_TEXT: dict[str, str] = {
    "reset_gpu": "reset the GPU",
    "drain_node": "drain the node and reboot it",
    "restart_job": "restart the job",
    "report": "report it to NVIDIA if it repeats",
    "none": "nothing to do",
}


@dataclass(frozen=True)
class XidInfo:
    """One XID code as NVIDIA's catalogue describes it, with Gantry's action and severity."""

    code: int
    name: str
    description: str
    action: str
    severity: str

    @property
    def fatal(self) -> bool:
        """True when the GPU is unusable until reset or reboot."""
        return self.severity == "critical"

    @property
    def action_text(self) -> str:
        return ACTION_TEXT[self.action]

    def summary(self) -> str:
        """One line: "Xid 79 GPU has fallen off the bus: drain the node and reboot it"."""
        return f"Xid {self.code} {self.description}: {self.action_text}"


_C, _W, _I = "critical", "warning", "info"
_RESET, _DRAIN, _RESTART, _REPORT, _NONE = ACTIONS

_NVLINK5 = "NVLink5 error; the text says Fatal or Nonfatal, a fatal one needs a GPU reset"

# (code, mnemonic, description, action, severity)
_ENTRIES: tuple[tuple[int, str, str, str, str], ...] = (
    (8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing", _RESTART, _W),
    (
        11,
        "ROBUST_CHANNEL_GR_ERROR_MISSING_HW",
        "Invalid or corrupted push buffer stream",
        _RESTART,
        _W,
    ),
    (13, "ROBUST_CHANNEL_GR_EXCEPTION", "Graphics Engine Exception", _RESTART, _W),
    (31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault", _RESTART, _W),
    (32, "ROBUST_CHANNEL_PBDMA_ERROR", "Invalid or corrupted push buffer stream", _RESTART, _W),
    (38, "ROBUST_CHANNEL_FECS_ERR_WATCHDOG_TIMEOUT", "Driver firmware error", _NONE, _I),
    (43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "GPU stopped processing", _NONE, _I),
    (
        44,
        "ROBUST_CHANNEL_GR_FAULT_DURING_CTXSW",
        "Graphics Engine fault during context switch",
        _NONE,
        _W,
    ),
    (
        45,
        "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL",
        "Preemptive cleanup, due to previous errors (follow the Xid that caused it)",
        _NONE,
        _I,
    ),
    (46, "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR", "GPU stopped processing", _RESET, _C),
    (48, "ROBUST_CHANNEL_GPU_ECC_DBE", "Double Bit ECC Error", _RESET, _C),
    (
        54,
        "SILENT_RUNNING_PWR_REDUCED_CLOCKING",
        "Auxiliary power is not connected to the GPU board",
        _REPORT,
        _W,
    ),
    (61, "PMU_BREAKPOINT", "Internal micro-controller breakpoint/warning", _REPORT, _W),
    (62, "PMU_HALT_ERROR", "Internal micro-controller halt", _RESET, _C),
    (
        63,
        "INFOROM_DRAM_RETIREMENT_EVENT",
        "GPU memory remapping event (applied at the next reset)",
        _NONE,
        _I,
    ),
    (64, "INFOROM_DRAM_RETIREMENT_FAILURE", "GPU memory remapping failure", _RESET, _C),
    (68, "ROBUST_CHANNEL_NVDEC0_ERROR", "NVDEC0 Exception", _RESTART, _W),
    (69, "ROBUST_CHANNEL_GR_CLASS_ERROR", "Graphics Engine class error", _RESTART, _W),
    (74, "NVLINK_ERROR", "NVLink Error", _RESET, _C),
    (79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus", _DRAIN, _C),
    (80, "PBDMA_PUSHBUFFER_CRC_MISMATCH", "Corrupted data sent to GPU", _RESTART, _W),
    (92, "EXCESSIVE_SBE_INTERRUPTS", "High single-bit ECC error rate", _REPORT, _W),
    (
        93,
        "INFOROM_ERASE_LIMIT_EXCEEDED",
        "Non-fatal violation of provisioned InfoROM wear limit",
        _REPORT,
        _W,
    ),
    (94, "ROBUST_CHANNEL_CONTAINED_ERROR", "Contained memory error", _RESTART, _W),
    (95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", "Uncontained memory error", _RESET, _C),
    (109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "Context Switch Timeout Error", _RESET, _C),
    (110, "SEC_FAULT_ERROR", "Security Fault Error", _RESET, _C),
    (119, "GSP_RPC_TIMEOUT", "GSP RPC Timeout", _RESET, _C),
    (120, "GSP_ERROR", "GSP Error", _RESET, _C),
    (121, "C2C_ERROR", "C2C Error", _REPORT, _W),
    (136, "ALI_TRAINING_FAIL", "Link Training Failed", _RESET, _C),
    (137, "NVLINK_PRIV_ERR", "NVLink Privilege Error", _NONE, _W),
    (140, "UNRECOVERABLE_ECC_ERROR_ESCAPE", "ECC Unrecovered Error", _RESET, _C),
    (141, "ROBUST_CHANNEL_FAST_PATH_ERROR", "CUDA Fast Path Error", _NONE, _W),
    (143, "GPU_INIT_ERROR", "GPU Initialization Error", _RESET, _C),
    (144, "NVLINK_SAW_ERROR", f"NVLINK: SAW Error ({_NVLINK5})", _RESET, _W),
    (145, "NVLINK_RLW_ERROR", f"NVLINK: RLW Error ({_NVLINK5})", _RESET, _W),
    (146, "NVLINK_TLW_ERROR", f"NVLINK: TLW Error ({_NVLINK5})", _RESET, _W),
    (147, "NVLINK_TREX_ERROR", f"NVLINK: TREX Error ({_NVLINK5})", _RESET, _W),
    (148, "NVLINK_NVLPW_CTRL_ERROR", f"NVLINK: NVLPW_CTRL Error ({_NVLINK5})", _RESET, _W),
    (149, "NVLINK_NETIR_ERROR", f"NVLINK: NETIR Error ({_NVLINK5})", _RESET, _W),
    (150, "NVLINK_MSE_ERROR", f"NVLINK: MSE Error ({_NVLINK5})", _RESET, _W),
    (151, "ROBUST_CHANNEL_KEY_ROTATION_ERROR", "Key rotation Error", _DRAIN, _C),
    (
        154,
        "GPU_RECOVERY_ACTION_CHANGED",
        "GPU Recovery Action Changed (the text names the recovery now required)",
        _RESET,
        _C,
    ),
    (155, "NVLINK_SW_DEFINED_ERROR", "NVLINK: SW Defined Error", _RESET, _C),
    (156, "RESOURCE_RETIREMENT_EVENT", "Resource Retirement Event", _RESET, _W),
    (157, "RESOURCE_RETIREMENT_FAILURE", "Resource Retirement Failure", _REPORT, _W),
    (158, "GPU_FATAL_TIMEOUT", "GPU Fatal Timeout", _RESET, _C),
)

_CATALOG: dict[int, XidInfo] = {c: XidInfo(c, n, d, a, s) for c, n, d, a, s in _ENTRIES}


def known_codes() -> tuple[int, ...]:
    """The codes the catalogue describes, ascending."""
    return tuple(sorted(_CATALOG))


def xid_info(code: int) -> XidInfo:
    """The catalogue's entry for ``code``; an unknown code gets a generic warning entry."""
    info = _CATALOG.get(code)
    if info is not None:
        return info
    return XidInfo(
        code,
        "UNKNOWN_XID",
        f"Xid {code} is not in Gantry's catalogue: look it up in NVIDIA's ({CATALOG_URL})",
        "report",
        "warning",
    )


_NVLINK5_FATAL_RE = re.compile(r"\b(Nonfatal|Non-fatal|Fatal)\b", re.IGNORECASE)
# "GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)"
_RECOVERY_RE = re.compile(r"recovery action changed from .*? to 0x[0-9a-fA-F]+ \(([^)]*)\)")


def xid_info_for_line(code: int, text: str) -> XidInfo:
    """``xid_info(code)`` refined by the kernel line's own words, where they say more.

    NVLink5 Xids 144-150: ``Nonfatal`` is a warning with nothing to do, ``Fatal`` needs a GPU
    reset. Xid 154: the recovery named (``None``, ``GPU Reset Required``, ``Drain and Reset``,
    ``PF FLR``, ``Node Reboot Required``, ``OS Reboot``) sets the action.
    """
    info = xid_info(code)
    if 144 <= code <= 150:
        found = _NVLINK5_FATAL_RE.search(text)
        if found is None:
            return info
        if found.group(1).lower() == "fatal":
            return XidInfo(code, info.name, info.description, "reset_gpu", "critical")
        return XidInfo(code, info.name, info.description, "none", "warning")
    if code == 154:
        found = _RECOVERY_RE.search(text)
        if found is None:
            return info
        wanted = found.group(1).lower()
        description = f"GPU Recovery Action Changed to {found.group(1)}"
        if "reboot" in wanted:
            return XidInfo(code, info.name, description, "drain_node", "critical")
        if wanted == "none":
            return XidInfo(code, info.name, description, "none", "info")
        return XidInfo(code, info.name, description, "reset_gpu", "critical")
    return info
