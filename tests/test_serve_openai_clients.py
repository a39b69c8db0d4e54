"""The OpenAI-compatible HTTP API against what real clients send: the request bodies and
headers of openai-python, openai-node, LangChain, vLLM's benchmarks, TGI's and llama.cpp's
curl examples and Open WebUI (tests/fixtures/openai_clients/requests.json, each cited in
its SOURCES.md), replayed byte for byte with httpx at a real `python -m agent.serve
--http-port 0` on a tiny model; every 200 must parse as the openai SDK's own types, every
refusal must be OpenAI's error shape naming the field. Then the installed `openai` SDK
itself, and the chat paths a tiny model without a template cannot reach, over the
scripted engine of tests/test_serve_http.py."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from agent.serve.openai_api import parse_call
from tests.test_serve import Served, launch, model_dir, stop_server
from tests.test_serve_http import TOKEN, ScriptedEngine, make_servicer, serving
from tests.test_serve_http_model import http_base

__all__ = ["model_dir"]  # the module's fixture, shared

REQUESTS = json.loads(
    (Path(__file__).parent / "fixtures" / "openai_clients" / "requests.json").read_text()
)


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    extra = ["--max-batch-size", "4", "--max-queue-delay-ms", "5", "--http-port", "0"]
    server = launch(model_dir, tmp_path_factory.mktemp("clients-server"), extra)
    try:
        yield server.wait_ready()
    finally:
        stop_server(server)


def served_model_id(base: str, token: str) -> str:
    models = httpx.get(f"{base}/v1/models", headers={"authorization": f"Bearer {token}"})
    assert models.status_code == 200, models.text
    return str(models.json()["data"][0]["id"])


def fill(value: Any, token: str, model: str) -> Any:
    if isinstance(value, str):
        return value.replace("{token}", token).replace("{model}", model)
    if isinstance(value, list):
        return [fill(v, token, model) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, token, model) for k, v in value.items()}
    return value


def sse_events(text: str) -> list[str]:
    """The data of each server-sent event; each must be `data: ...` and a blank line."""
    assert text.endswith("\n\n"), text[-200:]
    blocks = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in blocks), blocks
    return [block[len("data: ") :] for block in blocks]


def unfinished(doc: dict[str, Any]) -> dict[str, Any]:
    choices = [{**c, "finish_reason": c["finish_reason"] or "length"} for c in doc["choices"]]
    return {**doc, "choices": choices}


def check_stream(text: str, chat: bool, include_usage: bool) -> str:
    """The streamed text, after checking every chunk parses as OpenAI's types."""
    events = sse_events(text)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    docs = [json.loads(e) for e in events[:-1]]
    if not chat:  # OpenAI's stream sends null until the end; the type has no None
        for doc in docs:
            assert all(c["finish_reason"] in (None, "stop", "length") for c in doc["choices"])
    kind = ChatCompletionChunk if chat else Completion
    chunks: list[Any] = [kind.model_validate(doc if chat else unfinished(doc)) for doc in docs]
    if not chat:
        for chunk, doc in zip(chunks, docs, strict=True):
            for choice, sent in zip(chunk.choices, doc["choices"], strict=True):
                choice.finish_reason = sent["finish_reason"]
    assert len({c.id for c in chunks}) == 1
    if include_usage:  # the last event: no choices, the whole request's usage
        last = chunks.pop()
        assert last.choices == [] and last.usage is not None
        assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert chunks and all(len(c.choices) == 1 and c.choices[0].index == 0 for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    if not chat:
        return "".join(c.choices[0].text for c in chunks)
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant"
    return "".join(d.content or "" for d in deltas)


def check_reply(reply: httpx.Response, body: Mapping[str, Any], chat: bool) -> None:
    if body.get("stream"):
        assert reply.headers["content-type"].startswith("text/event-stream")
        options = body.get("stream_options") or {}
        check_stream(reply.text, chat, bool(options.get("include_usage")))
        return
    doc = reply.json()
    if chat:
        whole = ChatCompletion.model_validate(doc)
        [chat_choice] = whole.choices
        assert chat_choice.message.role == "assistant"
        assert isinstance(chat_choice.message.content, str)
        index, reason, usage = chat_choice.index, chat_choice.finish_reason, whole.usage
    else:
        text = Completion.model_validate(doc)
        [text_choice] = text.choices
        index, reason, usage = text_choice.index, text_choice.finish_reason, text.usage
    assert doc["object"] == ("chat.completion" if chat else "text_completion")
    assert index == 0 and reason in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= 1


def check_error(reply: httpx.Response, want: Mapping[str, Any]) -> None:
    doc = reply.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    error = doc["error"]
    assert error["param"] == want["param"], error
    assert want["words"] in error["message"] and "\n" not in error["message"], error
    kind = "not_found_error" if reply.status_code == 404 else "invalid_request_error"
    assert error["type"] == kind


@pytest.mark.parametrize("case", REQUESTS, ids=[r["name"] for r in REQUESTS])
def test_a_real_clients_request_is_served_or_refused_by_name(
    served: Served, case: dict[str, Any]
) -> None:
    base = http_base(served)
    model = served_model_id(base, served.token)
    headers = fill(case["headers"], served.token, model)
    body = fill(case["body"], served.token, model)
    with httpx.Client(timeout=60) as client:
        # content=: the exact bytes, with the client's own Content-Type (or none).
        reply = client.post(f"{base}{case['path']}", content=json.dumps(body), headers=headers)
    assert reply.status_code == case["expect"], reply.text
    if reply.status_code == 200:
        check_reply(reply, body, chat=case["path"].endswith("/chat/completions"))
    else:
        check_error(reply, case)


# -- the SDK itself ------------------------------------------------------------------


class Recorder:
    """What the SDK put on the wire: method, path, headers and JSON body of each call."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, httpx.Headers, Any]] = []

    def __call__(self, request: httpx.Request) -> None:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, request.headers, body))


def sdk_client(served: Served, recorder: Recorder, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{http_base(served)}/v1",
        api_key=key or served.token,
        max_retries=0,
        timeout=60,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [recorder]}),
    )


def test_openais_sdk_streams_chat_with_usage_and_retrieves_the_model(served: Served) -> None:
    recorder = Recorder()
    client = sdk_client(served, recorder)
    [listed] = client.models.list().data
    assert isinstance(listed, Model) and listed.object == "model"
    assert client.models.retrieve(listed.id).id == listed.id
    stream = client.chat.completions.create(
        model=listed.id,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "apple river", "name": "alice"},
        ],
        max_completion_tokens=6,
        temperature=0,
        top_p=1,
        seed=3,
        stop=["\n\n"],
        n=1,
        presence_penalty=0,
        frequency_penalty=0,
        logprobs=False,
        user="operator-1",
        response_format={"type": "text"},
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"
    whole = client.chat.completions.create(
        model=listed.id,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "apple river"},
        ],
        max_tokens=6,
        temperature=0,
        stop=["\n\n"],
        extra_body={"ignore_eos": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content == text  # the developer message: a system one
    # What went on the wire: the SDK's own headers, accepted as they are.
    method, path, sent_headers, body = recorder.sent[2]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert sent_headers["x-stainless-lang"] == "python"
    assert sent_headers["authorization"] == f"Bearer {served.token}"
    assert body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True


def test_openais_sdk_gets_typed_errors_naming_the_field(served: Served) -> None:
    client = sdk_client(served, Recorder())
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=model,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                    ],
                }
            ],
            max_tokens=4,
        )
    assert refused.value.param == "messages" and "image_url" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "a"}],
            max_completion_tokens=0,
        )
    assert refused.value.param == "max_completion_tokens"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.status_code == 404 and "this server serves" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        sdk_client(served, Recorder(), key="not-the-token").models.list()


# -- chat paths a tiny model without a chat template does not reach ---------------------


async def test_a_chat_template_sees_system_for_developer_and_its_refusal_is_a_400() -> None:
    engine, rendered = ScriptedEngine(), []
    servicer = make_servicer(engine, [])
    assert servicer.backend is not None

    def template(messages: Sequence[Mapping[str, str]]) -> str:
        rendered.append([dict(m) for m in messages])
        if messages[-1]["role"] != "user":
            raise ValueError("Conversation roles must alternate user/assistant/user/...")
        return "<s>" + "".join(m["content"] for m in messages)

    servicer.backend = dataclasses.replace(servicer.backend, render_chat=template)
    auth = {"authorization": f"Bearer {TOKEN}"}
    developer = {"role": "developer", "content": "Be brief."}
    async with serving(servicer) as base, httpx.AsyncClient(headers=auth) as client:
        ok = await client.post(
            f"{base}/v1/chat/completions",
            json={"messages": [developer, {"role": "user", "content": "hi", "name": "ann"}]},
        )
        refused = await client.post(
            f"{base}/v1/chat/completions",
            json={"messages": [{"role": "assistant", "content": "hello"}]},
        )
    assert ok.status_code == 200, ok.text
    assert rendered[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi", "name": "ann"},
    ]
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "messages" and "roles must alternate" in error["message"]


async def test_an_engine_side_refusal_names_its_field() -> None:
    """max_tokens past the context (clients often send 4096) is refused by check_params,
    whose message names the field; the error's param now does too."""
    auth = {"authorization": f"Bearer {TOKEN}"}
    servicer = make_servicer(ScriptedEngine(), [])
    async with serving(servicer) as base, httpx.AsyncClient(headers=auth) as client:
        reply = await client.post(
            f"{base}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "a"}], "max_tokens": 4096},
        )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("messages", "want"),
    [
        # An empty stop string is dropped (every case sends stop ["", newline]).
        ([{"role": "user", "content": "a"}], ({"role": "user", "content": "a"},)),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
            ({"role": "user", "content": "a\nb"},),
        ),
        (
            [
                {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": "a"},
            ],
            ({"role": "assistant", "content": ""}, {"role": "user", "content": "a"}),
        ),
    ],
)
def test_message_shapes_real_clients_send_are_parsed(
    messages: list[dict[str, Any]], want: tuple[dict[str, str], ...]
) -> None:
    call = parse_call({"messages": messages, "stop": ["", "\n"]}, chat=True, model_ids=("m",))
    assert call.messages == want and list(call.params.stop) == ["\n"]
