"""What an NCCL parser (agent.jobs.node.nccl) learns from one rank's log, and the findings it
tells: plain data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["NcclFinding", "NcclState", "Severity"]

Severity = Literal["info", "warning"]


@dataclass(frozen=True)
class NcclFinding:
    """Something worth telling the operator, in one line."""

    kind: str  # version, network, interfaces, transport, env, comm, warn, ib_fallback
    message: str
    rank: int | None
    host: str
    line: str  # the NCCL line it comes from, as in NcclLine.text
    severity: Severity = "info"
    fields: Mapping[str, str] = field(default_factory=dict)  # what it read, for the event


@dataclass
class NcclState:
    """Everything a parser has learned from one rank's log so far."""

    rank: int | None = None
    nranks: int | None = None
    host: str | None = None
    version: str | None = None
    networks: list[str] = field(default_factory=list)  # "IB", "Socket", a plugin; first seen
    network_lines: dict[str, str] = field(default_factory=dict)  # network -> first line
    # "IB": ["mlx5_0:1/IB", ...], "Socket": ["eth0:10.1.2.3"], "OOB": [...], "Bootstrap": [...]
    interfaces: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # NCCL_* that NCCL says were set
    transports: Counter[str] = field(default_factory=Counter)  # kind -> connections
    channels: dict[int, set[str]] = field(default_factory=dict)  # channel -> kinds
    # NET/IB lines other than "Using", and lines about libibverbs: why IB was not used
    ib_notes: list[str] = field(default_factory=list)
    socket_line: str | None = None  # the first line showing traffic over sockets
    comms_ready: int = 0
    warnings: list[str] = field(default_factory=list)
    gdr: bool = False  # GPUDirect RDMA in use

    @property
    def network(self) -> str | None:
        return self.networks[-1] if self.networks else None

    @property
    def fabric(self) -> str | None:
        """The network as an operator names it: IB, RoCE (IB verbs over Ethernet), Socket or
        a plugin's name; from "Using network", else the channels' NET/ transports, else the
        NET/ interfaces NCCL listed."""
        net = self.network
        if net is None:
            net = next((k[4:] for k in self.transports if k.startswith("NET/")), None)
        if net is None:
            net = next((n for n in ("IB", "Socket") if self.interfaces.get(n)), None)
        if net is not None and net.startswith("IB"):  # IBext_v8: NCCL's IB plugin
            devices = self.interfaces.get("IB", [])
            return "RoCE" if devices and all("RoCE" in d for d in devices) else "IB"
        return net

    def transport_summary(self) -> str:
        """`8 x NET/IB, 4 x P2P/IPC`, most used first."""
        return ", ".join(f"{n} x {kind}" for kind, n in self.transports.most_common())
