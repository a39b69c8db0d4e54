"""What is loaded (a resolved, picklable TargetSpec) and the clients that call it.

Requests are serialized once, before the run: a gRPC call sends bytes as they are and a
unary reply is not parsed (only its status matters), so the load tester spends its CPU on
calls, not on protobuf. Gantry's Generate stream is parsed to count tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import httpx
from gantry.v1 import inference_service_pb2
from google.protobuf.message import DecodeError

from console.loadtest.call_metadata import Pairs, grpc_metadata, http_headers
from console.loadtest.tls import TlsSettings, client_context, grpc_channel

GANTRY_GENERATE = "gantry.v1.InferenceService/Generate"
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Each channel its own connection: workers and channels must not share one socket.
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # "gantry" (InferenceService/Generate), "grpc" (a reflected method) or "http"
    address: str  # HOST:PORT, or the URL
    method: str  # "pkg.Service/Method", or "POST /v1/completions"
    streaming: bool
    bodies: tuple[bytes, ...]  # serialized requests, sent round-robin
    token: str = ""
    timeout_s: float = 30.0
    prompt_set: str = ""  # which requests: "built-in: 8 prompts", "p.jsonl: 40 prompts, ..."
    metadata: Pairs = ()  # --metadata k=v, sent with every request (besides the token)
    tls: TlsSettings | None = None  # None: plain gRPC, or an http:// URL
    # A method that takes a stream (bidirectional or client-streaming): each request is sent
    # as a stream of one message, then half-closed, and its replies read as usual.
    client_streaming: bool = False


class Client(Protocol):
    streaming: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def unary(self, index: int) -> tuple[int, str] | None:
        """Sends one request; where the answer says, its tokens and why it ended."""
        ...

    def stream(self, index: int) -> AsyncIterator[int | str | ServerCount]:
        """Yields the number of tokens in each message as it arrives, then, where the
        endpoint says, why the completion ended: a str, "eos", "length" or "stop", and
        the reply's tokens as the server counted them (`ServerCount`)."""
        ...

    def error_code(self, exc: BaseException) -> str:
        """A short name to count the failure under: a gRPC status name, "HTTP_503"..."""
        ...


def make_client(spec: TargetSpec) -> Client:
    if spec.kind == "http":
        return HttpClient(spec)
    return GrpcClient(spec)


def grpc_callables(channel: grpc.aio.Channel, spec: TargetSpec) -> tuple[Any, Any]:
    """(the call for a unary reply, the call for a streamed one) of ``spec``'s method."""
    path = "/" + spec.method
    if spec.client_streaming:
        return channel.stream_unary(path, None, None), channel.stream_stream(path, None, None)
    return channel.unary_unary(path, None, None), channel.unary_stream(path, None, None)


def request_of(spec: TargetSpec, body: bytes) -> Any:
    """What a call of ``spec``'s method takes: the request, or a stream of it alone."""
    return iter((body,)) if spec.client_streaming else body


class GrpcClient:
    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.streaming = spec.streaming
        self._bodies = spec.bodies
        self._metadata = grpc_metadata(spec.metadata, spec.token) or None
        self._channel: grpc.aio.Channel | None = None
        self._parse = spec.kind == "gantry"

    async def open(self) -> None:
        self._channel = grpc_channel(self.spec.address, self.spec.tls, CHANNEL_OPTIONS)
        # No serializers: requests go as the bytes prepared before the run.
        self._unary, self._stream = grpc_callables(self._channel, self.spec)
        await asyncio.wait_for(self._channel.channel_ready(), self.spec.timeout_s)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)

    async def unary(self, index: int) -> tuple[int, str] | None:
        body = request_of(self.spec, self._bodies[index % len(self._bodies)])
        await self._unary(body, timeout=self.spec.timeout_s, metadata=self._metadata)
        return None  # a reply's status is all that counts: it is not parsed

    async def stream(self, index: int) -> AsyncIterator[int | str]:
        body = request_of(self.spec, self._bodies[index % len(self._bodies)])
        call = self._stream(body, timeout=self.spec.timeout_s, metadata=self._metadata)
        if not self._parse:
            async for _ in call:
                yield 1
            return
        parse = inference_service_pb2.GenerateResponse.FromString
        async for raw in call:
            message = parse(raw)
            yield len(message.token_ids) or (1 if message.text else 0)
            if message.done and message.usage.finish_reason:
                name = inference_service_pb2.FinishReason.Name(message.usage.finish_reason)
                yield name.removeprefix("FINISH_REASON_").lower()

    def error_code(self, exc: BaseException) -> str:
        if isinstance(exc, grpc.aio.AioRpcError):
            return str(exc.code().name)
        if isinstance(exc, asyncio.TimeoutError):
            return "DEADLINE_EXCEEDED"
        if isinstance(exc, DecodeError):
            return "BAD_RESPONSE"
        return type(exc).__name__


class HttpStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class StreamError(Exception):
    """The server reported an error inside the event stream."""


@dataclass(frozen=True)
class ServerCount:
    """A reply's tokens as the server counted them (OpenAI's `usage.completion_tokens`, in
    the last event when the request asks `stream_options.include_usage`). It replaces the
    count of messages with text: a message can carry several tokens (vLLM's and Gantry's
    `--stream-interval`) or none (a detokenizer holding a partial UTF-8 character)."""

    tokens: int
    # llama.cpp puts the usage on the last chunk, beside that chunk's text and finish reason.
    text_events: int = 0
    finish: str = ""


