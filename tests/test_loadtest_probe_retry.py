"""The probe before a load test, answered "rate limited" (HTTP 429) or "unavailable" (HTTP
503, gRPC UNAVAILABLE): it is tried again after the wait the server names (Retry-After,
seconds or an HTTP-date; retry-after-ms) or a short backoff (0.5, 1, 2 s), at most 3 times
and 10 s in all; then a 429 stops the run with one line, a 503 goes on (the run counts it),
and a wait asked for past the bound stops at once. Real local servers on 127.0.0.1 answer
with what real servers send (the source beside each); the waits are recorded, not slept."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import pytest
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc
from grpc_reflection.v1alpha import reflection

from console.loadtest import probe_retry
from console.loadtest.config import LoadTestConfig, LoadTestError
from console.loadtest.probe_retry import (
    MAX_RETRIES,
    ProbeRetries,
    grpc_pushback,
    retry_delay,
    server_delay,
)
from console.loadtest.resolve import resolve
from tests.loadtest_servers import FakeInference, Timing
from tests.test_loadtest_cli import run_cli

COMPLETE = "gantry.v1.InferenceService/Complete"
MODELS = b'{"object": "list", "data": [{"id": "probe-model"}]}'
STREAM_OK = b'data: {"choices": [{"text": "x"}]}\n\ndata: [DONE]\n\n'

# What real servers answered, as their sources quote it.
# https://github.com/Pythagora-io/gpt-pilot/issues/17 (OpenAI, requests per minute)
OPENAI_RPM = json.dumps(
    {
        "error": {
            "message": "Rate limit reached for 10KTPM-200RPM in organization org-WyXXXXXXXXX "
            "on tokens per min. Limit: 10000 / min. Please try again in 6ms. Contact us "
            "through our help center at help.openai.com if you continue to have issues.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
).encode()
# https://github.com/openai/openai-dotnet/issues/404 (OpenAI, a wait of hours; the SDK
# waited as its Retry-After said)
OPENAI_HOURS = json.dumps(
    {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization [orgID] on tokens "
            "per min (TPM): Limit 100000, Used 96749, Requested 19126. Please try again in "
            "114h18m0s.",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
).encode()
# https://github.com/openai/openai-node/issues/1108 (Azure OpenAI: "retry after 33 seconds")
AZURE_33S = json.dumps(
    {
        "error": {
            "code": "429",
            "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI "
            "API version 2024-02-15-preview have exceeded token rate limit of your current "
            "OpenAI S0 pricing tier. Please retry after 33 seconds.",
        }
    }
).encode()
# TGI's 429 when its queue is full: InferError::Overloaded -> TOO_MANY_REQUESTS, the body an
# ErrorResponse {error, error_type}: huggingface/text-generation-inference router/src/server.rs
# (and https://github.com/huggingface/text-generation-inference/issues/439)
TGI_OVERLOADED = b'{"error":"Model is overloaded","error_type":"overloaded"}'
# https://github.com/danny-avila/LibreChat/issues/1157 (an OpenAI-compatible upstream)
SLOW_DOWN = b'{"error": "slow down"}'
# https://github.com/nextcloud/integration_openai/pull/359 (IONOS AI: `retry-after: 1`)
IONOS_HEADERS = {"retry-after": "1", "x-ratelimit-limit": "300", "x-ratelimit-remaining": "0"}
# https://github.com/ollama/ollama/issues/15934 (Ollama, 503 Service Unavailable)
OLLAMA_OVERLOADED = (
    b'{"error":"Server overloaded, please retry shortly '
    b'(ref: aaa65c70-cfa0-446b-86f1-4ab0e2deb9e4)"}'
)
# https://github.com/canonical/inference-snaps/issues/234 (llama.cpp's server, GET
# /v1/models while the model loads: 503)
LLAMACPP_LOADING = b'{"message":"Loading model","type":"unavailable_error","code":503}'
# https://github.com/NVIDIA/NeMo-Retriever/issues/1077 (Triton: "503 Service Unavailable:
# exceeds maximum queue size"; Triton's HTTP error body is {"error": message})
TRITON_QUEUE_FULL = b'{"error":"exceeds maximum queue size"}'


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    retry_in_s: float | None = None  # Retry-After as an HTTP-date this far past Date


OK = Answer(200, STREAM_OK)


class Scripted(BaseHTTPRequestHandler):
    """/<case>/v1/completions and /<case>/v1/models answer as SCRIPTS[case][kind] lists,
    one answer a request, the last one again and again; every request is logged."""

    scripts: dict[str, dict[str, list[Answer]]] = {}
    log: list[tuple[str, str, dict[str, Any] | None]] = []
    stamp = 0  # this answer's Date (whole seconds)

    def log_message(self, *args: object) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.stamp, usegmt=True)  # Date, as the Retry-After dates use

    def _answer(self, kind: str, body: dict[str, Any] | None) -> None:
        case = self.path.split("/")[1]
        Scripted.log.append((case, kind, body))
        script = Scripted.scripts.get(case, {}).get(kind)
        if not script:
            answer = Answer(200, MODELS) if kind == "models" else OK
        else:
            answer = script.pop(0) if len(script) > 1 else script[0]
        self.stamp = int(time.time())
        self.send_response(answer.status)
        stream = answer.status == 200 and kind == "completions"
        self.send_header("content-type", "text/event-stream" if stream else "application/json")
        self.send_header("content-length", str(len(answer.body)))
        for key, value in answer.headers.items():
            self.send_header(key, value)
        if answer.retry_in_s is not None:
            self.send_header("retry-after", formatdate(self.stamp + answer.retry_in_s, usegmt=True))
        self.end_headers()
        self.wfile.write(answer.body)

    def do_GET(self) -> None:
        self._answer("models", None)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self._answer("completions", json.loads(self.rfile.read(length)))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class Waits:
    """An injected sleep: records each wait instead of sleeping it."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def script(case: str, completions: list[Answer], models: list[Answer] | None = None) -> str:
    Scripted.scripts[case] = {"completions": completions, "models": models or []}
    return case


