"""Issue 17, REST beside gRPC: the OpenAI-compatible HTTP API (agent.serve.http_api) on a
real aiohttp server on 127.0.0.1 port 0, over a scripted engine: routes, streamed and whole
replies, chat, errors in OpenAI's shape, authentication (token, mutual TLS), /metrics."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.security.tls import TlsFiles, load_tls
from agent.serve.events import Chunk, Done, Event, Request, Usage
from agent.serve.http_api import HttpApi, HttpListenError, server_ssl_context, start_http
from agent.serve.rpc import Backend, InferenceServicer
from agent.serve.stats import ServerStats
from console.net.ca import init_ca

TOKEN = "http-api-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
MODEL = "/models/demo/final"


class ScriptedEngine:
    """Stands in for the decode engine: each request gets " one", "" (a held-back
    piece), " two" and ends with " three", and its prompt is kept."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.cancelled: list[int] = []
        self.ignore_eos: list[bool] = []

    def now(self) -> float:
        return 0.0

    def submit(
        self, request: Request, sink: Callable[[Event], None], *, ignore_eos: bool = False
    ) -> int:
        self.requests.append(request)
        self.ignore_eos.append(ignore_eos)
        sink(Chunk(" one", (11,)))
        sink(Chunk("", (12,)))
        sink(Chunk(" two", (13,)))
        usage = Usage(len(request.prompt_ids), 4, 1.0, 2.0, "eos")
        sink(Done(" three", (14,), usage))
        return len(self.requests)

    def cancel(self, key: int) -> None:
        self.cancelled.append(key)

    def load(self) -> tuple[int, int]:
        return 3, 2


def make_servicer(engine: ScriptedEngine, prompts: list[str]) -> InferenceServicer:
    servicer = InferenceServicer(MODEL, ServerStats(), 4, 1.0)

    def encode(text: str) -> list[int]:
        prompts.append(text)
        return [1, 2, 3]

    backend_engine: Any = engine
    servicer.backend = Backend(engine=backend_engine, encode=encode, context_tokens=64)
    return servicer


