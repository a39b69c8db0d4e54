"""The catalogue of failure signatures: one small pure rule per way a real rank says it is
dying or in trouble, each turning one log line into a ``Hit`` (an alert name, a severity,
a one-line cause and the figures it read). Pure; ``log_scan.LogScanner`` runs them on every
line a rank writes and keeps the state some need (tracebacks, storms, follow-up lines).

Each rule names the texts it needs (``needles``); a line holding none of them costs one
regular-expression search for all rules together. The formats come from real logs of
PyTorch 1.x and 2.x, NCCL 2.4 to 2.2x, DeepSpeed and Megatron (tests/fixtures/logs/, each
with its source in SOURCES.md).
"""

from __future__ import annotations

import re

from gantry.v1.xid_catalog import xid_info_for_line

from agent.jobs.node.log_findings import Hit, Severity, Signature
from agent.jobs.node.nccl_signatures import (
    TAKEDOWN,
    TIMEOUT_AT,
    flight_recorder,
    nccl_error,
    nccl_warn,
    takedown,
    watchdog_hit,
)
from agent.jobs.node.runtime_signatures import RUNTIME_ALERTS, RUNTIME_SIGNATURES

__all__ = ["ALERTS", "PCI", "PCI_ADDRESS", "SIGNATURES", "cuda_oom_cause", "overflow_scale"]


# Every alert name a diagnosis may carry (details["alert"] of an ALERT event).
ALERTS = (
    "nccl_watchdog_timeout",
    "nccl_flight_recorder",
    "nccl_warn",
    "nccl_system_error",
    "nccl_cuda_error",
    "nccl_remote_exited",
    "nccl_internal_error",
    "cuda_oom",
    "nccl_cuda_oom",
    "zero_alloc",
    "host_oom",
    "loss_scale_storm",
    "nan_loss",
    "gloo_reset",
    "gloo_timeout",
    "traceback",
    "xid",
    "ib_fallback",
    "gpu_missing",
    *RUNTIME_ALERTS,  # disk_full, dataloader_worker, rendezvous, socket_ifname
)


# --- memory ----------------------------------------------------------------------------------
# PyTorch's allocator: 1.x "CUDA out of memory. Tried to allocate 978.00 MiB (GPU 0; 4.00 GiB
# total capacity; 1.68 GiB already allocated; 0 bytes free; ...)"; 2.x "... Tried to allocate
# 1.97 GiB. GPU 2 has a total capacty of 39.43 GiB of which 982.31 MiB is free."
_CUDA_OOM = re.compile(r"CUDA out of memory\.? ?(?:Tried to allocate (?P<tried>[\d.]+ ?\w+))?")
_OOM_GPU_1X = re.compile(
    r"\(GPU (?P<gpu>\d+); (?P<total>[\d.]+ \w+) total capacity;.*?; (?P<free>[\d.]+ \w+) free"
)
_OOM_GPU_2X = re.compile(
    r"GPU ?(?P<gpu>\d*) has a total capac\w* of (?P<total>[\d.]+ \w+)"
    r" of which (?P<free>[\d.]+ \w+) is free"
)
_CUDA_ERROR_OOM = re.compile(r"CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED")


def cuda_oom_cause(line: str) -> tuple[str, dict[str, str]] | None:
    """A CUDA out-of-memory line as its figures: ``CUDA out of memory on GPU 0: tried 2.00
    GiB, 1.20 GiB free of 79.15 GiB``."""
    oom = _CUDA_OOM.search(line)
    if oom is None:
        error = _CUDA_ERROR_OOM.search(line)
        if error is None:
            return None
        return f"CUDA out of memory ({error[0]})", {}
    fields: dict[str, str] = {}
    gpu = _OOM_GPU_1X.search(line) or _OOM_GPU_2X.search(line)
    where = f" on GPU {gpu['gpu']}" if gpu is not None and gpu["gpu"] else ""
    text = f"CUDA out of memory{where}"
    if oom["tried"]:
        text += f": tried {oom['tried']}"
        fields["tried"] = oom["tried"]
    if gpu is not None:
        text += f", {gpu['free']} free of {gpu['total']}"
        fields.update(free=gpu["free"], total=gpu["total"])
        if gpu["gpu"]:
            fields["gpu"] = gpu["gpu"]
    return text, fields


def _cuda_oom(line: str) -> Hit | None:
    found = cuda_oom_cause(line)
    if found is None:
        return None
    return Hit("cuda_oom", "critical", found[0], found[1], key=found[0])


