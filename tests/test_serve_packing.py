"""Packed prefill (agent/serve/packing.py): prompts packed several to a row give each
prompt what a forward of it alone gives, on every built-in architecture and both mask
kinds, and the packing itself is first-fit decreasing within the longest prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from agent.serve import decode
from agent.serve.decode import BatchDecoder
from agent.serve.packing import pack, pack_rows

LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]


def test_rows_are_filled_longest_first_and_never_overflow() -> None:
    lengths = [5, 9, 2, 4, 9, 1, 3]
    rows = pack_rows(lengths, 9)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 9 for row in rows)
    assert rows == [[1], [4], [0, 3], [6, 2, 5]]  # 31 tokens in 4 rows of 9, not 7
    with pytest.raises(ValueError, match="1 to 9 tokens"):
        pack_rows([3, 10], 9)


def test_each_prompt_attends_only_to_itself_from_position_zero() -> None:
    packed = pack([[7, 8, 9], [4, 5], [6]])
    assert packed.rows == 2  # [7 8 9] alone, then [4 5][6] in one row
    row, start, end = packed.spans[1]
    assert (row, start, end) == (1, 0, 2)
    assert packed.spans[2] == (1, 2, 3)
    assert packed.ids[1].tolist() == [4, 5, 6]
    assert packed.positions[1].tolist() == [0, 1, 0]
    mask = packed.mask[1, 0].int().tolist()
    assert mask == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]  # the third token sees only itself
    assert packed.last_columns() == [1, 2]  # where [4 5] ends, where [7 8 9] and [6] end


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from agent.ml.data import train_tokenizer

    return train_tokenizer(LINES * 10, vocab_size=300)


@pytest.mark.parametrize(
    ("name", "attention"),
    [
        ("tiny-moe", "sdpa"),
        ("tiny-moe", "eager"),
        ("tiny-dense", "sdpa"),
        ("tiny-deepseek", "sdpa"),
    ],
)
def test_packed_prefill_gives_each_prompt_its_own_logits_and_cache(
    tokenizer: Any, name: str, attention: str
) -> None:
    from agent.ml.models import build_model

    model: Any = build_model(name, tokenizer, seed=0)
    model.set_attn_implementation(attention)
    model.eval()
    prompts = [
        list(tokenizer(" ".join(LINES[: 1 + i % 4]) * (1 + i // 4))["input_ids"]) for i in range(9)
    ]
    assert len({len(p) for p in prompts}) > 3
    decoder: BatchDecoder[int] = BatchDecoder(model)
    together = decoder.prefill_many(prompts)
    for prompt, (logits, prefilled) in zip(prompts, together, strict=True):
        alone, want = decoder.prefill(prompt)
        assert prefilled.length == want.length == len(prompt)
        assert torch.allclose(logits, alone, atol=1e-5, rtol=1e-4)
        for got_k, want_k in zip(
            prefilled.keys + prefilled.values, want.keys + want.values, strict=True
        ):
            assert got_k.shape == want_k.shape
            assert torch.allclose(got_k, want_k, atol=1e-5, rtol=1e-4)


def test_a_join_whose_logits_would_be_too_large_is_packed_in_halves(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.ml.models import build_model

    model: Any = build_model("tiny-moe", tokenizer, seed=0)
    model.eval()
    prompts = [list(tokenizer(line * (1 + i))["input_ids"]) for i, line in enumerate(LINES)]
    decoder: BatchDecoder[int] = BatchDecoder(model)
    forwards: list[int] = []
    real_forward = model.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        forwards.append(int(kwargs["input_ids"].shape[0]))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    whole = decoder.prefill_many(prompts)
    assert len(forwards) == 1
    monkeypatch.setattr(decode, "PACKED_LOGITS_LIMIT", 2 * len(tokenizer))  # two logit rows
    forwards.clear()
    split = decoder.prefill_many(prompts)
    assert len(forwards) > 1
    for (a, pa), (b, pb) in zip(whole, split, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        assert pa.length == pb.length


def test_an_idle_engine_prefills_what_waits_while_its_window_holds_the_queue(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests waiting out an idle engine's delay window are prefilled as they arrive,
    not all at the window's end; one cancelled meanwhile never runs, and the others
    decode as `generate` does."""
    import threading

    from agent.ml.models import build_model
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.events import Done, Event, Failed, Request
    from agent.serve.stats import ServerStats

    model: Any = build_model("tiny-moe", tokenizer, seed=0)
    model.eval()
    model.generation_config.eos_token_id = None
    engine = Engine(model, tokenizer, Scheduler(8, 2.0), ServerStats(), set())
    prefilled: list[int] = []  # the prompt lengths of each prefill forward, in order
    real = engine._decoder.prefill_many

    def recording(prompts: Any) -> Any:
        prefilled.extend(len(p) for p in prompts)
        prefilled.append(0)  # one forward
        return real(prompts)

    monkeypatch.setattr(engine._decoder, "prefill_many", recording)
    prompts = {
        name: list(tokenizer(line)["input_ids"])
        for name, line in zip("acb", LINES[:3], strict=True)
    }
    events: dict[str, list[Event]] = {name: [] for name in prompts}
    ended = {name: threading.Event() for name in prompts}

    def sink(name: str) -> Any:
        def put(event: Event) -> None:
            events[name].append(event)
            if isinstance(event, Done):
                ended[name].set()

        return put

    def prefills_done(n: int) -> None:
        for _ in range(6000):
            if prefilled.count(0) >= n:
                return
            threading.Event().wait(0.005)
        raise AssertionError(f"{n} prefill forwards expected while the window is open")

    engine.start()
    try:
        keys = {}
        for n, name in enumerate("acb", start=1):
            keys[name] = engine.submit(Request(tuple(prompts[name]), 5, engine.now()), sink(name))
            prefills_done(n)
            if name == "c":
                engine.cancel(keys["c"])
        assert not any(events.values()), "the window (2 s) closed before the last arrival"
        assert ended["a"].wait(60) and ended["b"].wait(60)
    finally:
        engine.stop()
    # One forward per arrival during the window, none at admission.
    assert prefilled == [len(prompts["a"]), 0, len(prompts["c"]), 0, len(prompts["b"]), 0]
    assert events["c"] == []
    assert engine._early == {}  # the cancelled one's prefill is not kept
    for name in "ab":
        x = torch.tensor([prompts[name]])
        want = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False
        )
        got = [t for e in events[name] if not isinstance(e, Failed) for t in e.token_ids]
        assert got == want[0, x.shape[1] :].tolist()
