"""What each DeepSpeed rank runs: `python -m agent.train ...`.

    python -m agent.train --deepspeed_config examples/ds_config_zero3.json \\
        --model_name_or_path tiny-moe --data train.jsonl --output_dir OUT \\
        [--per_device_train_batch_size N] [--gradient_accumulation_steps N] \\
        [--num_train_epochs E] [--max_steps N] [--learning_rate LR] [--warmup_steps N] \\
        [--save_steps N] [--resume_from_checkpoint PATH|latest] [--logging_dir DIR] \\
        [--seed S] [--max_length N]

Runs under the `deepspeed` launcher (which appends --local_rank=N) or as plain
processes given RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (without
them: one rank on 127.0.0.1).

- Data: a JSONL file is prepared (cleaned, sharded, tokenizer trained) into
  OUTPUT_DIR/data by whichever rank of the node takes the file lock first; the others
  find it done. A prepared directory is used as is. Ranks read it through a
  DistributedSampler.
- The DeepSpeed config is adapted to the hardware (agent.rank.ds_config); each change is
  logged as one "gantry: ..." line. A torch AdamW and a warmup-then-linear schedule
  are passed to deepspeed.initialize.
- Every --save_steps optimizer steps: engine.save_checkpoint(OUTPUT_DIR/checkpoints,
  tag="stepN") with the step and data position; a resume continues both.
- At the end: OUTPUT_DIR/final, a Hugging Face model directory (fp32) with the
  tokenizer.
- Reports to $GANTRY_METRICS_FILE (agent.report); SIGUSR1 dumps every thread's stack.

A universal checkpoint (deepspeed.checkpoint.ds_to_universal's output, as the agent
writes for `gantry restart --exclude`) is loaded with checkpoint.load_universal, at any
world size. Resuming from another job's checkpoint uses the tokenizer saved beside it,
and starts new data at its beginning.

Environment: GANTRY_COLLECTIVE_TIMEOUT_S (300) bounds every collective;
GANTRY_CPU_BF16 (1 or 0) forces the native-bf16 probe on the CPU (agent.rank.ds_config);
GANTRY_METRICS_FILE, GANTRY_HEARTBEAT_S (agent.report); DS_ACCELERATOR;
TORCH_EXTENSIONS_DIR; OMP_NUM_THREADS (else cores / LOCAL_WORLD_SIZE or WORLD_SIZE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.rank.report import CollectiveClock, Reporter, install_stack_dump, memory_bytes

TIMEOUT_ENV = "GANTRY_COLLECTIVE_TIMEOUT_S"
CKPT_TOKENIZER = "tokenizer"  # beside the checkpoint tags: the ids the weights were trained on
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_LR = 5e-5


def log(message: str) -> None:
    print(f"gantry: {message}", flush=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent.train", description="Gantry trainer")
    p.add_argument("--deepspeed_config", required=True, type=Path, help="DeepSpeed JSON")
    p.add_argument(
        "--model_name_or_path",
        required=True,
        help="a local Hugging Face directory, or tiny-moe / tiny-deepseek / tiny-dense",
    )
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path, help="JSONL file or prepared dir")
    p.add_argument("--per_device_train_batch_size", type=int, help="overrides the config")
    p.add_argument("--gradient_accumulation_steps", type=int, help="overrides the config")
    p.add_argument("--num_train_epochs", type=float, default=1.0)
    p.add_argument("--max_steps", type=int, default=-1, help="optimizer steps; wins over epochs")
    p.add_argument("--learning_rate", type=float, help=f"default: the config's, else {DEFAULT_LR}")
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument(
        "--lr_scheduler_type",
        choices=("linear", "constant"),
        default="linear",
        help="after warmup: decay linearly to 0 at the last step, or stay constant",
    )
    p.add_argument("--save_steps", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--logging_dir", type=Path, help="default: OUTPUT_DIR/logs")
    p.add_argument(
        "--resume_from_checkpoint",
        help="a checkpoint directory (or its tag) or 'latest': OUTPUT_DIR/checkpoints' "
        "latest if there is one, else a fresh start",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_length", type=int, default=512, help="tokens per conversation")
    p.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = p.parse_args(argv)
    for name in (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "save_steps",
        "max_length",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup_steps < 0 or args.num_train_epochs <= 0:
        p.error("--warmup_steps must not be negative and --num_train_epochs must be positive")
    if not args.deepspeed_config.is_file():
        p.error(f"--deepspeed_config {args.deepspeed_config}: no such file")
    if not args.data.exists():
        p.error(f"--data {args.data}: no such file or directory")
    return args


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


@dataclass
class StepStats:
    """What one optimizer step measured on this rank."""

    losses: list[float] = field(default_factory=list)
    samples: int = 0
    tokens: int = 0
    forward_s: float = 0.0
    backward_s: float = 0.0
    step_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def loss_scale(optimizer: Any) -> float | None:
    for name in ("loss_scale", "cur_scale"):
        value = getattr(optimizer, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


def save_final(
    engine: Any, model: Any, tokenizer: Any, final_dir: Path, rank: int, info: dict[str, Any]
) -> None:
    """A Hugging Face directory in fp32, gathered from the ZeRO-3 partitions."""
    import deepspeed
    import torch

    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if rank == 0:
            state = {
                k: v.detach().to("cpu", dtype=torch.float32).clone()
                if v.is_floating_point()
                else v.detach().cpu().clone()
                for k, v in model.state_dict().items()
            }
    if rank == 0:
        tmp = final_dir.with_name(final_dir.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        config = model.config
        model.save_pretrained(str(tmp), state_dict=state)
        # transformers 5 writes the module's own dtype (bf16 in a bf16 run) into config.json;
        # the weights saved are fp32, and so must the config say.
        config.dtype = torch.float32
        config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "gantry_train.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        tmp.replace(final_dir)
    engine_barrier()


def engine_barrier() -> None:
    import deepspeed.comm

    deepspeed.comm.barrier()


# --- training -----------------------------------------------------------------------


def train(args: argparse.Namespace, rep: Reporter) -> int:
    import deepspeed
    import torch
    from deepspeed.accelerator import get_accelerator

    from agent.ml.data import (
        ConversationDataset,
        batches_per_epoch,
        ensure_chat_tokens,
        load_tokenizer,
        rank_batches,
    )
    from agent.ml.models import build_model, count_parameters
    from agent.rank import ds_config

    timeout = collective_timeout()
    set_threads()
    rank, world = init_distributed(timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rep.rank = rank
    args.output_dir.mkdir(parents=True, exist_ok=True)
    logging_dir = args.logging_dir or args.output_dir / "logs"
    logging_dir.mkdir(parents=True, exist_ok=True)

    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    data_dir, tok_dir = resolve_data(args, resume[0] if resume else None)
    check_same_data(data_dir, tok_dir, world)
    tokenizer = load_tokenizer(tok_dir)
    ensure_chat_tokens(tokenizer)
    dataset = ConversationDataset(data_dir, tokenizer, args.max_length)
    digest = data_digest(data_dir)
    if len(dataset) == 0:
        raise SystemExit(f"gantry: {data_dir} holds no conversations")

    try:
        hw = ds_config.detect_hardware()
    except ValueError as exc:  # a bad GANTRY_CPU_BF16: fails before the model is built
        raise SystemExit(f"gantry: {exc}") from None
    model = build_model(args.model_name_or_path, tokenizer, seed=args.seed)
    adapted = ds_config.adapt_config(
        ds_config.load_config(args.deepspeed_config),
        hw,
        world_size=world,
        micro_batch=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
        hidden_size=getattr(model.config, "hidden_size", None),
    )
    cfg = adapted.config
    if resume is not None and is_universal(*resume):
        # A universal checkpoint is what lets a job go on at another world size; plain
        # ZeRO checkpoints load only at the world size that wrote them.
        cfg.setdefault("checkpoint", {})["load_universal"] = True
        adapted.changes.append(f"loading {resume[0] / (resume[1] or 'latest')} as universal")
    for change in adapted.changes:
        log(change)
    log(f"{ds_config.summary(cfg)} on {world} rank(s), {hw.accelerator} accelerator")
    (logging_dir / f"ds_config.rank{rank}.json").write_text(json.dumps(cfg, indent=2) + "\n")

    mbs = int(cfg.get("train_micro_batch_size_per_gpu") or 1)
    gas = int(cfg.get("gradient_accumulation_steps") or 1)
    per_epoch = batches_per_epoch(dataset, world, mbs)
    total_steps = (
        args.max_steps
        if args.max_steps > 0
        else max(1, math.ceil(args.num_train_epochs * per_epoch / gas))
    )
    opt_params = adapted.optimizer_params
    lr = args.learning_rate or float(opt_params.get("lr", DEFAULT_LR))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=tuple(opt_params.get("betas", (0.9, 0.999))),
        eps=float(opt_params.get("eps", 1e-8)),
        weight_decay=float(opt_params.get("weight_decay", 0.0)),
    )
    factor = lr_lambda(args.warmup_steps, total_steps, args.lr_scheduler_type)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        config=cfg,
    )

    ckpt_dir = args.output_dir / "checkpoints"
    epoch, batch_in_epoch, resumed_from = 0, 0, None
    if resume is not None:
        load_dir, tag = resume
        path, client = engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise SystemExit(f"gantry: could not load a checkpoint from {load_dir} ({tag})")
        client = client or {}
        epoch = int(client.get("epoch", 0))
        # The data position is kept as samples of the epoch's shuffled order consumed by
        # all ranks together, so it survives another micro batch (or world) size.
        consumed = int(client.get("epoch_samples", client.get("batch_in_epoch", 0) * mbs * world))
        if client.get("data", digest) != digest:
            log("the checkpoint was trained on other data: this data starts at its beginning")
            epoch, consumed = 0, 0
        batch_in_epoch, rest = divmod(consumed, mbs * world)
        if rest:
            skipped = mbs * world - rest
            log(f"resuming at sample {consumed} of epoch {epoch}: skipping {skipped} more")
            batch_in_epoch += 1
        resumed_from = str(Path(path).parent if Path(path).is_file() else Path(path))
        log(
            f"resumed from {resumed_from} at step {engine.global_steps} "
            f"(epoch {epoch}, micro-batch {batch_in_epoch})"
        )

    step = int(engine.global_steps)
    n_params = count_parameters(engine.module)
    log(
        f"{args.model_name_or_path}: {n_params:,} parameters; {len(dataset)} conversations, "
        f"{per_epoch} micro-batches per rank per epoch; steps {step} -> {total_steps}"
    )
    rep.start(
        step=step,
        world_size=world,
        local_rank=local_rank,
        model=args.model_name_or_path,
        parameters=n_params,
        total_steps=total_steps,
        micro_batch=mbs,
        gradient_accumulation_steps=gas,
        config_changes=adapted.changes,
        resumed_from=resumed_from,
    )

    accel = get_accelerator()
    comm_clock = CollectiveClock()
    comm_clock.take()  # drop what initialize and load_checkpoint spent
    fp16 = bool(engine.fp16_enabled())
    print_every = int(cfg.get("steps_per_print") or 10)
    last_saved = step if resumed_from else -1
    stats = StepStats()
    first_loss: float | None = None
    last_loss: float | None = None

    def save(at_step: int) -> None:
        tag = f"step{at_step}"
        client = {
            "step": at_step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "epoch_samples": batch_in_epoch * mbs * world,
            "micro_batch": mbs,
            "world_size": world,
            "data": digest,
        }
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
        if rank == 0 and not (ckpt_dir / CKPT_TOKENIZER).is_dir():
            tokenizer.save_pretrained(str(ckpt_dir / CKPT_TOKENIZER))
        rep.checkpoint(at_step, tag, ckpt_dir / tag)
        if rank == 0:
            log(f"checkpoint {ckpt_dir / tag}")

    engine.train()
    while step < total_steps:
        loader = rank_batches(
            dataset,
            rank=rank,
            world_size=world,
            micro_batch=mbs,
            seed=args.seed,
            epoch=epoch,
            skip_batches=batch_in_epoch,
            pad_id=int(tokenizer.pad_token_id),
        )
        for batch in loader:
            t0 = time.perf_counter()
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            out = engine(**batch)
            accel.synchronize()
            t1 = time.perf_counter()
            engine.backward(out.loss)
            accel.synchronize()
            t2 = time.perf_counter()
            engine.step()
            accel.synchronize()
            t3 = time.perf_counter()
            batch_in_epoch += 1
            stats.losses.append(float(out.loss.detach().float().item()))
            stats.samples += int(batch["input_ids"].shape[0])
            stats.tokens += int(batch["attention_mask"].sum())
            stats.forward_s += t1 - t0
            stats.backward_s += t2 - t1
            stats.step_s += t3 - t2
            if int(engine.global_steps) == step:
                continue  # within gradient accumulation
            step = int(engine.global_steps)
            elapsed = time.perf_counter() - stats.started
            loss = sum(stats.losses) / len(stats.losses)
            first_loss = loss if first_loss is None else first_loss
            last_loss = loss
            comms = comm_clock.take()
            grad_norm = engine.get_global_grad_norm()
            rep.metrics(
                step,
                epoch=round(epoch + batch_in_epoch / per_epoch, 4),
                loss=loss,
                grad_norm=float(grad_norm) if grad_norm is not None else None,
                lr=float(engine.get_lr()[0]),
                loss_scale=loss_scale(engine.optimizer) if fp16 else None,
                step_time_s=round(elapsed, 6),
                samples_per_s=round(stats.samples / elapsed, 3),
                tokens_per_s=round(stats.tokens / elapsed, 3),
                collective_s=comms,
                collective_total_s=round(sum(comms.values()), 6) if comms is not None else None,
                forward_s=round(stats.forward_s, 6),
                backward_s=round(stats.backward_s, 6),
                optimizer_step_s=round(stats.step_s, 6),
                memory_bytes=memory_bytes(),
            )
            if rank == 0 and (step % print_every == 0 or step == total_steps):
                log(
                    f"step {step}/{total_steps} loss {loss:.4f} lr {engine.get_lr()[0]:.3g} "
                    f"{elapsed:.3f}s/step"
                )
            if step % args.save_steps == 0:
                save(step)
                last_saved = step
            stats = StepStats()
            if step >= total_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    if last_saved != step:
        save(step)

    final_dir = args.output_dir / "final"
    info = {
        "step": step,
        "model": args.model_name_or_path,
        "data": str(data_dir),
        "first_loss": first_loss,
        "last_loss": last_loss,
        "config_changes": adapted.changes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    save_final(engine, engine.module, tokenizer, final_dir, rank, info)
    if rank == 0:
        log(f"final model in {final_dir}")
    rep.step = step
    rep.end("completed", final_dir=str(final_dir), loss=last_loss)
    return 0


class Terminated(SystemExit):
    """SIGTERM (the agent stopping the job): unwind so the end record gets written."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_env(args)
    install_stack_dump()
    signal.signal(signal.SIGTERM, _on_sigterm)
    with Reporter() as rep:
        rep.start_heartbeat()  # liveness from the first second, before the start record
        try:
            code = train(args, rep)
        except Terminated:
            rep.end("terminated", signal="SIGTERM")
            raise
    try:
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at exit
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
