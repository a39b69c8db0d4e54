"""Asking a served model how it is doing: grpc.health.v1 and GetServerStats."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from gantry.v1 import inference_service_pb2, inference_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from console.net.agent_link import describe_rpc_error, open_channel

STATS_TIMEOUT_S = 2.0


@dataclass
class ServerView:
    endpoint: str
    health: str  # "SERVING", "NOT_SERVING", or why it could not be asked
    stats: inference_service_pb2.GetServerStatsResponse | None


async def probe(endpoint: str, token: str = "") -> ServerView:
    """A served model, not an agent: a channel of its own for each look, closed after.
    ``token``: the serving agent's (a server answers its stats only to it)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with open_channel(endpoint) as channel:
        try:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=STATS_TIMEOUT_S
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        except grpc.aio.AioRpcError as exc:
            return ServerView(endpoint, describe_rpc_error(exc).replace("agent", "server"), None)
        try:
            stats = await inference_service_pb2_grpc.InferenceServiceStub(channel).GetServerStats(
                inference_service_pb2.GetServerStatsRequest(),
                timeout=STATS_TIMEOUT_S,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError:
            stats = None
        return ServerView(endpoint, status, stats)
