"""gantry.v1.InferenceService on top of the decode engine: validation, streaming, stats.

Until the model is loaded (and once the server drains) requests are refused with
UNAVAILABLE; bad requests get INVALID_ARGUMENT naming what to fix. A request whose
RPC ends early (client cancel, deadline) is cancelled in the engine, which frees its
place in the batch from the next step on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import grpc
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc

from agent.serve.events import Chunk, Done, Failed, Request, Sink, Usage, submit_to_queue
from agent.serve.stats import ServerStats

log = logging.getLogger("gantry.serve")

MAX_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS = 16
UNSET_TOP_P = 0.0  # proto3's default for an unset top_p: taken as NO_NUCLEUS_CUT
NO_NUCLEUS_CUT = 1.0
INLINE_ENCODE_CHARS = 512  # longer prompts are tokenized in a worker thread
Context = grpc.aio.ServicerContext[Any, Any]


class InvalidRequest(ValueError):
    pass


class EngineHandle(Protocol):
    """The decode engine as the front ends use it: agent.serve.engine_process.EngineProcess
    in the server, agent.serve.engine.Engine in process (tests, tools)."""

    @property
    def max_batch_size(self) -> int: ...

    def submit(self, request: Request, sink: Sink, *, ignore_eos: bool = False) -> int: ...

    def cancel(self, key: int) -> None: ...

    def load(self) -> tuple[int, int]: ...

    def now(self) -> float: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...


@dataclass(frozen=True)
class Backend:
    """What serving needs once the model is loaded."""

    engine: EngineHandle
    encode: Callable[[str], Sequence[int]]
    context_tokens: int  # the model's context (max_position_embeddings)
    # Chat messages ({"role", "content"}) to one prompt (HTTP /v1/chat/completions);
    # None: agent.serve.openai_api.plain_chat_prompt.
    render_chat: Callable[[Sequence[Mapping[str, str]]], str] | None = None

    async def tokens(self, prompt: str) -> Sequence[int]:
        """The prompt's token ids: on the event loop for a short prompt (tens of µs, less
        than a worker thread's round trip costs the loop), in a worker thread for a long one,
        which would hold every stream up."""
        if len(prompt) <= INLINE_ENCODE_CHARS:
            return self.encode(prompt)
        return await asyncio.to_thread(self.encode, prompt)


def check_params(
    prompt: str, params: pb.SamplingParams, context_tokens: int, prefix: str = "params."
) -> None:
    """Checks what can be checked before tokenizing; InvalidRequest says what is wrong
    (fields named with `prefix`: "params." over gRPC, "" over HTTP)."""
    if not prompt:
        raise InvalidRequest("prompt is empty")
    limit = min(MAX_TOKENS_LIMIT, context_tokens)
    if params.max_tokens == 0:
        raise InvalidRequest(f"{prefix}max_tokens is required: between 1 and {limit}")
    if params.max_tokens > limit:
        raise InvalidRequest(f"{prefix}max_tokens {params.max_tokens} is above the limit {limit}")
    if not params.temperature >= 0:  # also refuses NaN
        raise InvalidRequest(f"{prefix}temperature {params.temperature} must not be negative")
    if not 0 <= params.top_p <= 1:
        raise InvalidRequest(f"{prefix}top_p {params.top_p} must be between 0 and 1")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings")


def check_prompt_length(prompt_tokens: int, context_tokens: int) -> None:
    if prompt_tokens == 0:
        raise InvalidRequest("prompt encodes to no tokens")
    if prompt_tokens >= context_tokens:
        raise InvalidRequest(
            f"prompt is {prompt_tokens} tokens; the model's context is {context_tokens} "
            "(prompt and completion together)"
        )


def effective_top_p(top_p: float) -> float:
    """The top_p the engine samples with: an unset (0) top_p keeps every token, as 1.0."""
    return NO_NUCLEUS_CUT if top_p == UNSET_TOP_P else top_p


def build_request(
    prompt_ids: Sequence[int], params: pb.SamplingParams, context_tokens: int, received: float
) -> Request:
    """The engine's request; `max_tokens` is cut to what fits in the context."""
    check_prompt_length(len(prompt_ids), context_tokens)
    return Request(
        prompt_ids=tuple(prompt_ids),
        max_tokens=min(params.max_tokens, context_tokens - len(prompt_ids)),
        received=received,
        temperature=params.temperature,
        top_p=effective_top_p(params.top_p),
        top_k=params.top_k,
        stop=tuple(params.stop),
        seed=params.seed,
    )


