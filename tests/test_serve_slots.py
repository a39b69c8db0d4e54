"""The serving loop of issue 18 on the demo architecture (tiny-moe, random weights): the
slot KV cache, grouped experts (fp32 and int8), chunked prefill, one wake-up per step,
and the GPU sizing rules (pure; the CUDA path itself runs in bench/gpu_check.sh)."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from agent.serve.decode import GREEDY, BatchDecoder, choose_tokens

LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]
PROMPTS = ["apple river", "stone", "the quick brown fox jumps", "river fox apple stone"]


@dataclass
class Moe:
    model: Any
    tokenizer: Any

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def greedy(self, ids: Sequence[int], n: int) -> list[int]:
        x = torch.tensor([list(ids)])
        with torch.inference_mode():
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False
            )
        return [int(t) for t in out[0, x.shape[1] :]]


@pytest.fixture(scope="module")
def moe() -> Iterator[Moe]:
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = train_tokenizer(LINES * 10, vocab_size=300)
    model: Any = build_model("tiny-moe", tok, seed=0)
    model.eval()
    model.generation_config.eos_token_id = None  # decode n tokens whatever they are
    yield Moe(model, tok)
    torch.set_num_threads(threads)


def decode_joining_and_leaving(
    moe: Moe, prompts: list[list[int]], n: int, in_step: bool = False
) -> dict[int, list[int]]:
    """Six requests join per step (prefilled together; `in_step`: in the decode step,
    once a batch runs); request 1 leaves after 5 tokens, so rows are freed and taken
    again while the others run."""
    decoder: BatchDecoder[int] = BatchDecoder(moe.model, rows=2)  # it must grow
    got: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    waiting = list(got)
    while waiting or len(decoder):
        joining, waiting = waiting[:6], waiting[6:]
        keys = decoder.keys
        feed = {i: got[i][-1] for i in keys}
        if in_step and keys and joining:
            logits = decoder.step_joining(feed, [(i, prompts[i]) for i in joining])
            keys += joining
        else:
            prefills = decoder.prefill_many([prompts[i] for i in joining]) if joining else []
            for i, (first, prefilled) in zip(joining, prefills, strict=True):
                got[i] += choose_tokens(first, [GREEDY])
                decoder.join(i, prefilled)
            keys = decoder.keys
            logits = decoder.step({i: got[i][-1] for i in keys})
        for i, token in zip(keys, choose_tokens(logits, [GREEDY] * len(keys)), strict=True):
            got[i].append(token)
        decoder.drop([i for i in decoder.keys if len(got[i]) >= (5 if i == 1 else n)])
    return got


@pytest.mark.parametrize("in_step", [False, True], ids=["prefilled", "joining-in-step"])
@pytest.mark.parametrize("weights", ["fp32", "int8 wo", "int8 dyn"])
def test_slots_and_grouped_experts_decode_as_generate(
    moe: Moe, weights: str, in_step: bool
) -> None:
    """With the server's experts (grouped matmuls; int8 grouped at batch >= experts/2),
    rows joining (prefilled, or in the decode step with a row per prompt token), leaving
    and reused each get `generate`'s greedy tokens."""
    from agent.serve.experts import select_experts

    model = copy.deepcopy(moe.model)
    if weights == "fp32":
        assert select_experts(model) == "grouped_mm"
    else:
        from agent.tasks.quantize_plan import quantize_model

        quantize_model(model, weight_only=weights == "int8 wo")
    case = Moe(model, moe.tokenizer)
    # 20 prompts of different lengths: up to 18 rows route 36 (token, expert) pairs per
    # step, past the 32 experts where int8 switches to its grouped forward.
    words = " ".join(PROMPTS).split()
    prompts = [case.encode(p) for p in PROMPTS]
    prompts += [case.encode(" ".join(words[i % 5 : i % 5 + 2 + i])) for i in range(16)]
    n = 8
    want = {i: case.greedy(p, n) for i, p in enumerate(prompts)}
    got = decode_joining_and_leaving(case, prompts, n, in_step)
    assert got[1] == want[1][:5]
    assert all(got[i] == want[i] for i in want if i != 1)


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


