"""Prompts joining a running batch inside its decode step (BatchDecoder.step_joining, a
ragged batch: agent/serve/ragged.py): as `generate` on every built-in layout and for
long prompts, within the step's token budget, only for models whose attention takes the
ragged step, and chosen by the engine for prompts that fit the budget."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent.serve.decode import BatchDecoder
from tests.serve_moe import PROMPTS, Moe, assert_decodes_as_generate


@pytest.mark.parametrize(
    ("name", "attention"),
    [("tiny-dense", "sdpa"), ("tiny-deepseek", "sdpa"), ("tiny-moe", "eager")],
)
def test_joining_in_step_decodes_as_generate_on_the_other_layouts(
    moe: Moe, name: str, attention: str
) -> None:
    """Prompts joining in the step on a dense model, on DeepSeek's attention (keys and
    values of different widths) and with eager attention (an additive mask)."""
    from agent.ml.models import build_model

    model: Any = build_model(name, moe.tokenizer, seed=0)
    model.eval()
    model.set_attn_implementation(attention)
    model.generation_config.eos_token_id = None
    case = Moe(model, moe.tokenizer)
    prompts = [case.encode(p) for p in PROMPTS * 3]
    assert_decodes_as_generate(case, prompts, 6)


def test_long_prompts_and_many_at_once_join_as_generate(moe: Moe) -> None:
    """Prompts of 30 to 150 tokens, six joining one step, decode as `generate`."""
    text = " ".join(PROMPTS)
    prompts = [moe.encode(" ".join([text] * k)) for k in (2, 3, 5, 8, 4, 6, 7, 2)]
    assert min(map(len, prompts)) >= 30 and max(map(len, prompts)) <= 150
    assert_decodes_as_generate(moe, prompts, 6)


def test_prompts_join_the_step_within_its_token_budget(moe: Moe) -> None:
    """A step takes joining prompts up to JOINING_TOKENS in all, only beside a running
    batch; each prompt is written into the row it keeps, at its length."""
    import agent.serve.decode as decode

    decoder: BatchDecoder[str] = BatchDecoder(moe.model, rows=4)
    assert decoder.joining_budget() == 0  # nothing runs: the prompt is prefilled
    first = moe.encode(PROMPTS[0])
    decoder.join("a", decoder.prefill(first)[1])
    assert decoder.joining_budget() == decode.JOINING_TOKENS
    ids = moe.encode(PROMPTS[2])
    logits = decoder.step_joining({"a": 7}, [("b", ids)])
    assert logits.shape[0] == 2 and decoder.keys == ["a", "b"]
    assert decoder.cache.lengths[:2].tolist() == [len(first) + 1, len(ids)]
    with pytest.raises(KeyError):
        decoder.step_joining({"a": 7, "b": 7}, [("b", ids)])
    with pytest.raises(KeyError):
        decoder.step_joining({"a": 7, "b": 7}, [("c", ids), ("c", ids)])
    with pytest.raises(ValueError, match="no tokens"):
        decoder.step_joining({"a": 7, "b": 7}, [("c", [])])


@pytest.mark.parametrize("attention", ["ignores the layout", "disagrees"])
def test_a_model_whose_attention_takes_no_ragged_step_joins_by_prefill(
    moe: Moe, monkeypatch: pytest.MonkeyPatch, attention: str
) -> None:
    """A model whose attention layers do not run the ragged layout (custom attention
    that computes on what it is given, or gives other numbers) gets no joining budget:
    its prompts are prefilled, and it decodes as `generate`."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from agent.serve import ragged

    def plain(module: Any, q: Any, k: Any, v: Any, mask: Any, **kwargs: Any) -> Any:
        kwargs.pop(ragged.KWARG, None)
        return sdpa_attention_forward(module, q, k, v, mask, **kwargs)

    def other(module: Any, q: Any, k: Any, v: Any, mask: Any, **kwargs: Any) -> Any:
        out, weights = ragged.ragged_attention(module, q, k, v, mask, **kwargs)
        return out * 0.5, weights

    fake = plain if attention == "ignores the layout" else other
    monkeypatch.setitem(AttentionInterface._global_mapping, ragged.NAME, fake)
    decoder: BatchDecoder[str] = BatchDecoder(moe.model, rows=4)
    decoder.join("a", decoder.prefill(moe.encode(PROMPTS[0]))[1])
    assert decoder.joining_budget() == 0
    assert moe.model.config._attn_implementation == "sdpa"  # set back after the probe


