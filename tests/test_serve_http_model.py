"""Issue 17, REST beside gRPC, with a real model: `python -m agent.serve --http-port 0` on
127.0.0.1 serves both APIs from one engine; greedy output is the same over REST (whole and
streamed) as over gRPC, `gantry loadtest` reaches the HTTP endpoint with the token, and
OpenAI's own Python client (the `openai` package) works against it as documented."""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc

from console.loadtest.config import LoadTestConfig
from console.loadtest.runner import run_loadtest
from tests.test_serve import PROMPTS, Served, launch, model_dir, stop_server

__all__ = ["model_dir"]  # the module's fixture, shared

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def served(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    extra = ["--max-batch-size", "4", "--max-queue-delay-ms", "5", "--http-port", "0"]
    server = launch(model_dir, tmp_path_factory.mktemp("http-server"), extra)
    try:
        yield server.wait_ready()
    finally:
        stop_server(server)


def http_base(server: Served) -> str:
    return f"http://{json.loads(server.ready_file.read_text())['http_address']}"


def headers(server: Served) -> dict[str, str]:
    return {"authorization": f"Bearer {server.token}"}


def reason_text(code: int) -> str:
    return pb.FinishReason.Name(code).removeprefix("FINISH_REASON_").lower()


def grpc_text(server: Served, prompt: str, ignore_eos: bool = False) -> tuple[str, str]:
    """(text, finish reason) of a greedy Complete."""
    with server.channel() as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        params = pb.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=ignore_eos)
        reply = stub.Complete(pb.CompleteRequest(prompt=prompt, params=params), **server.kw())
    return reply.text, reason_text(reply.usage.finish_reason)


def test_greedy_output_is_the_same_over_rest_and_grpc(served: Served) -> None:
    base = http_base(served)
    assert base != f"http://{served.address}"
    with httpx.Client(headers=headers(served), timeout=60) as client:
        for prompt in PROMPTS:
            for ignore_eos in (False, True):
                want, reason = grpc_text(served, prompt, ignore_eos)
                body: dict[str, Any] = {
                    "prompt": prompt,
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                    "ignore_eos": ignore_eos,
                }
                whole = client.post(f"{base}/v1/completions", json=body)
                assert whole.status_code == 200, whole.text
                choice = whole.json()["choices"][0]
                assert choice["text"] == want, prompt
                assert choice["finish_reason"] == ("stop" if reason == "eos" else reason)
                pieces = []
                with client.stream(
                    "POST", f"{base}/v1/completions", json={**body, "stream": True}
                ) as streamed:
                    for line in streamed.iter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            pieces.append(json.loads(line[6:])["choices"][0]["text"])
                assert "".join(pieces) == want, prompt


