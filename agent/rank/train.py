"""What each DeepSpeed rank runs: `python -m agent.train ...`.

    python -m agent.train --deepspeed_config examples/ds_config_zero3.json \\
        --model_name_or_path tiny-moe --data train.jsonl --output_dir OUT \\
        [--per_device_train_batch_size N] [--gradient_accumulation_steps N] \\
        [--num_train_epochs E] [--max_steps N] [--learning_rate LR] [--warmup_steps N] \\
        [--save_steps N] [--resume_from_checkpoint PATH|latest] [--logging_dir DIR] \\
        [--seed S] [--max_length N] [--gradient_checkpointing] \\
        [--expert_parallel_size E] [--tensor_parallel_size T]

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
- --gradient_checkpointing recomputes activations in the backward pass (less memory, about a
  third more compute); each step reports the rank's peak memory (peak_memory_bytes).
- --expert_parallel_size E (default $GANTRY_EXPERT_PARALLEL) puts the MoE blocks on
  DeepSpeed's MoE layer with ep_size=E; --tensor_parallel_size T ($GANTRY_TENSOR_PARALLEL)
  is DeepSpeed's AutoTP (GPU only). The start record carries the rank's coordinates
  (agent.rank.parallel_plan), each metrics record the collective time per group.
- Reports to $GANTRY_METRICS_FILE (agent.report); SIGUSR1 dumps every thread's stack.
- Rank 0 writes TensorBoard event files (loss, learning rate, grad norm, tokens/s, the
  step-time split) to LOGGING_DIR/<start>_attempt<N> (agent.rank.tensorboard_log).

A universal checkpoint (deepspeed.checkpoint.ds_to_universal's output, as the agent
writes for `gantry restart --exclude`) is loaded with checkpoint.load_universal, at any
world size. Resuming from another job's checkpoint uses the tokenizer saved beside it,
and starts new data at its beginning.

Environment: GANTRY_COLLECTIVE_TIMEOUT_S (300) bounds every collective;
GANTRY_CPU_BF16 (1 or 0) forces the native-bf16 probe on the CPU (agent.rank.ds_config);
GANTRY_METRICS_FILE, GANTRY_HEARTBEAT_S (agent.report); DS_ACCELERATOR;
TORCH_EXTENSIONS_DIR; OMP_NUM_THREADS (else cores / LOCAL_WORLD_SIZE or WORLD_SIZE).

This module is the command and the order of a rank's steps; the set-up (process, data,
checkpoint to resume) is `agent.rank.train_setup`, the optimizer steps and the final model
`agent.rank.train_loop`.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.rank.parallel_plan import EXPERT_ENV, TENSOR_ENV, ParallelPlan, env_size
from agent.rank.quick_exit import exit_after
from agent.rank.report import Reporter, install_stack_dump
from agent.rank.tensorboard_log import open_board
from agent.rank.train_engine import DEFAULT_LR, RankEngine, build_engine
from agent.rank.train_loop import (
    DataPosition,
    LoopPlan,
    StepStats,
    TrainLoop,
    engine_barrier,
    loss_scale,
    save_final,
)
from agent.rank.train_setup import (
    CKPT_TOKENIZER,
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    RankData,
    check_same_data,
    collective_timeout,
    data_digest,
    init_distributed,
    is_universal,
    log,
    lr_lambda,
    open_data,
    resolve_data,
    resolve_resume,
    set_threads,
    setup_env,
)

__all__ = [
    "CKPT_TOKENIZER",
    "DEFAULT_LR",
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "RankData",
    "RankEngine",
    "StepStats",
    "Terminated",
    "build_engine",
    "check_same_data",
    "collective_timeout",
    "data_digest",
    "engine_barrier",
    "init_distributed",
    "is_universal",
    "log",
    "loss_scale",
    "lr_lambda",
    "main",
    "open_data",
    "parse_args",
    "resolve_data",
    "resolve_resume",
    "restore",
    "save_final",
    "set_threads",
    "setup_env",
    "train",
]

_TRUE = frozenset({"yes", "true", "t", "y", "1"})
_FALSE = frozenset({"no", "false", "f", "n", "0"})


def _bool(text: str) -> bool:
    """A flag's value as HfArgumentParser reads it (yes/no, true/false, 1/0, ...)."""
    word = text.lower()
    if word not in _TRUE | _FALSE:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return word in _TRUE


