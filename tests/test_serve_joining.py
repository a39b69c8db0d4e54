"""Prompts joining a running batch inside its decode step (BatchDecoder.step_joining, a
row per prompt token): as `generate` on every built-in layout, within the step's token
and memory budgets, and chosen by the engine for short prompts only."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agent.serve.decode import BatchDecoder
from tests.serve_moe import PROMPTS, Moe, decode_joining_and_leaving


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
    want = {i: case.greedy(p, 6) for i, p in enumerate(prompts)}
    got = decode_joining_and_leaving(case, prompts, 6, in_step=True)
    assert got[1] == want[1][:5]
    assert all(got[i] == want[i] for i in want if i != 1)


def test_prompts_join_the_step_within_its_token_and_memory_budgets(
    moe: Moe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step takes joining prompts up to JOINING_TOKENS in all, only beside a running
    batch, and only while the rows the cache grows beyond the batch's own would hold at
    most JOINING_CACHE_BYTES at the model's full context."""
    import agent.serve.decode as decode
    from agent.serve.cuda_graphs import context_length, kv_bytes_per_token

    decoder: BatchDecoder[str] = BatchDecoder(moe.model, rows=4)
    assert not decoder.can_join_in_step(1)  # nothing runs: the prompt is prefilled
    _, prefilled = decoder.prefill(moe.encode(PROMPTS[0]))
    decoder.join("a", prefilled)
    assert decoder.can_join_in_step(decode.JOINING_TOKENS)
    assert not decoder.can_join_in_step(decode.JOINING_TOKENS + 1)
    monkeypatch.setattr(decode, "JOINING_CACHE_BYTES", 0)
    assert decoder.can_join_in_step(3)  # 1 + 3 rows: within the batch's 4
    assert not decoder.can_join_in_step(4)  # 4 rows more
    row = decoder.cache.bytes_per_position() * context_length(moe.model)
    assert row == kv_bytes_per_token(moe.model) * context_length(moe.model)
    monkeypatch.setattr(decode, "JOINING_CACHE_BYTES", 4 * row)
    assert decoder.can_join_in_step(7)  # 8 rows: 4 more
    assert not decoder.can_join_in_step(8)  # 16 rows: 12 more
    ids = moe.encode(PROMPTS[2])
    logits = decoder.step_joining({"a": 7}, [("b", ids)])
    assert logits.shape[0] == 2 and decoder.keys == ["a", "b"]
    assert decoder.cache.lengths[:2].tolist() == [len(moe.encode(PROMPTS[0])) + 1, len(ids)]
    with pytest.raises(KeyError):
        decoder.step_joining({"a": 7, "b": 7}, [("b", ids)])


def test_a_short_prompt_joins_the_running_step_a_long_one_is_prefilled(moe: Moe) -> None:
    """The engine puts a short prompt admitted beside a running request into the decode
    step, prefills one past the step's budget apart, and all decode as `generate`."""
    from agent.serve.batching import Scheduler
    from agent.serve.decode import JOINING_TOKENS
    from agent.serve.engine import Engine
    from agent.serve.events import Done, Event, Request
    from agent.serve.stats import ServerStats

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
    assert len(prompts["short"]) <= JOINING_TOKENS < len(prompts["long"])
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


def test_the_short_prompts_admitted_together_join_all_or_none(moe: Moe) -> None:
    """All the short prompts admitted at one step join it if their tokens fit its budget;
    past it none does (they are prefilled together, packed, where a prompt joined beside
    them would cost more than packed with them); a chunked prompt never joins, and
    nothing joins a step with no batch running."""
    from agent.serve.batching import Scheduler
    from agent.serve.decode import JOINING_TOKENS
    from agent.serve.engine import Engine
    from agent.serve.events import Request
    from agent.serve.stats import ServerStats

    engine = Engine(
        moe.model, moe.tokenizer, Scheduler(8, 0.0), ServerStats(), set(), prefill_chunk_tokens=24
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
    assert engine._joining_in_step(admitted(half, half + 1)) == []
    long, short = admitted(25, 3)  # 25: over the 24-token chunk
    assert engine._joining_in_step([long, short]) == [short]
