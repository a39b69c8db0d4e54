"""What a rank settles before it trains: its process (environment, threads, the process group
and its timeout), the data it reads (prepared once per node, the same on every rank) and the
checkpoint it resumes from; and the learning-rate schedule. No torch import at module level:
the environment is set before torch loads."""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

TIMEOUT_ENV = "GANTRY_COLLECTIVE_TIMEOUT_S"
CKPT_TOKENIZER = "tokenizer"  # beside the checkpoint tags: the ids the weights were trained on
DEFAULT_TIMEOUT_S = 300.0


def log(message: str) -> None:
    """One "gantry: ..." line on stdout."""
    print(f"gantry: {message}", flush=True)


# --- process set-up -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_env(args: argparse.Namespace) -> None:
    """Single-process defaults, threads per rank, quiet deprecation noise."""
    if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories and built-ins only
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def set_threads() -> None:
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE") or 1)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, per_node)))


def collective_timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        raise SystemExit(f"gantry: {TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise SystemExit(f"gantry: {TIMEOUT_ENV} must be positive")
    return timedelta(seconds=seconds)


def init_distributed(timeout: timedelta) -> tuple[int, int]:
    """Process group with `timeout` for every group, including those DeepSpeed makes
    later (they take torch's default_pg_timeout, 30 min unless set here)."""
    import deepspeed
    import torch.distributed
    from deepspeed.accelerator import get_accelerator

    torch.distributed.distributed_c10d.default_pg_timeout = timeout
    backend = "gloo" if get_accelerator().device_name() == "cpu" else None
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout, verbose=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


# --- data ---------------------------------------------------------------------------


def resolve_data(args: argparse.Namespace, resume_dir: Path | None = None) -> tuple[Path, Path]:
    """(prepared data dir, tokenizer dir): the tokenizer of the checkpoint resumed from,
    else the model directory's, else one trained on the data."""
    from agent.ml.data import TOKENIZER_DIR, is_prepared_dir, prepare
    from agent.ml.models import has_tokenizer, is_builtin

    model_tok = None
    own = (args.output_dir / "checkpoints").resolve()
    if (
        resume_dir is not None
        and resume_dir.resolve() != own
        and has_tokenizer(resume_dir / CKPT_TOKENIZER)
    ):
        # Continual training (another job's checkpoint) must keep the token ids the
        # weights learned; this job's own checkpoints already share its data's tokenizer.
        model_tok = resume_dir / CKPT_TOKENIZER
    elif not is_builtin(args.model_name_or_path) and has_tokenizer(Path(args.model_name_or_path)):
        model_tok = Path(args.model_name_or_path)
    if args.data.is_dir():
        if not is_prepared_dir(args.data):
            raise SystemExit(f"gantry: --data {args.data}: not a prepared directory")
        data_dir = args.data
    else:
        data_dir = args.output_dir / "data"
        prepare(args.data, data_dir, args.max_length, tokenizer=model_tok, log=log)
    return data_dir, model_tok or data_dir / TOKENIZER_DIR


def data_digest(data_dir: Path) -> str:
    from agent.ml.data import MANIFEST

    return _digest(data_dir / MANIFEST)[:16]


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.is_file() else b"-")
    return h.hexdigest()


def check_same_data(data_dir: Path, tok_dir: Path, world_size: int) -> None:
    """Every rank must train on the same shards with the same tokenizer."""
    import torch.distributed

    from agent.ml.data import MANIFEST

    mine = _digest(data_dir / MANIFEST, tok_dir / "tokenizer.json")
    every: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(every, mine)
    if len(set(every)) != 1:
        raise SystemExit(
            "gantry: ranks disagree on the prepared data or tokenizer "
            f"({', '.join(d[:8] for d in every)}); prepare once on a shared filesystem"
        )


@dataclass
class RankData:
    """What the rank trains on: the prepared data, its tokenizer and the checkpoint resumed."""

    resume: tuple[Path, str | None] | None
    data_dir: Path
    tokenizer: Any
    dataset: Any  # agent.ml.data.ConversationDataset
    digest: str


def open_data(args: argparse.Namespace, world: int) -> RankData:
    """Prepare (or find) the data, check every rank has the same, load the tokenizer."""
    from agent.ml.data import ConversationDataset, ensure_chat_tokens, load_tokenizer

    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    data_dir, tok_dir = resolve_data(args, resume[0] if resume else None)
    check_same_data(data_dir, tok_dir, world)
    tokenizer = load_tokenizer(tok_dir)
    ensure_chat_tokens(tokenizer)
    dataset = ConversationDataset(data_dir, tokenizer, args.max_length)
    digest = data_digest(data_dir)
    if len(dataset) == 0:
        raise SystemExit(f"gantry: {data_dir} holds no conversations")
    return RankData(resume, data_dir, tokenizer, dataset, digest)


# --- checkpoints --------------------------------------------------------------------


def resolve_resume(spec: str | None, output_dir: Path) -> tuple[Path, str | None] | None:
    """(load_dir, tag) for engine.load_checkpoint, or None for a fresh start."""
    if not spec:
        return None
    if spec == "latest":
        ckpt = output_dir / "checkpoints"
        if (ckpt / "latest").is_file():
            return ckpt, None
        log(f"no checkpoint under {ckpt}; starting fresh")
        return None
    path = Path(spec)
    if (path / "latest").is_file():
        return path, None
    if path.is_dir():
        return path.parent, path.name
    raise SystemExit(f"gantry: --resume_from_checkpoint {spec}: no such checkpoint")


def is_universal(load_dir: Path, tag: str | None) -> bool:
    """Whether (load_dir, tag) names a universal checkpoint (ds_to_universal's output:
    per-parameter folders under zero/), which loads at any world size."""
    if tag is None:
        latest = load_dir / "latest"
        tag = latest.read_text().strip() if latest.is_file() else ""
    return bool(tag) and (load_dir / tag / "zero").is_dir()


def lr_lambda(warmup: int, total: int, kind: str = "linear") -> Any:
    """LR factor at optimizer step `step` (0-based): linear warmup over `warmup` steps,
    then constant or a linear decay reaching 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant" or total <= warmup:
            return 1.0
        return max(0.0, (total - step) / (total - warmup))

    return factor
