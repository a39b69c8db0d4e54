"""Gantry's records from a Hugging Face `Trainer`: one callback, added in one line.

    from agent.rank.hf_callback import GantryCallback

    trainer = Trainer(model=model, args=args, train_dataset=train_dataset)
    trainer.add_callback(GantryCallback())   # no-op unless Gantry runs the script
    trainer.train(resume_from_checkpoint=...)

Every rank writes its own records to $GANTRY_METRICS_FILE (agent.report), the same ones
Gantry's own trainer writes:

- `start` at train begin: world_size, local_rank, total_steps (`state.max_steps`),
  micro_batch, gradient_accumulation_steps, model, parameters, deepspeed, and
  resumed_from when the Trainer resumed from a checkpoint; then phase `first_step`,
  and phase `training` once the first step is done.
- `metrics` for every optimizer step, at `state.global_step`: total_steps,
  step_time_s (from the step's first micro-batch to the end of its optimizer step; the
  Trainer fetches the batches before), forward_s, backward_s, optimizer_step_s,
  samples_per_s and tokens_per_s (this rank's batches: non-padding tokens by the
  attention mask; else `state.num_input_tokens_seen` over the world size when the
  Trainer counts tokens), collective_s per op and collective_total_s when DeepSpeed's
  comms logger is on (`"comms_logger": {"enabled": true, "prof_all": true}`),
  memory_bytes. On the steps the Trainer logs, its loss, grad_norm, learning rate (as
  lr) and epoch are merged into that step's record, and an evaluation's eval_loss into
  the step it ran at. Under DeepSpeed the engine steps the optimizer inside the last
  backward pass, so backward_s includes it and optimizer_step_s is absent.
- `checkpoint` after each save: tag `checkpoint-N`, path OUTPUT_DIR/checkpoint-N.
- A checkpoint the agent asks for (a preemption notice, agent.rank.checkpoint_request):
  at the step's end the Trainer is told to save (`control.should_save`); once saved, the
  request is answered. Under torch.distributed every rank saves when any rank was asked
  (one all-reduce of a flag per step while Gantry runs the script): a node that got no
  request must not leave the others' collective save waiting.
- `end` at train end, with the last logged loss. Heartbeats go on until the process
  exits, so what the script does after `train()` is not taken for a hang.

Imports only transformers (and torch, which the Trainer needs), agent.report and
agent.rank.checkpoint_request.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from agent.rank.any_rank import any_rank_asked
from agent.rank.checkpoint_request import CheckpointRequests
from agent.rank.report import CollectiveClock, Reporter, memory_bytes, process_reporter

__all__ = ["GantryCallback"]

# Trainer log key -> metrics record key
_LOG_FIELDS = {"loss": "loss", "grad_norm": "grad_norm", "learning_rate": "lr", "epoch": "epoch"}


def _sync() -> None:
    """Wait for queued GPU work, so a clock read after it measures the work itself."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    elif isinstance(value, torch.Tensor) and value.numel() == 1:
        number = float(value.item())
    else:
        return None
    return number


def _parameters(model: torch.nn.Module) -> int:
    return sum(getattr(p, "ds_numel", 0) or p.numel() for p in model.parameters())


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    return str(name) if name else type(model).__name__


