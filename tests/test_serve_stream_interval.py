"""--stream-interval N: a request's first token is sent at once, then its tokens N to a
message, the rest with its end; the text and ids the client puts together are the same
as one token a message. The engine on a tiny model, the flag's errors, a real server on
127.0.0.1 port 0, and `gantry serve --stream-interval` through the agent's serve task."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.serve.flags import MAX_STREAM_INTERVAL, parse_args
from agent.tasks.programs import serve_command
from console.model.serve_form import ServeSettings
from console.net.tasks_client import serve_request
from tests.serve_engine_run import run_request
from tests.test_serve import LINES, PROMPTS, Served, launch, stop_server

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    tok = train_tokenizer(LINES * 10, vocab_size=300)
    model: Any = build_model("tiny-dense", tok, seed=0)
    model.eval()
    path = tmp_path_factory.mktemp("stream-interval") / "final"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model, tok


def engine_events(
    tiny: tuple[Path, Any, Any], interval: int, stop: tuple[str, ...] = (), prompt: int = 0
) -> list[Any]:
    """The events of PROMPTS[prompt] (max_tokens MAX_TOKENS, past end-of-text) from the
    engine."""
    from agent.serve.events import Request

    _, model, tok = tiny
    ids = tuple(tok(PROMPTS[prompt])["input_ids"])
    request = Request(ids, MAX_TOKENS, time.monotonic(), stop=stop)
    return run_request(model, tok, request, set(), ignore_eos=True, stream_interval=interval)


def assembled(events: list[Any]) -> tuple[list[int], str]:
    return [t for e in events for t in e.token_ids], "".join(e.text for e in events)


def test_the_first_token_goes_at_once_then_n_a_message(tiny: tuple[Path, Any, Any]) -> None:
    each = engine_events(tiny, 1)
    assert [len(e.token_ids) for e in each] == [1] * MAX_TOKENS
    fours = engine_events(tiny, 4)
    # 10 tokens: the first alone, two messages of 4, the last with the end
    assert [len(e.token_ids) for e in fours] == [1, 4, 4, 1]
    assert assembled(fours) == assembled(each)
    nines = engine_events(tiny, 9)
    assert [len(e.token_ids) for e in nines] == [1, 9]  # the end takes what was waiting
    assert assembled(nines) == assembled(each)
    assert fours[-1].usage.completion_tokens == nines[-1].usage.completion_tokens == MAX_TOKENS


def test_a_stop_string_cuts_the_same_text_whatever_the_interval(
    tiny: tuple[Path, Any, Any],
) -> None:
    # PROMPTS[2]: the one whose completion has whole characters past its third
    full = assembled(engine_events(tiny, 1, prompt=2))[1]
    at = next(i for i in range(3, len(full) - 1) if "\ufffd" not in full[i : i + 2])
    stop = (full[at : at + 2],)
    cut = assembled(engine_events(tiny, 1, stop, prompt=2))[1]
    assert cut == full[: full.index(stop[0])] and len(cut) >= 3
    events = engine_events(tiny, 4, stop, prompt=2)
    assert assembled(events)[1] == cut
    assert events[-1].usage.finish_reason == "stop"


def test_the_engine_refuses_an_interval_below_one(tiny: tuple[Path, Any, Any]) -> None:
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.stats import ServerStats

    _, model, tok = tiny
    with pytest.raises(ValueError, match="stream_interval"):
        Engine(model, tok, Scheduler(1, 0.0), ServerStats(), set(), stream_interval=0)


@pytest.mark.parametrize("value", ["0", str(MAX_STREAM_INTERVAL + 1)])
def test_the_flag_names_its_range(
    value: str, tiny: tuple[Path, Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t" * 32)
    argv = ["--model", str(tiny[0]), "--token-file", str(token), "--stream-interval", value]
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(f"error: --stream-interval must be between 1 and {MAX_STREAM_INTERVAL}")


def test_gantry_serve_passes_the_interval_to_the_agents_server(tmp_path: Path) -> None:
    request = serve_request(ServeSettings(str(tmp_path), stream_interval=4))
    argv = serve_command(request.serve, tmp_path)
    assert argv[argv.index("--stream-interval") + 1] == "4"
    plain = serve_command(serve_request(ServeSettings(str(tmp_path))).serve, tmp_path)
    assert "--stream-interval" not in plain  # 1, the server's default: not sent


@pytest.fixture(scope="module")
def server(
    tiny: tuple[Path, Any, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    extra = ["--stream-interval", "4", "--http-port", "0"]
    served = launch(tiny[0], tmp_path_factory.mktemp("server"), extra)
    try:
        yield served.wait_ready()
    finally:
        stop_server(served)


def test_a_server_streams_n_tokens_a_message(server: Served) -> None:
    from gantry.v1 import inference_service_pb2 as pb
    from gantry.v1 import inference_service_pb2_grpc

    params = pb.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    with server.channel() as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        messages = list(
            stub.Generate(pb.GenerateRequest(prompt=PROMPTS[1], params=params), **server.kw())
        )
        complete = stub.Complete(
            pb.CompleteRequest(prompt=PROMPTS[1], params=params), **server.kw()
        )
    # [1, 4, 4, 1]; a stream that fell behind sends what waits in one message, so fewer
    # messages are possible, never more
    assert 2 <= len(messages) <= 4
    assert messages[-1].done and not any(m.done for m in messages[:-1])
    assert [t for m in messages for t in m.token_ids] == list(complete.token_ids)
    assert "".join(m.text for m in messages) == complete.text
    usage = messages[-1].usage
    assert usage.completion_tokens == MAX_TOKENS
    assert 0 < usage.time_to_first_token_ms < usage.total_time_ms


def test_the_http_api_streams_n_tokens_an_event(server: Served) -> None:
    import json

    import httpx

    from tests.test_serve_http import sse_docs

    ready = json.loads((server.base / "ready.json").read_text())
    url = f"http://{ready['http_address']}/v1/completions"
    # PROMPTS[2]: whole characters in its completion (text held back for a partial one
    # would merge events whatever the interval)
    body = {"prompt": PROMPTS[2], "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    auth = {"authorization": f"Bearer {server.token}"}
    whole = httpx.post(url, json=body, headers=auth, timeout=30).json()
    streamed = httpx.post(url, json={**body, "stream": True}, headers=auth, timeout=30)
    docs = sse_docs(streamed.text)
    assert docs[-1] == "[DONE]"
    texts = [d["choices"][0]["text"] for d in docs[:-1] if d["choices"]]
    assert 1 <= len(texts) <= 4  # [1, 4, 4, 1] tokens at most: never one event a token
    assert "".join(texts) == whole["choices"][0]["text"]
    assert whole["usage"]["completion_tokens"] == MAX_TOKENS