# The engine's reasons (agent.serve.events.Usage) as the contract's enum.
FINISH_REASONS = {
    "length": pb.FINISH_REASON_LENGTH,
    "stop": pb.FINISH_REASON_STOP,
    "eos": pb.FINISH_REASON_EOS,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def usage_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        time_to_first_token_ms=usage.time_to_first_token_ms,
        total_time_ms=usage.total_time_ms,
        finish_reason=FINISH_REASONS.get(usage.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
        cached_prompt_tokens=usage.cached_prompt_tokens,
    )


def caught_up(
    first: Chunk, events: asyncio.Queue[Chunk | Done | Failed]
) -> tuple[Chunk | Done, Failed | None]:
    """`first` and the events already waiting behind it as one message: the tokens decoded
    since the previous one (as the contract allows). One write per token costs this loop
    more than a batched decode step costs the engine, so a loop that fell behind catches up
    in one write instead of falling further behind; a loop that keeps up sends one token
    a message. A failure waiting behind is handed back, to follow the merged message."""
    if events.empty():
        return first, None
    text, ids = [first.text], list(first.token_ids)
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, Failed):
            return Chunk("".join(text), tuple(ids)), event
        text.append(event.text)
        ids.extend(event.token_ids)
        if isinstance(event, Done):
            return Done("".join(text), tuple(ids), event.usage), None
    return Chunk("".join(text), tuple(ids)), None


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self, model_name: str, stats: ServerStats, max_batch_size: int, max_queue_delay_ms: float
    ) -> None:
        self.model_name = model_name
        self.stats = stats
        self.max_batch_size = max_batch_size
        self.max_queue_delay_ms = max_queue_delay_ms
        self.backend: Backend | None = None
        self.draining = False
        self.inflight = 0

    async def Generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        self.stats.request_received()
        self.inflight += 1
        try:
            backend, req = await self._prepare(request.prompt, request.params, context)
            async for event in self._run(backend, req, context, request.params.ignore_eos):
                yield self._to_response(event)
        finally:
            self.inflight -= 1

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> pb.CompleteResponse:
        self.stats.request_received()
        self.inflight += 1
        try:
            backend, req = await self._prepare(request.prompt, request.params, context)
            texts: list[str] = []
            ids: list[int] = []
            usage = pb.Usage()
            async for event in self._run(backend, req, context, request.params.ignore_eos):
                texts.append(event.text)
                ids.extend(event.token_ids)
                if isinstance(event, Done):
                    usage = usage_pb(event.usage)
            return pb.CompleteResponse(text="".join(texts), token_ids=ids, usage=usage)
        finally:
            self.inflight -= 1

    async def GetServerStats(
        self, request: pb.GetServerStatsRequest, context: Context
    ) -> pb.GetServerStatsResponse:
        queued, running = self.backend.engine.load() if self.backend else (0, 0)
        snap = self.stats.snapshot()
        return pb.GetServerStatsResponse(
            model=self.model_name,
            queue_depth=queued,
            running=running,
            requests_total=snap.requests_total,
            errors_total=snap.errors_total,
            requests_per_s=snap.requests_per_s,
            tokens_per_s=snap.tokens_per_s,
            batch_size_histogram=snap.batch_size_histogram,
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            prompt_tokens_total=snap.prompt_tokens_total,
            cached_prompt_tokens_total=snap.cached_prompt_tokens_total,
        )

    # -- helpers -------------------------------------------------------------------

    async def _fail(self, context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
        self.stats.request_failed()
        await context.abort(code, message)

    async def _prepare(
        self, prompt: str, params: pb.SamplingParams, context: Context
    ) -> tuple[Backend, Request]:
        backend = self.backend
        if self.draining:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if backend is None:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        received = backend.engine.now()
        try:
            check_params(prompt, params, backend.context_tokens)
            ids = await backend.tokens(prompt)
            return backend, build_request(ids, params, backend.context_tokens, received)
        except InvalidRequest as exc:
            await self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _run(
        self, backend: Backend, request: Request, context: Context, ignore_eos: bool
    ) -> AsyncIterator[Chunk | Done]:
        engine = backend.engine
        try:
            key, events = submit_to_queue(engine, request, ignore_eos)
        except RuntimeError:  # stopped between the check and now
            await self._fail(context, grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        # Whatever ends the RPC (cancel, deadline, a failed write) frees the place; a
        # no-op once the request is complete.
        context.add_done_callback(lambda _: engine.cancel(key))  # type: ignore[arg-type]  # stub: a class
        held: Failed | None = None
        while True:
            event = held or await events.get()
            held = None
            if isinstance(event, Chunk):
                event, held = caught_up(event, events)
            if isinstance(event, Failed):
                code = grpc.StatusCode.UNAVAILABLE if self.draining else grpc.StatusCode.INTERNAL
                await self._fail(context, code, event.message)
            yield event
            if not isinstance(event, Chunk):
                return

    @staticmethod
    def _to_response(event: Chunk | Done) -> pb.GenerateResponse:
        if isinstance(event, Done):
            return pb.GenerateResponse(
                text=event.text, token_ids=event.token_ids, done=True, usage=usage_pb(event.usage)
            )
        return pb.GenerateResponse(text=event.text, token_ids=event.token_ids)