def test_chat_is_the_completion_of_the_joined_messages(served: Served) -> None:
    base = http_base(served)
    messages = [{"role": "user", "content": "apple river"}]
    with httpx.Client(headers=headers(served), timeout=60) as client:
        reply = client.post(
            f"{base}/v1/chat/completions",
            json={"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0},
        )
        assert reply.status_code == 200, reply.text
        models = client.get(f"{base}/v1/models").json()
        metrics = client.get(f"{base}/metrics").text
        anonymous = httpx.post(f"{base}/v1/completions", json={"prompt": "apple"})
    want, _ = grpc_text(served, "user: apple river\nassistant:")
    assert reply.json()["choices"][0]["message"]["content"] == want
    # The model's name (OUTPUT_DIR of OUTPUT_DIR/final), never its path (issue 18).
    assert models["data"][0]["id"] == served_model(served).parent.name
    assert "gantry_serve_completion_tokens_total" in metrics
    assert anonymous.status_code == 401


def served_model(server: Served) -> Path:
    argv = server.proc.args
    assert isinstance(argv, list)
    return Path(str(argv[argv.index("--model") + 1]))


async def test_the_load_tester_reaches_the_http_endpoint(served: Served) -> None:
    url = f"{http_base(served)}/v1/completions"
    report = await run_loadtest(
        LoadTestConfig(
            url,
            max_tokens=4,
            concurrency=2,
            requests=6,
            token_file=served.base / "token",
            ignore_eos=True,
        )
    )
    assert report.kind == "http" and report.streaming
    assert report.ok == 6 and not report.errors
    assert report.finishes == {"length": 6}
    assert report.ttft_ms is not None and report.ttft_ms.count == 6
    assert report.tokens == 24  # the server's own count (usage), 4 a request


def test_the_benchs_rest_vs_grpc_ratio_runs_against_both_endpoints(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/serving.py's figure, in short: four load tests, a finite ratio, no errors."""
    from bench.serving_rest import rest_vs_grpc

    ready = json.loads(served.ready_file.read_text())
    args = argparse.Namespace(max_tokens=4, seconds=1.0, warmup_s=0.0)
    result = rest_vs_grpc(
        served.address, ready["http_address"], PROMPTS, served.base / "token", tmp_path, args
    )
    assert result.errors == {"grpc": 0, "http": 0}
    assert len(result.rates["grpc"]) == len(result.rates["http"]) == 2
    assert all(rate > 0 for runs in result.rates.values() for rate in runs)
    assert 0 < result.ratio < 100
    assert "HTTP / gRPC tokens/s" in capsys.readouterr().out


def openai_client(server: Served, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{http_base(server)}/v1",
        api_key=key or server.token,
        max_retries=0,
        timeout=60,
    )


def test_openais_own_client_completes_chats_and_streams(served: Served) -> None:
    client = openai_client(served)
    [model] = [m.id for m in client.models.list()]
    want, _ = grpc_text(served, "apple", ignore_eos=True)
    whole = client.completions.create(
        model=model,
        prompt="apple",
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert whole.choices[0].text == want and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == MAX_TOKENS
    stream = client.completions.create(
        model=model,
        prompt="apple",
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    events = list(stream)
    assert "".join(e.choices[0].text for e in events if e.choices) == want
    usage = events[-1].usage
    assert usage is not None and usage.completion_tokens == MAX_TOKENS
    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "apple river"}],
        max_completion_tokens=MAX_TOKENS,
        temperature=0,
        seed=1,
        stop=["\n\n"],
        user="operator-1",
        tools=[],  # what wrappers send when there are none
    )
    joined, _ = grpc_text(served, "user: apple river\nassistant:")
    assert chat.choices[0].message.content is not None
    assert joined.startswith(chat.choices[0].message.content)
    pieces = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": [{"type": "text", "text": "apple"}]}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    deltas = [p.choices[0].delta for p in pieces if p.choices]
    assert deltas[0].role == "assistant" and "".join(d.content or "" for d in deltas)


@pytest.mark.parametrize(
    ("ask", "words"),
    [
        ({"n": 2}, "n must be 1"),
        ({"logprobs": True}, "logprobs is not supported"),
        ({"response_format": {"type": "json_object"}}, "response_format is not supported"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "tools is not supported",
        ),
    ],
)
def test_openais_client_is_refused_what_the_server_cannot_honour(
    served: Served, ask: dict[str, Any], words: str
) -> None:
    client = openai_client(served)
    model = client.models.list().data[0].id
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "apple"}], max_tokens=2, **ask
        )
    assert refused.value.status_code == 400 and words in refused.value.message


def test_openais_client_asking_for_another_model_is_told_which_one_is_served(
    served: Served,
) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        openai_client(served).completions.create(model="gpt-4o", prompt="apple", max_tokens=2)
    assert "this server serves" in refused.value.message


def test_openais_client_with_a_wrong_key_is_told_so(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        openai_client(served, key="not-the-token").models.list()
    assert refused.value.status_code == 401


# Last: it stops the module's server.
def test_a_stop_closes_both_ports(served: Served) -> None:
    base = http_base(served)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base}/health", timeout=5)
