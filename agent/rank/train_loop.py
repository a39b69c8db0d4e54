"""The optimizer steps of one rank: micro-batches in; metrics, checkpoints and the final model
out. Torch and DeepSpeed are imported where they are used, after the rank's set-up."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.rank.any_rank import any_rank_asked
from agent.rank.checkpoint_request import CheckpointRequests
from agent.rank.checkpoint_save import save_atomically, save_folder
from agent.rank.parallel_plan import group_times
from agent.rank.peak_memory import peak_memory_bytes
from agent.rank.report import CollectiveClock, Reporter, memory_bytes
from agent.rank.tensorboard_log import BoardLog
from agent.rank.train_setup import CKPT_TOKENIZER, log


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


@dataclass(frozen=True)
class LoopPlan:
    """The fixed facts of a rank's loop."""

    rank: int
    world_size: int
    micro_batch: int
    per_epoch: int  # micro-batches per rank per epoch
    total_steps: int
    save_steps: int
    print_every: int
    seed: int
    ckpt_dir: Path
    data_digest: str
    tensor_parallel: int = 1  # world_size above counts data-parallel ranks only
    moe_aux_loss_coef: float = 0.0  # the MoE gates' load-balancing loss, added to the loss
    local_rank: int = 0  # the node's local rank 0 publishes each checkpoint saved


@dataclass
class DataPosition:
    """Where in the data the loop is (or resumes): the epoch and its micro-batches consumed."""

    epoch: int = 0
    batch_in_epoch: int = 0
    resumed_from: str | None = None


def loss_scale(optimizer: Any) -> float | None:
    for name in ("loss_scale", "cur_scale"):
        value = getattr(optimizer, name, None)
        if isinstance(value, int | float):
            return float(value)
    return None