def posts(case: str) -> list[dict[str, Any] | None]:
    return [body for name, kind, body in Scripted.log if name == case and kind == "completions"]


async def probe(server: str, case: str) -> tuple[Waits, LoadTestError | None]:
    waits = Waits()
    config = LoadTestConfig(f"{server}/{case}/v1/completions", requests=2, concurrency=1)
    try:
        await resolve(config, ProbeRetries(sleep=waits))
    except LoadTestError as exc:
        return waits, exc
    return waits, None


# The schedule (pure).


def test_the_schedule_is_the_servers_wait_else_a_doubling_backoff() -> None:
    assert [retry_delay(429, {}, n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_delay(503, {"Retry-After": "7"}, 1) == 7.0
    assert retry_delay(429, {"retry-after": "0"}, 2) == 0.0
    assert retry_delay(429, {"retry-after": "1.5"}, 1) == 1.5  # a fraction, taken
    assert retry_delay(429, {"Retry-After": "soon"}, 2) == 1.0  # unreadable: the backoff
    assert retry_delay(429, {"Retry-After": "-3"}, 1) == 0.5
    assert retry_delay(429, {}, MAX_RETRIES + 1) is None  # the tries are spent
    assert retry_delay(429, {}, 0) is None
    for status in (200, 400, 401, 404, 500, 502, 504, 529):
        assert retry_delay(status, {"retry-after": "1"}, 1) is None


def test_retry_after_ms_comes_first_and_an_http_date_counts_from_the_answers_date() -> None:
    # openai-python and Azure's SDKs read retry-after-ms (x-ms-retry-after-ms) before
    # Retry-After (azure-sdk-for-js core-rest-pipeline throttlingRetryStrategy.ts).
    assert server_delay({"retry-after-ms": "20", "retry-after": "1"}) == 0.02
    assert server_delay({"x-ms-retry-after-ms": "1500"}) == 1.5
    now = datetime(2026, 5, 2, 12, 0, 0, tzinfo=UTC)
    later = formatdate((now + timedelta(seconds=30)).timestamp(), usegmt=True)
    assert server_delay({"Retry-After": later}, now) == 30.0
    # RFC 9110's example date, against the answer's own Date (not this machine's clock)
    date = {"Retry-After": "Fri, 31 Dec 1999 23:59:59 GMT"}
    assert server_delay({**date, "Date": "Fri, 31 Dec 1999 23:59:49 GMT"}) == 10.0
    assert server_delay(date, now) == 0.0  # long past: at once
    assert server_delay({"retry-after": "Sun Nov  6 08:49:37 1994"}, now) == 0.0  # asctime
    assert server_delay({}) is None and server_delay({"retry-after": ""}) is None


def test_a_grpc_pushback_reads_as_retry_after_ms() -> None:
    assert grpc_pushback((("grpc-retry-pushback-ms", "250"),)) == {"retry-after-ms": "250"}
    assert grpc_pushback((("other", "1"),)) == {} and grpc_pushback(None) == {}
    assert server_delay(grpc_pushback((("grpc-retry-pushback-ms", "-1"),))) is None


async def test_the_budget_bounds_the_total_wait_and_a_longer_ask_is_not_taken() -> None:
    waits = Waits()
    retries = ProbeRetries(sleep=waits)
    assert await retries.again(429, {"retry-after": "6"})
    assert not await retries.again(429, {"retry-after": "5"})  # 6 + 5 > 10
    assert retries.too_long == 5.0 and waits.slept == [6.0]
    assert "asks to wait 5 s more (Retry-After), longer than the probe waits (10 s in all)" in (
        retries.gave_up()
    )
    assert retries.tried() == "retried once over 6 s"


# HTTP: the probe against a local server.


async def test_a_429_without_retry_after_backs_off_then_goes_on(server: str) -> None:
    case = script("rpm", [Answer(429, OPENAI_RPM), OK])
    waits, error = await probe(server, case)
    assert error is None and waits.slept == [0.5]
    assert len(posts(case)) == 2 and posts(case)[1] == posts(case)[0]  # the same probe


async def test_a_429_with_retry_after_seconds_waits_that_long(server: str) -> None:
    case = script("ionos", [Answer(429, SLOW_DOWN, IONOS_HEADERS)] * 2 + [OK])
    waits, error = await probe(server, case)
    assert error is None and waits.slept == [1.0, 1.0] and len(posts(case)) == 3


async def test_a_retry_after_http_date_counts_from_the_servers_date(server: str) -> None:
    case = script("date", [Answer(429, SLOW_DOWN, retry_in_s=2), OK])
    waits, error = await probe(server, case)
    assert error is None and waits.slept == [2.0]


async def test_retry_after_ms_is_honoured(server: str) -> None:
    case = script("ms", [Answer(429, OPENAI_RPM, {"retry-after-ms": "6"}), OK])
    waits, error = await probe(server, case)
    assert error is None and waits.slept == [0.006]


async def test_a_429_that_lasts_stops_with_one_line_saying_what_was_tried(server: str) -> None:
    case = script("tgi", [Answer(429, TGI_OVERLOADED)])
    waits, error = await probe(server, case)
    assert waits.slept == [0.5, 1.0, 2.0] and len(posts(case)) == 1 + MAX_RETRIES
    assert error is not None
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{server}/tgi/v1/completions refused the probe request: HTTP 429")
    assert "Model is overloaded" in message  # the server's words
    assert "retried 3 times over 3.5 s (at most 3 retries, 10 s of waiting)" in message
    assert "wait for it, then run again (with a lower --rate or --concurrency)" in message


@pytest.mark.parametrize(
    ("case", "answer", "asks"),
    [
        ("azure", Answer(429, AZURE_33S, {"retry-after": "33"}), "33 s"),
        ("hours", Answer(429, OPENAI_HOURS, {"retry-after": "411480"}), "114 h"),
        ("triton", Answer(503, TRITON_QUEUE_FULL, {"Retry-After": "120"}), "120 s"),
    ],
)
async def test_a_wait_asked_past_the_bound_stops_at_once(
    server: str, case: str, answer: Answer, asks: str
) -> None:
    waits, error = await probe(server, script(case, [answer, OK]))
    assert waits.slept == [] and len(posts(case)) == 1
    assert error is not None and "\n" not in str(error)
    assert f"HTTP {answer.status}: " in str(error)
    assert f"it asks to wait {asks} (Retry-After), longer than the probe waits (10 s in all)" in (
        str(error)
    )
    assert "then run again" in str(error)


async def test_a_503_that_lasts_goes_on_after_the_retries(server: str) -> None:
    """The server may recover: as before, the run goes on and counts what it answers."""
    for case, body in (("ollama", OLLAMA_OVERLOADED), ("queue", TRITON_QUEUE_FULL)):
        waits, error = await probe(server, script(case, [Answer(503, body)]))
        assert error is None and waits.slept == [0.5, 1.0, 2.0]
        assert len(posts(case)) == 1 + MAX_RETRIES


async def test_a_models_list_still_loading_is_asked_again(server: str) -> None:
    case = script("loading", [OK], models=[Answer(503, LLAMACPP_LOADING), Answer(200, MODELS)])
    waits, error = await probe(server, case)
    assert error is None and waits.slept == [0.5]
    assert [body and body["model"] for body in posts(case)] == ["probe-model"]


async def test_the_wait_is_real_without_an_injected_sleep(server: str) -> None:
    case = script("real", [Answer(429, SLOW_DOWN, {"retry-after": "0.2"}), OK])
    config = LoadTestConfig(f"{server}/{case}/v1/completions", requests=2, concurrency=1)
    start = time.monotonic()
    await resolve(config)
    assert time.monotonic() - start >= 0.2 and len(posts(case)) == 2


# `gantry loadtest`, end to end (the waits replaced, not slept).


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> Waits:
    waits = Waits()
    monkeypatch.setattr(probe_retry, "pause", waits)
    return waits


def load(server: str, case: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    url = f"{server}/{case}/v1/completions"
    args = ["loadtest", "--target", url, "--requests", "2", "--concurrency", "1"]
    return run_cli([*args, "--json", "--no-save", "--quiet"], capsys)


def test_cli_stops_on_a_lasting_429_with_one_line(
    server: str, capsys: pytest.CaptureFixture[str], no_waiting: Waits
) -> None:
    code, out, err = load(server, script("cli-429", [Answer(429, TGI_OVERLOADED)]), capsys)
    assert code == 2 and not out and err.count("\n") == 1
    assert err.startswith("gantry: ") and "HTTP 429" in err and "Model is overloaded" in err
    assert "retried 3 times over 3.5 s" in err and no_waiting.slept == [0.5, 1.0, 2.0]


def test_cli_runs_after_a_429_that_clears(
    server: str, capsys: pytest.CaptureFixture[str], no_waiting: Waits
) -> None:
    case = script("cli-clears", [Answer(429, SLOW_DOWN, IONOS_HEADERS), OK])
    code, out, err = load(server, case, capsys)
    assert code == 0, err
    assert json.loads(out)["ok"] == 2 and not err and no_waiting.slept == [1.0]


def test_cli_counts_a_lasting_503_in_the_run(
    server: str, capsys: pytest.CaptureFixture[str], no_waiting: Waits
) -> None:
    code, out, err = load(server, script("cli-503", [Answer(503, OLLAMA_OVERLOADED)]), capsys)
    assert code == 0, err
    assert json.loads(out)["errors"] == {"HTTP_503": 2} and no_waiting.slept == [0.5, 1.0, 2.0]


# gRPC: UNAVAILABLE is a 503 (Triton answers a full queue so); RESOURCE_EXHAUSTED is not
# retried (gRPC also says it of a message over the size limit, which no wait mends).


class Refusing(FakeInference):
    def __init__(self, code: grpc.StatusCode, times: int, trailers: tuple[Any, ...] = ()):
        super().__init__(Timing())
        self.code, self.times, self.trailers = code, times, trailers

    async def Complete(self, request: pb.CompleteRequest, context: Any) -> pb.CompleteResponse:
        if self.times:
            self.times -= 1
            self.calls += 1
            await context.abort(self.code, "exceeds maximum queue size", self.trailers)
        return await super().Complete(request, context)


async def grpc_probe(servicer: Refusing) -> tuple[Waits, LoadTestError | None]:
    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    names = ("gantry.v1.InferenceService", reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    waits = Waits()
    config = LoadTestConfig(
        f"127.0.0.1:{port}", method=COMPLETE, data='{"prompt": "x"}', requests=2, concurrency=1
    )
    try:
        await resolve(config, ProbeRetries(sleep=waits))
    except LoadTestError as exc:
        return waits, exc
    finally:
        await server.stop(0)
    return waits, None


async def test_grpc_unavailable_is_tried_again() -> None:
    servicer = Refusing(grpc.StatusCode.UNAVAILABLE, 2)
    waits, error = await grpc_probe(servicer)
    assert error is None and waits.slept == [0.5, 1.0] and servicer.calls == 3


async def test_grpc_pushback_is_the_servers_wait() -> None:
    servicer = Refusing(grpc.StatusCode.UNAVAILABLE, 1, (("grpc-retry-pushback-ms", "250"),))
    waits, error = await grpc_probe(servicer)
    assert error is None and waits.slept == [0.25]


async def test_grpc_unavailable_that_lasts_stops_with_one_line() -> None:
    waits, error = await grpc_probe(Refusing(grpc.StatusCode.UNAVAILABLE, 99))
    assert waits.slept == [0.5, 1.0, 2.0] and error is not None
    message = str(error)
    assert message.startswith("cannot reach 127.0.0.1:") and "\n" not in message
    assert "exceeds maximum queue size; retried 3 times over 3.5 s" in message
    assert message.endswith("wait for the server, then run again")


async def test_grpc_resource_exhausted_goes_on_at_once_as_before() -> None:
    servicer = Refusing(grpc.StatusCode.RESOURCE_EXHAUSTED, 99)
    waits, error = await grpc_probe(servicer)
    assert error is None and waits.slept == [] and servicer.calls == 1


def test_httpx_headers_are_read_case_blind() -> None:
    response = httpx.Response(429, headers={"Retry-After": "3"})
    assert retry_delay(response.status_code, response.headers, 1) == 3.0