# Host allocations that ZeRO offload and pinned buffers make: "[enforce fail at
# alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried to allocate
# 10737418240 bytes." (older: "can't allocate memory: you tried to allocate ...").
_HOST_ALLOC = re.compile(
    r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)"
    r"(?:: you tried to allocate (?P<bytes>\d+) bytes)?"
    r"|cudaHostAlloc failed|pinned memory allocation failed"
)


def _zero_alloc(line: str) -> Hit | None:
    match = _HOST_ALLOC.search(line)
    if match is None:
        return None
    cause = f"host memory allocation failed ({match[0].split(': you')[0]})"
    fields = {}
    if match["bytes"]:
        size = int(match["bytes"])
        cause += f": tried {size / 2**30:.2f} GiB"
        fields["tried"] = f"{size / 2**30:.2f} GiB"
    cause += (
        ": host RAM or the rank's memory limit is short (ZeRO offload, pinned buffers live there)"
    )
    return Hit("zero_alloc", "critical", cause, fields, key="host")


# The kernel's oom-killer, when its lines reach a log: "Out of memory: Killed process 4125
# (python) total-vm:..., anon-rss:...kB", "oom-kill:constraint=CONSTRAINT_NONE,...,pid=4125";
# a cgroup's: "Memory cgroup out of memory: Killed process 140339 (python3)" (older: "Kill
# process 42453 (x) score 1000 or sacrifice child"), and the bare "Killed process 935 (python)
# total-vm:..." some kernels print on a line of its own. Slurm's cgroup plugin, in the job's
# output: "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=9411285.0. Some of your
# processes may have been killed by the cgroup out-of-memory handler." (older: "in step 1234.0").
_OOM_KILL = re.compile(
    r"(?:[Oo]ut of memory: Kill(?:ed)? process|\bKilled process) (?P<pid>\d+) \((?P<name>[^)]*)\)"
    r"|oom-kill:.*?task=(?P<task>[^,]+),pid=(?P<pid2>\d+)"
    r"|Detected \d+ oom[-_]kill events? ?(?:\(s\) )?in (?:StepId=|step )(?P<step>\d+(?:\.\w+)?)"
)


def _host_oom(line: str) -> Hit | None:
    match = _OOM_KILL.search(line)
    if match is None:
        return None
    if match["step"]:
        return Hit(
            "host_oom",
            "critical",
            f"host out of memory: Slurm's cgroup oom-killer killed a process of step "
            f"{match['step']} (raise the job's --mem, or use less host memory per rank)",
            {"slurm_step": match["step"]},
            key=f"slurm/{match['step']}",
        )
    pid = match["pid"] or match["pid2"]
    name = match["name"] or match["task"]
    return Hit(
        "host_oom",
        "critical",
        f"host out of memory: the kernel's oom-killer killed pid {pid} ({name})",
        {"pid": pid},
        key=pid,
    )


# --- training --------------------------------------------------------------------------------
# DeepSpeed: "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536,
# reducing to 32768"; older: "Grad overflow on iteration 12"; "Current loss scale already at
# minimum - cannot decrease scale anymore. Exiting run."
_OVERFLOW = re.compile(
    r"OVERFLOW! Rank \d+ Skipping step|Grad overflow on iteration|Gradient overflow\. Skipping step"
)
_REDUCING = re.compile(r"reducing to (?P<scale>[\d.e+]+)")
_MIN_SCALE = "loss scale already at minimum"


def overflow_scale(line: str) -> tuple[bool, str | None]:
    """Whether ``line`` reports a skipped fp16 step, and the scale it reduced to."""
    if _OVERFLOW.search(line) is None:
        return False, None
    scale = _REDUCING.search(line)
    return True, scale["scale"] if scale else None


def _min_scale(line: str) -> Hit | None:
    if _MIN_SCALE not in line:
        return None
    return Hit(
        "loss_scale_storm",
        "critical",
        "fp16 loss scale already at its minimum: every step overflows (use bf16, or lower "
        "the learning rate)",
        key="minimum",
    )


