"""What a job token opens: the calls a job's leader makes to a peer agent
(`agent.jobs.leader.peers.RemoteNode`), for that job only. Anything else gets
PERMISSION_DENIED with one line naming the token's scope."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from gantry.v1 import agent_service_pb2

AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Deny = Callable[[Handler, str, grpc.StatusCode], Handler]


def _start_ranks_job(request: agent_service_pb2.StartRanksRequest) -> str:
    return request.spec.name


def _job_name(request: Any) -> str:
    name: str = request.job_name
    return name


# Each leader call, with the job its request names (None: it names none, a ping).
LEADER_CALLS: dict[str, Callable[[Any], str] | None] = {
    "GetNodeInfo": None,
    "StartRanks": _start_ranks_job,
    "StopRanks": _job_name,
    "RequestCheckpoint": _job_name,
    "WatchJobEvents": _job_name,
}


def scope_refusal(job: str, method: str) -> str:
    return (
        f"a job token for {job} opens only its leader's calls to this node "
        f"({', '.join(LEADER_CALLS)}), not {method}"
    )


def other_job_refusal(job: str, other: str) -> str:
    asked = f"job {other}" if other else "every job"
    return f"a job token for {job} does not open {asked}"


def scoped_handler(handler: Handler, method: str, job: str, deny: Deny) -> Handler:
    """`handler` as a job token for `job` may call it: refused, as it is (a ping), or
    with a check that the request names `job`."""
    service, _, name = method.lstrip("/").partition("/")
    if service != AGENT_SERVICE or name not in LEADER_CALLS:
        return deny(handler, scope_refusal(job, name or method), grpc.StatusCode.PERMISSION_DENIED)
    named = LEADER_CALLS[name]
    if named is None:
        return handler

    async def check(request: Any, context: Context) -> None:
        other = named(request)
        if other != job:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, other_job_refusal(job, other))

    if handler.response_streaming:
        inner_stream: Any = handler.unary_stream

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            await check(request, context)
            result = inner_stream(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result

        return grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    inner: Any = handler.unary_unary

    async def unary(request: Any, context: Context) -> Any:
        await check(request, context)
        return await inner(request, context)

    return grpc.unary_unary_rpc_method_handler(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
