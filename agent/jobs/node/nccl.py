"""What NCCL says about itself in a rank's log (NCCL_DEBUG=INFO), and one check on it.

NCCL prints lines of the form `HOST:PID:TID [CUDADEV] NCCL INFO MESSAGE`; log collectors
may put timestamps, stream names or ANSI colours in front, and other output is mixed in.

    node-a:1234:1234 [0] NCCL INFO NCCL version 2.21.5+cuda12.4
    node-a:1234:1250 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB ; OOB ib0:10.2.0.5<0>
    node-a:1234:1250 [0] NCCL INFO Using network IB
    node-a:1234:1250 [0] NCCL INFO Channel 00/0 : 1[1] -> 2[0] [send] via NET/IB/0
    node-a:1234:1250 [0] NCCL INFO comm 0x55d5c8e0 rank 0 nranks 4 ... - Init COMPLETE

`NcclParser.feed(line)` keeps an `NcclState` (version, network, interfaces, transports per
channel) and returns findings worth an event: only news, so a burst of channel lines gives
one finding per transport kind, not one per line. `ib_fallback` is a pure check: a rank
that runs over TCP sockets while InfiniBand was asked for, or was there to be used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from agent.jobs.node.log_findings import strip_prefix
from agent.jobs.node.nccl_lines import NcclLine, parse_nccl_line, transport_kind
from agent.jobs.node.nccl_state import NcclFinding, NcclState, Severity

__all__ = [
    "INFINIBAND_SYSFS",
    "NcclFinding",
    "NcclLine",
    "NcclParser",
    "NcclState",
    "ib_devices_present",
    "ib_fallback",
    "parse_nccl_line",
    "transport_kind",
]

INFINIBAND_SYSFS = Path("/sys/class/infiniband")

MAX_NOTES = 20
MAX_WARNINGS = 50


_VERSION_RE = re.compile(r"NCCL version (\S+)")
_BARE_VERSION_RE = re.compile(r"^\s*NCCL version (\d[\w.+-]*)\s*$")
_NETWORK_RE = re.compile(r"Using network (\S.*)")
_NET_USING_RE = re.compile(r"NET/(?P<net>[^:]{1,60}): Using (?P<rest>.*)")
_NET_NOTE_RE = re.compile(r"NET/IB ?: (?!Using )(.*)")
_BOOTSTRAP_RE = re.compile(r"Bootstrap ?: Using (?:\[\d+\])?(\S+)")
# "[0]mlx5_0:1/IB", "[0]ens7:10.128.0.33<0>", and NCCL 2.2x's merged NICs "[0]={[0] mlx5_2:1/RoCE,
# [1] mlx5_3:1/RoCE}" (each physical NIC once, not the "={" of the merged one).
_DEVICE_RE = re.compile(r"\[\d+\] ?(?!=)([^\s;<\[{},=]+)")
_OOB_RE = re.compile(r"OOB (\S+)")
_PORT_SUFFIX_RE = re.compile(r"<\d+>\Z")  # eth0:10.1.2.3<0>
_ENV_RE = re.compile(r"(NCCL_[A-Z0-9_]+) set (?:by environment )?to (.*)")
# NCCL 2.4/2.5 said "Ring 00 : 15 -> 0 [receive] via NET/Socket/0" (no device brackets).
PARSED_LINES_KEPT = 1024
_CHANNEL_RE = re.compile(
    r"(?:Channel|Ring) (?P<channel>\d+)(?:/\d+)? ?: (?P<src>\d+)(?:\[[^\]]*\])?"
    r" -> (?P<dst>\d+)(?:\[[^\]]*\])?"
    r"(?: \[(?P<dir>send|receive)\])? via (?P<via>\S.*)"
)
_COMM_RE = re.compile(r"\bcomm (0x[0-9a-fA-F]+) rank (\d+) nranks (\d+)\b")
# NVLS in use (NCCL 2.17+): "NVLS comm 0x55d5c8e0 headRank 0 nHeads 4 buffSize ...",
# "Connected NVLS tree"; "NVLS multicast support is available on dev 0" only says it could be.
_NVLS_RE = re.compile(r"\bNVLS comm 0x|Connected NVLS")
# "GPU Direct RDMA Enabled for GPU 0 / HCA 0 (distance 4 <= 4), read 1 mode Default"
_GDR_RE = re.compile(r"GPU Direct RDMA Enabled", re.IGNORECASE)
_TROUBLE_RE = re.compile(r"no device|fail|unable|error|cannot|could not", re.IGNORECASE)


class _Note(Protocol):
    def __call__(
        self,
        kind: str,
        message: str,
        severity: Severity = "info",
        fields: Mapping[str, str] | None = None,
    ) -> None: ...


class NcclParser:
    """Fed a rank's log line by line; never raises on what it is fed.

    `rank` is the rank whose log this is, when the caller knows it; otherwise the rank of
    the widest communicator NCCL reports is used. When `env` (the rank's environment) is
    given, `feed` also runs `ib_fallback` and reports it once; `ib_present` defaults to
    what `ib_devices_present()` finds on this machine.
    """

    def __init__(
        self,
        rank: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
        ib_present: bool | None = None,
    ) -> None:
        self.state = NcclState(rank=rank)
        self._rank_given = rank is not None
        self._env = dict(env) if env is not None else None
        self._ib_present = ib_present
        if env is not None and ib_present is None:
            self._ib_present = ib_devices_present()
        self._fallback_reported = False
        # Lines already parsed: NCCL prints the same channel and ring lines again for every
        # communicator a job creates (parse_nccl_line is pure; bounded, cleared when full).
        self._parsed: dict[str, NcclLine | None] = {}

    def feed_lines(self, lines: Iterable[str]) -> list[NcclFinding]:
        findings: list[NcclFinding] = []
        for line in lines:
            findings.extend(self.feed(line))
        return findings

    def feed(self, line: str) -> list[NcclFinding]:
        if not isinstance(line, str):
            return []
        known = self._parsed
        if line in known:
            parsed = known[line]
        else:
            parsed = parse_nccl_line(line)
            if len(known) >= PARSED_LINES_KEPT:
                known.clear()
            known[line] = parsed
        if parsed is None:
            return self._bare_version(line)
        state = self.state
        if state.host is None:
            state.host = parsed.host
        findings: list[NcclFinding] = []

        def note(
            kind: str,
            message: str,
            severity: Severity = "info",
            fields: Mapping[str, str] | None = None,
        ) -> None:
            findings.append(
                NcclFinding(
                    kind, message, state.rank, parsed.host, parsed.text, severity, fields or {}
                )
            )

        msg = parsed.message
        if parsed.level in ("WARN", "ABORT"):
            if len(state.warnings) < MAX_WARNINGS:
                state.warnings.append(parsed.text)
            note("warn", f"{self._who()}: NCCL {parsed.level} {msg}", "warning")
        elif parsed.level == "INFO":
            self._info(msg, parsed, note)
        if self._env is not None and not self._fallback_reported:
            finding = ib_fallback(self._env, bool(self._ib_present), state)
            if finding is not None:
                self._fallback_reported = True
                findings.append(finding)
        return findings

    def _bare_version(self, line: str) -> list[NcclFinding]:
        """NCCL_DEBUG=VERSION prints its version with no prefix: "NCCL version 2.18.5+cuda12.0"."""
        # A launcher's prefix may come first ("10.0.0.6: ", "[rank0]:"): nothing else may.
        match = _BARE_VERSION_RE.match(strip_prefix(line) if "NCCL version" in line else line)
        if match is None or self.state.version is not None:
            return []
        self.state.version = match.group(1)
        return [
            NcclFinding(
                "version",
                f"{self._who()}: NCCL {self.state.version}",
                self.state.rank,
                self.state.host or "",
                line.strip(),
                fields={"version": self.state.version},
            )
        ]

    def _who(self) -> str:
        rank = "rank ?" if self.state.rank is None else f"rank {self.state.rank}"
        return f"{rank} ({self.state.host})" if self.state.host else rank

    def _info(self, msg: str, parsed: NcclLine, note: _Note) -> None:
        state = self.state
        # Each regex only past a substring it needs: most INFO lines match none of them.
        match: re.Match[str] | None = None
        if " via " in msg and (match := _CHANNEL_RE.search(msg)):
            via = match.group("via").strip()
            kind = transport_kind(via)
            gdr = "GDRDMA" in via
            if gdr and not state.gdr:
                state.gdr = True
            if kind not in state.transports:
                direction = f" {match.group('dir')}" if match.group("dir") else ""
                note(
                    "transport",
                    f"{self._who()} connects via {kind}{' with GPUDirect RDMA' if gdr else ''}"
                    f" (channel {match.group('channel')}: "
                    f"{match.group('src')} -> {match.group('dst')}{direction})",
                    fields={"transport": kind, "gdr": "1" if gdr else "0"},
                )
            state.transports[kind] += 1
            state.channels.setdefault(int(match.group("channel")), set()).add(kind)
            if kind == "NET/Socket" and state.socket_line is None:
                state.socket_line = parsed.text
        elif "NVLS" in msg and _NVLS_RE.search(msg):
            if "NVLS" not in state.transports:
                note(
                    "transport",
                    f"{self._who()} uses NVLS (NVLink SHARP multicast)",
                    fields={"transport": "NVLS", "gdr": "0"},
                )
            state.transports["NVLS"] += 1
        elif "rdma" in msg.lower() and _GDR_RE.search(msg):
            if not state.gdr:
                state.gdr = True
                note(
                    "transport",
                    f"{self._who()}: GPUDirect RDMA enabled",
                    fields={"transport": "GDR", "gdr": "1"},
                )
        elif "Using network" in msg and (match := _NETWORK_RE.search(msg)):
            network = match.group(1).strip()
            if network not in state.networks:
                state.networks.append(network)
                state.network_lines[network] = parsed.text
                fields = {"network": network}
                devices = state.interfaces.get("IB", [])
                if network.startswith("IB") and devices and all("RoCE" in d for d in devices):
                    fields["network"] = "RoCE"
                note(
                    "network", f"{self._who()} uses the {fields['network']} network", fields=fields
                )
            if network == "Socket" and state.socket_line is None:
                state.socket_line = parsed.text
        elif "NET/" in msg and (match := _NET_USING_RE.search(msg)):
            net, rest = match.group("net").strip(), match.group("rest")
            devices = _DEVICE_RE.findall(rest.split(";")[0])
            oob_match = _OOB_RE.search(rest)
            oob = _PORT_SUFFIX_RE.sub("", oob_match.group(1)) if oob_match else None
            before = (state.interfaces.get(net), state.interfaces.get("OOB"))
            if devices:
                state.interfaces[net] = devices
            if oob:
                state.interfaces["OOB"] = [oob]
            if (devices or oob) and before != (
                state.interfaces.get(net),
                state.interfaces.get("OOB"),
            ):
                oob_text = f" (OOB {oob})" if oob else ""
                note(
                    "interfaces",
                    f"{self._who()}: NET/{net} uses {', '.join(devices) or '-'}{oob_text}",
                    fields={"net": net, "devices": ",".join(devices)},
                )
        elif ("NET/IB" in msg and (match := _NET_NOTE_RE.search(msg))) or "ibverbs" in msg:
            if len(state.ib_notes) < MAX_NOTES:
                state.ib_notes.append(match.group(1).strip() if match else msg)
        elif "Bootstrap" in msg and (match := _BOOTSTRAP_RE.search(msg)):
            state.interfaces["Bootstrap"] = [_PORT_SUFFIX_RE.sub("", match.group(1))]
        elif "NCCL version" in msg and (match := _VERSION_RE.search(msg)):
            if state.version is None:
                state.version = match.group(1)
                note(
                    "version",
                    f"{self._who()}: NCCL {state.version}",
                    fields={"version": state.version},
                )
        elif "NCCL_" in msg and (match := _ENV_RE.search(msg)):
            name, value = match.group(1), match.group(2).strip().removesuffix(".")
            if state.env.get(name) != value:
                state.env[name] = value
                note("env", f"{self._who()}: {name}={value} (set by environment)")
        elif "Init COMPLETE" in msg and (match := _COMM_RE.search(msg)):
            rank, nranks = int(match.group(2)), int(match.group(3))
            if not self._rank_given and (state.nranks is None or nranks > state.nranks):
                state.rank = rank
            if state.nranks is None or nranks > state.nranks:
                state.nranks = nranks
            state.comms_ready += 1
            summary = state.transport_summary()
            note(
                "comm",
                f"{self._who()}: communicator {match.group(1)} ready, rank {rank} of {nranks}"
                f" (network {state.network or '?'}; {summary or 'no transports yet'})",
            )


def _flag(value: str | None) -> int | None:
    """An integer NCCL parameter as NCCL reads it; None when unset or not a number."""
    if value is None:
        return None
    text = value.strip()
    for base in (0, 10):  # strtoll(..., 0) reads 0x10 and 010; Python's base 0 refuses 010
        try:
            return int(text, base)
        except ValueError:
            continue
    return None


def ib_fallback(
    env: Mapping[str, str], ib_devices_present: bool, state: NcclState
) -> NcclFinding | None:
    """A warning when a rank runs over TCP sockets although InfiniBand was wanted.

    IB is wanted when NCCL_IB_DISABLE=0 or NCCL_NET=IB is set explicitly, or when the node
    has IB devices and IB is not disabled. Nothing is said when the operator disabled IB
    (NCCL_IB_DISABLE=1) or chose another network (NCCL_NET=Socket, a plugin). What NCCL
    printed as set by environment counts over `env`: it is what the rank really had.
    """
    if state.socket_line is None:
        return None
    effective = {**env, **state.env}
    disable = _flag(effective.get("NCCL_IB_DISABLE"))
    net = effective.get("NCCL_NET", "").strip()
    if disable not in (None, 0):
        return None
    if net and net.lower() != "ib":
        return None
    if disable == 0:
        reason = "NCCL_IB_DISABLE=0 asks for InfiniBand"
    elif net:
        reason = f"NCCL_NET={net} asks for InfiniBand"
    elif ib_devices_present:
        reason = "the node has InfiniBand devices and NCCL_IB_DISABLE is not set"
    else:
        return None
    rank = "a rank" if state.rank is None else f"rank {state.rank}"
    host = state.host or "its node"
    trouble = next((n for n in state.ib_notes if _TROUBLE_RE.search(n)), None)
    said = f'; NCCL said "{trouble}"' if trouble else ""
    message = (
        f'{rank} on {host} fell back to TCP sockets although {reason}: "{state.socket_line}"'
        f"{said}; check the IB driver and libibverbs on {host} and NCCL_IB_HCA, or set "
        "NCCL_IB_DISABLE=1 if sockets are intended"
    )
    return NcclFinding(
        "ib_fallback",
        " ".join(message.splitlines()),
        state.rank,
        host,
        state.socket_line,
        "warning",
    )


def ib_devices_present(root: Path = INFINIBAND_SYSFS) -> bool:
    """Whether the kernel lists any InfiniBand (or RoCE) device under /sys/class/infiniband."""
    try:
        return any(root.iterdir())
    except OSError:
        return False