# {'loss': nan, ...} (Trainer), "lm loss: nan" / "lm loss: inf" (Megatron), "loss=nan",
# "Loss is nan", "number of nan iterations:   3" (Megatron); nanoGPT's and plain loops' "iter
# 15: loss nan, time ..." (no separator), "loss: tensor(nan, grad_fn=...)".
_NAN_LOSS = re.compile(
    r"\bloss['\"]?\s*(?:[:=]|is)?\s*['\"]?(?:tensor\()?(?P<value>nan|[+-]?inf(?:inity)?)\b",
    re.IGNORECASE,
)
# The step the same line names: "iter 15:", " iteration      100/", "step=40", "global_step 7".
_NAN_STEP = re.compile(r"(?:\b|_)(?:iter(?:ation)?|step)\s*[:=]?\s*(?P<step>\d+)\b", re.IGNORECASE)
_NAN_ITERS = re.compile(r"number of nan iterations:\s*(?P<n>[1-9]\d*)")
# {'grad_norm': nan} (Trainer), "grad norm: nan" (Megatron): the loss follows a step later.
_NAN_GRAD = re.compile(
    r"\bgrad[_ ]norm['\"]?\s*[:=]\s*['\"]?(?P<value>nan|[+-]?inf)\b", re.IGNORECASE
)


def _nan_loss(line: str) -> Hit | None:
    match = _NAN_LOSS.search(line)
    if match is not None:
        value = match["value"].lower()
        step = _NAN_STEP.search(line[: match.start()])
        if step is None:
            return Hit("nan_loss", "critical", f"loss is {value}", {"value": value}, key=value)
        return Hit(
            "nan_loss",
            "critical",
            f"loss is {value} at step {step['step']}",
            {"value": value, "step": step["step"]},
            key=value,
        )
    iters = _NAN_ITERS.search(line)
    if iters is not None:
        return Hit("nan_loss", "critical", f"{iters['n']} iterations with a NaN loss", key="iters")
    grad = _NAN_GRAD.search(line)
    if grad is not None:
        value = grad["value"].lower()
        return Hit(
            "nan_loss",
            "critical",
            f"gradient norm is {value}: the step's update is lost and the loss will follow",
            {"value": value, "what": "grad_norm"},
            key=f"grad {value}",
        )
    return None


# --- gloo ------------------------------------------------------------------------------------
# "[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection closed by peer
# [10.0.0.2]:35679", "... pair.cc:534] Read error [10.0.0.2]:42127: Connection reset by peer",
# "... unbound_buffer.cc:81] Timed out waiting 1800000ms for recv operation to complete".
_GLOO_RESET = re.compile(
    r"(?:Connection closed by peer|Connection reset by peer)(?: ?(?P<peer>\[[^\]]+\]:\d+))?"
)
_GLOO_PEER = re.compile(r"(?P<peer>\[[^\]]+\]:\d+)")
_GLOO_TIMEOUT = re.compile(r"Timed out waiting (?P<ms>\d+)ms for (?P<op>\w+) operation")


def _gloo(line: str) -> Hit | None:
    if "gloo" not in line:
        return None
    timeout = _GLOO_TIMEOUT.search(line)
    if timeout is not None:
        return Hit(
            "gloo_timeout",
            "critical",
            f"gloo collective timeout: {timeout['op']} waited {timeout['ms']} ms (a peer "
            "rank hangs or died)",
            {"timeout_ms": timeout["ms"], "op": timeout["op"]},
            key=timeout["op"],
        )
    reset = _GLOO_RESET.search(line)
    if reset is None:
        return None
    peer_match = _GLOO_PEER.search(line)
    peer = peer_match["peer"].replace("[", "").replace("]", "") if peer_match else ""
    words = "Connection reset by peer" if "reset" in reset[0] else "Connection closed by peer"
    cause = f"gloo: {words}" + (f" ({peer})" if peer else "")
    cause += ": a peer rank died or the network dropped"
    return Hit("gloo_reset", "critical", cause, {"peer": peer} if peer else {}, key=peer)


# --- XID -------------------------------------------------------------------------------------
# "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
# (older: "NVRM: Xid (0000:3b:00): 13, ...").
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>[^)]{0,32})\): (?P<xid>\d+)(?:, (?P<rest>.*))?")


# A PCI address as the driver and nvidia-smi print it: "0000:3b:00", "0000:0B:00.0", and
# nvidia-smi's 3-digit domains ("000:BA:80.0").
PCI = r"[0-9a-fA-F]{3,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
PCI_ADDRESS = re.compile(PCI)
# An Xid with nothing to do (43: a process stopped) is told as info, so that a graver Xid later
# in the same log becomes the rank's cause.
_XID_SEVERITY: dict[str, Severity] = {"critical": "critical", "info": "info"}