def test_the_cache_is_preallocated_and_rows_are_reused(moe: Moe) -> None:
    """Steps write in place (no buffer moves while the batch fits); a leaving sequence's
    row goes to the next one that joins."""
    decoder: BatchDecoder[str] = BatchDecoder(moe.model, rows=4)
    for key, prompt in zip("abc", PROMPTS, strict=False):
        _, prefilled = decoder.prefill(moe.encode(prompt))
        decoder.join(key, prefilled)
    buffer = decoder.cache.keys[0].data_ptr()
    for _ in range(5):
        decoder.step(dict.fromkeys(decoder.keys, 7))
    assert decoder.cache.keys[0].data_ptr() == buffer
    decoder.drop(["a"])
    assert sorted(decoder.keys) == ["b", "c"] and decoder.cache.rows == 4
    _, prefilled = decoder.prefill(moe.encode(PROMPTS[3]))
    decoder.join("d", prefilled)
    decoder.step(dict.fromkeys(decoder.keys, 7))
    assert decoder.cache.keys[0].data_ptr() == buffer
    lengths = decoder.cache.lengths[: len(decoder)].tolist()
    base = {k: len(moe.encode(p)) for k, p in zip("abcd", PROMPTS, strict=True)}
    assert dict(zip(decoder.keys, lengths, strict=True)) == {
        "b": base["b"] + 6,
        "c": base["c"] + 6,
        "d": base["d"] + 1,
    }


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


def test_int8_grouped_and_loop_forwards_agree(moe: Moe) -> None:
    from agent.ml.int8_experts import Int8Experts

    experts = moe.model.model.layers[0].mlp.experts
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, experts.gate_up_proj.shape[-1], generator=gen)
    index = torch.randint(0, 33, (40, 2), generator=gen)  # 32: the EP sentinel, skipped
    weights = torch.rand(40, 2, generator=gen)
    for weight_only in (True, False):
        q = Int8Experts.from_float(experts, weight_only=weight_only)
        grouped = q.grouped_forward(x, index, weights)
        assert torch.allclose(grouped, q.loop_forward(x, index, weights), atol=1e-5)
        assert torch.equal(q(x, index, weights), grouped)  # 80 pairs >= 32 experts


