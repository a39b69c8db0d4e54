"""The NCCL signatures of the failure catalogue (``log_signatures``): the watchdog's
collective timeouts and heartbeat monitor (PyTorch 1.x and 2.x wording), the flight
recorder's dump, NCCL's errors with their "Last error:" and its WARN lines. Pure."""

from __future__ import annotations

import re

from agent.jobs.node.log_findings import Hit, strip_prefix

__all__ = [
    "NCCL_CUDA_FAILURE",
    "TAKEDOWN",
    "TAKEDOWN_KEY",
    "TIMEOUT_AT",
    "WATCHDOG_WORK",
    "flight_recorder",
    "nccl_error",
    "nccl_warn",
    "takedown",
    "watchdog_hit",
    "with_last_error",
    "with_work",
]

# --- NCCL watchdog ---------------------------------------------------------------------------
# PyTorch 1.x to 2.x: "[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5,
# OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600013 milliseconds
# before timing out." (1.x: no SeqNum, no Numel*; 1.8: TensorShape=[...]).
# A terminal's wrap right after "timeout: " loses the space to the scanner's strip: optional.
_WATCHDOG = re.compile(
    r"Watchdog caught collective operation timeout: ?WorkNCCL\((?P<fields>.*?)\)"
    r"\s*ran for (?P<ran>\d+) milliseconds before timing out"
)
_WORK_FIELD = re.compile(r"(?P<key>\w+)(?:\(ms\))?=(?P<value>\[[^\]]*\]|[^,]*)")
_WATCHDOG_START = "Watchdog caught collective operation timeout"
# 2.x, a later line: "[Rank 0] Timeout at NCCL work: 1580, last enqueued NCCL work: 1582,
# last completed NCCL work: 1579."; ~2.6+: "... failure detected by watchdog at work sequence
# id: 460631 PG status: last enqueued work: 460631, last completed work: 460630".
WATCHDOG_WORK = re.compile(
    r"[Ll]ast enqueued (?:NCCL )?work: (?P<enqueued>-?\d+),"
    r" last completed (?:NCCL )?work: (?P<completed>-?\d+)"
)
# A CUDA error the watchdog met on an NCCL stream, not a timeout: 2.1-2.3 "[Rank 1] NCCL
# watchdog thread terminated with exception: CUDA error: unspecified launch failure", 2.4+
# "Process group watchdog thread terminated with exception: CUDA error: uncorrectable ECC error
# encountered". Usually a GPU fault: the kernel log's Xid says which.
_WATCHDOG_CUDA = re.compile(
    r"atchdog thread terminated with exception: CUDA error: (?P<what>[^.\n]*[^.\s])"
)
# What PyTorch prints before it aborts the process after any NCCL failure (a timeout or an
# error): "Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA
# kernels, ..." and "To avoid data inconsistency, we are taking the entire process down."
# 2.x: "[Rank 0] Timeout at NCCL work: 1580, last enqueued NCCL work: 1582, last completed
# NCCL work: 1579." (the follow-up of a "Watchdog caught" line, or alone).
TIMEOUT_AT = "Timeout at NCCL work"
_TIMEOUT_AT = re.compile(TIMEOUT_AT + r": (?P<seq>\d+)")
TAKEDOWN = "Some NCCL operations have failed or timed out"
TAKEDOWN_KEY = "takedown"  # its findings' key: the scanner ranks them after every other
# 2.2+: the heartbeat monitor, when the watchdog itself is stuck.
_WATCHDOG_STUCK = re.compile(
    r"watchdog (?:thread )?got stuck for (?P<s>\d+) seconds|Heartbeat monitor timed out"
)


