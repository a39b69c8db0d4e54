"""Failure signatures of the rank's own runtime rather than of its GPUs or NCCL: a disk that
filled while saving, a DataLoader worker that died, a rendezvous that could not start, a
``GLOO_SOCKET_IFNAME`` naming no interface, a bare Python ``MemoryError``. Pure; each rule
turns one line into a ``Hit`` whose cause names what to fix (``log_signatures`` lists them).

The wordings are PyTorch's and Python's (tests/fixtures/logs/, each with its source in
SOURCES.md; some captured here from real runs, as SOURCES.md says).
"""

from __future__ import annotations

import re

from agent.jobs.node.log_findings import Hit, Signature, strip_prefix

__all__ = ["RUNTIME_ALERTS", "RUNTIME_SIGNATURES"]

RUNTIME_ALERTS = ("disk_full", "dataloader_worker", "rendezvous", "socket_ifname")

# --- disk ------------------------------------------------------------------------------------
# Python: "OSError: [Errno 28] No space left on device: '/ckpt/x'"; safetensors: "... I/O error:
# No space left on device (os error 28)"; quotas: "[Errno 122] Disk quota exceeded"; a file-size
# limit (ulimit -f; Python ignores SIGXFSZ): "[Errno 27] File too large". torch.save to a path
# says none of these: "[enforce fail at inline_container.cc:445] . PytorchStreamWriter failed
# writing file data/176: file write failed", and torch 2.x's "[enforce fail at
# inline_container.cc:672] . unexpected pos 1152 vs 1046" (a short write).
_NO_SPACE = re.compile(r"No space left on device(?::\s*'(?P<path>[^']{1,200})')?")
_QUOTA = re.compile(r"Disk quota exceeded(?::\s*'(?P<path>[^']{1,200})')?")
_TOO_LARGE = re.compile(r"\[Errno 27\] File too large(?::\s*'(?P<path>[^']{1,200})')?")
_STREAM_WRITER = re.compile(r"PytorchStreamWriter failed writing file (?P<file>\S+?):? file write")
_SHORT_WRITE = re.compile(r"inline_container\.cc:\d+\]\s*\.?\s*unexpected pos (?P<at>\d+) vs \d+")
_FREE = "free space there (old checkpoints, caches) or save elsewhere"


def _disk(line: str) -> Hit | None:
    for pattern, what, key in (
        (_NO_SPACE, "disk full (No space left on device)", "enospc"),
        (_QUOTA, "disk quota exceeded", "quota"),
        (_TOO_LARGE, "a file grew past the size limit (File too large; ulimit -f?)", "efbig"),
    ):
        match = pattern.search(line)
        if match is not None:
            path = match["path"] or ""
            where = f" writing {path}" if path else ""
            fix = "raise the quota or " + _FREE if key == "quota" else _FREE
            if key == "efbig":
                fix = "raise the file-size limit (ulimit -f) or save smaller shards"
            return Hit(
                "disk_full",
                "critical",
                f"{what}{where}: {fix}",
                {"path": path} if path else {},
                key=key,
            )
    writer = _STREAM_WRITER.search(line)
    short_write = _SHORT_WRITE.search(line) if writer is None else None
    if writer is None and short_write is None:
        return None
    told = (
        f"failed writing {writer['file']}"
        if writer is not None
        else f"short write, unexpected pos {short_write['at'] if short_write else ''}"
    )
    return Hit(
        "disk_full",
        "critical",
        f"torch.save could not write the checkpoint ({told}): disk full, over quota or past "
        f"a file-size limit? {_FREE}",
        {},
        key="torch.save",
    )


# --- DataLoader workers ------------------------------------------------------------------------
# "RuntimeError: DataLoader worker (pid 1817) is killed by signal: Killed." (then, chained,
# "DataLoader worker (pid(s) 1817) exited unexpectedly"); "... by signal: Bus error." with
# "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient
# shared memory (shm)."; older: "DataLoader worker (pid 4242) exited unexpectedly with exit
# code 1. Details are lost due to multiprocessing. Rerunning with num_workers=0 may give better
# error trace."
_WORKER = re.compile(
    r"DataLoader worker \(pid(?:\(s\))? (?P<pids>\d+(?:, ?\d+)*)\) "
    r"(?:is killed by signal: (?P<signal>[A-Za-z][\w ]{0,40}?)\.?\s*$"
    r"|exited unexpectedly(?: with exit code (?P<code>-?\d+))?)"
)
_SHM = "Unexpected bus error encountered in worker"
_SHM_FIX = (
    "shared memory (/dev/shm) is full: enlarge it (docker --shm-size, a memory-backed "
    "emptyDir) or lower num_workers"
)


