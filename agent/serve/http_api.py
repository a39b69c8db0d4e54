"""The OpenAI-compatible HTTP API beside gRPC: the same engine and batcher, in the same
process and event loop (aiohttp's server next to grpc.aio), on a port of its own.

    POST /v1/completions        POST /v1/chat/completions   (stream: true gives SSE)
    GET  /v1/models             GET  /metrics (Prometheus)  GET /health (open)

Request and reply shapes: agent.serve.openai_api. Every path but /health needs the
server's credentials, as gRPC does: `Authorization: Bearer TOKEN`, or on a TLS server a
client certificate from the cluster's CA, which the handshake demands of every caller
(so there /health needs one too, as gRPC's health service does); refusals are 401 with
one line in OpenAI's error shape. Requests count in the gRPC servicer's in-flight
figure, so a stop drains both; while the model loads or the server drains they get 503.
A client that goes away cancels its request in the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.serve.events import Done, Event, Failed, submit_to_queue
from agent.serve.metrics import CONTENT_TYPE, metrics_registry, metrics_text
from agent.serve.openai_api import (
    DONE_EVENT,
    ApiCall,
    ApiError,
    Shape,
    error_body,
    parse_call,
    plain_chat_prompt,
)
from agent.serve.rpc import (
    MAX_TOKENS_LIMIT,
    Backend,
    InferenceServicer,
    InvalidRequest,
    build_request,
    check_params,
)

OPEN_PATHS = frozenset({"/health"})
MAX_BODY_BYTES = 4 << 20
SHUTDOWN_TIMEOUT_S = 2.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpListenError(ValueError):
    pass


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(error_body(status, message, param), status=status, headers=headers)


def server_ssl_context(ca_pem: bytes, cert: Path, key: Path) -> ssl.SSLContext:
    """Mutual TLS: only clients with a certificate from the cluster's CA get through."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca_pem.decode())
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class HttpApi:
    def __init__(
        self,
        servicer: InferenceServicer,
        token: str | None,
        *,
        certificate_verified: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.servicer = servicer
        self._token = token.encode() if token else None
        self._certificate_verified = certificate_verified
        self._clock = clock
        self._registry = metrics_registry(servicer.stats, self._load)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", self.health)
        return app

    @property
    def model_ids(self) -> tuple[str, str]:
        """The served model's name, and its directory's last part (also accepted)."""
        name = self.servicer.model_name
        return name, Path(name).name

    def _load(self) -> tuple[int, int]:
        backend = self.servicer.backend
        return backend.engine.load() if backend is not None else (0, 0)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not self._certificate_verified:
            given = request.headers.get("Authorization", "").strip()
            if not given:
                return error_response(401, "give the agent's token: Authorization: Bearer TOKEN")
            # The scheme is case-insensitive (RFC 9110): some clients send "bearer".
            scheme, _, token = given.partition(" ")
            token_bytes = token.strip().encode("utf-8", "replace")
            if (
                scheme.lower() != "bearer"
                or self._token is None
                or not hmac.compare_digest(token_bytes, self._token)
            ):
                return error_response(401, "the bearer token is not this server's (the agent's)")
        try:
            return await handler(request)
        except web.HTTPException as exc:  # no such path or method
            if exc.status < 400:
                raise
            return error_response(exc.status, f"{request.method} {request.path}: {exc.reason}")

    # -- the routes ----------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.servicer.draining:
            return web.json_response({"status": "draining"}, status=503)
        if self.servicer.backend is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "serving", "model": self.servicer.model_name})

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.servicer.model_name,
            "object": "model",
            "created": int(self._clock()),
            "owned_by": "gantry",
        }

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        """GET /v1/models/{model}: OpenAI's clients' models.retrieve."""
        if request.match_info["model"] not in self.model_ids:
            served = json.dumps(self.servicer.model_name)
            return error_response(404, f"no such model; this server serves {served}", "model")
        return web.json_response(self._model_card())

    async def metrics(self, request: web.Request) -> web.Response:
        body = metrics_text(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    # -- serving one request ---------------------------------------------------------

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        servicer = self.servicer
        servicer.stats.request_received()
        servicer.inflight += 1
        try:
            call = parse_call(await _json(request), chat=chat, model_ids=self.model_ids)
            backend = self._backend()
            prompt = call.prompt
            if chat:
                prompt = await _render(backend, call)
            if not call.max_tokens_given:
                limit = min(MAX_TOKENS_LIMIT, backend.context_tokens)
                call.params.max_tokens = min(call.params.max_tokens, limit)
            received = backend.engine.now()
            try:
                check_params(prompt, call.params, backend.context_tokens, prefix="")
                ids = await backend.tokens(prompt)
                engine_request = build_request(ids, call.params, backend.context_tokens, received)
            except InvalidRequest as exc:
                raise ApiError(400, str(exc), _param_of(str(exc), chat)) from None
            return await self._run(request, backend, engine_request, call)
        except ApiError as exc:
            servicer.stats.request_failed()
            return error_response(exc.status, str(exc), exc.param)
        finally:
            servicer.inflight -= 1

    def _backend(self) -> Backend:
        if self.servicer.draining:
            raise ApiError(503, "the server is shutting down")
        if self.servicer.backend is None:
            raise ApiError(503, "the model is still loading")
        return self.servicer.backend

    async def _run(
        self, request: web.Request, backend: Backend, engine_request: Any, call: ApiCall
    ) -> web.StreamResponse:
        engine = backend.engine
        try:
            key, events = submit_to_queue(engine, engine_request, call.params.ignore_eos)
        except RuntimeError:  # stopped between the check and now
            raise ApiError(503, "the server is shutting down") from None
        prefix = "chatcmpl" if call.chat else "cmpl"
        shape = Shape(
            f"{prefix}-{uuid.uuid4().hex}", int(self._clock()), self.model_ids[0], call.chat
        )
        try:
            if call.stream:
                return await self._stream(request, events, shape, call.include_usage)
            texts: list[str] = []
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    raise ApiError(self._failure_status(), event.message)
                texts.append(event.text)
                if isinstance(event, Done):
                    return web.json_response(shape.reply("".join(texts), event.usage))
        finally:
            # Whatever ends the request (done, a failure, the client gone) frees the
            # place; a no-op once the request is complete.
            engine.cancel(key)

    def _failure_status(self) -> int:
        return 503 if self.servicer.draining else 500

    async def _stream(
        self,
        request: web.Request,
        events: asyncio.Queue[Event],
        shape: Shape,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if shape.chat:
            await response.write(shape.chunk("", first=True))
        while True:
            event = await events.get()
            if isinstance(event, Failed):
                self.servicer.stats.request_failed()
                body = error_body(self._failure_status(), event.message)
                await response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
                break
            if isinstance(event, Done):
                await response.write(shape.chunk(event.text, event.usage.finish_reason))
                if include_usage:
                    await response.write(shape.usage_chunk(event.usage))
                break
            if event.text:
                await response.write(shape.chunk(event.text))
        await response.write(DONE_EVENT)
        await response.write_eof()
        return response


async def _render(backend: Backend, call: ApiCall) -> str:
    """The messages as one prompt; a chat template that refuses them (a jinja
    `raise_exception`, say roles that do not alternate) is the client's 400."""
    render = backend.render_chat or plain_chat_prompt
    try:
        return await asyncio.to_thread(render, call.messages)
    except Exception as exc:  # the template's own error, whatever its type
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ApiError(
            400, f"messages: the model's chat template refused them: {message}", "messages"
        ) from None


def _param_of(message: str, chat: bool) -> str | None:
    """The field an engine-side refusal (agent.serve.rpc.check_params) is about."""
    for name in ("max_tokens", "temperature", "top_p", "stop"):
        if message.startswith(name) or f" {name}" in message:
            return name
    if message.startswith("prompt"):
        return "messages" if chat else "prompt"
    return None


async def _json(request: web.Request) -> Any:
    try:
        return await request.json(loads=json.loads)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


@dataclass
class HttpServer:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_http(
    api: HttpApi, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> HttpServer:
    """Binds the API on HOST:PORT (0: any free port); HttpListenError names the problem."""
    runner = web.AppRunner(
        api.app(),
        access_log=None,
        handler_cancellation=True,  # a client that goes away cancels its request
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_port=False)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        why = exc.strerror or "address in use or not available"
        raise HttpListenError(f"cannot listen on {where} for HTTP: {why}") from None
    return HttpServer(runner, int(runner.addresses[0][1]))