def watchdog_hit(line: str) -> Hit | None:
    match = _WATCHDOG.search(line)
    if match is None and _WATCHDOG_START in line:
        # Cut by a terminal's wrap: the scanner joins the next line and reads it again.
        return Hit("nccl_watchdog_timeout", "critical", "NCCL watchdog timeout", key="partial")
    cuda = _WATCHDOG_CUDA.search(line) if match is None else None
    if cuda is not None and "out of memory" not in cuda["what"]:  # memory: cuda_oom's
        what = cuda["what"]
        return Hit(
            "nccl_cuda_error",
            "critical",
            f"CUDA error: {what} (caught by the NCCL watchdog; check the node's Xid lines)",
            {"cuda_error": what},
            key=what,
        )
    if match is None and (lone := _TIMEOUT_AT.search(line)) is not None:
        return _lone_work_line(lone["seq"], line)
    if match is None:
        stuck = _WATCHDOG_STUCK.search(line)
        if stuck is None:
            return None
        secs = f" for {stuck['s']} s" if stuck["s"] else ""
        return Hit(
            "nccl_watchdog_timeout",
            "critical",
            f"NCCL watchdog stuck{secs} (heartbeat monitor): a collective or CUDA call hangs",
            key="stuck",
        )
    fields = {m["key"]: m["value"].strip() for m in _WORK_FIELD.finditer(match["fields"])}
    op = fields.get("OpType", "collective")
    seq = fields.get("SeqNum", "")
    cause = f"NCCL watchdog timeout: {op}"
    if seq:
        cause += f" (SeqNum {seq})"
    cause += f" ran {match['ran']} ms"
    out = {"op": op, "ran_ms": match["ran"]}
    if seq:
        out["seq"] = seq
    if "Timeout" in fields:
        cause += f", timeout {fields['Timeout']} ms"
        out["timeout_ms"] = fields["Timeout"]
    return Hit("nccl_watchdog_timeout", "critical", cause, out, key=f"{op}/{seq}")


def _lone_work_line(seq: str, line: str) -> Hit:
    """PyTorch's "Timeout at NCCL work: N, last enqueued ..." without the "Watchdog caught"
    line before it (lost to Ray's "[repeated 6x across cluster]", or to a cut paste)."""
    cause = f"NCCL watchdog timeout at SeqNum {seq} (the collective's own line is not in the log)"
    hit = Hit("nccl_watchdog_timeout", "critical", cause, {"seq": seq}, key=f"work/{seq}")
    return with_work(hit, line) or hit


def takedown(line: str) -> Hit | None:
    """PyTorch's abort after an NCCL failure, when the log holds nothing better (a
    lower-priority finding: any other one on the rank replaces it as the cause)."""
    if TAKEDOWN not in line:
        return None
    return Hit(
        "nccl_watchdog_timeout",
        "critical",
        "NCCL operations failed or timed out (PyTorch took the process down; the log does not "
        "say which collective)",
        key=TAKEDOWN_KEY,
    )


def with_work(hit: Hit, line: str) -> Hit | None:
    """``hit`` completed by PyTorch's "last enqueued/completed NCCL work" line, or None."""
    work = WATCHDOG_WORK.search(line)
    if work is None:
        return None
    cause = f"{hit.cause}; last enqueued {work['enqueued']}, last completed {work['completed']}"
    fields = {
        **hit.fields,
        "last_enqueued": work["enqueued"],
        "last_completed": work["completed"],
    }
    return Hit(hit.alert, hit.severity, cause, fields, hit.key)


# PyTorch's flight recorder (TORCH_NCCL_TRACE_BUFFER_SIZE > 0): "[PG 0 Rank 0] ProcessGroupNCCL
# preparing to dump debug info." then the dump's file (TORCH_NCCL_DEBUG_INFO_TEMP_FILE, by
# default /tmp/nccl_trace_rank_<rank>).
_FLIGHT = re.compile(
    r"preparing to dump debug info|[Ff]inished writing NCCLPG debug info to (?P<file>\S+)"
    r"|[Ff]light [Rr]ecorder dump(?:ed)? (?:written )?to (?P<file2>\S+)"
)


def flight_recorder(line: str) -> Hit | None:
    match = _FLIGHT.search(line)
    if match is None:
        return None
    path = (match["file"] or match["file2"] or "").rstrip(".")
    where = path or "TORCH_NCCL_DEBUG_INFO_TEMP_FILE (default /tmp/nccl_trace_rank_<rank>)"
    return Hit(
        "nccl_flight_recorder",
        "info",
        f"NCCL flight recorder dump in {where}: read it with torchfrtrace to see which rank "
        "did not join the collective",
        {"path": path} if path else {},
        key=path or "dump",
    )


