"""SamplingParams.ignore_eos: the decode loop runs to max_tokens past end-of-sequence, in the
engine and through the real server on 127.0.0.1 port 0; the load tester warns when the
completions are cut short by EOS, and its --ignore-eos makes them max_tokens long.

The tiny model is saved with its end-of-sequence token set to the first token it picks
greedily for PROMPT, so plain greedy decoding ends after one token."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from console.loadtest.config import LoadTestConfig
from console.loadtest.runner import run_loadtest
from tests.serve_engine_run import run_request
from tests.test_serve import Served, launch, stop_server

LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]
PROMPT = "apple river"
MAX_TOKENS = 6


@dataclass
class EarlyEosModel:
    dir: Path
    model: Any
    tokenizer: Any
    eos: int  # the first token greedy decoding picks for PROMPT


@pytest.fixture(scope="module")
def early_eos(tmp_path_factory: pytest.TempPathFactory) -> EarlyEosModel:
    import torch

    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    tok = train_tokenizer(LINES * 10, vocab_size=300)
    model: Any = build_model("tiny-dense", tok, seed=0)
    model.eval()
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.inference_mode():
        first = int(model(input_ids=ids).logits[0, -1].argmax())
    model.generation_config.eos_token_id = first
    path = tmp_path_factory.mktemp("early-eos") / "final"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return EarlyEosModel(path, model, tok, first)


# --- the engine ----------------------------------------------------------------------------


def decode(model: EarlyEosModel, ignore_eos: bool) -> tuple[list[int], str]:
    """Token ids and finish reason of PROMPT through the engine's decode loop."""
    from agent.serve.events import Request

    prompt_ids = tuple(model.tokenizer(PROMPT)["input_ids"])
    request = Request(prompt_ids, MAX_TOKENS, time.monotonic())
    events = run_request(model.model, model.tokenizer, request, {model.eos}, ignore_eos=ignore_eos)
    last = events[-1]
    ids = [t for e in events for t in e.token_ids]
    assert last.usage.completion_tokens == len(ids)
    return ids, last.usage.finish_reason


def test_the_engine_stops_at_eos_unless_told_to_ignore_it(early_eos: EarlyEosModel) -> None:
    ids, reason = decode(early_eos, ignore_eos=False)
    assert (ids, reason) == ([early_eos.eos], "eos")
    ids, reason = decode(early_eos, ignore_eos=True)
    assert len(ids) == MAX_TOKENS and reason == "length"
    assert ids[0] == early_eos.eos  # the end token decoded as any other, then onwards


# --- the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(early_eos: EarlyEosModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = launch(early_eos.dir, tmp_path_factory.mktemp("server"), ["--max-batch-size", "4"])
    try:
        yield served.wait_ready()
    finally:
        stop_server(served)


def generate(served: Served, ignore_eos: bool) -> tuple[list[int], str]:
    from gantry.v1 import inference_service_pb2 as pb
    from gantry.v1 import inference_service_pb2_grpc

    params = pb.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=ignore_eos)
    with served.channel() as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        responses = list(
            stub.Generate(pb.GenerateRequest(prompt=PROMPT, params=params), **served.kw())
        )
    ids = [t for r in responses for t in r.token_ids]
    return ids, pb.FinishReason.Name(responses[-1].usage.finish_reason)[14:].lower()


def test_the_server_decodes_max_tokens_with_ignore_eos(server: Served) -> None:
    plain, reason = generate(server, ignore_eos=False)
    assert len(plain) == 1 and reason == "eos"
    ids, reason = generate(server, ignore_eos=True)
    assert len(ids) == MAX_TOKENS and reason == "length"


async def test_loadtest_warns_of_short_completions_and_ignore_eos_lengthens_them(
    server: Served, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPT}) + "\n")
    token_file = server.base / "token"
    config = LoadTestConfig(
        server.address,
        prompts=prompts,
        max_tokens=MAX_TOKENS,
        concurrency=2,
        requests=6,
        token_file=token_file,
    )
    plain = await run_loadtest(config)
    assert plain.ok == 6 and plain.tokens == 6 and plain.finishes == {"eos": 6}
    [short] = [n for n in plain.notes if n.startswith("completions are short")]
    ended = "(6 of 6 answers ended at end-of-sequence)"
    assert f"median 1 token, max_tokens {MAX_TOKENS} {ended}" in short
    assert "--ignore-eos" in short
    assert "completions are short" in plain.to_table()

    full = await run_loadtest(LoadTestConfig(**{**config.__dict__, "ignore_eos": True}))
    assert full.ok == 6 and full.tokens == 6 * MAX_TOKENS and full.finishes == {"length": 6}
    assert full.ignore_eos and not any("completions are short" in n for n in full.notes)
    assert full.completion_tokens is not None and round(full.completion_tokens.p50) == MAX_TOKENS