def sse_event(line: str) -> tuple[int, str] | ServerCount | None:
    """(tokens, finish reason or "") in one line of an OpenAI completions event stream,
    the server's count where the line carries usage, None at the stream's end. OpenAI's
    "stop" (end-of-sequence or a stop string) reads as "eos". StreamError: the server
    reported an error in the stream (an error object, or llama.cpp's ``error:`` line)."""
    if not line.startswith("data:"):
        if line.startswith("error:"):
            raise StreamError(line[6:].strip()[:300] or "an error event")
        return 0, ""
    payload = line[5:].strip()
    if payload == "[DONE]":
        return None
    chunk: Any = json.loads(payload)
    if not isinstance(chunk, dict):
        raise StreamError("an event that is not a JSON object")
    if chunk.get("error") or chunk.get("object") == "error":
        raise StreamError(str(chunk.get("error") or chunk.get("message") or chunk)[:300])
    choice = _first_choice(chunk)
    count = _usage_tokens(chunk)
    if choice is None:  # no choices: the usage event, if it says
        if count is not None:
            return ServerCount(count)
        choice = {}
    events, finish = (1 if _has_text(choice) else 0), _finish(choice.get("finish_reason"))
    if count is not None and finish:
        # The usage of the last chunk (llama.cpp). Some servers put a running usage on every
        # chunk (vLLM's continuous_usage_stats): the one beside the finish reason is final.
        return ServerCount(count, events, finish)
    return events, finish


def _first_choice(answer: dict[str, Any]) -> dict[str, Any] | None:
    """An answer's or event's first choice; None when it has none ({} when it is no object)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return None
    return choices[0] if isinstance(choices[0], dict) else {}


def _usage_tokens(answer: dict[str, Any]) -> int | None:
    """`usage.completion_tokens`, where it is a count."""
    usage = answer.get("usage")
    count = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
        return count
    return None


def _has_text(choice: dict[str, Any]) -> bool:
    """A completions event's text, or a chat event's delta: its content, or the reasoning
    a reasoning model streams before it (vLLM: reasoning_content, later reasoning)."""
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return False
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"))


def completion_answer(body: bytes) -> tuple[int, str] | None:
    """(tokens, finish reason or "") of a whole (not streamed) completions answer, from its
    `usage.completion_tokens`; None where the body does not say."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return None
    count = _usage_tokens(answer) if isinstance(answer, dict) else None
    if count is None:
        return None
    return count, _finish((_first_choice(answer) or {}).get("finish_reason"))


def _finish(reason: object) -> str:
    return "eos" if reason == "stop" else reason if isinstance(reason, str) else ""


def sse_tokens(line: str) -> int | None:
    """Tokens in one line of an OpenAI completions event stream (0 in the usage line);
    None at its end."""
    event = sse_event(line)
    if isinstance(event, ServerCount):
        return event.text_events
    return None if event is None else event[0]


class HttpClient:
    """An OpenAI-compatible /v1/completions or /v1/chat/completions endpoint (vLLM, TGI,
    llama.cpp...), streamed over SSE."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.streaming = spec.streaming
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        headers = [("content-type", "application/json")]
        headers += http_headers(self.spec.metadata, self.spec.token)
        tls = self.spec.tls
        self._client = httpx.AsyncClient(
            headers=headers,
            verify=True if tls is None else client_context(tls, "http/1.1"),
            timeout=httpx.Timeout(self.spec.timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def unary(self, index: int) -> tuple[int, str] | None:
        assert self._client is not None
        bodies = self.spec.bodies
        response = await self._client.post(self.spec.address, content=bodies[index % len(bodies)])
        if response.status_code != 200:
            raise HttpStatusError(response.status_code)
        return completion_answer(response.content)

    async def stream(self, index: int) -> AsyncIterator[int | str | ServerCount]:
        assert self._client is not None
        bodies = self.spec.bodies
        body = bodies[index % len(bodies)]
        async with self._client.stream("POST", self.spec.address, content=body) as response:
            if response.status_code != 200:
                await response.aread()
                raise HttpStatusError(response.status_code)
            kind = ""  # the SSE "event:" field of the event being read
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                    continue
                if kind == "error" and line.startswith("data:"):
                    raise StreamError(line[5:].strip()[:300] or "an error event")
                kind = kind if line else ""
                event = sse_event(line)
                if event is None:
                    return
                if isinstance(event, ServerCount):
                    if event.text_events:
                        yield event.text_events
                    if event.finish:
                        yield event.finish
                    yield event
                    continue
                yield event[0]
                if event[1]:
                    yield event[1]

    def error_code(self, exc: BaseException) -> str:
        if isinstance(exc, HttpStatusError):
            return f"HTTP_{exc.status}"
        if isinstance(exc, httpx.ConnectError):
            return "UNAVAILABLE"
        if isinstance(exc, httpx.TimeoutException | asyncio.TimeoutError):
            return "DEADLINE_EXCEEDED"
        if isinstance(exc, ValueError | StreamError):
            return "BAD_RESPONSE"
        if isinstance(exc, httpx.TransportError):
            return "TRANSPORT_ERROR"
        return type(exc).__name__
