"""Adapting a DeepSpeed config to the hardware it runs on: a pure function.

A reference config written for a GPU cluster (ZeRO-3, optimizer and parameters
offloaded to CPU, fp16, an "optimizer" block, ...) is accepted as is; what this
hardware cannot do, or what the trainer does itself, is changed, and every change is
returned as one line for the trainer to log. Measured on a 2-core AVX2 CPU with
DS_ACCELERATOR=cpu (deepspeed 0.19.8, torch 2.13):

- fp16: DeepSpeed refuses it ("Type fp16 is not supported on your device") unless
  oneDNN has fp16 (AVX512-FP16/AMX). bf16 always runs, but without native bf16
  (AVX512-BF16/AMX) it is emulated and a ZeRO-3 step took 1.75x the fp32 time, so
  fp16 becomes bf16 where the CPU has it natively, else fp32.
- CPU offload with the CPU accelerator moves nothing (the parameters are in host
  memory already) and, with the client AdamW, DeepSpeed refuses to start unless
  "zero_force_ds_cpu_optimizer" is false; ZeRO-3 steps took the same time with and
  without it. Removed on the CPU accelerator; elsewhere kept, with that flag set.
- An "optimizer" block makes DeepSpeed build its own optimizer (fused_adam compiles
  for ~47 s on a CPU); the trainer passes a torch AdamW instead, with the block's
  betas/eps/weight_decay. A "scheduler" block would replace the trainer's
  warmup-then-linear schedule; both are removed.
- comms_logger is enabled (prof_all, not verbose) so time in collectives can be read
  every step, unless the config sets "comms_logger" itself.

Whether bf16 is native on a CPU is probed with torch.ops.mkldnn._is_mkldnn_bf16_supported()
(machines differ: an AMD EPYC with AVX512-BF16 says yes, an AVX2-only CPU no).
GANTRY_CPU_BF16=1 or 0 forces that answer on the cpu accelerator (other accelerators
ignore it; any other value is an error), so a run's precision does not depend on the
machine: a change line then says it was forced and what the probe said.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AUTO = "auto"
BF16_ENV = "GANTRY_CPU_BF16"  # "1" or "0": forces the native-bf16 probe on the cpu accelerator


@dataclass(frozen=True)
class Hardware:
    """What the accelerator can do; `detect_hardware()` fills it in."""

    accelerator: str  # DeepSpeed's device name: "cpu", "cuda", ...
    fp16: bool
    bf16: bool
    bf16_native: bool  # bf16 runs at full speed (not emulated)
    bf16_forced: bool = False  # bf16_native set by GANTRY_CPU_BF16, not by the probe
    bf16_probed: bool | None = None  # where forced: what the probe said


@dataclass
class Adapted:
    config: dict[str, Any]
    changes: list[str] = field(default_factory=list)
    # betas / eps / weight_decay (and lr) from a removed "optimizer" block, for AdamW
    optimizer_params: dict[str, Any] = field(default_factory=dict)


def cpu_bf16_override(environ: Mapping[str, str] | None = None) -> bool | None:
    """GANTRY_CPU_BF16's answer: True for "1", False for "0", None when unset or empty;
    any other value is a ValueError."""
    raw = (os.environ if environ is None else environ).get(BF16_ENV, "").strip()
    if raw == "":
        return None
    if raw not in ("0", "1"):
        raise ValueError(
            f"{BF16_ENV}={raw!r} is not allowed: use 1 (native bf16) or 0 (no native "
            "bf16), or leave it unset to probe the CPU"
        )
    return raw == "1"


def probe_cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def detect_hardware(accelerator: Any = None) -> Hardware:
    """What `accelerator` (DeepSpeed's get_accelerator() unless given) can do; on the cpu
    accelerator GANTRY_CPU_BF16 (1 or 0) overrides the native-bf16 probe. A bad
    GANTRY_CPU_BF16 is a ValueError on every accelerator."""
    forced = cpu_bf16_override()
    if accelerator is None:
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
    acc = accelerator
    name = str(acc.device_name())
    fp16 = bool(acc.is_fp16_supported())
    bf16 = bool(acc.is_bf16_supported())
    if name != "cpu":
        return Hardware(name, fp16=fp16, bf16=bf16, bf16_native=bf16)
    probed = probe_cpu_bf16()
    if forced is None:
        return Hardware(name, fp16=fp16, bf16=bf16, bf16_native=probed)
    return Hardware(
        name,
        fp16=fp16,
        bf16=bf16 or forced,
        bf16_native=forced,
        bf16_forced=True,
        bf16_probed=probed,
    )


def load_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--deepspeed_config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed_config {path}: expected a JSON object")
    return config


def _enabled(block: object) -> bool:
    return isinstance(block, Mapping) and block.get("enabled", False) not in (False, AUTO)


def adapt_config(
    config: Mapping[str, Any],
    hw: Hardware,
    *,
    world_size: int,
    micro_batch: int | None = None,
    grad_accum: int | None = None,
    hidden_size: int | None = None,
    gradient_clipping: float = 1.0,
) -> Adapted:
    """A copy of `config` that runs on `hw` with the trainer's client optimizer and
    scheduler, and the changes made, one human-readable line each.

    `micro_batch`/`grad_accum` (from the command line) override the config's values;
    "auto" values are resolved like the Hugging Face integration resolves them.
    """
    cfg: dict[str, Any] = copy.deepcopy(dict(config))
    out = Adapted(cfg)
    note = out.changes.append

    # Batch sizes: the command line wins, then the config, "auto" meaning defaults.
    for key, value, default, flag in (
        ("train_micro_batch_size_per_gpu", micro_batch, 1, "--per_device_train_batch_size"),
        ("gradient_accumulation_steps", grad_accum, 1, "--gradient_accumulation_steps"),
    ):
        current = cfg.get(key)
        if value is not None:
            if current != value:
                note(f"{key} {current!r} -> {value} ({flag})")
            cfg[key] = value
        elif current == AUTO:
            cfg[key] = default
            note(f'{key} "auto" -> {default} (no {flag} given)')
    mbs = cfg.get("train_micro_batch_size_per_gpu")
    gas = cfg.get("gradient_accumulation_steps")
    tbs = cfg.get("train_batch_size")
    if tbs is not None:
        if isinstance(mbs, int) and isinstance(gas, int):
            if tbs != mbs * gas * world_size:
                del cfg["train_batch_size"]
                note(
                    f"train_batch_size {tbs!r} removed: DeepSpeed derives it as micro batch "
                    f"{mbs} x accumulation {gas} x {world_size} ranks = {mbs * gas * world_size}"
                )
        elif tbs == AUTO:
            del cfg["train_batch_size"]
            note('train_batch_size "auto" removed: DeepSpeed derives it')
    if cfg.get("gradient_clipping") == AUTO:
        cfg["gradient_clipping"] = gradient_clipping
        note(f'gradient_clipping "auto" -> {gradient_clipping}')

    if hw.bf16_forced:
        probe = {True: "found it native", False: "found it emulated", None: "was not asked"}
        note(
            f"{BF16_ENV}={int(hw.bf16_native)}: bf16 taken as "
            f"{'native' if hw.bf16_native else 'emulated'} on the {hw.accelerator} accelerator "
            f"(forced; the probe {probe[hw.bf16_probed]})"
        )
    _adapt_precision(cfg, hw, note)

    # The trainer passes its own optimizer and scheduler.
    opt = cfg.pop("optimizer", None)
    if opt is not None:
        params = opt.get("params", {}) if isinstance(opt, Mapping) else {}
        out.optimizer_params = {k: v for k, v in params.items() if v != AUTO}
        kind = opt.get("type", "?") if isinstance(opt, Mapping) else "?"
        why = (
            "DeepSpeed would compile fused_adam for it on the cpu accelerator (~47 s)"
            if hw.accelerator == "cpu"
            else "DeepSpeed would build its own optimizer"
        )
        note(
            f'"optimizer" block ({kind}) removed: {why}; using torch.optim.AdamW '
            "with its betas/eps/weight_decay and --learning_rate"
        )
    sched = cfg.pop("scheduler", None)
    if sched is not None:
        kind = sched.get("type", "?") if isinstance(sched, Mapping) else "?"
        note(
            f'"scheduler" block ({kind}) removed: the trainer warms up over --warmup_steps, '
            "then decays linearly"
        )

    _adapt_zero(cfg, hw, hidden_size, note)

    if "comms_logger" not in cfg:
        cfg["comms_logger"] = {"enabled": True, "verbose": False, "prof_all": True}
        note("comms_logger enabled (prof_all, not verbose) to time collectives per step")
    return out


def adapt_parallel(
    adapted: Adapted, *, tensor: int = 1, expert: int = 1, moe: bool | None = None
) -> None:
    """The config for the job's layout: DeepSpeed's MoE layer (`moe`; by default when
    expert > 1) does not run under ZeRO stage 3, lowered to 2; tensor parallelism is
    DeepSpeed's AutoTP for training."""
    cfg, note = adapted.config, adapted.changes.append
    zero = cfg.get("zero_optimization")
    moe = expert > 1 if moe is None else moe
    if moe and isinstance(zero, dict) and zero.get("stage") == 3:
        zero["stage"] = 2
        for key in [k for k in zero if k.startswith("stage3_")]:
            del zero[key]
        note(
            f"zero_optimization.stage 3 -> 2: DeepSpeed's MoE layer (expert parallel {expert}) "
            "does not run under ZeRO stage 3"
        )
    if tensor > 1:
        block = cfg.get("tensor_parallel")
        current = block.get("autotp_size") if isinstance(block, Mapping) else None
        if current != tensor:
            cfg["tensor_parallel"] = {
                **(block if isinstance(block, Mapping) else {}),
                "autotp_size": tensor,
            }
            note(f"tensor_parallel.autotp_size {current!r} -> {tensor} (the job's parallelism)")


def _adapt_precision(cfg: dict[str, Any], hw: Hardware, note: Any) -> None:
    fp16 = cfg.get("fp16")
    bf16 = cfg.get("bf16", cfg.get("bfloat16"))
    bf16_key = "bf16" if "bf16" in cfg or "bfloat16" not in cfg else "bfloat16"
    fp16_auto = isinstance(fp16, Mapping) and fp16.get("enabled") == AUTO
    bf16_auto = isinstance(bf16, Mapping) and bf16.get("enabled") == AUTO

    if fp16_auto or bf16_auto:  # "auto": the best this hardware does well
        best = "bf16" if hw.bf16_native else "fp16" if hw.fp16 else "fp32"
        cfg["fp16"] = {**(fp16 if isinstance(fp16, Mapping) else {}), "enabled": best == "fp16"}
        cfg[bf16_key] = {**(bf16 if isinstance(bf16, Mapping) else {}), "enabled": best == "bf16"}
        note(f'precision "auto" -> {best} on the {hw.accelerator} accelerator')
        return

    if _enabled(fp16) and not hw.fp16:
        cfg.pop("fp16")
        if hw.bf16_native:
            cfg[bf16_key] = {"enabled": True}
            note(f"fp16 is not supported on the {hw.accelerator} accelerator; using bf16")
        else:
            cfg.pop(bf16_key, None)
            note(
                f"fp16 is not supported on the {hw.accelerator} accelerator and bf16 would be "
                "emulated (no native bf16); using fp32"
            )
    elif _enabled(bf16) and not hw.bf16:
        cfg.pop(bf16_key)
        note(f"bf16 is not supported on the {hw.accelerator} accelerator; using fp32")


def _adapt_zero(cfg: dict[str, Any], hw: Hardware, hidden_size: int | None, note: Any) -> None:
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict):
        return
    for key in ("offload_optimizer", "offload_param"):
        block = zero.get(key)
        if not isinstance(block, Mapping) or block.get("device", "none") in ("none", None):
            continue
        if hw.accelerator == "cpu":
            del zero[key]
            note(
                f"zero_optimization.{key} to {block.get('device')} removed: the cpu "
                "accelerator already keeps everything in host memory"
            )
        elif key == "offload_optimizer" and cfg.get("zero_force_ds_cpu_optimizer") is not False:
            cfg["zero_force_ds_cpu_optimizer"] = False
            note(
                "zero_force_ds_cpu_optimizer -> false: the optimizer states are offloaded "
                "and stepped by the trainer's torch AdamW on the CPU"
            )
    autos = {
        "reduce_bucket_size": hidden_size * hidden_size if hidden_size else None,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size)
        if hidden_size
        else None,
        "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else None,
    }
    for key in [k for k, v in zero.items() if v == AUTO]:
        value = autos.get(key)
        if value is None:
            del zero[key]
            note(f'zero_optimization.{key} "auto" removed: DeepSpeed\'s default applies')
        else:
            zero[key] = value
            note(f'zero_optimization.{key} "auto" -> {value} (from hidden size {hidden_size})')


def summary(cfg: Mapping[str, Any]) -> str:
    """One line: stage, precision, batch; for logs."""
    zero = cfg.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    precision = (
        "fp16" if _enabled(cfg.get("fp16")) else "bf16" if _enabled(cfg.get("bf16")) else "fp32"
    )
    return (
        f"ZeRO stage {stage}, {precision}, micro batch "
        f"{cfg.get('train_micro_batch_size_per_gpu')}, accumulation "
        f"{cfg.get('gradient_accumulation_steps')}"
    )
