"""The DeepSpeed engine of a rank: the model (with activation checkpointing, and DeepSpeed's
MoE layer under expert parallelism), the DeepSpeed config adapted to the hardware and the
layout, the client AdamW and the learning-rate schedule."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantry.v1.parallelism import BUILTIN_EXPERTS

from agent.rank.parallel_plan import ParallelPlan
from agent.rank.train_setup import RankData, is_universal, log, lr_lambda

DEFAULT_LR = 5e-5


@dataclass
class RankEngine:
    """The DeepSpeed engine with the config it was built from and the run's length."""

    engine: Any
    config: dict[str, Any]
    changes: list[str]
    micro_batch: int
    grad_accum: int
    per_epoch: int
    total_steps: int


def check_layout(plan: ParallelPlan, model_name: str) -> None:
    """Refuse a layout the world or the model cannot run: one line naming the numbers."""
    problem = plan.problem(BUILTIN_EXPERTS.get(model_name))
    if problem is None and plan.tensor > 1 and plan.expert > 1:
        problem = (
            f"tensor parallel {plan.tensor} with expert parallel {plan.expert}: the trainer "
            "runs one of the two at a time (DeepSpeed's MoE layer needs its own tensor groups)"
        )
    if problem is not None:
        raise SystemExit(f"gantry: {problem}")


def uses_deepspeed_moe(args: argparse.Namespace, plan: ParallelPlan) -> bool:
    """Expert parallelism, or --deepspeed_moe (the same layer at expert parallel 1)."""
    return plan.expert > 1 or bool(getattr(args, "deepspeed_moe", False))


def build_model(args: argparse.Namespace, data: RankData, plan: ParallelPlan) -> Any:
    """The model, its MoE blocks DeepSpeed's under expert parallelism; checkpointing on."""
    from agent.ml.models import build_model as build

    model = build(args.model_name_or_path, data.tokenizer, seed=args.seed)
    if uses_deepspeed_moe(args, plan):
        from agent.ml.moe_deepspeed import use_deepspeed_moe

        try:
            blocks = use_deepspeed_moe(model, plan.expert, args.seed)
        except ValueError as exc:
            raise SystemExit(f"gantry: {exc}") from None
        log(f"{blocks} MoE block(s) on DeepSpeed's MoE layer, expert parallel {plan.expert}")
    if args.gradient_checkpointing:
        # Non-reentrant: works with inputs that need no grad and with DeepSpeed's engine.
        enable = model.gradient_checkpointing_enable
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})  # type: ignore[no-untyped-call]
        model.config.use_cache = False
        log("gradient checkpointing on: activations are recomputed in the backward pass")
    return model


def build_engine(
    args: argparse.Namespace,
    data: RankData,
    rank: int,
    world: int,
    logging_dir: Path,
    plan: ParallelPlan | None = None,
) -> RankEngine:
    """The model, the DeepSpeed config adapted to the hardware, AdamW and the LR schedule."""
    import deepspeed
    import torch

    from agent.ml.data import batches_per_epoch
    from agent.rank import ds_config

    plan = plan or ParallelPlan(rank, world)
    try:
        hw = ds_config.detect_hardware()
    except ValueError as exc:  # a bad GANTRY_CPU_BF16: fails before the model is built
        raise SystemExit(f"gantry: {exc}") from None
    check_layout(plan, args.model_name_or_path)
    model = build_model(args, data, plan)
    adapted = ds_config.adapt_config(
        ds_config.load_config(args.deepspeed_config),
        hw,
        world_size=world,
        micro_batch=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
        hidden_size=getattr(model.config, "hidden_size", None),
    )
    ds_config.adapt_parallel(
        adapted, tensor=plan.tensor, expert=plan.expert, moe=uses_deepspeed_moe(args, plan)
    )
    cfg = adapted.config
    resume = data.resume
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
    # Tensor-parallel ranks share a micro batch: the data is split over the data ranks.
    data_world = world // plan.tensor
    per_epoch = batches_per_epoch(data.dataset, data_world, mbs)
    total_steps = (
        args.max_steps
        if args.max_steps > 0
        else max(1, math.ceil(args.num_train_epochs * per_epoch / gas))
    )
    opt_params = adapted.optimizer_params
    lr = args.learning_rate or float(opt_params.get("lr", DEFAULT_LR))
    weight_decay = float(opt_params.get("weight_decay", 0.0))
    params: Any = model.parameters()
    if uses_deepspeed_moe(args, plan):
        from agent.ml.moe_deepspeed import optimizer_groups

        params = optimizer_groups(model, weight_decay)
    optimizer = torch.optim.AdamW(
        params,
        lr=lr,
        betas=tuple(opt_params.get("betas", (0.9, 0.999))),
        eps=float(opt_params.get("eps", 1e-8)),
        weight_decay=weight_decay,
    )
    factor = lr_lambda(args.warmup_steps, total_steps, args.lr_scheduler_type)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor),
        config=cfg,
    )
    return RankEngine(engine, cfg, adapted.changes, mbs, gas, per_epoch, total_steps)