@contextlib.asynccontextmanager
async def serving(
    servicer: InferenceServicer, token: str | None = TOKEN, tls: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    api = HttpApi(servicer, token, certificate_verified=tls is not None)
    server = await start_http(api, "127.0.0.1", 0, tls)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def prompts() -> list[str]:
    return []


@pytest.fixture
async def base(engine: ScriptedEngine, prompts: list[str]) -> AsyncIterator[str]:
    async with serving(make_servicer(engine, prompts)) as url:
        yield url


def sse_docs(text: str) -> list[Any]:
    """The events of a stream, "[DONE]" as itself; every event ends with a blank line."""
    assert text.endswith("\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


async def test_a_completion_whole_and_streamed(base: str, engine: ScriptedEngine) -> None:
    body = {"model": MODEL, "prompt": "apple", "max_tokens": 5, "temperature": 0, "seed": 7}
    async with httpx.AsyncClient(headers=AUTH) as client:
        whole = await client.post(f"{base}/v1/completions", json=body)
        assert whole.status_code == 200
        doc = whole.json()
        assert doc["object"] == "text_completion" and doc["model"] == MODEL
        assert doc["id"].startswith("cmpl-")
        assert doc["choices"] == [
            {"index": 0, "text": " one two three", "logprobs": None, "finish_reason": "stop"}
        ]
        assert doc["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        streamed = await client.post(
            f"{base}/v1/completions",
            json={**body, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_docs(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-2]
    assert [c["choices"][0]["text"] for c in chunks] == [" one", " two", " three"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert len({c["id"] for c in chunks}) == 1
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 4
    sent = engine.requests[0]
    assert (sent.max_tokens, sent.temperature, sent.seed) == (5, 0.0, 7)
    assert engine.cancelled == [1, 2]  # a no-op for a finished request, but always asked


async def test_chat_joins_messages_without_a_template(base: str, prompts: list[str]) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]},
    ]
    body = {"messages": messages, "max_completion_tokens": 3}
    async with httpx.AsyncClient(headers=AUTH) as client:
        whole = await client.post(f"{base}/v1/chat/completions", json=body)
        streamed = await client.post(f"{base}/v1/chat/completions", json={**body, "stream": True})
    assert prompts[0] == "system: be brief\nuser: hi there\nassistant:"
    doc = whole.json()
    assert doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": " one two three"}
    events = sse_docs(streamed.text)
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas) == " one two three"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_the_tokenizers_chat_template_is_used_when_there(engine: ScriptedEngine) -> None:
    prompts: list[str] = []
    servicer = make_servicer(engine, prompts)
    assert servicer.backend is not None
    servicer.backend = Backend(
        servicer.backend.engine,
        servicer.backend.encode,
        64,
        render_chat=lambda messages: "|".join(m["content"] for m in messages) + "|>",
    )
    async with serving(servicer) as url, httpx.AsyncClient(headers=AUTH) as client:
        body = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
        assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200
    assert prompts == ["a|b|>"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": "apple", "n": 2}, 400, "n must be 1"),
        ({"prompt": "apple", "max_tokens": 65}, 400, "max_tokens 65 is above the limit 64"),
        ({"prompt": "apple", "temperature": -1}, 400, "temperature -1.0 must not be negative"),
        ({"prompt": "apple", "top_p": 2}, 400, "top_p 2.0 must be between 0 and 1"),
        ({"prompt": ["a", "b"]}, 400, "one prompt per request"),
        ({"prompt": "apple", "echo": True}, 400, "echo is not supported"),
        ({"prompt": "apple", "stop": 3}, 400, "stop must be a string or a list"),
        ({"prompt": ""}, 400, "prompt is empty"),
        ({"prompt": "apple", "model": "other"}, 404, 'model "other" is not served here'),
    ],
)
async def test_bad_requests_get_one_line_in_openais_error_shape(
    base: str, engine: ScriptedEngine, body: dict[str, Any], status: int, words: str
) -> None:
    async with httpx.AsyncClient(headers=AUTH) as client:
        reply = await client.post(f"{base}/v1/completions", json=body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert words in error["message"] and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert not engine.requests


async def test_not_json_and_unknown_paths(base: str) -> None:
    async with httpx.AsyncClient(headers=AUTH) as client:
        bad = await client.post(f"{base}/v1/completions", content=b"{nope")
        missing = await client.get(f"{base}/v1/embeddings")
    assert bad.status_code == 400 and "the body is not JSON" in bad.json()["error"]["message"]
    assert missing.status_code == 404 and "GET /v1/embeddings" in missing.json()["error"]["message"]


async def test_every_path_but_health_needs_the_token(base: str, engine: ScriptedEngine) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/health")).json()["status"] == "serving"
        for headers in ({}, {"authorization": "Bearer not-the-token-0123456"}):
            for method, path in (
                ("POST", "/v1/completions"),
                ("POST", "/v1/chat/completions"),
                ("GET", "/v1/models"),
                ("GET", "/metrics"),
            ):
                reply = await client.request(
                    method, f"{base}{path}", headers=headers, json={"prompt": "a"}
                )
                assert reply.status_code == 401, path
                assert reply.json()["error"]["type"] == "authentication_error"
                assert "\n" not in reply.json()["error"]["message"]
    assert not engine.requests


async def test_models_and_metrics(base: str) -> None:
    async with httpx.AsyncClient(headers=AUTH) as client:
        models = (await client.get(f"{base}/v1/models")).json()
        await client.post(f"{base}/v1/completions", json={"prompt": "a", "max_tokens": 4})
        await client.post(f"{base}/v1/completions", json={"prompt": "a", "n": 3})
        metrics = await client.get(f"{base}/metrics")
    assert models["data"][0]["id"] == MODEL
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "gantry_serve_requests_total 2.0" in text
    assert "gantry_serve_request_errors_total 1.0" in text
    assert "gantry_serve_queue_depth 3.0" in text
    assert "gantry_serve_running_requests 2.0" in text
    for name in ("gantry_serve_request_latency_seconds", "gantry_serve_batch_size"):
        assert f'{name}_bucket{{le="+Inf"}}' in text
    assert "gantry_serve_completion_tokens_total" in text


async def test_loading_and_draining_answer_503(engine: ScriptedEngine) -> None:
    servicer = make_servicer(engine, [])
    backend, servicer.backend = servicer.backend, None
    async with serving(servicer) as url, httpx.AsyncClient(headers=AUTH) as client:
        health = await client.get(f"{url}/health")
        loading = await client.post(f"{url}/v1/completions", json={"prompt": "a"})
        servicer.backend, servicer.draining = backend, True
        draining = await client.post(f"{url}/v1/completions", json={"prompt": "a"})
    assert health.status_code == 503 and health.json()["status"] == "loading"
    assert loading.status_code == 503
    assert loading.json()["error"]["message"] == "the model is still loading"
    assert draining.status_code == 503
    assert draining.json()["error"]["message"] == "the server is shutting down"
    assert servicer.inflight == 0


async def test_a_taken_port_is_one_line(engine: ScriptedEngine) -> None:
    servicer = make_servicer(engine, [])
    async with serving(servicer) as url:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(
            HttpListenError, match=rf"cannot listen on 127\.0\.0\.1:{port} for HTTP"
        ):
            await start_http(HttpApi(servicer, TOKEN), "127.0.0.1", port)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("http-ca")
    init_ca(base / "ca", {"node-a": ["127.0.0.1", "localhost"]}, ["alice"], port=50051)
    return base / "ca"


async def test_on_a_tls_cluster_a_certificate_from_the_ca_is_needed(
    ca_dir: Path, engine: ScriptedEngine
) -> None:
    files = TlsFiles(ca_dir / "ca.pem", ca_dir / "agents/node-a.pem", ca_dir / "agents/node-a.key")
    material = load_tls(files)
    context = server_ssl_context(material.ca, files.cert, files.key)
    body = {"prompt": "apple", "max_tokens": 2}
    async with serving(make_servicer(engine, []), None, context) as url:
        anonymous = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
        async with httpx.AsyncClient(verify=anonymous) as client:
            with pytest.raises(httpx.TransportError):
                reply = await client.post(f"{url}/v1/completions", json=body)
                reply.raise_for_status()  # TLS 1.3 may refuse only once a request is read
        console = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
        console.load_cert_chain(ca_dir / "consoles/alice.pem", ca_dir / "consoles/alice.key")
        async with httpx.AsyncClient(verify=console) as client:
            reply = await client.post(f"{url}/v1/completions", json=body)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["text"] == " one two three"
    assert len(engine.requests) == 1


class EndlessEngine(ScriptedEngine):
    """A request that streams one piece and never ends."""

    def submit(
        self, request: Request, sink: Callable[[Event], None], *, ignore_eos: bool = False
    ) -> int:
        self.requests.append(request)
        sink(Chunk(" one", (11,)))
        return 41


async def test_a_client_that_goes_away_cancels_its_request() -> None:
    import asyncio

    engine = EndlessEngine()
    servicer = make_servicer(engine, [])
    body = {"prompt": "apple", "stream": True}
    async with serving(servicer) as url:
        async with (
            httpx.AsyncClient(headers=AUTH) as client,
            client.stream("POST", f"{url}/v1/completions", json=body) as response,
        ):
            async for line in response.aiter_lines():
                assert line.startswith("data: ")
                break  # the client leaves after its first piece
        for _ in range(100):
            if engine.cancelled:
                break
            await asyncio.sleep(0.02)
    assert engine.cancelled == [41]
    assert servicer.inflight == 0
