"""The progress lines of plain training loops read as ``RankMetrics``: scripts that print their
own ``print(f"...")`` line per step instead of using a trainer library. Pure: no I/O, no state.

Each shape below is one project's exact format string (source and commit in the comment, a real
line in tests/test_loop_lines.py or the corpus); a line that is not exactly one of them gives
nothing: no generic "a number after 'loss'". Figures are taken as the script prints them
(``tokens_per_s`` is the script's tok/s, per GPU or per job as it says); a step is the script's
own step count. Evaluation lines are not steps: nanoGPT's ``step N: train loss ..., val loss
...`` and Megatron's ``validation loss at iteration N | lm loss value: ...`` give only
``eval_loss`` at their step; modded-nanogpt's ``val_loss:``, torchtitan's ``validate step:`` and
timm's ``Test:`` give nothing.

``epoch`` is set as the Hugging Face Trainer sets it (epochs done, fractional) and only where the
line decides it: timm's ``[idx/per-epoch]`` and the DDP tutorial's per-epoch ``Steps:``. A line
with an epoch number but not the epoch's length (litgpt's ``Epoch 2``) leaves it unset.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from gantry.v1 import job_pb2

from agent.jobs.metrics_records import MAX_COUNT, whole_number
from agent.jobs.node.log_findings import strip_prefix

__all__ = ["TOTAL_ARGS", "loop_metrics", "may_hold"]

# Command-line options that give the run's last step, in the same count as the lines below.
TOTAL_ARGS = ("--max_iters", "--training.steps")  # nanoGPT's configurator; torchtitan

_N = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_B = r"(?<![\w.])"  # a shape starts a line or follows a prefix (rank, logger, time stamp)

# karpathy/nanoGPT train.py @3adf61e1 (and before mfu was added, without it):
#   print(f"iter {iter_num}: loss {lossf:.4f}, time {dt*1000:.2f}ms, mfu {running_mfu*100:.2f}%")
# dt: the whole iteration (all micro-steps). Total: --max_iters (iter_num runs 0..max_iters).
_NANOGPT = re.compile(
    _B + rf"iter (?P<step>\d+): loss (?P<loss>{_N}), time (?P<ms>{_N})ms(?:, mfu (?:{_N})%)?\s*$"
)
# karpathy/llm.c train_gpt2.py @f1e2ace6 (tok/s: the job's, grad_accum * world * B * T / dt):
#   f"step {step+1:4d}/{args.num_iterations} | train loss {lossf:.6f} | norm {norm:.4f} |
#     lr {lr:.2e} | ({(t1-t0)*1000:.2f} ms | {tokens_per_second:.0f} tok/s)"
_LLMC_PY = re.compile(
    _B + rf"step\s+(?P<step>\d+)/(?P<total>\d+) \| train loss (?P<loss>{_N}) \| norm (?P<norm>"
    rf"{_N}) \| lr (?P<lr>{_N}) \| \((?P<ms>{_N}) ms \| (?P<tps>{_N}) tok/s\)\s*$"
)
# karpathy/llm.c train_gpt2.cu @f1e2ace6 (tok/s: the job's, smoothed):
#   "step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms |
#    %.1f%% bf16 MFU | %.0f tok/s\n"
_LLMC_CU = re.compile(
    _B + rf"step\s+(?P<step>\d+)/(?P<total>\d+) \| loss\s+(?P<loss>{_N}) \([^)]{{1,12}}z\)\|"
    rf" norm\s+(?P<norm>{_N}) \([^)]{{1,12}}z\)\| lr (?P<lr>{_N}) \| (?P<ms>{_N}) ms \|"
    rf"\s+(?:{_N})% bf16 MFU \| (?P<tps>{_N}) tok/s\s*$"
)
# karpathy/nanochat scripts/base_train.py @92d63d4e (chat_sft.py: no "/total"); loss: the
# debiased EMA of the train loss; tok/sec: the job's (total_batch_size / dt):
#   f"step {step:05d}/{num_iterations:05d} ({pct_done:.2f}%) | loss: {debiased_smooth_loss:.6f}
#     | lrm: {lrm:.2f} | dt: {dt * 1000:.2f}ms | tok/sec: {tok_per_sec:,} | ..."
_NANOCHAT = re.compile(
    _B + rf"step (?P<step>\d+)(?:/(?P<total>\d+))? \((?:{_N})%\) \| loss: (?P<loss>{_N}) \|"
    rf" lrm: (?:{_N}) \| dt: (?P<ms>{_N})ms \| tok/sec: (?P<tps>[\d,]+) \|"
)
# KellerJordan/modded-nanogpt train_gpt.py @f411b3d3 (records before 2025: with train_loss):
#   f"step:{step+1}/{train_steps} train_time:{approx_training_time_ms:.0f}ms step_avg:...ms"
# step_avg is the mean since the start, not this step's time: not taken.
_MODDED = re.compile(
    _B + rf"step:(?P<step>\d+)/(?P<total>\d+) (?:train_loss:(?P<loss>{_N}) )?"
    rf"train_time:\d+ms step_avg:(?:{_N})ms\s*$"
)
# Lightning-AI/litgpt litgpt/pretrain.py, finetune/{lora,full,adapter}.py @26857050: iter
# time is the last micro-batch's; it is the step's only without accumulation (iter == step):
#   f"Epoch {metrics['epoch'] + 1} | iter {metrics['iter']} step {metrics['step']} |"
#   f" loss train: {metrics['loss']:.3f}," f" val: {val_loss} |"
#   f" iter time: {metrics['iter_time'] * 1000:.2f} ms"
#   f"{' (step)' if not is_accumulating else ''}"
_LITGPT = re.compile(
    _B + rf"Epoch \d+ \| iter (?P<iter>\d+) step (?P<step>\d+) \| loss train: (?P<loss>{_N}),"
    rf" val: (?:n/a|None|{_N}) \| iter time: (?P<ms>{_N}) ms(?P<opt> \(step\))?(?:\s|$)"
)
# lit-gpt (litgpt before 2024-03, Lightning-AI/litgpt#689):
#   "iter 77 step 39: loss 10.8259, iter time: 214.40ms (optimizer.step)"
_LITGPT_OLD = re.compile(
    _B + rf"iter (?P<iter>\d+) step (?P<step>\d+): loss (?P<loss>{_N}), iter time:"
    rf" (?P<ms>{_N})ms(?P<opt> \(optimizer\.step\))?\s*$"
)
# pytorch/torchtitan torchtitan/components/metrics.py @b5bcd76c (before: no grad_norm, no
# tflops, "wps"); tps is per device. memory is the reserved peak since the last line: not taken.
#   f"step: {step:2}  loss: {global_avg_loss:8.5f}  grad_norm: {grad_norm:7.4f}  memory:
#     {max_reserved_gib:5.2f}GiB({max_reserved_pct:.2f}%)  tps: {round(tps):,}  tflops:
#     {tflops:,.2f}  mfu: {mfu_str}"        (colours around each field; "validate step:" apart)
_TORCHTITAN = re.compile(
    r"(?<![\w.])(?<!validate )step:\s*(?P<step>\d+)\s+loss:\s*(?P<loss>"
    rf"{_N})\s+(?:grad_norm:\s*(?P<norm>{_N})\s+)?memory:\s*(?:{_N})GiB\((?:{_N})%\)\s+"
    r"(?:tps|wps):\s*(?P<tps>[\d,]+)(?:\s+tflops:\s*(?P<tflops>[\d,]*\.?\d+))?\s+mfu:"
)
# huggingface/pytorch-image-models train.py @aa4b5850 (and 2019-2023 with batch_idx/len):
#   f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} ({100. * (update_idx + 1) /
#   updates_per_epoch:>3.0f}%)]  Loss: {loss_now:#.3g} ({loss_avg:#.3g})  Time: {val:.3f}s,
#   {samples / val:>7.2f}/s  ({avg:.3f}s, {rate_avg:>7.2f}/s)  LR: {lr:.3e}  Data: ...'
# Epoch is 0-based; its updates so far are idx + 1 (timm's num_updates).
_TIMM = re.compile(
    _B + rf"Train: (?P<epoch>\d+) \[\s*(?P<idx>\d+)/(?P<per>\d+) \(\s*(?:{_N})%\)\]\s+Loss:\s+"
    rf"(?P<loss>{_N}) \(\s*(?:{_N})\)\s+Time: (?P<s>{_N})s,\s+(?P<rate>{_N})/s\s+\(\s*(?:{_N})s,"
    rf"\s+(?:{_N})/s\)\s+LR: (?P<lr>{_N})\s+Data: "
)
# pytorch/tutorials beginner_source/blitz/cifar10_tutorial.py ('[%d, %5d] loss: %.3f' %
# (epoch + 1, i + 1, running_loss / 2000)) and deepspeedai/DeepSpeedExamples
# training/cifar/cifar10_deepspeed.py @45b4b715 (f"[{epoch + 1 : d}, {i + 1 : 5d}] loss: ...").
# Batches of this epoch; the epoch's length is never printed, so only epoch 1's batch count is
# the run's: later epochs give nothing rather than a guessed step. The loss is a mean of the
# last N batches.
_CIFAR = re.compile(rf"\[\s*(?P<epoch>\d+),\s+(?P<batch>\d+)\] loss:\s+(?P<loss>{_N})\s*$")
# pytorch/examples distributed/ddp-tutorial-series/{single_gpu,multigpu,multigpu_torchrun,
# multinode}.py @77f55b91, at the start of each (0-based) epoch:
#   f"[GPU{self.gpu_id}] Epoch {epoch} | Batchsize: {b_sz} | Steps: {len(self.train_data)}"
# Steps done then: epoch * Steps (a resumed run prints the snapshot's epoch).
_DDP = re.compile(
    _B + r"\[GPU\d+\] Epoch (?P<epoch>\d+) \| Batchsize: \d+ \| Steps: (?P<per>\d+)\s*$"
)


# Evaluations, read for their loss only (``eval_loss`` at the step they ran at):
# karpathy/nanoGPT train.py @3adf61e1:
#   print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
_NANOGPT_EVAL = re.compile(
    _B + rf"step (?P<step>\d+): train loss (?:{_N}), val loss (?P<eval>{_N})\s*$"
)
# NVIDIA/Megatron-LM megatron/training/training.py evaluate_and_print_results:
#   f" validation loss at {prefix} | " + "{} value: {:.6E} | ".format(key, ...) per loss key,
#   prefix "iteration N" (newer: "iteration N on validation set"); the first key's value.
_MEGATRON_EVAL = re.compile(
    _B + r"validation loss at iteration (?P<step>\d+)(?: on [\w ]{1,40})? \| "
    rf"lm loss value: (?P<eval>{_N}) \|"
)


def may_hold(line: str) -> bool:
    """Whether ``line`` may be one of the shapes (a cheap test before the regexes)."""
    return "loss" in line or "Loss:" in line or "Steps: " in line or "train_time:" in line


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _set(m: job_pb2.RankMetrics, found: re.Match[str], group: str, attr: str, scale: float) -> None:
    text = found.groupdict().get(group)
    value = _float(text)
    if value is None and attr == "loss" and text and text.strip("+-").lower() in ("nan", "inf"):
        value = float(text)  # shown as it is (the scanner's nan_loss alert says it too)
    if value is not None:
        setattr(m, attr, value * scale)


def _plain(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    """Lines whose step is printed as the run's own, with the figures named in the groups."""
    step = whole_number(found["step"])
    if step is None:
        return None
    m = job_pb2.RankMetrics(step=step)
    total = whole_number(found.groupdict().get("total") or "")
    if total:
        m.total_steps = total
    for group, attr, scale in (
        ("loss", "loss", 1.0),
        ("norm", "grad_norm", 1.0),
        ("lr", "learning_rate", 1.0),
        ("ms", "step_time_s", 1e-3),
        ("tps", "tokens_per_s", 1.0),
        ("tflops", "tflops", 1.0),
    ):
        _set(m, found, group, attr, scale)
    return m


