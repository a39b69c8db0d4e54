"""Loading a model for serving: the model and tokenizer, its context and end tokens (in
the engine process, agent.serve.engine_worker), the engine process as the server sees it,
and how chat messages become a prompt."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.serve.engine_process import EngineProcess
from agent.serve.openai_api import plain_chat_prompt
from agent.serve.rpc import Backend
from agent.serve.stats import ServerStats

# One decode loop over small per-step matrices: more intra-op threads mostly spin in
# OpenMP barriers, and on a node shared with other work a second thread made the
# batched server up to 20x slower (bench/serving.py), so one unless told otherwise.
DEFAULT_THREADS = 1
DEFAULT_MAX_BATCH_SIZE = 8  # on CPU, when the operator gives none


def load_for_serving(
    model_dir: Path, device: str, threads: int = DEFAULT_THREADS
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a HF directory or an int8 artifact, its
    experts on grouped matmuls where it has them: the one place the server loads a
    model. ModelLoadError names what is wrong."""
    import torch
    from transformers.utils import logging as hf_logging

    from agent.ml.loading import load_model, quiet_torchao
    from agent.serve.experts import select_experts

    quiet_torchao()  # transformers imports torchao while loading any model
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_model(model_dir, device)
    select_experts(model)
    return model, tokenizer


def context_tokens(model: Any, tokenizer: Any) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    for value in (
        getattr(config or model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ):
        if isinstance(value, int) and 0 < value < 10_000_000:
            return value
    return 2048


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Where `generate` stops: the generation config's end tokens, else the tokenizer's."""
    generation = getattr(model, "generation_config", None)
    for value in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            return {value}
        if isinstance(value, list | tuple) and value:
            return {v for v in value if isinstance(v, int)}
    return set()


def max_batch_size_for(model: Any, requested: int | None) -> int:
    """The operator's --max-batch-size; without one, on CUDA as many sequences of full
    context as half the free GPU memory holds (64-256), elsewhere DEFAULT_MAX_BATCH_SIZE."""
    if requested:
        return requested
    import torch

    if next(model.parameters()).device.type != "cuda":
        return DEFAULT_MAX_BATCH_SIZE
    from agent.serve.cuda_graphs import context_length, kv_bytes_per_token, max_batch_for_memory

    free_bytes, _ = torch.cuda.mem_get_info()
    return max_batch_for_memory(free_bytes, kv_bytes_per_token(model) * context_length(model))


def start_engine(args: argparse.Namespace, stats: ServerStats) -> EngineProcess:
    """The engine process, loading the model (agent.serve.engine_worker)."""
    return EngineProcess(
        args.model,
        device=args.device,
        threads=args.threads,
        max_batch_size=getattr(args, "max_batch_size", None),
        max_queue_delay_ms=args.max_queue_delay_ms,
        stats=stats,
        cpus=args.binding.engine if args.binding is not None else None,
        stream_interval=args.stream_interval,
        prefix_cache_mb=getattr(args, "prefix_cache_mb", 0),
    )


def build_backend(model_dir: Path, engine: EngineProcess) -> Backend:
    """The tokenizer, loaded while the engine process loads the model, then the engine
    ready (runs in a worker thread). ModelLoadError or EngineLoadError says what is wrong."""
    from agent.ml.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    engine.wait_ready()

    def encode(prompt: str) -> list[int]:
        return list(tokenizer(prompt)["input_ids"])

    return Backend(
        engine=engine,
        encode=encode,
        context_tokens=engine.context_tokens,
        render_chat=chat_renderer(tokenizer),
    )


def chat_renderer(tokenizer: Any) -> Callable[[Sequence[Mapping[str, str]]], str]:
    """The tokenizer's chat template when it has one, else plain "role: content" lines."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat_prompt

    def render(messages: Sequence[Mapping[str, str]]) -> str:
        rendered = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    return render
