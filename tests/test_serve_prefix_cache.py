"""The serving loop's prefix cache (agent/serve/prefix_cache.py): token blocks matched
exactly and whole, a prompt's last token always run, least recently used blocks evicted
leaves first within its bytes; prompts joining from cached blocks decode as `generate`
(fp32 and int8), and each request's usage says how many of its prompt tokens were found."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.serve.prefix_cache import Match, PrefixCache
from tests.serve_moe import PROMPTS, Moe, assert_decodes_as_generate

LAYERS, HEADS, DIM = 2, 3, 4


def positions_kv(tokens: list[int]) -> Any:
    """kv_of for `tokens`: each position's keys and values hold its token (to check which
    positions a match returns)."""

    def kv(start: int, end: int) -> torch.Tensor:
        values = torch.tensor(tokens[start:end], dtype=torch.float32)
        return values.view(1, 1, 1, -1, 1).expand(LAYERS, 2, HEADS, -1, DIM).clone()

    return kv


class CountingCache(PrefixCache):
    """A prefix cache that counts the tokens its matches found."""

    found = 0

    def match(self, prompt: Sequence[int]) -> Match:
        found = super().match(prompt)
        self.found += found.tokens
        return found


def block_bytes(size: int) -> int:
    return LAYERS * 2 * HEADS * size * DIM * 4


def test_a_match_is_whole_blocks_from_the_start_leaving_the_last_token() -> None:
    cache = PrefixCache(1 << 20, block_tokens=4)
    tokens = list(range(10, 22))  # 12 tokens: 3 blocks
    cache.insert(tokens, positions_kv(tokens))
    assert len(cache) == 3 and cache.bytes == 3 * block_bytes(4)
    whole = cache.match(tokens)  # the last token must run: 2 blocks, not 3
    assert whole.tokens == 8 and whole.kv is not None
    assert whole.kv[1, 1, 2, :, 0].tolist() == tokens[:8]  # positions in order
    assert cache.match([*tokens, 99]).tokens == 12
    assert cache.match([*tokens[:6], 0, 0, 0]).tokens == 4  # the second block differs
    assert cache.match(tokens[:4]).tokens == 0  # a 4-token prompt keeps its last to run
    assert cache.match([5, *tokens]).tokens == 0  # the same tokens shifted: no match
    # peek says what match would find, and leaves the blocks' order alone
    assert [cache.peek(p) for p in (tokens, [*tokens, 99], tokens[:4])] == [8, 12, 0]


def test_a_block_matches_only_after_the_same_blocks() -> None:
    """Keys chain each block to its parent: equal blocks after different starts differ."""
    cache = PrefixCache(1 << 20, block_tokens=2)
    first, second = [1, 2, 3, 4, 5], [9, 9, 3, 4, 5]
    cache.insert(first, positions_kv(first))
    assert cache.match(second).tokens == 0
    cache.insert(second, positions_kv(second))
    match = cache.match(second)
    assert match.tokens == 4 and match.kv is not None
    assert match.kv[0, 0, 0, :, 0].tolist() == [9, 9, 3, 4]


def test_insert_reads_only_the_new_blocks() -> None:
    cache = PrefixCache(1 << 20, block_tokens=2)
    asked: list[tuple[int, int]] = []
    tokens = [1, 2, 3, 4, 5, 6, 7]

    def kv(start: int, end: int) -> torch.Tensor:
        asked.append((start, end))
        kv: torch.Tensor = positions_kv(tokens)(start, end)
        return kv

    cache.insert(tokens[:4], kv)
    cache.insert(tokens, kv)  # blocks 1-2 are there; 3 is new; the odd token is no block
    cache.insert(tokens, kv)
    assert asked == [(0, 4), (4, 6)] and len(cache) == 3


def test_eviction_keeps_the_bytes_and_takes_leaves_first() -> None:
    """Over its bytes, the least recently used blocks go; a chain's start is never older
    than its end, so a shared start outlives the branches under it."""
    cache = PrefixCache(3 * block_bytes(2), block_tokens=2)
    shared = [1, 2, 3, 4]
    a, b = [*shared, 10, 11, 0], [*shared, 20, 21, 0]
    cache.insert(a[:6], positions_kv(a))  # 3 blocks: full
    cache.insert(b[:6], positions_kv(b))  # a 4th: a's last block goes, not the shared ones
    assert cache.bytes <= cache.capacity_bytes and len(cache) == 3
    assert cache.match(b).tokens == 6
    assert cache.match(a).tokens == 4
    assert PrefixCache(0).match(a).tokens == 0
    empty = PrefixCache(0, block_tokens=2)
    empty.insert(a, positions_kv(a))
    assert len(empty) == 0 and empty.bytes == 0
    with pytest.raises(ValueError):
        PrefixCache(1, block_tokens=0)


@pytest.mark.parametrize("weights", ["fp32", "int8 wo"])
def test_prompts_joining_from_cached_blocks_decode_as_generate(moe: Moe, weights: str) -> None:
    """Prompts sharing a long start, and repeats, join the step from the blocks earlier
    joins left: each request still gets `generate`'s greedy tokens."""
    model = copy.deepcopy(moe.model)
    if weights != "fp32":
        from agent.tasks.quantize_plan import quantize_model

        quantize_model(model, weight_only=True)
    case = Moe(model, moe.tokenizer)
    start = " ".join(PROMPTS * 2)
    prompts = [case.encode(f"{start} {p}") for p in PROMPTS * 5]
    assert min(map(len, prompts)) > 16
    cache = CountingCache(1 << 24)
    assert_decodes_as_generate(case, prompts, 6, in_step=True, prefix_cache=cache)
    assert cache.found >= 12 * 16  # the third step's six prompts and later found blocks


