"""The serving loop of issue 18 on the demo architecture (tiny-moe, random weights): the
slot KV cache, grouped experts (fp32 and int8), chunked prefill, one wake-up per step,
and the GPU sizing rules (pure; the CUDA path itself runs in bench/gpu_check.sh)."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest
import torch

from agent.serve.decode import BatchDecoder
from tests.serve_moe import PROMPTS, Moe, assert_decodes_as_generate


@pytest.mark.parametrize("in_step", [False, True], ids=["prefilled", "joining-in-step"])
@pytest.mark.parametrize("weights", ["fp32", "int8 wo", "int8 dyn"])
def test_slots_and_grouped_experts_decode_as_generate(
    moe: Moe, weights: str, in_step: bool
) -> None:
    """With the server's experts (grouped matmuls; int8 grouped at batch >= experts/2),
    rows joining (prefilled, or in the decode step as a ragged sequence), leaving
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
    assert_decodes_as_generate(case, prompts, 8, in_step)


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
