"""The inference server's decode loop: one worker thread runs the model.

Each iteration asks the `Scheduler` what changes (requests joining, cancelled ones
leaving), prefills the joining requests together, then runs one decode step for the
whole running batch (`BatchDecoder`). Prompts joining a running batch go into its decode
step instead, as one ragged sequence (`step_joining`, up to JOINING_TOKENS in all): on a
small model each forward costs mostly a fixed time whatever it holds, and under steady
load about one request joins per step, so a separate prefill was a second forward per
step (the decode loop alone at concurrency 32 on the demo model and one core: 13,200-
13,750 -> 13,900-14,400 tokens/s). Such a prompt starts from the blocks of it found in
the prefix cache (agent/serve/prefix_cache.py, `prefix_cache_bytes`, 0: none), which
keeps each joining prompt and each finished sequence. While an idle engine holds its
queue for the delay window (to start a burst as one batch), it prefills the requests
already waiting. A prompt longer than `prefill_chunk_tokens` is prefilled one chunk per
iteration instead, the oldest first, so that the running sequences keep getting a token
every iteration while it fills. Every token is handed to its request's sink as an
event, from this thread: the sink must be thread-safe (the server posts it to its event
loop). A request ends at its end-of-text token (unless it ignores it: load tests that
must decode `max_tokens` every time), at `max_tokens`, at a stop string, or when
cancelled; its place is free from the next step on.

`stream_interval` N > 1: a request's first token is sent at once, then its tokens go out
N at a time, the rest with its end (SGLang's `--stream-interval`): less work per token
for the server's front end and the client, where that is what limits a batched server."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

import torch

from agent.serve.batching import Plan, Scheduler
from agent.serve.decode import BatchDecoder
from agent.serve.events import Chunk, Done, Event, Failed, Request, Sink, held_wakeups
from agent.serve.prefilled import Prefilled, Prefilling
from agent.serve.prefix_cache import PrefixCache
from agent.serve.sampling import GREEDY, Sampling, choose_tokens
from agent.serve.sequence import Sequence, usage
from agent.serve.stats import StepRecorder
from agent.serve.text import TextStream, stream_decoder, text_decoder

log = logging.getLogger("gantry.serve")

# Longer prompts are prefilled in chunks of this many tokens, one per decode step. A
# chunk of 512 costs a few decode steps of the demo model on one CPU core.
PREFILL_CHUNK_TOKENS = 512


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        scheduler: Scheduler[int],
        stats: StepRecorder,
        eos_token_ids: Collection[int],
        clock: Callable[[], float] = time.monotonic,
        prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
        stream_interval: int = 1,
        prefix_cache_bytes: int = 0,
    ) -> None:
        if prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be at least 1")
        if stream_interval < 1:
            raise ValueError("stream_interval must be at least 1")
        self._model = model
        self._tokenizer = tokenizer
        self._decode_text = text_decoder(tokenizer)
        self._stream_text = stream_decoder(tokenizer)
        self._scheduler = scheduler
        self._stats = stats
        self._eos = frozenset(eos_token_ids)
        self._clock = clock
        self._chunk = prefill_chunk_tokens
        self._stream_interval = stream_interval
        self._prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._decoder: BatchDecoder[int] = self._new_decoder()
        self._prefilling: OrderedDict[int, Prefilling] = OrderedDict()  # the worker's own
        # Queued requests prefilled during an idle engine's delay window (the worker's own).
        self._early: dict[int, tuple[torch.Tensor, Prefilled]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._queued: dict[int, Sequence] = {}  # guarded by _cond
        self._running: dict[int, Sequence] = {}  # the worker's own
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gantry-decode", daemon=True)

    def _new_decoder(self) -> BatchDecoder[int]:
        rows = self._scheduler.max_batch_size
        return BatchDecoder(self._model, rows=rows, prefix_cache=self._prefix)

    @property
    def max_batch_size(self) -> int:
        return self._scheduler.max_batch_size

    def now(self) -> float:
        return self._clock()

    def start(self) -> None:
        self._thread.start()

    def warm_up(self) -> None:
        """One prefill and one decode step before serving: fails early on an unsupported
        model and takes the first-call costs out of the first request's latency (and the
        probe of whether prompts can join a step: BatchDecoder.joining_budget)."""
        with torch.inference_mode():
            logits, prefilled = self._decoder.prefill([self._first_token_id()])
            [token] = choose_tokens(logits, [GREEDY])
            self._decoder.join(0, prefilled)
            self._decoder.joining_budget()
            self._decoder.step({0: token})
            self._decoder.drop([0])
            self._decoder.capture_graphs()

    def _first_token_id(self) -> int:
        for candidate in (self._tokenizer.bos_token_id, self._tokenizer.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0

    def submit(
        self, request: Request, sink: Sink, *, ignore_eos: bool = False, key: int | None = None
    ) -> int:
        """Queues the request under `key` (default: the next free one); `ignore_eos`: it
        ends at `max_tokens` (or a stop string), an end-of-text token being decoded as any
        other."""
        generator = None
        if request.seed and request.temperature > 0:
            generator = torch.Generator(device=self._decoder.device)
            generator.manual_seed(request.seed)
        sequence = Sequence(
            request=request,
            sink=sink,
            text=TextStream(self._decode_text, request.prompt_ids, request.stop, self._stream_text),
            sampling=Sampling(request.temperature, request.top_p, generator, request.top_k),
            ignore_eos=ignore_eos,
        )
        key = next(self._ids) if key is None else key
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is stopped")
            self._queued[key] = sequence
            self._scheduler.submit(key, self._clock())
            self._cond.notify()
        return key

    def cancel(self, key: int) -> None:
        with self._cond:
            if self._scheduler.cancel(key):
                self._queued.pop(key, None)
                self._cond.notify()

    def load(self) -> tuple[int, int]:
        """(requests queued, requests running)."""
        with self._cond:
            return self._scheduler.queue_depth, len(self._scheduler.running)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the loop after its current step; requests still there fail."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            left = list(self._queued.values())
            self._queued.clear()
        if not self._thread.is_alive():  # else the worker still owns its requests
            left += self._running.values()
            self._running.clear()
        for sequence in left:
            self._emit(sequence, Failed("the server stopped before the request finished"))

    # -- the worker thread ---------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                admitted = self._next_batch()
                if admitted is None:
                    return
                if isinstance(admitted, list):
                    self._prefill_early(admitted)
                    continue
                try:
                    with held_wakeups():  # an iteration's events and figures leave together
                        self._iterate(*admitted)
                except Exception as exc:  # a model error fails the batch, not the server
                    log.exception("decode step failed")
                    self._fail_running(f"generation failed: {exc}")

    def _next_batch(
        self,
    ) -> tuple[Plan[int], list[tuple[int, Sequence]]] | list[tuple[int, Sequence]] | None:
        """The next iteration's plan and admitted requests; or, while an idle engine's
        delay window holds the queue, the waiting requests not yet prefilled; None once
        stopped."""
        with self._cond:
            while not self._stopping:
                plan = self._scheduler.plan(self._clock())
                if plan or self._scheduler.running:
                    admitted = [(key, self._queued.pop(key)) for key in plan.admitted]
                    self._forget_cancelled_early(plan.admitted)
                    return plan, admitted
                self._forget_cancelled_early(())
                early = [
                    (key, self._queued[key])
                    for key in self._scheduler.queued
                    if key not in self._early
                    and len(self._queued[key].request.prompt_ids) <= self._chunk
                ]
                if early:
                    return early
                wake = self._scheduler.wake_at()
                self._cond.wait(None if wake is None else max(0.0, wake - self._clock()))
        return None

    def _iterate(self, plan: Plan[int], admitted: list[tuple[int, Sequence]]) -> None:
        if plan.evicted:
            self._decoder.drop(plan.evicted)
            for key in plan.evicted:
                self._prefilling.pop(key, None)
                sequence = self._running.pop(key, None)
                if sequence is not None:
                    self._emit(sequence, Done("", (), usage(sequence, self._clock(), "cancelled")))
        self._running.update(admitted)
        generated = 0
        finished: list[int] = []
        joining = self._joining_in_step(admitted)
        # The events of each phase reach the event loop together at its end (one wake-up).
        with held_wakeups():
            for (key, sequence), (logits, prefilled) in self._prefill(admitted, joining):
                sequence.cached_tokens = prefilled.cached
                [token] = choose_tokens(logits, [sequence.sampling])
                generated += 1
                self._decoder.keep_prefilled(sequence.request.prompt_ids, prefilled)
                if self._accept(sequence, token):
                    finished.append(key)
                else:
                    self._decoder.join(key, prefilled)
        self._finish(finished)
        if len(self._decoder):
            finished = []
            batch = [(key, self._running[key]) for key in self._decoder.keys]
            feed = {key: seq.generated[-1] for key, seq in batch}
            if joining:
                prompts = [(key, seq.request.prompt_ids) for key, seq in joining]
                logits = self._decoder.step_joining(feed, prompts)
                for (_, sequence), cached in zip(joining, self._decoder.joined_cached, strict=True):
                    sequence.cached_tokens = cached
            else:
                logits = self._decoder.step(feed)
            tokens = choose_tokens(logits, [seq.sampling for _, seq in batch + joining])
            with held_wakeups():
                for (key, sequence), token in zip(batch + joining, tokens, strict=True):
                    if self._accept(sequence, token):
                        finished.append(key)
            generated += len(batch) + len(joining)
            self._stats.step(len(batch), generated)
            for key in finished:  # a conversation's next turn starts with this one
                done = self._running[key]
                self._decoder.keep_prefix(key, done.request.prompt_ids + tuple(done.generated))
            self._decoder.drop(finished)
            self._finish(finished)
        elif generated:
            self._stats.step(0, generated)

    def _joining_in_step(self, admitted: list[tuple[int, Sequence]]) -> list[tuple[int, Sequence]]:
        """The admitted requests whose prompts go into this iteration's decode step
        (BatchDecoder.step_joining): those not yet prefilled whose tokens to run (past what
        the prefix cache has: a long conversation's next turn too) fit the step's budget,
        oldest first (none if no batch runs); the others are prefilled apart."""
        budget = self._decoder.joining_budget() if admitted else 0
        joining = []
        for key, sequence in admitted:
            tokens = self._decoder.tokens_to_run(sequence.request.prompt_ids)
            if key not in self._early and tokens <= min(budget, self._chunk):
                joining.append((key, sequence))
                budget -= tokens
        return joining

    def _forget_cancelled_early(self, admitted: Collection[int]) -> None:
        """Drops the early prefills of requests cancelled while they waited (under _cond)."""
        for key in [k for k in self._early if k not in self._queued and k not in admitted]:
            del self._early[key]

    def _prefill_early(self, waiting: list[tuple[int, Sequence]]) -> None:
        try:
            prefills = self._decoder.prefill_many([s.request.prompt_ids for _, s in waiting])
        except Exception:  # prefilled again when admitted, which fails the request
            log.debug("early prefill failed", exc_info=True)
            return
        for (key, _), prefilled in zip(waiting, prefills, strict=True):
            self._early[key] = prefilled

    def _prefill(
        self, admitted: list[tuple[int, Sequence]], joining: list[tuple[int, Sequence]]
    ) -> list[tuple[tuple[int, Sequence], tuple[torch.Tensor, Prefilled]]]:
        """The requests whose prompts are now prefilled: the short ones admitted now (in
        one forward, less those prefilled while they waited and those `joining` the
        decode step), then the oldest long one if its last chunk ran."""
        ready = [((k, s), self._early.pop(k)) for k, s in admitted if k in self._early]
        prefilled = {k for (k, _), _ in ready} | {k for k, _ in joining}
        short = [
            (k, s)
            for k, s in admitted
            if len(s.request.prompt_ids) <= self._chunk and k not in prefilled
        ]
        for key, sequence in admitted:
            if len(sequence.request.prompt_ids) > self._chunk and key not in prefilled:
                self._prefilling[key] = self._decoder.start_prefill(sequence.request.prompt_ids)
        if short:
            prefills = self._decoder.prefill_many([s.request.prompt_ids for _, s in short])
            ready += zip(short, prefills, strict=True)
        if self._prefilling:
            key, state = next(iter(self._prefilling.items()))
            done = self._decoder.prefill_chunk(state, self._chunk)
            if done is not None:
                del self._prefilling[key]
                ready.append(((key, self._running[key]), done))
        return ready

    def _accept(self, sequence: Sequence, token: int) -> bool:
        """Records a new token and sends it on; True when the request is complete."""
        now = self._clock()
        if sequence.first_token_at is None:
            sequence.first_token_at = now
        sequence.generated.append(token)
        eos = token in self._eos and not sequence.ignore_eos
        piece = "" if eos else sequence.text.push([token])
        if sequence.text.stopped:
            reason = "stop"
        elif eos:
            reason = "eos"
        elif len(sequence.generated) >= sequence.request.max_tokens:
            reason = "length"
        else:
            sequence.unsent_text += piece
            sequence.unsent_ids.append(token)
            first = len(sequence.generated) == 1
            if first or len(sequence.unsent_ids) >= self._stream_interval:
                self._emit(sequence, Chunk(sequence.unsent_text, tuple(sequence.unsent_ids)))
                sequence.unsent_text, sequence.unsent_ids = "", []
            return False
        piece = sequence.unsent_text + piece + sequence.text.finish()
        ended = usage(sequence, self._clock(), reason)
        self._emit(sequence, Done(piece, (*sequence.unsent_ids, token), ended))
        self._stats.request_completed(
            ended.total_time_ms / 1000, ended.prompt_tokens, ended.cached_prompt_tokens
        )
        return True

    def _finish(self, keys: list[int]) -> None:
        if not keys:
            return
        for key in keys:
            self._running.pop(key, None)
        with self._cond:
            for key in keys:
                self._scheduler.finish(key)

    def _fail_running(self, message: str) -> None:
        failed = list(self._running)
        self._decoder = self._new_decoder()
        self._prefilling.clear()
        for key in failed:
            self._emit(self._running.pop(key), Failed(message))
        with self._cond:
            for key in failed:
                self._scheduler.finish(key)

    @staticmethod
    def _emit(sequence: Sequence, event: Event) -> None:
        try:
            sequence.sink(event)
        except Exception:  # the server's loop is gone (shutting down): nobody listens
            log.debug("dropped an event for a finished request", exc_info=True)
