"""Every AgentService call passes here after authentication: its request is validated
(`agent.rpc.validation`) before a servicer sees it, and the mutating calls the servicers do
not audit themselves (agent-to-agent StartRanks/StopRanks/RequestCheckpoint, and any
mutating call refused here) are recorded in the journal's audit trail: who, what, when,
and how it ended."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from gantry.v1 import agent_service_pb2, job_pb2
from gantry.v1.rules import ValidationError

from agent.jobs.leader.leader import UNKNOWN_OPERATOR
from agent.rpc.jobs import operator_of
from agent.rpc.validation import restart_checkpoint, validate_request
from agent.security.tls import verified_identity

log = logging.getLogger("gantry.agent")

AGENT_SERVICE = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
# The audit verbs, as the servicers name the ones they record themselves.
MUTATING = {
    "SubmitJob": "submit",
    "StopJob": "stop",
    "RestartJob": "restart",
    "ForgetJob": "forget",
    "StartRanks": "start-ranks",
    "StopRanks": "stop-ranks",
    "RequestCheckpoint": "checkpoint-ask",
    "StartTask": "task-start",
    "StopTask": "task-stop",
}
AUDITED_HERE = ("StartRanks", "StopRanks", "RequestCheckpoint")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Audit = Callable[[str, str, dict[str, str]], None]
SpecOf = Callable[[str], "job_pb2.JobSpec | None"]


def caller(context: Context, request: object) -> str:
    """Who made the call: the verified certificate first, then what the caller says."""
    identity = verified_identity(context)
    if identity:
        return identity
    operator = operator_of(context)
    if operator != UNKNOWN_OPERATOR:
        return operator
    leader = getattr(request, "leader", "")
    return f"leader {leader}" if isinstance(leader, str) and leader else "token holder"


def _details(method: str, request: Any, context: Context) -> dict[str, str]:
    details = {"peer": context.peer() or ""}
    if method == "StartRanks":
        details.update(
            job=request.spec.name,
            attempt=str(request.attempt),
            ranks=",".join(str(r) for r in request.ranks),
        )
    elif method == "StopRanks":
        details.update(job=request.job_name, attempt=str(request.attempt))
    elif method == "RequestCheckpoint":
        details.update(
            job=request.job_name, attempt=str(request.attempt), request=request.request_id
        )
    elif method in ("StopJob", "RestartJob", "ForgetJob"):
        details["job"] = request.name
    elif method == "SubmitJob":
        details["job"] = request.spec.name
    elif method == "StopTask":
        details["task"] = request.task_id
    return details


def _reason(context: Context, exc: BaseException) -> str:
    """Why the servicer refused: the status details it aborted with, else the exception."""
    details: object = context.details()
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return str(details or exc or type(exc).__name__)


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, audit: Audit, spec_of: SpecOf) -> None:
        self._audit = audit
        self._spec_of = spec_of

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or service != AGENT_SERVICE or handler.request_streaming:
            return handler
        behavior: Any = handler.unary_stream or handler.unary_unary
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary(method, behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _problem(self, method: str, request: Any) -> str | None:
        try:
            validate_request(method, request)
            if method == "RestartJob" and request.from_checkpoint:
                stored = self._spec_of(request.name)
                if stored is not None:
                    restart_checkpoint(request, stored)
        except ValidationError as exc:
            return str(exc)
        return None

    def _record(self, method: str, request: Any, context: Context, outcome: str) -> None:
        try:
            details = {**_details(method, request, context), "outcome": outcome}
            self._audit(caller(context, request), MUTATING[method], details)
        except Exception:
            log.exception("could not audit %s", method)

    async def _refuse(self, method: str, request: Any, context: Context, problem: str) -> None:
        if method in MUTATING:
            self._record(method, request, context, f"refused: {problem}")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: {problem}")

    def _unary(
        self, method: str, inner: Callable[[Any, Context], Awaitable[Any]]
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def behavior(request: Any, context: Context) -> Any:
            problem = self._problem(method, request)
            if problem is not None:
                await self._refuse(method, request, context, problem)
            if method not in AUDITED_HERE or getattr(request, "validate_only", False):
                return await inner(request, context)
            try:
                reply = await inner(request, context)
            except BaseException as exc:
                self._record(method, request, context, f"refused: {_reason(context, exc)}")
                raise
            self._record(method, request, context, "ok")
            return reply

        return behavior

    def _stream(
        self, method: str, inner: Callable[[Any, Context], Any]
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def behavior(request: Any, context: Context) -> AsyncIterator[Any]:
            problem = self._problem(method, request)
            if problem is not None:
                await self._refuse(method, request, context, problem)
            result = inner(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result

        return behavior
