"""Servers with known behaviour for the load tester's tests, on 127.0.0.1 port 0.

FakeInference serves gantry.v1.InferenceService with injected timing: Complete sleeps a
fixed delay, plus the rest of a periodic stall window when it arrives inside one, and can
fail every n-th call; Generate sends its first message after a delay, then the others at a
fixed gap, then the `done` message. A minimal HTTP/1.1 server streams OpenAI-style SSE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVICE = "gantry.v1.InferenceService"


@dataclass
class Timing:
    delay_s: float = 0.0  # every Complete
    stall_s: float = 0.0  # a stall window of this length...
    period_s: float = 1.0  # ...at the start of every period
    fail_every: int = 0  # every n-th Complete fails with INTERNAL (0: never)
    block_at: int = 0  # the n-th Complete blocks the whole event loop...
    block_s: float = 0.0  # ...for this long (time.sleep)
    first_s: float = 0.0  # Generate: to the first message
    gap_s: float = 0.0  # Generate: between messages
    tokens: int = 4  # Generate: messages carrying one token each


class FakeInference(inference_service_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.t0 = time.monotonic()
        self.calls = 0
        self.streams = 0

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        t = self.timing
        self.calls += 1
        if t.block_at and self.calls == t.block_at:
            time.sleep(t.block_s)  # blocks the loop, client and server alike
        if t.fail_every and self.calls % t.fail_every == 0:
            await context.abort(grpc.StatusCode.INTERNAL, "injected failure")
        wait = t.delay_s
        if t.stall_s:
            into = (time.monotonic() - self.t0) % t.period_s
            if into < t.stall_s:
                wait += t.stall_s - into
        if wait:
            await asyncio.sleep(wait)
        return pb.CompleteResponse(text=request.prompt)

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        t = self.timing
        self.streams += 1
        await asyncio.sleep(t.first_s)
        for i in range(t.tokens):
            if i:
                await asyncio.sleep(t.gap_s)
            yield pb.GenerateResponse(text=f" t{i}", token_ids=[i])
        usage = pb.Usage(completion_tokens=t.tokens, time_to_first_token_ms=0.001)
        yield pb.GenerateResponse(done=True, usage=usage)


class BearerOnly(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if (("authorization", f"Bearer {self.token}")) in tuple(details.invocation_metadata):
            return await continuation(details)

        async def deny(request: Any, context: Any) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


async def start_grpc(
    timing: Timing, *, with_reflection: bool = True, token: str = ""
) -> tuple[grpc.aio.Server, str, FakeInference]:
    server = grpc.aio.server(interceptors=[BearerOnly(token)] if token else None)
    servicer = FakeInference(timing)
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    if with_reflection:
        reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", servicer


@dataclass
class SseTiming:
    first_s: float = 0.0
    gap_s: float = 0.0
    tokens: int = 4
    fail_every: int = 0  # every n-th completion answers HTTP 500
    model: str = "tiny"
    api_key: str = ""  # if set, every request needs the header x-api-key (else HTTP 401)
    per_event: int = 1  # tokens in each event (vLLM's and Gantry's --stream-interval)
    knows_usage: bool = True  # stream_options.include_usage; False: refuses it (HTTP 400)


class SseServer:
    """Just enough HTTP/1.1 (keep-alive, chunked SSE) for /v1/models and /v1/completions."""

    def __init__(self, timing: SseTiming) -> None:
        self.timing = timing
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None
        self.url = ""
        self.chat_url = ""
        self.paths: list[str] = []

    async def start(self) -> SseServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/completions"
        self.chat_url = f"http://127.0.0.1:{port}/v1/chat/completions"
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)
                )
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if self.timing.api_key and headers.get("x-api-key") != self.timing.api_key:
                    self._send(writer, 401, b'{"error": "invalid api key"}')
                    continue
                await self._answer(method, path, body, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        t = self.timing
        self.paths.append(path)
        if method == "GET" and path == "/v1/models":
            self._send(writer, 200, json.dumps({"data": [{"id": t.model}]}).encode())
            return
        chat = path == "/v1/chat/completions"
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            self._send(writer, 404, b'{"error": "not found"}')
            return
        request = json.loads(body)
        self.bodies.append(request)
        if "stream_options" in request and not t.knows_usage:
            self._send(writer, 400, b'{"error": "unknown field stream_options"}')
            return
        if not request.get("stream"):
            choice = {"text": "x", "finish_reason": "length"}
            answer = {"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
            self._send(writer, 200, json.dumps(answer).encode())
            return
        self.calls += 1
        if t.fail_every and self.calls % t.fail_every == 0:
            self._send(writer, 500, b'{"error": "injected"}')
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        if chat:  # the role first, with no content, as vLLM and OpenAI send it
            self._chunk(writer, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        await asyncio.sleep(t.first_s)
        for i in range(0, t.tokens, t.per_event):
            if i:
                await asyncio.sleep(t.gap_s)
            text = "".join(f" t{j}" for j in range(i, min(t.tokens, i + t.per_event)))
            piece = {"delta": {"content": text}} if chat else {"text": text}
            self._chunk(writer, {"choices": [{"index": 0, **piece}]})
            await writer.drain()
        end: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        self._chunk(writer, {"choices": [{"index": 0, **end, "finish_reason": "length"}]})
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": 3,
                "completion_tokens": t.tokens,
                "total_tokens": 3 + t.tokens,
            }
            self._chunk(writer, {"choices": [], "usage": usage})
        writer.write(self._sized(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    def _sized(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _chunk(self, writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
        writer.write(self._sized(f"data: {json.dumps(event)}\n\n".encode()))

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        writer.write(
            f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )


@contextlib.contextmanager
def grpc_server_in_thread(timing: Timing, token: str = "") -> Iterator[str]:
    """A FakeInference server on its own event loop and thread, for tests that block
    (the CLI's asyncio.run, a subprocess); yields its address."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        server, address, _ = loop.run_until_complete(start_grpc(timing, token=token))
        holder["address"] = address
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.stop(0))
        loop.close()

    thread = threading.Thread(target=run, name="loadtest-server", daemon=True)
    thread.start()
    assert started.wait(30), "the test server did not start"
    try:
        yield holder["address"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
