"""Issue 17, REST beside gRPC, the pure parts: OpenAI request bodies to sampling
parameters (agent.serve.openai_api) and the counters behind /metrics (agent.serve.stats)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.serve.events import Usage
from agent.serve.metrics import metrics_registry, metrics_text
from agent.serve.openai_api import ApiError, Shape, parse_call, plain_chat_prompt
from agent.serve.stats import ServerStats

IDS = ("/m/final", "final")


def test_a_completion_body_becomes_sampling_parameters() -> None:
    call = parse_call(
        {
            "model": "final",
            "prompt": ["hi"],
            "max_tokens": 9,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "\n",
            "seed": 3,
            "ignore_eos": True,
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "frequency_penalty": 0,
            "user": "x",
        },
        chat=False,
        model_ids=IDS,
    )
    p = call.params
    assert call.prompt == "hi" and call.stream and call.include_usage and not call.chat
    assert (p.max_tokens, p.temperature, list(p.stop), p.seed, p.ignore_eos) == (
        9,
        0.5,
        ["\n"],
        3,
        True,
    )
    assert p.top_p == pytest.approx(0.9)
    defaults = parse_call({"prompt": "hi"}, chat=False, model_ids=IDS)
    assert (defaults.params.max_tokens, defaults.params.temperature) == (16, 1.0)  # OpenAI's
    assert not defaults.stream and defaults.max_tokens_given is False


def test_a_chat_body_takes_max_completion_tokens_and_text_parts() -> None:
    call = parse_call(
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
            "max_completion_tokens": 4,
            "max_tokens": 99,
        },
        chat=True,
        model_ids=IDS,
    )
    assert call.params.max_tokens == 4 and call.messages == ({"role": "user", "content": "a"},)
    assert plain_chat_prompt(call.messages) == "user: a\nassistant:"


def test_top_k_as_vllm_takes_it_and_min_p_refused() -> None:
    def top_k(value: object) -> int:
        return parse_call({"prompt": "a", "top_k": value}, chat=False, model_ids=IDS).params.top_k

    assert (top_k(40), top_k(-1), top_k(0), top_k(None)) == (40, 0, 0, 0)  # -1, 0: no cut
    with pytest.raises(ApiError, match="top_k must be -1, 0"):
        top_k(-5)
    with pytest.raises(ApiError, match="min_p is not supported"):
        parse_call({"prompt": "a", "min_p": 0.05}, chat=False, model_ids=IDS)
    assert parse_call({"prompt": "a", "min_p": 0}, chat=False, model_ids=IDS).params.top_k == 0


def test_seed_minus_one_is_no_seed_as_llama_cpp_clients_send_it() -> None:
    # llama.cpp's server documents seed -1 as "random" and its clients send it by default.
    call = parse_call({"prompt": "a", "seed": -1}, chat=False, model_ids=IDS)
    assert call.params.seed == 0
    assert parse_call({"prompt": "a", "seed": 7}, chat=False, model_ids=IDS).params.seed == 7


@pytest.mark.parametrize(
    ("body", "chat", "words"),
    [
        ([], False, "the body must be a JSON object"),
        ({"prompt": "a", "seed": -2}, False, "seed must be between 0 and 2**64-1"),
        ({"prompt": "a", "max_tokens": 0}, False, "max_tokens must be at least 1"),
        ({"prompt": "a", "max_tokens": "8"}, False, 'max_tokens must be an integer, not "8"'),
        ({"prompt": "a", "stream": "yes"}, False, "stream must be true or false"),
        ({"prompt": [1, 2]}, False, "prompt must be a string (token ids are not accepted)"),
        ({"messages": []}, True, "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "a"}]}, True, "messages[0]: role must be"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, True, "only text"),
        ({"prompt": "a", "logprobs": 2}, False, "logprobs is not supported"),
        (
            {"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]},
            True,
            "tools is not supported by this server; leave it out",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}], "tool_choice": "required"},
            True,
            "tool_choice is not supported",
        ),
        (
            {
                "messages": [{"role": "user", "content": "a"}],
                "response_format": {"type": "json_object"},
            },
            True,
            "response_format is not supported",
        ),
        ({"prompt": "a", "repetition_penalty": 1.2}, False, "repetition_penalty is not"),
    ],
)
def test_bad_bodies_are_refused_with_one_line(body: Any, chat: bool, words: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_call(body, chat=chat, model_ids=IDS)
    assert refused.value.status == 400 and words in str(refused.value)


def test_stream_chunks_carry_text_then_the_finish_reason() -> None:
    shape = Shape("cmpl-1", 100, "m", chat=False)
    assert shape.chunk(" a") == (
        b'data: {"id":"cmpl-1","object":"text_completion","created":100,"model":"m",'
        b'"choices":[{"index":0,"text":" a","logprobs":null,"finish_reason":null}]}\n\n'
    )
    assert b'"finish_reason":"length"' in shape.chunk("", "length")
    assert b'"finish_reason":"stop"' in shape.chunk("", "eos")
    reply = Shape("c", 1, "m", chat=True).reply("hi", Usage(2, 3, 1.0, 2.0, "stop", 1))
    assert reply["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 1},
    }


def test_metrics_count_tokens_latency_and_batch_sizes() -> None:
    now = [0.0]
    stats = ServerStats(clock=lambda: now[0])
    stats.request_received()
    stats.step(4, 5)
    stats.step(2, 2)
    stats.request_completed(0.3, 20, 16)
    stats.request_completed(120.0, 5)
    text = metrics_text(metrics_registry(stats, lambda: (1, 2))).decode()
    assert "gantry_serve_completion_tokens_total 7.0" in text
    assert "gantry_serve_prompt_tokens_total 25.0" in text
    assert "gantry_serve_prompt_tokens_cached_total 16.0" in text
    assert 'gantry_serve_request_latency_seconds_bucket{le="0.25"} 0.0' in text
    assert 'gantry_serve_request_latency_seconds_bucket{le="0.5"} 1.0' in text
    assert 'gantry_serve_request_latency_seconds_bucket{le="+Inf"} 2.0' in text
    assert "gantry_serve_request_latency_seconds_sum 120.3" in text
    assert 'gantry_serve_batch_size_bucket{le="2"} 1.0' in text
    assert 'gantry_serve_batch_size_bucket{le="4"} 2.0' in text
    assert "gantry_serve_batch_size_sum 6.0" in text
    assert "gantry_serve_queue_depth 1.0" in text


def test_neutral_values_of_unimplemented_fields_pass() -> None:
    # What OpenAI's clients and LangChain-style wrappers send when nothing is asked for.
    body = {
        "messages": [{"role": "user", "content": "a"}],
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "presence_penalty": 0,
        "repetition_penalty": 1.0,
        "parallel_tool_calls": True,
    }
    call = parse_call(body, chat=True, model_ids=IDS)
    assert call.messages == ({"role": "user", "content": "a"},)