class TrainLoop:
    """Runs the optimizer steps up to the plan's total, reporting each and checkpointing."""

    def __init__(
        self,
        engine: Any,
        rep: Reporter,
        tokenizer: Any,
        dataset: Any,
        plan: LoopPlan,
        position: DataPosition,
        board: BoardLog | None = None,
    ) -> None:
        self.engine = engine
        self.rep = rep
        self.board = board  # rank 0's TensorBoard log, if any
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.plan = plan
        self.epoch = position.epoch
        self.batch_in_epoch = position.batch_in_epoch
        self.step = int(engine.global_steps)
        self.last_saved = self.step if position.resumed_from else -1
        self.first_loss: float | None = None
        self.requests = CheckpointRequests()  # $GANTRY_CHECKPOINT_REQUEST_FILE
        self.last_loss: float | None = None

    def save(self, at_step: int) -> None:
        """A DeepSpeed checkpoint tagged stepN, with the data position to resume at; whole or
        absent (agent.rank.checkpoint_save): a failed save ends the rank with its cause."""
        plan = self.plan
        tag = f"step{at_step}"
        client = {
            "step": at_step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_samples": self.batch_in_epoch * plan.micro_batch * plan.world_size,
            "micro_batch": plan.micro_batch,
            "world_size": plan.world_size,
            "data": plan.data_digest,
        }
        ckpt_dir = plan.ckpt_dir
        save_atomically(self.engine, ckpt_dir, tag, client, plan.local_rank)
        if plan.rank == 0 and not (ckpt_dir / CKPT_TOKENIZER).is_dir():
            save_folder(ckpt_dir, CKPT_TOKENIZER, lambda d: self.tokenizer.save_pretrained(str(d)))
        self.rep.checkpoint(at_step, tag, ckpt_dir / tag)
        if plan.rank == 0:
            log(f"checkpoint {ckpt_dir / tag}")

    def _with_aux(self, loss: Any) -> Any:
        """The loss the backward pass takes: the language-model loss (the one reported)
        plus the weighted load-balancing loss of DeepSpeed's MoE gates, if any."""
        if not self.plan.moe_aux_loss_coef:
            return loss
        from agent.ml.moe_deepspeed import aux_loss

        aux = aux_loss(self.engine.module)
        return loss if aux is None else loss + self.plan.moe_aux_loss_coef * aux

    def run(self) -> int:
        """Train to the total steps, then checkpoint the last step if not yet; the step."""
        from deepspeed.accelerator import get_accelerator

        from agent.ml.data import rank_batches

        engine, plan = self.engine, self.plan
        accel = get_accelerator()
        comm_clock = CollectiveClock()
        comm_clock.take()  # drop what initialize and load_checkpoint spent
        fp16 = bool(engine.fp16_enabled())
        stats = StepStats()
        engine.train()
        while self.step < plan.total_steps:
            loader = rank_batches(
                self.dataset,
                rank=plan.rank,
                world_size=plan.world_size,
                micro_batch=plan.micro_batch,
                seed=plan.seed,
                epoch=self.epoch,
                skip_batches=self.batch_in_epoch,
                pad_id=int(self.tokenizer.pad_token_id),
            )
            for batch in loader:
                t0 = time.perf_counter()
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                out = engine(**batch)
                accel.synchronize()
                t1 = time.perf_counter()
                engine.backward(self._with_aux(out.loss))
                accel.synchronize()
                t2 = time.perf_counter()
                engine.step()
                accel.synchronize()
                t3 = time.perf_counter()
                self.batch_in_epoch += 1
                stats.losses.append(float(out.loss.detach().float().item()))
                stats.samples += int(batch["input_ids"].shape[0])
                stats.tokens += int(batch["attention_mask"].sum())
                stats.forward_s += t1 - t0
                stats.backward_s += t2 - t1
                stats.step_s += t3 - t2
                if int(engine.global_steps) == self.step:
                    continue  # within gradient accumulation
                self.step = int(engine.global_steps)
                self._report(stats, comm_clock, fp16)
                asked = self.requests.pending()  # a preemption notice: save now
                if self.step % plan.save_steps == 0 or any_rank_asked(asked is not None):
                    self.save(self.step)
                    self.last_saved = self.step
                if asked is not None:
                    self.requests.done(asked)  # after the checkpoint's record
                stats = StepStats()
                if self.step >= plan.total_steps:
                    break
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.last_saved != self.step:
            self.save(self.step)
        return self.step

    def _report(self, stats: StepStats, comm_clock: CollectiveClock, fp16: bool) -> None:
        """The metrics record of the optimizer step just taken (and rank 0's log line)."""
        engine, plan, step = self.engine, self.plan, self.step
        elapsed = time.perf_counter() - stats.started
        loss = sum(stats.losses) / len(stats.losses)
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        comms = comm_clock.take()
        grad_norm = engine.get_global_grad_norm()
        record: dict[str, Any] = dict(
            epoch=round(self.epoch + self.batch_in_epoch / plan.per_epoch, 4),
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
            peak_memory_bytes=peak_memory_bytes(),
            collective_by_group_s=group_times(comms, plan.tensor_parallel, plan.world_size),
        )
        self.rep.metrics(step, **record)
        if self.board is not None:
            self.board.step(step, record)
        if plan.rank == 0 and (step % plan.print_every == 0 or step == plan.total_steps):
            log(
                f"step {step}/{plan.total_steps} loss {loss:.4f} lr {engine.get_lr()[0]:.3g} "
                f"{elapsed:.3f}s/step"
            )


def save_final(
    engine: Any, model: Any, tokenizer: Any, final_dir: Path, rank: int, info: dict[str, Any]
) -> None:
    """A Hugging Face directory in fp32, gathered from the ZeRO-3 partitions (and, under
    DeepSpeed's MoE layer, every expert gathered into Mixtral's layout)."""
    import deepspeed
    import torch

    from agent.ml.moe_deepspeed import gather_experts, has_deepspeed_moe, mixtral_state_dict

    moe = has_deepspeed_moe(model)
    experts = gather_experts(model) if moe else {}
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
        if moe:
            from transformers import AutoModelForCausalLM

            state = mixtral_state_dict(state, experts)
            model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
            model.load_state_dict(state, strict=True)
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