def _dataloader_worker(line: str) -> Hit | None:
    if _SHM in line:
        return Hit(
            "dataloader_worker", "critical", f"DataLoader worker bus error: {_SHM_FIX}", key="shm"
        )
    match = _WORKER.search(line)
    if match is None:
        return None
    pids = match["pids"].replace(" ", "")
    first = pids.split(",")[0]
    who = f"DataLoader worker (pid {pids})"
    signal = (match["signal"] or "").strip()
    if signal == "Killed":
        cause = (
            f"{who} killed by SIGKILL, most often the host's oom-killer: lower num_workers or "
            "what each worker holds in memory, or raise the node's memory limit"
        )
    elif signal == "Bus error":
        cause = f"{who} died of a bus error: {_SHM_FIX}"
    elif signal:
        cause = (
            f"{who} killed by signal {signal}: rerun with num_workers=0 to see where (a "
            "dataset's or library's native code)"
        )
    else:
        code = f" with exit code {match['code']}" if match["code"] else ""
        cause = f"{who} exited unexpectedly{code}: rerun with num_workers=0 to see its error"
    fields = {"pid": first} | ({"signal": signal} if signal else {})
    return Hit("dataloader_worker", "critical", cause, fields, key=first)


# --- rendezvous --------------------------------------------------------------------------------
# torch 2.x: "The server socket has failed to listen on any local network address. port: 29500,
# useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use"; 1.x: "... The
# server socket has failed to bind to [::]:29500 (errno: 98 - Address already in use)."; a
# client: "The client socket has failed to connect to any network address of (node-0, 29500)";
# the store: "Timed out after 1801 seconds waiting for clients. 1/2 clients joined."
_LISTEN = "failed to listen on any local network address"
_IN_USE = re.compile(r"EADDRINUSE|[Aa]ddress already in use")
_PORT = re.compile(r"port: (?P<port>\d+)|\]:(?P<port2>\d+) \(errno: 98")
_CONNECT = re.compile(
    r"failed to connect to any network address of \((?P<host>[^,()]{1,255}), (?P<port>\d+)\)"
)
_CLIENTS = re.compile(
    r"Timed out after (?P<s>\d+) seconds waiting for clients\. (?P<joined>\d+)/(?P<world>\d+)"
)


def _rendezvous(line: str) -> Hit | None:
    if _LISTEN in line and _IN_USE.search(line):
        found = _PORT.search(line)
        port = (found["port"] or found["port2"]) if found is not None else ""
        which = f"port {port}" if port else "the port"
        return Hit(
            "rendezvous",
            "critical",
            f"rendezvous {which} (MASTER_PORT) is already in use on the master node: a "
            "leftover rank or another job holds it; stop it or pick another port",
            {"port": port} if port else {},
            key=f"in-use/{port}",
        )
    connect = _CONNECT.search(line)
    if connect is not None:
        where = f"{connect['host']}:{connect['port']}"
        return Hit(
            "rendezvous",
            "critical",
            f"could not reach the rendezvous at {where} (MASTER_ADDR:MASTER_PORT): check the "
            "name resolves on this node and the port is open between nodes",
            {"host": connect["host"], "port": connect["port"]},
            key=f"connect/{where}",
        )
    clients = _CLIENTS.search(line)
    if clients is not None:
        return Hit(
            "rendezvous",
            "critical",
            f"rendezvous timed out after {clients['s']} s: {clients['joined']} of "
            f"{clients['world']} ranks joined (a rank did not start, or cannot reach MASTER_ADDR)",
            {"joined": clients["joined"], "world": clients["world"]},
            key="clients",
        )
    return None


# gloo: "RuntimeError: [enforce fail at .../gloo/transport/tcp/device.cc:84] ifa != nullptr.
# Unable to find address for: eth99" (GLOO_SOCKET_IFNAME naming no interface, or an address).
_IFNAME = re.compile(r"Unable to find address for: ?(?P<name>\S{1,64})")


def _socket_ifname(line: str) -> Hit | None:
    match = _IFNAME.search(line)
    if match is None:
        return None
    name = match["name"]
    return Hit(
        "socket_ifname",
        "critical",
        f"GLOO_SOCKET_IFNAME names {name!r}, no network interface of this node: set it to one "
        "`ip -br addr` lists, or unset it",
        {"ifname": name},
        key=name,
    )


# A bare "MemoryError" (Python's allocator: no message, or "MemoryError: Unable to allocate 8.00
# GiB for an array with shape ..." from NumPy) as a traceback's exception line.
_MEMORY_ERROR = re.compile(r"^(?:\w+\.)*MemoryError(?::\s*(?P<message>.*))?$")


def _memory_error(line: str) -> Hit | None:
    match = _MEMORY_ERROR.match(strip_prefix(line.strip()))
    if match is None:
        return None
    told = (match["message"] or "").strip()
    return Hit(
        "zero_alloc",
        "critical",
        "host memory allocation failed (MemoryError"
        + (f": {told[:120]}" if told else "")
        + "): host RAM or the rank's memory limit is short; hold less in host memory or "
        "raise the limit",
        {},
        key="host",
    )


RUNTIME_SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "disk_full",
        (
            "No space left on device",
            "Disk quota exceeded",
            "File too large",
            "PytorchStreamWriter failed writing",
            "unexpected pos",
        ),
        _disk,
    ),
    Signature("dataloader_worker", ("DataLoader worker", _SHM), _dataloader_worker),
    Signature(
        "rendezvous",
        (_LISTEN, "failed to connect to any network address", "waiting for clients"),
        _rendezvous,
    ),
    Signature("socket_ifname", ("Unable to find address for",), _socket_ifname),
    Signature("zero_alloc", ("MemoryError",), _memory_error),
)
