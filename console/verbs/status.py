"""`gantry status`: one look at every node, as a table or JSON."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from gantry.v1 import agent_service_pb2

from console.model.bars import format_bytes, format_rate
from console.model.proto_json import message_json
from console.net.agent_client import REFUSED_CODES, fetch_status, unreachable_reason
from console.net.agent_link import AgentLinks, describe_rpc_error
from console.net.cluster_file import ClusterFileError, NodeTarget


@dataclass
class NodeStatus:
    target: NodeTarget
    state: str  # "live", "unreachable", "unauthorized"
    error: str = ""
    reply: agent_service_pb2.GetNodeInfoResponse | None = None


async def probe(target: NodeTarget, timeout_s: float, links: AgentLinks) -> NodeStatus:
    try:
        reply = await fetch_status(target, timeout_s, links)
    except ClusterFileError as exc:
        # No token to send: unauthorized only if the agent is there to refuse it.
        why = await unreachable_reason(links.link(target), timeout_s)
        return (
            NodeStatus(target, "unreachable", why)
            if why
            else NodeStatus(target, "unauthorized", str(exc))
        )
    except grpc.aio.AioRpcError as exc:
        state = "unauthorized" if exc.code() in REFUSED_CODES else "unreachable"
        return NodeStatus(target, state, describe_rpc_error(exc, tls=target.tls is not None))
    return NodeStatus(target, "live", reply=reply)


async def gather_status(targets: list[NodeTarget], timeout_s: float = 5.0) -> list[NodeStatus]:
    async with AgentLinks() as links:
        return list(await asyncio.gather(*(probe(t, timeout_s, links) for t in targets)))


def to_json(statuses: list[NodeStatus]) -> dict[str, Any]:
    nodes = []
    for s in statuses:
        entry: dict[str, Any] = {
            "name": s.target.name,
            "address": s.target.address,
            "state": s.state,
        }
        if s.error:
            entry["error"] = s.error
        if s.reply is not None:
            entry["info"] = message_json(s.reply.info)
            entry["latest"] = message_json(s.reply.latest)
            entry["xid_events"] = [message_json(e) for e in s.reply.xid_events]
        nodes.append(entry)
    return {"ok": all(s.state == "live" for s in statuses), "nodes": nodes}


def _gpu_summary(reply: agent_service_pb2.GetNodeInfoResponse) -> tuple[str, str]:
    gpus = reply.latest.gpus
    if not gpus:
        return "0", "-"
    utils = [g.gpu_util_percent for g in gpus if g.HasField("gpu_util_percent")]
    errors = sum(1 for g in gpus if g.error)
    util = f"{sum(utils) / len(utils):.0f}%" if utils else "-"
    count = f"{len(gpus)}" + (f" ({errors} failing)" if errors else "")
    return count, util


def to_table(statuses: list[NodeStatus]) -> str:
    header = ("NODE", "ADDRESS", "STATE", "GPUS", "GPU UTIL", "CPU", "RAM", "NET RX/TX", "")
    rows = [header]
    for s in statuses:
        if s.reply is None:
            rows.append((s.target.name, s.target.address, s.state, "", "", "", "", "", s.error))
            continue
        host = s.reply.latest.host
        count, util = _gpu_summary(s.reply)
        rows.append(
            (
                s.target.name,
                s.target.address,
                s.state,
                count,
                util,
                f"{host.cpu_percent:.0f}%",
                f"{format_bytes(host.mem_used_bytes)}/{format_bytes(host.mem_total_bytes)}",
                f"{format_rate(host.net_rx_bytes_per_s)}/{format_rate(host.net_tx_bytes_per_s)}",
                s.reply.info.nvml_error and "no NVIDIA driver",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)
