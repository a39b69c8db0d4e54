"""`gantry loadtest` against what real OpenAI-compatible servers send (llama.cpp, vLLM,
SGLang, Ollama, LocalAI, OpenRouter...): each excerpt in tests/fixtures/openai_servers/ (its
source in SOURCES.md) is replayed by a local HTTP server on 127.0.0.1, and the CLI's report
must conclude what expected.json says: tokens an answer (the server's usage where it sends
one), the finish reason, an error in the stream, or why the run stops."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from console.loadtest import probe_retry
from console.loadtest.resolve import _openai_events
from tests.test_loadtest_cli import run_cli

SERVERS = Path(__file__).parent / "fixtures" / "openai_servers"
EXPECTED: dict[str, dict[str, Any]] = json.loads((SERVERS / "expected.json").read_text())
REQUESTS = 2
DEFAULT_MODELS = b'{"object": "list", "data": [{"id": "replay-model"}]}'


class Replay(BaseHTTPRequestHandler):
    """GET /<excerpt>/v1/models and POST /<excerpt>/v1/completions answer as the excerpt's
    server did; the request bodies are kept."""

    bodies: list[dict[str, Any]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        name = self.path.split("/")[1]
        want = EXPECTED.get(name, {})
        self._answer(
            200, (SERVERS / name).read_bytes() if want.get("kind") == "models" else DEFAULT_MODELS
        )

    def do_POST(self) -> None:
        name = self.path.split("/")[1]
        length = int(self.headers.get("content-length", "0"))
        Replay.bodies.append(json.loads(self.rfile.read(length)))
        want = EXPECTED[name]
        if want["kind"] == "status":
            self._answer(want["status"], (SERVERS / name).read_bytes())
        elif want["kind"] == "stream":
            self._answer(200, (SERVERS / name).read_bytes(), "text/event-stream")
        else:  # a /v1/models case: any well-formed answer
            self._answer(200, b'data: {"choices": [{"text": "x"}]}\n\ndata: [DONE]\n\n')


@pytest.fixture(autouse=True)
def no_probe_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe answered 429/503 is retried after a wait (tests/test_loadtest_probe_retry.py
    times those): not slept here."""

    async def instant(seconds: float) -> None:
        return None

    monkeypatch.setattr(probe_retry, "pause", instant)


@pytest.fixture(scope="module")
def replay() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def load(
    replay: str, name: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    """`gantry loadtest` on the excerpt `name`'s server: (exit code, report, stderr)."""
    url = f"{replay}/{name}/v1/completions"
    args = ["loadtest", "--target", url, "--requests", str(REQUESTS), "--concurrency", "1"]
    code, out, err = run_cli([*args, "--json", "--no-save", "--quiet"], capsys)
    return code, (json.loads(out) if code == 0 else {}), err


def excerpts(kind: str) -> list[str]:
    return sorted(name for name, want in EXPECTED.items() if want["kind"] == kind)


@pytest.mark.parametrize("name", excerpts("stream"))
def test_a_real_stream_gives_its_tokens_finish_or_error(
    name: str, replay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    want = EXPECTED[name]
    code, report, err = load(replay, name, capsys)
    assert code == 0, err
    if want["error"]:
        assert report["errors"] == {want["run_code"]: REQUESTS} and report["ok"] == 0
        return
    assert report["ok"] == REQUESTS and not report["errors"]
    assert report["tokens"] == want["tokens"] * REQUESTS, report["completion_tokens"]
    if want["finish"]:
        assert report["finishes"] == {want["finish"]: REQUESTS}


@pytest.mark.parametrize("name", excerpts("status"))
def test_an_error_status_is_counted_or_stops_the_run_saying_what_the_server_said(
    name: str, replay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    want = EXPECTED[name]
    code, report, err = load(replay, name, capsys)
    if want["status"] >= 500:  # the server may recover: the run counts them
        assert code == 0 and report["errors"] == {want["run_code"]: REQUESTS}
    elif want["status"] == 404:  # vLLM's and Ollama's answer to an unknown model
        assert code == 2 and "does not serve that model" in err and "--model" in err
        assert "not" in err.split("HTTP 404: ", 1)[1]  # the server's own words
    else:
        assert code == 2 and f"HTTP {want['status']}" in err


@pytest.mark.parametrize("name", excerpts("models"))
def test_the_model_is_the_first_one_the_server_lists(
    name: str, replay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Replay.bodies.clear()
    code, report, err = load(replay, name, capsys)
    assert code == 0 and report["ok"] == REQUESTS, err
    assert {body["model"] for body in Replay.bodies} == {EXPECTED[name]["model"]}


def test_a_stream_that_is_not_openai_completions_is_named_not_counted_as_empty() -> None:
    # TGI's own /generate_stream, as its docs show it ("data:" without a space, token.text).
    tgi = 'data:{"index":1,"token":{"id":89554,"text":" Deep","logprob":-0.1,"special":false}}\n'
    assert not _openai_events(tgi + "\n" + tgi.replace("Deep", " learning"))
    assert _openai_events('data: {"choices": [{"text": "x"}]}\n\ndata: [DONE]\n')
    assert _openai_events("data: [DONE]\n") and _openai_events("")  # nothing to judge by


def test_an_sse_error_event_fails_the_request() -> None:
    # The SSE "event: error" field, whatever its data says (llama.cpp's own "error:" line is
    # the excerpt above): the request fails, it does not count as an empty answer.
    import asyncio

    import httpx

    from console.loadtest.targets import HttpClient, StreamError, TargetSpec

    stream = b'event: error\ndata: {"message": "the request exceeds the context size"}\n\n'

    async def read() -> list[object]:
        client = HttpClient(TargetSpec("http", "http://x/v1/completions", "POST", True, (b"{}",)))
        answer = httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})
        transport = httpx.MockTransport(lambda request: answer)
        client._client = httpx.AsyncClient(transport=transport)
        try:
            return [event async for event in client.stream(0)]
        finally:
            await client.close()

    with pytest.raises(StreamError, match="exceeds the context size"):
        asyncio.run(read())
