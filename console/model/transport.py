"""What NCCL carries a job's traffic over, per node: the network (IB, RoCE, Socket, a
plugin), the path inside the node (P2P, SHM, NVLS), GPUDirect RDMA and NCCL's version.
Read from the job's NCCL events of its latest attempt (the agents parse NCCL's own lines);
pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gantry.v1 import job_pb2

__all__ = [
    "NodeTransport",
    "fold_findings",
    "transport_by_node",
    "transport_json",
    "transport_summary",
]

_NCCL = job_pb2.JobEventKind.JOB_EVENT_KIND_NCCL
_INTRA = ("P2P", "SHM", "NVLS")


@dataclass
class NodeTransport:
    node: str
    networks: list[str] = field(default_factory=list)  # as NCCL named them, first first
    inter: list[str] = field(default_factory=list)  # NET/IB, NET/Socket, COLLNET...
    intra: list[str] = field(default_factory=list)  # P2P/IPC, P2P/CUMEM, SHM, NVLS
    gdr: bool = False
    nccl_version: str | None = None
    fallback: str | None = None  # the IB-to-sockets finding's message
    ib_devices: list[str] = field(default_factory=list)  # mlx5_0:1/IB, mlx5_2:1/RoCE

    @property
    def network(self) -> str | None:
        """As the agent named it, else from the channels' NET/ transports (IBext_v8 is
        NCCL's IB plugin); RoCE when every IB device NCCL listed runs over Ethernet."""
        net = self.networks[-1] if self.networks else None
        if net is None:
            net = next((k[4:] for k in self.inter if k.startswith("NET/")), None)
        if net is not None and net.startswith("IB"):
            roce = self.ib_devices and all("RoCE" in d for d in self.ib_devices)
            return "RoCE" if roce else "IB"
        return net

    def text(self) -> str:
        """``IB+GDR · P2P/CUMEM, NVLS · NCCL 2.18.1``."""
        net = self.network or (self.inter[0].removeprefix("NET/") if self.inter else "?")
        parts = [net + ("+GDR" if self.gdr else "")]
        if self.intra:
            parts.append(", ".join(self.intra))
        if self.nccl_version:
            parts.append(f"NCCL {self.nccl_version}")
        if self.fallback:
            parts.append("fell back to sockets")
        return " · ".join(parts)


def transport_by_node(
    events: Iterable[job_pb2.JobEvent], attempt: int | None = None
) -> dict[str, NodeTransport]:
    """Per node, what the NCCL events of ``attempt`` (default: the latest seen) say."""
    chosen = list(events)
    if attempt is None:
        attempt = max((e.attempt for e in chosen if e.kind == _NCCL), default=None)
    return fold_findings(
        (e.node, e.details, e.message) for e in chosen if e.kind == _NCCL and e.attempt == attempt
    )


# An agent from before the network's name was a detail said it in the message only.
_NETWORK_WORDS = re.compile(r"uses the (\S+) network")


def fold_findings(
    findings: Iterable[tuple[str, Mapping[str, str], str]],
) -> dict[str, NodeTransport]:
    """Per node, from NCCL findings given as (node, details, message): the one reading of
    them, for the job's screen, ``gantry job`` and the advisor alike."""
    out: dict[str, NodeTransport] = {}
    for name, details, message in findings:
        node = out.setdefault(name, NodeTransport(name))
        finding = details.get("finding", "")
        if finding == "network":
            words = _NETWORK_WORDS.search(message)
            network = details.get("network") or (words[1] if words else "")
            if network and network not in node.networks:
                node.networks.append(network)
        elif finding == "transport":
            kind = details.get("transport", "")
            if details.get("gdr") == "1":
                node.gdr = True
            if not kind or kind == "GDR":
                continue
            into = node.intra if kind.startswith(_INTRA) else node.inter
            if kind not in into:
                into.append(kind)
        elif finding == "interfaces" and details.get("net") == "IB":
            node.ib_devices = [d for d in details.get("devices", "").split(",") if d]
        elif finding == "version":
            node.nccl_version = node.nccl_version or details.get("version") or None
        elif finding == "ib_fallback":
            node.fallback = node.fallback or message or "sockets although IB was asked for"
    return out


def transport_summary(nodes: dict[str, NodeTransport]) -> str:
    """One line for a screen: the same for every node once, else node by node."""
    if not nodes:
        return ""
    texts = {name: t.text() for name, t in sorted(nodes.items())}
    if len(set(texts.values())) == 1:
        return f"net {next(iter(texts.values()))}"
    return "net " + "; ".join(f"{name} {text}" for name, text in texts.items())


def transport_json(nodes: dict[str, NodeTransport]) -> dict[str, dict[str, object]]:
    return {
        name: {
            "network": t.network,
            "inter_node": t.inter,
            "intra_node": t.intra,
            "gpudirect_rdma": t.gdr,
            "nccl_version": t.nccl_version,
            "socket_fallback": t.fallback,
        }
        for name, t in sorted(nodes.items())
    }