# --- NCCL errors -----------------------------------------------------------------------------
# "NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:219, unhandled system error,
# NCCL version 2.14.3", "ncclRemoteError: A call failed possibly due to a network error or a
# remote process exiting prematurely.", "ncclInternalError: Internal check failed."
_NCCL_ERROR = re.compile(
    r"(?P<name>unhandled system error|unhandled cuda error|internal error|invalid usage"
    r"|remote process exited or there was a network error"
    r"|ncclSystemError|ncclUnhandledCudaError|ncclInternalError|ncclRemoteError"
    r"|ncclInvalidUsage)",
    re.IGNORECASE,
)
_NCCL_ALERT = {
    "unhandled system error": "nccl_system_error",
    "ncclsystemerror": "nccl_system_error",
    "unhandled cuda error": "nccl_cuda_error",
    "ncclunhandledcudaerror": "nccl_cuda_error",
    "internal error": "nccl_internal_error",
    "ncclinternalerror": "nccl_internal_error",
    "invalid usage": "nccl_internal_error",
    "ncclinvalidusage": "nccl_internal_error",
    "remote process exited or there was a network error": "nccl_remote_exited",
    "ncclremoteerror": "nccl_remote_exited",
}
_NCCL_WORDS = {
    "nccl_system_error": "NCCL unhandled system error (a socket, IB or shared-memory call failed)",
    "nccl_cuda_error": "NCCL unhandled CUDA error",
    "nccl_internal_error": "NCCL internal error",
    "nccl_remote_exited": "NCCL: remote process exited or there was a network error",
}
_NCCL_VERSION = re.compile(r"NCCL version (\d[\w.+-]*)")
# NCCL's "Cuda failure 1 'invalid argument'" (older: "Cuda failure 'out of memory'").
NCCL_CUDA_FAILURE = re.compile(r"Cuda failure (?:\d+ )?'(?P<what>[^']+)'")


def nccl_error(line: str) -> Hit | None:
    if "NCCL" not in line and "nccl" not in line:
        return None
    failure = NCCL_CUDA_FAILURE.search(line)
    if failure is not None:
        if failure["what"] == "out of memory":
            return Hit(
                "nccl_cuda_oom",
                "critical",
                f"CUDA out of memory in NCCL ({failure[0]})",
                key="oom",
            )
        return Hit("nccl_cuda_error", "critical", f"NCCL: {failure[0]}", key=failure["what"])
    match = _NCCL_ERROR.search(line)
    if match is None:
        return None
    alert = _NCCL_ALERT[match["name"].lower()]
    version = _NCCL_VERSION.search(line)
    fields = {"nccl_version": version[1]} if version else {}
    cause = _NCCL_WORDS[alert] + (f" (NCCL {version[1]})" if version else "")
    return Hit(alert, "critical", cause, fields, key=alert)


def with_last_error(hit: Hit, line: str) -> Hit:
    """An NCCL error completed by the "Last error:" text that follows it."""
    # srun -l's "12: " only where the scanner saw it on the error's own line (it takes it off).
    text = strip_prefix(line.strip(), numbered=False).strip()
    failure = NCCL_CUDA_FAILURE.search(text)
    if failure is not None:
        if failure["what"] == "out of memory":
            return Hit(
                "nccl_cuda_oom", "critical", f"CUDA out of memory in NCCL ({failure[0]})", key="oom"
            )
        if hit.alert == "nccl_cuda_error":
            cause = f"NCCL: unhandled CUDA error: {failure[0]}"
            return Hit(hit.alert, hit.severity, cause, hit.fields, hit.key)
    fields = {**hit.fields, "last_error": text[:500]}
    return Hit(hit.alert, hit.severity, f"{hit.cause}: {text[:200]}", fields, hit.key)


# "host:pid:tid [dev] NCCL WARN ..." (NCCL's own log, NCCL_DEBUG=WARN or INFO).
_NCCL_WARN = re.compile(r"NCCL WARN (?P<what>.+)")


def nccl_warn(line: str) -> Hit | None:
    match = _NCCL_WARN.search(line)
    if match is None:
        return None
    what = match["what"].strip()
    failure = NCCL_CUDA_FAILURE.search(what)
    if failure is not None and failure["what"] == "out of memory":
        return Hit("nccl_cuda_oom", "critical", f"CUDA out of memory in NCCL ({failure[0]})")
    return Hit("nccl_warn", "warning", f"NCCL WARN {what[:200]}", key=what[:80])
