"""A server interceptor: request bytes that are not the method's message get INVALID_ARGUMENT.

Left to gRPC, a request deserializer that raises ends the call with UNKNOWN and the Python
exception's class in the message. Here the deserializer hands back a marker instead, and
the handler answers INVALID_ARGUMENT with one line: "request: not a gantry.v1.GenerateRequest".
Works for any service whose request types are in the default descriptor pool.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf import descriptor_pool

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class _Undecodable:
    """What the wrapped deserializer returns for bytes it cannot parse."""


UNDECODABLE = _Undecodable()


def refusal(method: str) -> str:
    """The one line a client gets for undecodable bytes sent to `method` ("/pkg.Svc/Name")."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return f"request: not the request message of {method}"
    return f"request: not a {found.input_type.full_name}"


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning UNDECODABLE where it would raise."""
    if deserializer is None:
        return None
    parse = deserializer

    def decode(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception:
            return UNDECODABLE

    return decode


def _checked_requests(
    requests: AsyncIterable[Any], context: Context, message: str
) -> AsyncIterator[Any]:
    async def checked() -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            yield request

    return checked()


def _checked(behavior: Any, message: str, request_streaming: bool) -> Any:
    """`behavior` (an async generator or coroutine function) checking its request(s);
    None for a synchronous behavior."""

    async def first(request: Any, context: Context) -> Any:
        if request_streaming:
            return _checked_requests(request, context, message)
        if request is UNDECODABLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        return request

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            async for response in behavior(await first(request, context), context):
                yield response

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def call(request: Any, context: Context) -> Any:
            return await behavior(await first(request, context), context)

        return call
    return None


def checked_handler(handler: Handler, method: str) -> Handler:
    """`handler` with undecodable requests refused as INVALID_ARGUMENT; as it is when its
    behavior is synchronous (grpc.aio runs those in threads)."""
    streaming = (handler.request_streaming, handler.response_streaming)
    make, behavior = {
        (False, False): (grpc.unary_unary_rpc_method_handler, handler.unary_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, handler.unary_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, handler.stream_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, handler.stream_stream),
    }[streaming]
    checked = _checked(behavior, refusal(method), handler.request_streaming)
    if checked is None:
        return handler
    decode = tolerant(handler.request_deserializer)
    return make(checked, decode, handler.response_serializer)


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Put it after the authentication interceptor: callers refused there are never parsed."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return checked_handler(handler, handler_call_details.method)