def cached_engine(moe: Moe, **settings: Any) -> Any:
    from agent.serve.batching import Scheduler
    from agent.serve.engine import Engine
    from agent.serve.engine_wire import FigureRecorder

    engine = Engine(
        moe.model,
        moe.tokenizer,
        Scheduler(4, 0.0),
        FigureRecorder(),
        eos_token_ids=(),
        prefix_cache_bytes=1 << 24,
        **settings,
    )
    engine.warm_up()
    engine.start()
    return engine


def run_together(
    engine: Any, prompts: list[list[int]], max_tokens: int
) -> list[tuple[list[int], Any]]:
    """Requests submitted at once: each one's tokens and usage, once all are done."""
    from agent.serve.events import Done, Event, Request

    outs: list[list[Event]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def sink_of(out: list[Event]) -> Any:
        def sink(event: Event) -> None:
            out.append(event)
            if isinstance(event, Done):
                done.release()

        return sink

    for prompt, out in zip(prompts, outs, strict=True):
        engine.submit(Request(tuple(prompt), max_tokens, engine.now()), sink_of(out))
    for _ in prompts:
        assert done.acquire(timeout=60)
    results = []
    for out in outs:
        assert isinstance(out[-1], Done)
        results.append(([t for e in out for t in getattr(e, "token_ids", ())], out[-1].usage))
    return results


def run(engine: Any, prompt: list[int], max_tokens: int) -> tuple[list[int], Any]:
    """A request's tokens and usage, once it is done."""
    [result] = run_together(engine, [prompt], max_tokens)
    return result


def keep_a_batch_running(engine: Any, moe: Moe) -> int:
    """A request that runs (until cancelled), so that prompts join its steps."""
    from agent.serve.events import Event, Request

    def ignore(event: Event) -> None:
        pass

    return int(engine.submit(Request(tuple(moe.encode(PROMPTS[1])), 900, engine.now()), ignore))


def test_the_engine_reports_cached_prompt_tokens_and_keeps_finished_turns(moe: Moe) -> None:
    """A prompt joining a running batch after another with the same start finds its
    blocks (its usage says how many); so does a next turn that repeats a finished
    conversation, reply included."""
    engine = cached_engine(moe)
    try:
        background = keep_a_batch_running(engine, moe)
        prompt = moe.encode(" ".join(PROMPTS * 3))
        first, usage = run(engine, prompt, 4)
        assert usage.cached_prompt_tokens == 0
        again, usage = run(engine, prompt, 4)
        assert again == first == moe.greedy(prompt, 4)
        assert usage.cached_prompt_tokens == (len(prompt) - 1) // 8 * 8 > 0
        turn = prompt + first + moe.encode(PROMPTS[0])  # the conversation's next turn
        ids, usage = run(engine, turn, 3)
        assert ids == moe.greedy(turn, 3)
        assert usage.cached_prompt_tokens == (len(prompt) + len(first) - 1) // 8 * 8
        # A conversation past the step's budget (512 tokens) is prefilled in chunks (after
        # the start it shares with the prompts above); its next turn runs only what is
        # new, so it joins the step.
        long = moe.encode(" ".join(PROMPTS * 40))
        assert 600 < len(long) < 900
        reply, usage = run(engine, long, 3)
        assert 0 < usage.cached_prompt_tokens < len(prompt) and reply == moe.greedy(long, 3)
        turn = long + reply + moe.encode(PROMPTS[2])
        ids, usage = run(engine, turn, 3)
        assert ids == moe.greedy(turn, 3)
        assert usage.cached_prompt_tokens == (len(long) + len(reply) - 1) // 8 * 8
        engine.cancel(background)
    finally:
        engine.stop()


@pytest.mark.parametrize("chunk", [16, None])
@pytest.mark.parametrize("batch", ["idle", "running"])
def test_a_prompt_prefilled_apart_starts_from_its_cached_start(
    moe: Moe, batch: str, chunk: int | None
) -> None:
    """A prompt prefilled apart from the step, in chunks (its new part longer than a
    chunk) or alone (on an idle engine), starts after the blocks the prefix cache has of
    it (a shared system prompt, a document asked about again), and leaves its own as it
    joins the batch (or, its first token its last, as it ends). Replies stay
    `generate`'s."""
    engine = cached_engine(moe, **({} if chunk is None else {"prefill_chunk_tokens": chunk}))
    try:
        background = keep_a_batch_running(engine, moe) if batch == "running" else None
        system = moe.encode(" ".join(PROMPTS * 3))
        assert len(system) > 40
        first, usage = run(engine, system, 1)  # one token: kept, though it never joins
        assert usage.cached_prompt_tokens == 0 and first == moe.greedy(system, 1)
        again, usage = run(engine, system, 1)
        assert again == first and usage.cached_prompt_tokens == (len(system) - 1) // 8 * 8
        for question in PROMPTS[2:]:
            prompt = system + moe.encode(" ".join([question] * 6))
            assert len(prompt) - len(system) > 16  # more new tokens than a chunk
            ids, usage = run(engine, prompt, 4)
            assert ids == moe.greedy(prompt, 4)
            assert usage.cached_prompt_tokens >= len(system) // 8 * 8
        if chunk is None:  # two admitted together on an idle engine are prefilled packed
            return
        # Two admitted together: the second's chunks start when the first's are done, from
        # the blocks the first left.
        prompt = moe.encode(" ".join(reversed(PROMPTS * 8)))
        (first, one), (second, other) = run_together(engine, [prompt, prompt], 3)
        assert first == second == moe.greedy(prompt, 3)
        assert one.cached_prompt_tokens == 0
        assert other.cached_prompt_tokens == (len(prompt) - 1) // 8 * 8
        if background is not None:
            engine.cancel(background)
    finally:
        engine.stop()


def test_the_flag_is_on_by_default_and_refuses_a_negative_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.serve.flags import DEFAULT_PREFIX_CACHE_MB, parse_args

    (tmp_path / "config.json").write_text("{}")
    token = tmp_path / "token"
    token.write_text("t" * 32)
    argv = ["--model", str(tmp_path), "--token-file", str(token)]
    assert parse_args(argv).prefix_cache_mb == DEFAULT_PREFIX_CACHE_MB > 0
    assert parse_args([*argv, "--prefix-cache-mb", "0"]).prefix_cache_mb == 0
    with pytest.raises(SystemExit) as exited:
        parse_args([*argv, "--prefix-cache-mb", "-1"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: --prefix-cache-mb must not be negative (0 turns it off)")


def test_the_tasks_screen_shows_the_servers_prefix_cache_hit_rate() -> None:
    from gantry.v1 import inference_service_pb2 as pb

    from console.net.serve_client import ServerView
    from console.ui.screens.tasks import serve_detail

    stats = pb.GetServerStatsResponse(max_batch_size=8)
    view = ServerView("127.0.0.1:9000", "SERVING", stats)
    assert "prefix cache" not in serve_detail(view)  # no request completed yet
    stats.prompt_tokens_total, stats.cached_prompt_tokens_total = 2400, 1968
    assert "prefix cache 82% of prompt tokens found (1,968 of 2,400)" in serve_detail(view)


def test_gantry_serve_passes_the_size_to_the_agents_server(tmp_path: Path) -> None:
    from agent.tasks.programs import serve_command
    from console.model.serve_form import ServeFormError, ServeSettings
    from console.net.tasks_client import serve_request

    def argv(**kw: Any) -> list[str]:
        return serve_command(serve_request(ServeSettings(str(tmp_path), **kw)).serve, tmp_path)

    assert "--prefix-cache-mb" not in argv()  # the server's default
    off = argv(prefix_cache_mb=0)
    assert off[off.index("--prefix-cache-mb") + 1] == "0"
    with pytest.raises(ServeFormError) as refused:
        argv(prefix_cache_mb=-1)
    assert refused.value.as_flag() == "--prefix-cache-mb -1: give 0 (off) or more"