def test_a_short_prompt_joins_the_running_step_a_long_one_is_prefilled(
    moe: Moe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine puts a short prompt admitted beside a running request into the decode
    step, prefills one past the step's budget apart, and all decode as `generate`."""
    import agent.serve.decode as decode
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.events import Done, Event, Request
    from agent.serve.stats import ServerStats

    monkeypatch.setattr(decode, "JOINING_TOKENS", 16)
    engine = Engine(moe.model, moe.tokenizer, Scheduler(4, 0.0), ServerStats(), set())
    joined: list[list[int]] = []
    step_joining = engine._decoder.step_joining

    def spy(tokens: Any, joining: Any) -> Any:
        joined.append([len(prompt) for _, prompt in joining])
        return step_joining(tokens, joining)

    engine._decoder.step_joining = spy  # type: ignore[method-assign]
    tokens: dict[str, list[int]] = {"first": [], "short": [], "long": []}
    ended = {name: threading.Event() for name in tokens}

    def sink(name: str) -> Any:
        def put(event: Event) -> None:
            tokens[name] += getattr(event, "token_ids", ())
            if isinstance(event, Done):
                ended[name].set()

        return put

    prompts = {
        "first": moe.encode(PROMPTS[0]),
        "short": moe.encode(PROMPTS[2]),
        "long": moe.encode(" ".join(PROMPTS * 3)),
    }
    assert len(prompts["short"]) <= decode.JOINING_TOKENS < len(prompts["long"])
    engine.start()
    try:
        # long enough to be running still when the others arrive, on a busy machine too
        engine.submit(Request(tuple(prompts["first"]), 200, engine.now()), sink("first"))
        while not tokens["first"]:
            threading.Event().wait(0.001)
        for name in ("short", "long"):
            engine.submit(Request(tuple(prompts[name]), 8, engine.now()), sink(name))
            while not tokens[name]:
                threading.Event().wait(0.001)
        assert all(event.wait(60) for event in ended.values())
    finally:
        engine.stop()
    assert joined == [[len(prompts["short"])]]
    assert tokens == {
        name: moe.greedy(ids, 200 if name == "first" else 8) for name, ids in prompts.items()
    }


def test_the_prompts_admitted_together_join_while_they_fit(moe: Moe) -> None:
    """The prompts admitted at one step join it, oldest first, while their tokens fit
    its budget; one past it is prefilled apart (a shorter one after it may still join);
    a chunked prompt never joins, and nothing joins a step with no batch running."""
    from agent.serve.batching import Scheduler
    from agent.serve.decode import JOINING_TOKENS
    from agent.serve.engine import Engine
    from agent.serve.events import Request
    from agent.serve.stats import ServerStats

    chunk = JOINING_TOKENS  # a prompt up to a chunk is prefilled whole
    engine = Engine(
        moe.model,
        moe.tokenizer,
        Scheduler(8, 0.0),
        ServerStats(),
        set(),
        prefill_chunk_tokens=chunk,
    )

    def admitted(*lengths: int) -> list[Any]:
        keys = [engine.submit(Request((5,) * n, 4, engine.now()), lambda _: None) for n in lengths]
        return [(key, engine._queued[key]) for key in keys]

    half = JOINING_TOKENS // 2
    assert engine._joining_in_step(admitted(half, half)) == []  # no batch runs
    _, prefilled = engine._decoder.prefill(moe.encode(PROMPTS[0]))
    engine._decoder.join(0, prefilled)
    both = admitted(half, half)
    assert engine._joining_in_step(both) == both
    first, over, small = admitted(half, half + 1, 3)
    assert engine._joining_in_step([first, over, small]) == [first, small]
    long, short = admitted(chunk + 1, 3)  # over the chunk: prefilled a chunk at a time
    assert engine._joining_in_step([long, short]) == [short]
