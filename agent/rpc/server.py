"""Builds and runs the agent's gRPC server: AgentService, health and reflection.

Secure by default: without TLS the agent listens on loopback only (reached through an SSH
tunnel) and every call but health needs the bearer token; with `--tls-*` it may listen
anywhere, and the handshake demands a client certificate from the cluster's CA. Either
way every AgentService request is validated and mutating calls are audited
(`agent.rpc.guard`)."""

from __future__ import annotations

import grpc
from gantry.v1 import agent_service_pb2, agent_service_pb2_grpc, job_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from agent.rpc.guard import GuardInterceptor
from agent.rpc.jobs import JobService
from agent.rpc.service import AgentServicer
from agent.security.auth import TokenAuthInterceptor
from agent.security.listen import is_loopback
from agent.security.tls import TlsMaterial, server_credentials
from agent.serve.reflection_v1 import enable_server_reflection
from agent.serve.undecodable import UndecodableRequestInterceptor
from agent.telemetry.sampler import Sampler

AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# Replies can be large (a job with a thousand ranks); requests are a job spec at most.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024


class ListenError(ValueError):
    pass


def split_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"--listen {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return host, int(port)


def check_loopback(host: str) -> None:
    """Agents start processes on request: without mutual TLS they only listen on loopback."""
    if not is_loopback(host):
        raise ListenError(
            f"refusing to listen on {host} without mutual TLS: the agent launches processes; "
            "pass --tls-ca, --tls-cert and --tls-key (made by `gantry init --ca DIR`), "
            "or listen on 127.0.0.1 and reach it through an SSH tunnel"
        )


def _spec_of(jobs: JobService, name: str) -> job_pb2.JobSpec | None:
    leader = jobs.leader
    if leader is None:
        return None
    try:
        return leader.spec(name)
    except Exception:  # an unknown job: the servicer answers NOT_FOUND
        return None


async def build_server(
    sampler: Sampler,
    token: str,
    listen: str,
    jobs: JobService,
    tls: TlsMaterial | None = None,
) -> tuple[grpc.aio.Server, int, HealthServicer]:
    """Creates the server (inside the running loop) and binds it; returns the bound port.

    With `tls`, the port demands a client certificate from the cluster's CA.
    """
    host, port = split_listen(listen)
    if tls is None:
        check_loopback(host)
    guard = GuardInterceptor(jobs.audit, lambda name: _spec_of(jobs, name))
    server = grpc.aio.server(
        # Authentication first: an unauthenticated request is never parsed or validated;
        # bytes that are not the method's message get INVALID_ARGUMENT, not UNKNOWN.
        interceptors=[
            TokenAuthInterceptor(token, certificate_verified=tls is not None),
            UndecodableRequestInterceptor(),
            guard,
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            # Consoles ping to notice dead agents; allow it without active calls.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
    )
    agent_service_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(sampler, jobs), server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_server_reflection(
        (AGENT_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(bind)
        else:
            bound = server.add_secure_port(bind, server_credentials(tls))
    except RuntimeError:
        raise ListenError(f"cannot listen on {listen}: address in use or not available") from None
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(AGENT_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    return server, bound, health_servicer
