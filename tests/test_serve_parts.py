"""The inference server's pure parts: the batch scheduler, text streaming, the stats
window and where a prompt is tokenized (agent.serve.batching, text, stats, rpc), without a
model or a server."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent.serve.batching import Scheduler
from agent.serve.stats import ServerStats
from agent.serve.text import TextStream

# --- the scheduler (pure) -------------------------------------------------------------


def test_idle_queue_waits_for_the_delay_window() -> None:
    s: Scheduler[str] = Scheduler(max_batch_size=4, max_queue_delay_s=0.010)
    s.submit("a", now=0.0)
    assert s.wake_at() == pytest.approx(0.010)
    assert not s.plan(now=0.005)
    s.submit("b", now=0.006)
    assert s.plan(now=0.009).admitted == []
    assert s.plan(now=0.010).admitted == ["a", "b"]  # the oldest request's window closed
    assert s.running == ["a", "b"] and s.queue_depth == 0
    assert s.wake_at() is None


def test_under_load_a_drained_batch_admits_at_once_and_a_pause_brings_the_window_back() -> None:
    s: Scheduler[str] = Scheduler(max_batch_size=4, max_queue_delay_s=0.010)
    s.submit("a", now=0.0)
    assert not s.plan(now=0.005)  # a burst after a pause: held
    assert s.plan(now=0.010).admitted == ["a"]
    assert not s.plan(now=0.014)  # a's step; the last one before it ends
    s.finish("a")
    s.submit("b", now=0.020)  # 6 ms after that step: a client coming back
    assert s.wake_at() == pytest.approx(0.020)
    assert s.plan(now=0.020).admitted == ["b"]
    s.finish("b")
    s.submit("c", now=0.5)  # after a pause: a new burst, held for the window again
    assert s.wake_at() == pytest.approx(0.51)
    assert s.plan(now=0.505).admitted == []
    assert s.plan(now=0.51).admitted == ["c"]


def test_a_full_batch_does_not_wait() -> None:
    s: Scheduler[str] = Scheduler(max_batch_size=2, max_queue_delay_s=10.0)
    s.submit("a", now=0.0)
    s.submit("b", now=0.0)
    s.submit("c", now=0.0)
    assert s.wake_at() == 0.0
    assert s.plan(now=0.0).admitted == ["a", "b"]  # max batch size
    assert s.queue_depth == 1
    assert s.plan(now=50.0).admitted == []  # no free place
    s.finish("a")
    assert s.plan(now=50.0).admitted == ["c"]
    assert s.running == ["b", "c"]


def test_a_request_joins_the_running_batch_at_the_next_step() -> None:
    s: Scheduler[str] = Scheduler(max_batch_size=4, max_queue_delay_s=1.0)
    s.submit("a", now=0.0)
    s.plan(now=1.0)
    s.submit("b", now=5.0)
    assert s.plan(now=5.0).admitted == ["b"]  # no window while a batch runs
    assert s.running == ["a", "b"]


def test_cancel_frees_the_place_at_the_next_step() -> None:
    s: Scheduler[str] = Scheduler(max_batch_size=1, max_queue_delay_s=0.0)
    s.submit("a", now=0.0)
    assert s.plan(now=0.0).admitted == ["a"]
    s.submit("b", now=0.1)
    s.submit("c", now=0.2)
    assert s.cancel("c") and s.queue_depth == 1  # a queued request goes at once
    assert s.cancel("a")
    assert s.running == ["a"]  # still in the batch until the step boundary
    plan = s.plan(now=0.3)
    assert (plan.evicted, plan.admitted) == (["a"], ["b"])
    assert not s.cancel("a") and not s.cancel("zzz")
    s.finish("b")
    assert s.running == [] and not s.plan(now=1.0)


def test_scheduler_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        Scheduler(max_batch_size=0, max_queue_delay_s=0.0)
    s: Scheduler[str] = Scheduler(max_batch_size=1, max_queue_delay_s=0.0)
    s.submit("a", now=0.0)
    with pytest.raises(KeyError):
        s.submit("a", now=0.0)


# --- text streaming and stats (pure) ----------------------------------------------------


def byte_decode(ids: Sequence[int]) -> str:
    """A fake tokenizer: each id is one byte of UTF-8."""
    return bytes(ids).decode("utf-8", errors="replace")


def stream_all(text: str, stop: Sequence[str]) -> tuple[list[str], TextStream]:
    stream = TextStream(byte_decode, list(b"prompt"), stop)
    pieces = [stream.push([b]) for b in text.encode()]
    pieces.append(stream.finish())
    return pieces, stream


def test_text_waits_for_whole_characters() -> None:
    pieces, stream = stream_all("a\u00e9b\u20ac", stop=[])
    assert "".join(pieces) == "a\u00e9b\u20ac" == stream.text
    assert "\ufffd" not in "".join(pieces)


def test_text_ends_with_a_partial_character_as_decoding_gives_it() -> None:
    stream = TextStream(byte_decode, [], [])
    assert stream.push(list(b"a")) + stream.push(["\u00e9".encode()[0]]) == "a"
    assert stream.finish() == "\ufffd" and stream.text == byte_decode([*b"a", 0xC3])


def test_text_is_cut_before_a_stop_string_spread_over_tokens() -> None:
    pieces, stream = stream_all("one two END three", stop=["END", "zz"])
    assert "".join(pieces) == "one two "
    assert stream.stopped
    # A tail that might begin a stop string is held back, then released when it cannot.
    pieces, stream = stream_all("one EN two", stop=["END"])
    assert "".join(pieces) == "one EN two" and not stream.stopped
    held = TextStream(byte_decode, [], ["END"])
    assert held.push(list(b"xE")) == "x"
    assert held.push(list(b"N")) == ""
    assert held.push(list(b"d")) == "ENd"


def test_the_tokenizers_stream_decoder_emits_what_the_python_scheme_does() -> None:
    """A fast tokenizer's streams run tokenizers' DecodeStream: token by token, the same
    pieces as the Python offsets scheme, on a byte-level BPE whose tokens split multibyte
    characters (random ids: partial characters, special tokens, a partial end), with and
    without stop strings."""
    import random

    from agent.ml.conversations import train_tokenizer
    from agent.serve.text import stream_decoder, text_decoder

    texts = [
        "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \u30c6\u30ad\u30b9\u30c8 \U0001f642\U0001f680 ok"
    ] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    decode, stream_of = text_decoder(tokenizer), stream_decoder(tokenizer)
    assert stream_of is not None
    vocab = len(tokenizer)
    rng = random.Random(0)
    for case in range(300):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(8))]
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 24))]
        if case % 3 == 0:  # words the tokenizer made: whole characters across tokens
            ids = tokenizer(texts[0])["input_ids"][: len(ids)]
        stop = ["\u672c", "ok"] if case % 2 else []
        python, rust = TextStream(decode, prompt, stop), TextStream(decode, prompt, stop, stream_of)
        pieces = [[s.push([i]) for i in ids] + [s.finish()] for s in (python, rust)]
        assert pieces[0] == pieces[1], (prompt, ids)


def test_stats_rates_over_the_window_and_batch_histogram() -> None:
    now = [100.0]
    stats = ServerStats(window_s=10.0, clock=lambda: now[0])
    now[0] = 120.0
    stats.request_received()
    stats.request_received()
    stats.request_failed()
    stats.step(3, tokens=30)
    stats.step(3, tokens=30)
    stats.step(1, tokens=10)
    stats.request_completed()
    snap = stats.snapshot()
    assert (snap.requests_total, snap.errors_total) == (2, 1)
    assert snap.tokens_per_s == pytest.approx(7.0) and snap.requests_per_s == pytest.approx(0.1)
    assert snap.batch_size_histogram == {3: 2, 1: 1}
    now[0] = 131.0
    assert stats.snapshot().tokens_per_s == 0.0


# --- tokenizing a prompt ---------------------------------------------------------------


def test_a_short_prompt_is_tokenized_on_the_loop_and_a_long_one_in_a_worker_thread() -> None:
    import asyncio
    import threading

    from agent.serve.rpc import INLINE_ENCODE_CHARS, Backend

    threads: list[int] = []

    def encode(prompt: str) -> list[int]:
        threads.append(threading.get_ident())
        return [len(prompt)]

    backend = Backend(engine=None, encode=encode, context_tokens=64)  # type: ignore[arg-type]

    async def both() -> tuple[Sequence[int], Sequence[int], int]:
        short = await backend.tokens("x" * INLINE_ENCODE_CHARS)
        long = await backend.tokens("x" * (INLINE_ENCODE_CHARS + 1))
        return short, long, threading.get_ident()

    short, long, loop_thread = asyncio.run(both())
    assert (short, long) == ([INLINE_ENCODE_CHARS], [INLINE_ENCODE_CHARS + 1])
    assert threads[0] == loop_thread and threads[1] != loop_thread
