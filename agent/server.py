"""Builds and runs the agent's gRPC server: AgentService, health and reflection."""

from __future__ import annotations

import ipaddress
import socket

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from agent.auth import TokenAuthInterceptor
from agent.job_service import JobService
from agent.sampler import Sampler
from agent.service import AgentServicer

AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ListenError(ValueError):
    pass


def split_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return host, int(port)


def check_loopback(host: str) -> None:
    """Agents start processes on request: until TLS exists they only listen on loopback."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            loopback = all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            loopback = False
    if not loopback:
        raise ListenError(
            f"refusing to listen on {host}: the agent launches processes and has no TLS yet; "
            "listen on 127.0.0.1 and reach it through an SSH tunnel"
        )


async def build_server(
    sampler: Sampler, token: str, listen: str, jobs: JobService
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Creates the server (inside the running loop) and binds it; returns the bound port."""
    host, port = split_listen(listen)
    check_loopback(host)
    server = grpc.aio.server(
        interceptors=[TokenAuthInterceptor(token)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Consoles ping to notice dead agents; allow it without active calls.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(sampler, jobs), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            AGENT_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(bind)
    except RuntimeError:
        raise ListenError(f"cannot listen on {listen}: address in use or not available") from None
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(AGENT_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