# --- the engine: chunked prefill -----------------------------------------------------------


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(moe: Moe) -> None:
    """While a long prompt fills (chunks of 4 tokens), a running request keeps getting a
    token per step; the long one then decodes as `generate` does."""
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.events import Done, Event, Failed, Request
    from agent.serve.stats import ServerStats

    engine = Engine(
        moe.model, moe.tokenizer, Scheduler(4, 0.0), ServerStats(), set(), prefill_chunk_tokens=4
    )
    log: list[tuple[str, Event]] = []
    done = {"short": threading.Event(), "long": threading.Event()}

    def sink(name: str) -> Any:
        def put(event: Event) -> None:
            log.append((name, event))
            if isinstance(event, Done):
                done[name].set()

        return put

    short_ids = moe.encode(PROMPTS[0])
    long_ids = moe.encode(" ".join(PROMPTS * 2))
    assert len(long_ids) > 16  # at least 5 chunks
    engine.start()
    try:
        engine.submit(Request(tuple(short_ids), 40, engine.now()), sink("short"))
        while not log:
            threading.Event().wait(0.001)
        engine.submit(Request(tuple(long_ids), 6, engine.now()), sink("long"))
        assert done["long"].wait(60) and done["short"].wait(60)
    finally:
        engine.stop()
    names = [name for name, _ in log]
    first_long = names.index("long")
    chunks = -(-len(long_ids) // 4)
    # The short request got a token at every step while the long prompt filled.
    assert names[:first_long].count("short") >= chunks
    long_tokens = [
        t for name, e in log if name == "long" and not isinstance(e, Failed) for t in e.token_ids
    ]
    assert long_tokens == moe.greedy(long_ids, 6)
    short_tokens = [
        t for name, e in log if name == "short" and not isinstance(e, Failed) for t in e.token_ids
    ]
    assert short_tokens == moe.greedy(short_ids, 40)


# --- events: one wake-up per step ----------------------------------------------------------


def test_events_posted_in_a_held_block_wake_the_loop_once_in_order() -> None:
    from agent.serve.events import Chunk, Done, Event, Request, Usage, held_wakeups, submit_to_queue

    class Counting(asyncio.SelectorEventLoop):
        wakeups = 0

        def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            Counting.wakeups += 1
            return super().call_soon_threadsafe(*args, **kwargs)

    class Engine:
        def __init__(self) -> None:
            self.sinks: list[Any] = []

        def submit(self, request: Request, sink: Any, *, ignore_eos: bool = False) -> int:
            self.sinks.append(sink)
            return len(self.sinks)

    usage = Usage(1, 3, 0.0, 0.0, "length")

    async def main() -> list[list[Event]]:
        engine = Engine()
        queues = [submit_to_queue(engine, Request((1,), 3, 0.0), False)[1] for _ in range(8)]

        def decode_thread() -> None:
            for step in range(3):
                with held_wakeups():
                    for sink in engine.sinks:
                        sink(Chunk(str(step), (step,)) if step < 2 else Done("", (2,), usage))

        await asyncio.to_thread(decode_thread)
        return [[await asyncio.wait_for(q.get(), 10) for _ in range(3)] for q in queues]

    loop = Counting()
    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
    for events in got:
        assert [getattr(e, "token_ids", None) for e in events] == [(0,), (1,), (2,)]
    # one per held block (3 steps), plus the to_thread's own hand-back
    assert Counting.wakeups <= 4


def test_the_fast_text_decoder_matches_the_tokenizer(moe: Moe) -> None:
    from agent.serve.text import text_decoder

    decode = text_decoder(moe.tokenizer)
    for ids in ([], [5], moe.encode(" ".join(PROMPTS)), list(range(0, 299, 7))):
        assert decode(ids) == moe.tokenizer.decode(ids, skip_special_tokens=True)


# --- the GPU's rules (pure) ----------------------------------------------------------------


def test_decode_buckets_and_the_max_batch_from_free_memory() -> None:
    from agent.serve.cuda_graphs import bucket_for, buckets_for, max_batch_for_memory

    assert buckets_for(48) == [48, 32, 16, 8, 4, 2, 1]
    assert buckets_for(1) == [1]
    assert [bucket_for(n, buckets_for(48)) for n in (1, 3, 17, 33, 48, 49)] == [
        1,
        4,
        32,
        48,
        48,
        None,
    ]
    gib = 1 << 30
    assert max_batch_for_memory(80 * gib, 1 << 20) == 256  # plenty: the top of the range
    assert max_batch_for_memory(1 * gib, 64 << 20) == 64  # scarce: still the floor
    assert max_batch_for_memory(40 * gib, 200 << 20) == 102  # half of 40 GiB / 200 MiB


def test_kv_bytes_per_token_of_the_demo_model(moe: Moe) -> None:
    from agent.serve.cuda_graphs import kv_bytes_per_token

    config = moe.model.config
    per_layer = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    assert kv_bytes_per_token(moe.model) == config.num_hidden_layers * per_layer * 4


def test_the_max_batch_is_the_operators_else_the_cpu_default(moe: Moe) -> None:
    from agent.serve.loading import DEFAULT_MAX_BATCH_SIZE, max_batch_size_for

    assert max_batch_size_for(moe.model, 5) == 5
    assert max_batch_size_for(moe.model, None) == DEFAULT_MAX_BATCH_SIZE  # no GPU here