def _litgpt(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    m = _plain(found)
    if m is not None and not (found["opt"] and found["iter"] == found["step"]):
        m.ClearField("step_time_s")  # a micro-batch's time, not the step's
    return m


def _timm(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    epoch, idx, per = (whole_number(found[k]) for k in ("epoch", "idx", "per"))
    if epoch is None or idx is None or not per or idx >= per or epoch * per > MAX_COUNT:
        return None
    m = job_pb2.RankMetrics(step=epoch * per + idx + 1, epoch=epoch + (idx + 1) / per)
    _set(m, found, "loss", "loss", 1.0)
    _set(m, found, "s", "step_time_s", 1.0)
    _set(m, found, "rate", "samples_per_s", 1.0)
    _set(m, found, "lr", "learning_rate", 1.0)
    return m


def _cifar(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    if found["epoch"] != "1":
        return None
    step = whole_number(found["batch"])
    if step is None:
        return None
    m = job_pb2.RankMetrics(step=step)
    _set(m, found, "loss", "loss", 1.0)
    return m


def _ddp(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    epoch, per = whole_number(found["epoch"]), whole_number(found["per"])
    if epoch is None or not per or epoch * per > MAX_COUNT:
        return None
    return job_pb2.RankMetrics(step=epoch * per, epoch=float(epoch))


def _eval(found: re.Match[str]) -> job_pb2.RankMetrics | None:
    step, loss = whole_number(found["step"]), _float(found["eval"])
    if step is None or loss is None:
        return None
    return job_pb2.RankMetrics(step=step, eval_loss=loss, eval_step=step)


_Reader = Callable[[re.Match[str]], job_pb2.RankMetrics | None]
# (a substring every line of the shape holds, the shape, its reader), the cheap test first.
_SHAPES: tuple[tuple[str, re.Pattern[str], _Reader], ...] = (
    (": loss ", _NANOGPT, _plain),
    ("| train loss ", _LLMC_PY, _plain),
    (" bf16 MFU ", _LLMC_CU, _plain),
    ("| lrm: ", _NANOCHAT, _plain),
    ("train_time:", _MODDED, _plain),
    ("| loss train: ", _LITGPT, _litgpt),
    (", iter time: ", _LITGPT_OLD, _litgpt),
    ("memory:", _TORCHTITAN, _plain),
    ("Train: ", _TIMM, _timm),
    ("Steps: ", _DDP, _ddp),
    (", val loss ", _NANOGPT_EVAL, _eval),
    ("validation loss at iteration ", _MEGATRON_EVAL, _eval),
)


def loop_metrics(text: str) -> job_pb2.RankMetrics | None:
    """The figures of one plain-loop progress line (ANSI colours already removed), else None.
    A step of 0 is returned as such: the caller drops it (nothing trained yet)."""
    if not may_hold(text) or len(text) > 2048:
        return None
    for needle, shape, read in _SHAPES:
        if needle in text:
            found = shape.search(text)
            if found is not None:
                return read(found)
    if "] loss:" in text:
        found = _CIFAR.fullmatch(strip_prefix(text).strip())
        if found is not None:
            return _cifar(found)
    return None