class GantryCallback(TrainerCallback):
    """Writes Gantry's rank records from the Trainer's events (see the module docstring).

    `reporter` defaults to the process's one reporter (agent.report.process_reporter),
    which the script may also use through agent.report.report()."""

    def __init__(
        self, reporter: Reporter | None = None, requests: CheckpointRequests | None = None
    ) -> None:
        self.reporter = reporter if reporter is not None else process_reporter()
        # Checkpoints the agent asks for ($GANTRY_CHECKPOINT_REQUEST_FILE; unset: never).
        self.requests = requests if requests is not None else CheckpointRequests()
        self._asked: str | None = None  # the request the next save answers
        self.reporter.start_heartbeat()  # alive from here, before the model is ready
        self._clock = CollectiveClock()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._deepspeed = False
        self._world = 1
        self._count_tokens_seen = False
        self._trained_steps = 0
        self._last_loss: float | None = None
        self._pending: dict[str, Any] | None = None  # this step's record, awaiting on_log
        self._active = False  # between train begin and end, with a metrics file
        self._reset_step()

    def _reset_step(self) -> None:
        self._in_step = False
        self._t_begin = 0.0
        self._t_pre_optimizer: float | None = None
        self._t_optimizer: float | None = None
        self._t_forward: float | None = None
        self._forward_s = 0.0
        self._micro_steps = 0
        self._samples = 0
        self._tokens: list[torch.Tensor | int] = []
        self._tokens_seen_at = 0

    # --- model hooks: forward time and this rank's batch sizes ---------------------------

    def _hook(self, model: torch.nn.Module) -> None:
        self._unhook()
        self._hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, with_kwargs=True),
        ]

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _before_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not self._in_step:
            return  # evaluation, generation
        self._micro_steps += 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() >= 1:
            self._samples += int(ids.shape[0])
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
                self._tokens.append(mask.detach().sum())  # read after the step: no sync here
            else:
                self._tokens.append(int(ids.numel()))
        _sync()
        self._t_forward = time.perf_counter()

    def _after_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not self._in_step or self._t_forward is None:
            return
        _sync()
        self._forward_s += time.perf_counter() - self._t_forward
        self._t_forward = None

    # --- Trainer events ------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        rep = self.reporter
        self._active = rep.enabled
        if not self._active:
            return  # not run by Gantry: no hooks, no clocks, no GPU syncs
        rep.rank = args.process_index
        self._deepspeed = bool(args.deepspeed)
        self._world = max(1, args.world_size)
        self._count_tokens_seen = args.include_num_input_tokens_seen not in ("no", False, None)
        self._trained_steps = 0
        self._pending = None
        self._reset_step()
        rep.start(
            step=state.global_step,
            world_size=args.world_size,
            local_rank=args.local_process_index,
            total_steps=state.max_steps,
            micro_batch=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            model=_model_name(model) if model is not None else None,
            parameters=_parameters(model) if model is not None else None,
            deepspeed=self._deepspeed,
            resumed_from=self._resumed_from(args, state),
        )
        rep.phase("first_step")
        if model is not None:
            self._hook(model)
        self._clock.take()  # what setting up and loading a checkpoint spent is not a step's

    @staticmethod
    def _resumed_from(args: TrainingArguments, state: TrainerState) -> str | None:
        if state.global_step <= 0:
            return None  # the Trainer had loaded no checkpoint's state
        own = os.path.join(args.output_dir or "", f"checkpoint-{state.global_step}")
        given = args.resume_from_checkpoint
        if os.path.isdir(own):
            return own
        if given and os.path.isdir(given):
            return str(given)
        return f"checkpoint-{state.global_step}"

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._active:
            return
        self._flush()
        self._reset_step()
        self._tokens_seen_at = int(state.num_input_tokens_seen or 0)
        self._in_step = True
        _sync()
        self._t_begin = time.perf_counter()

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._in_step:
            _sync()
            self._t_pre_optimizer = time.perf_counter()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._in_step:
            _sync()
            self._t_optimizer = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._honour_request(control)
        if not self._in_step:
            return
        _sync()
        now = time.perf_counter()
        self._in_step = False
        elapsed = max(now - self._t_begin, 1e-9)
        computed = (self._t_pre_optimizer or now) - self._t_begin
        samples = self._samples or args.per_device_train_batch_size * max(1, self._micro_steps)
        tokens: float | None = None
        if self._tokens:
            tokens = float(sum(int(t) for t in self._tokens))
        elif self._count_tokens_seen:
            seen = int(state.num_input_tokens_seen or 0) - self._tokens_seen_at
            tokens = seen / self._world  # the Trainer counts every rank's tokens
        optimizer_s: float | None = None
        if not self._deepspeed and self._t_pre_optimizer is not None and self._t_optimizer:
            optimizer_s = self._t_optimizer - self._t_pre_optimizer
        comms = self._clock.take()
        record: dict[str, Any] = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "step_time_s": round(elapsed, 6),
            "samples_per_s": round(samples / elapsed, 3),
            "tokens_per_s": round(tokens / elapsed, 3) if tokens is not None else None,
            "collective_s": comms,
            "collective_total_s": round(sum(comms.values()), 6) if comms is not None else None,
            "forward_s": round(self._forward_s, 6) if self._micro_steps else None,
            "backward_s": round(max(0.0, computed - self._forward_s), 6)
            if self._micro_steps
            else None,
            "optimizer_step_s": round(optimizer_s, 6) if optimizer_s is not None else None,
            "memory_bytes": memory_bytes(),
        }
        self._trained_steps += 1
        if control.should_log:
            self._pending = record  # the Trainer logs this step next: on_log completes it
        else:
            self.reporter.metrics(**record)
        if self._trained_steps == 1:
            self.reporter.phase("training")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._active:
            return
        fields: dict[str, float] = {}
        for key, name in _LOG_FIELDS.items():
            value = _number((logs or {}).get(key))
            if value is not None:
                fields[name] = value
        if not fields.keys() - {"epoch"}:
            # The end-of-training summary or an evaluation's figures: not a step's; an
            # evaluation's loss goes with the step it ran at.
            evaluated = _number((logs or {}).get("eval_loss"))
            if evaluated is not None and math.isfinite(evaluated):
                self.reporter.metrics(state.global_step, eval_loss=evaluated)
            return
        loss = fields.get("loss")
        if loss is not None and math.isfinite(loss):
            self._last_loss = loss
        pending, self._pending = self._pending, None
        if pending is not None and pending["step"] == state.global_step:
            self.reporter.metrics(**{**pending, **fields})
            return
        if pending is not None:
            self.reporter.metrics(**pending)
        # A step already written: the agent merges two records of one step.
        self.reporter.metrics(state.global_step, **fields)

    def _honour_request(self, control: TrainerControl) -> None:
        """A checkpoint asked for (here, or on any rank): the Trainer saves at this step."""
        if self.requests.path is None:
            return  # not run by Gantry: no request, and no collective either
        request = self.requests.pending()
        if request is not None and request != self._asked:
            self._asked = request
        if any_rank_asked(request is not None):
            control.should_save = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._active:
            self._flush()
            tag = f"checkpoint-{state.global_step}"
            path = os.path.join(args.output_dir or "", tag)
            self.reporter.checkpoint(state.global_step, tag, path)
        if self._asked is not None:
            # Reported first: the agent takes the checkpoint record, then this answer.
            self.requests.done(self._asked)
            self._asked = None

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._active:
            return
        self._active = False
        self._flush()
        self._unhook()
        self._in_step = False
        rep = self.reporter
        rep.step = state.global_step
        rep.end("completed", loss=self._last_loss)
        # The script goes on (saving, evaluating) until it exits: stay alive for the
        # agent's hang watch; the process's exit closes the reporter.
        rep.start_heartbeat()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.reporter.metrics(**pending)