def _xid(line: str) -> Hit | None:
    match = _XID.search(line)
    if match is None:
        return None
    info = xid_info_for_line(int(match["xid"]), line)  # NVLink5's verdict, 154's recovery
    # "(PCI:...)" where a report redacted the address: no address, still an Xid.
    pci = match["pci"] if PCI_ADDRESS.fullmatch(match["pci"]) else ""
    where = f"the GPU at PCI {pci}" if pci else "a GPU"
    cause = f"Xid {info.code} on {where}: {info.description} ({info.action_text})"
    return Hit(
        "xid",
        _XID_SEVERITY.get(info.severity, "warning"),
        cause,
        {
            "xid": str(info.code),
            "pci": pci,
            "action": info.action,
            "description": info.description,
        },
        key=f"{pci}/{info.code}",
    )


# A GPU the driver could not bring up, or lost: "NVRM: GPU 0000:0a:00.0: RmInitAdapter failed!
# (0x26:0xffff:1601)", "NVRM: GPU at PCI:0000:b3:00: GPU-... \n NVRM: GPU has fallen off the bus.";
# and nvidia-smi's "Unable to determine the device handle for GPU 0000:0B:00.0: Unknown Error"
# (or ": GPU is lost"): NVML cannot reach a GPU the driver lost.
_SMI_LOST = "Unable to determine the device handle for GPU"
_GPU_MISSING = re.compile(
    r"RmInitAdapter failed|fallen off the bus|failed to initialize|" + _SMI_LOST
)
# The address wherever the line has it: "GPU 0000:0a:00.0:", "GPU at PCI:0000:b3:00:",
# nvidia-smi's "GPU 0000:A1:00.0" and its 3-digit domains ("GPU 000:BA:80.0").
_GPU_PCI = re.compile(r"\bGPU ?(?:at )?(?:PCI:)?(?P<pci>" + PCI + ")")


def _gpu_missing(line: str) -> Hit | None:
    if "NVRM" not in line and _SMI_LOST not in line:
        return None
    match = _GPU_MISSING.search(line)
    if match is None:
        return None
    address = _GPU_PCI.search(line)
    pci = address["pci"] if address is not None else ""
    where = f"the GPU at PCI {pci}" if pci else "a GPU"
    what = {
        "RmInitAdapter failed": "failed to initialise (RmInitAdapter failed)",
        "fallen off the bus": "has fallen off the bus",
        _SMI_LOST: "cannot be reached by NVML (nvidia-smi: "
        + line.rsplit(": ", 1)[-1].strip()[:80]
        + ")",
    }.get(match[0], match[0])
    return Hit(
        "gpu_missing",
        "critical",
        f"{where} {what}: it is gone until the node is drained and reset or rebooted",
        {"pci": pci, "action": "drain_node"} if pci else {"action": "drain_node"},
        key=pci or match[0],
    )


SIGNATURES: tuple[Signature, ...] = (
    Signature("nccl_watchdog_timeout", ("atchdog", "Heartbeat monitor", TIMEOUT_AT), watchdog_hit),
    Signature(
        "nccl_flight_recorder", ("dump debug info", "debug info to", "light"), flight_recorder
    ),
    Signature("cuda_oom", ("out of memory", "ALLOC_FAILED"), _cuda_oom),
    Signature("nccl_error", ("rror", "Cuda failure", "network error"), nccl_error),
    Signature("nccl_warn", ("NCCL WARN",), nccl_warn),
    Signature("zero_alloc", ("DefaultCPUAllocator", "cudaHostAlloc", "pinned memory"), _zero_alloc),
    Signature(
        "host_oom", ("ut of memory: Kill", "Killed process", "oom-kill", "oom_kill"), _host_oom
    ),
    Signature("loss_scale_storm", (_MIN_SCALE,), _min_scale),
    Signature("nan_loss", ("nan", "NaN", "inf"), _nan_loss),
    Signature("gloo", ("gloo",), _gloo),
    Signature("xid", ("NVRM: Xid",), _xid),
    Signature(
        "gpu_missing",
        ("RmInitAdapter failed", "fallen off the bus", "failed to initialize", _SMI_LOST),
        _gpu_missing,
    ),
    *RUNTIME_SIGNATURES,  # disk, DataLoader workers, rendezvous, GLOO_SOCKET_IFNAME
    # Last: on a line that says more (a flattened abort message), the other rule wins.
    Signature("nccl_watchdog_timeout", (TAKEDOWN,), takedown),
)