def _size_default(name: str) -> int:
    try:
        return env_size(name)
    except ValueError as exc:
        raise SystemExit(f"gantry: {exc}") from None


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
    p.add_argument(
        "--logging_dir",
        type=Path,
        help="TensorBoard event files (rank 0) and the DeepSpeed config used; "
        "default: OUTPUT_DIR/logs",
    )
    p.add_argument(
        "--resume_from_checkpoint",
        help="a checkpoint directory (or its tag) or 'latest': OUTPUT_DIR/checkpoints' "
        "latest if there is one, else a fresh start",
    )
    p.add_argument(
        "--gradient_checkpointing",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="recompute activations in the backward pass instead of keeping them",
    )
    p.add_argument(
        "--expert_parallel_size",
        type=int,
        default=_size_default(EXPERT_ENV),
        help=f"ranks sharing the experts (DeepSpeed's MoE layer); default ${EXPERT_ENV} or 1",
    )
    p.add_argument(
        "--deepspeed_moe",
        action="store_true",
        help="DeepSpeed's MoE layer at expert parallel 1 too (what expert parallelism is "
        "compared with)",
    )
    p.add_argument(
        "--moe_aux_loss_coef",
        type=float,
        default=None,
        help="weight of the gates' load-balancing loss added to the loss on DeepSpeed's MoE "
        "layer; default the model config's router_aux_loss_coef (Mixtral: 0.001)",
    )
    p.add_argument(
        "--tensor_parallel_size",
        type=int,
        default=_size_default(TENSOR_ENV),
        help=f"DeepSpeed AutoTP size (GPU only); default ${TENSOR_ENV} or 1",
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
        "expert_parallel_size",
        "tensor_parallel_size",
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


# --- a rank's steps -----------------------------------------------------------------


def restore(engine: Any, data: RankData, micro_batch: int, world: int) -> DataPosition:
    """Load the checkpoint resumed from, if any; the data position to go on at."""
    if data.resume is None:
        return DataPosition()
    load_dir, tag = data.resume
    path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    if path is None:
        raise SystemExit(f"gantry: could not load a checkpoint from {load_dir} ({tag})")
    client = client or {}
    epoch = int(client.get("epoch", 0))
    # The data position is kept as samples of the epoch's shuffled order consumed by
    # all ranks together, so it survives another micro batch (or world) size.
    per_batch = micro_batch * world
    consumed = int(client.get("epoch_samples", client.get("batch_in_epoch", 0) * per_batch))
    if client.get("data", data.digest) != data.digest:
        log("the checkpoint was trained on other data: this data starts at its beginning")
        epoch, consumed = 0, 0
    batch_in_epoch, rest = divmod(consumed, per_batch)
    if rest:
        log(f"resuming at sample {consumed} of epoch {epoch}: skipping {per_batch - rest} more")
        batch_in_epoch += 1
    resumed_from = str(Path(path).parent if Path(path).is_file() else Path(path))
    log(
        f"resumed from {resumed_from} at step {engine.global_steps} "
        f"(epoch {epoch}, micro-batch {batch_in_epoch})"
    )
    return DataPosition(epoch, batch_in_epoch, resumed_from)


def train(args: argparse.Namespace, rep: Reporter) -> int:
    """One rank's whole run: set up, restore, train, save the final model, report the end."""
    from agent.ml.models import count_parameters

    timeout = collective_timeout()
    set_threads()
    rank, world = init_distributed(timeout)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rep.rank = rank
    args.output_dir.mkdir(parents=True, exist_ok=True)
    logging_dir = args.logging_dir or args.output_dir / "logs"
    logging_dir.mkdir(parents=True, exist_ok=True)

    layout = ParallelPlan(rank, world, args.tensor_parallel_size, args.expert_parallel_size)
    data = open_data(args, world)
    run = build_engine(args, data, rank, world, logging_dir, layout)
    engine = run.engine
    # Tensor-parallel ranks train on the same micro-batches: the data splits over the rest.
    data_rank, data_world = rank // layout.tensor, world // layout.tensor
    position = restore(engine, data, run.micro_batch, data_world)

    step = int(engine.global_steps)
    n_params = count_parameters(engine.module)
    aux_coef = moe_aux_coef(args, engine.module)
    if aux_coef:
        log(f"MoE gates' load-balancing loss weighted {aux_coef:g} in the loss")
    log(
        f"{args.model_name_or_path}: {n_params:,} parameters; {len(data.dataset)} conversations, "
        f"{run.per_epoch} micro-batches per rank per epoch; steps {step} -> {run.total_steps}"
    )
    rep.start(
        step=step,
        world_size=world,
        local_rank=local_rank,
        model=args.model_name_or_path,
        parameters=n_params,
        total_steps=run.total_steps,
        micro_batch=run.micro_batch,
        gradient_accumulation_steps=run.grad_accum,
        config_changes=run.changes,
        resumed_from=position.resumed_from,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        parallelism={"tensor": layout.tensor, "expert": layout.expert} if layout.parallel else None,
        coordinates=layout.coordinates() if layout.parallel else None,
        moe_aux_loss_coef=aux_coef or None,
    )
    plan = LoopPlan(
        rank=data_rank,
        world_size=data_world,
        micro_batch=run.micro_batch,
        per_epoch=run.per_epoch,
        total_steps=run.total_steps,
        save_steps=args.save_steps,
        print_every=int(run.config.get("steps_per_print") or 10),
        seed=args.seed,
        ckpt_dir=args.output_dir / "checkpoints",
        data_digest=data.digest,
        tensor_parallel=layout.tensor,
        moe_aux_loss_coef=aux_coef,
        local_rank=local_rank,
    )
    # Rank 0 only, as HF Trainer: one run folder per attempt; closing flushes the rest.
    board = open_board(logging_dir, world, log) if rank == 0 else None
    loop = TrainLoop(engine, rep, data.tokenizer, data.dataset, plan, position, board)
    try:
        step = loop.run()
    finally:
        if board is not None:
            board.close()

    final_dir = args.output_dir / "final"
    info = {
        "step": step,
        "model": args.model_name_or_path,
        "data": str(data.data_dir),
        "first_loss": loop.first_loss,
        "last_loss": loop.last_loss,
        "config_changes": run.changes,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    save_final(engine, engine.module, data.tokenizer, final_dir, rank, info)
    if rank == 0:
        log(f"final model in {final_dir}")
    rep.step = step
    rep.end("completed", final_dir=str(final_dir), loss=loop.last_loss)
    return 0


class Terminated(SystemExit):
    """SIGTERM (the agent stopping the job): unwind so the end record gets written."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


def moe_aux_coef(args: argparse.Namespace, model: Any) -> float:
    """The load-balancing loss's weight on DeepSpeed's MoE layer (0 without it): the flag,
    else the model's router_aux_loss_coef, as Mixtral weighs its own router loss."""
    from agent.ml.moe_deepspeed import has_deepspeed_moe

    if not has_deepspeed_moe(model):
        return 0.0
    if args.moe_aux_loss_coef is not None:
        return float(args.moe_aux_loss_coef)
    return float(getattr(getattr(model, "config", None), "router_aux_loss_coef", 0.0) or 0.0)


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
    exit_after(main)
