"""Remedies as job spec edits: `apply_remedy` returns an edited copy of a `JobSpec`, and
`describe_changes` says what changed, one line per change. Pure: no I/O.

The trainer's command line wins over the embedded DeepSpeed config (see agent.rank.ds_config), so
each value is edited wherever it is set: every `--flag VALUE` and `--flag=VALUE` occurrence in
`args` and the key in `deepspeed_config_json`. Kinds:

- "halve-micro-batch": halve the micro batch (`--per_device_train_batch_size`,
  `train_micro_batch_size_per_gpu`; rounded down, so an odd one shrinks the global batch
  slightly) and double gradient accumulation (`--gradient_accumulation_steps`,
  `gradient_accumulation_steps`) to keep the global batch. When the micro batch was changed in
  `args` and the accumulation flag is absent there, it is added with twice the accumulation in
  effect (the config's number, else 1), since a flag from `args` would otherwise meet the
  config's old accumulation. When the micro batch lives only in the config, a config without a
  numeric accumulation gets `gradient_accumulation_steps: 2`.
- "set-grad-accum": double gradient accumulation where it is set; when it is set nowhere, add
  the flag if `args` carries the micro batch flag (the trainer takes these flags), else set it
  in the config.
- "lower-lr": halve `--learning_rate`, `optimizer.params.lr` and a DeepSpeed scheduler's
  `scheduler.params.warmup_max_lr` (WarmupLR/WarmupDecayLR set the rate from it).

`RemedyError` (one line) when the spec has nothing to edit or a value is not a number; a
remedy's params are for display only.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gantry.v1 import job_pb2

from console.model.advisor import Remedy

__all__ = ["APPLICABLE_KINDS", "RemedyError", "apply_remedy", "describe_changes"]

MICRO_BATCH_FLAG = "--per_device_train_batch_size"
GRAD_ACCUM_FLAG = "--gradient_accumulation_steps"
LR_FLAG = "--learning_rate"
MICRO_BATCH_KEY = "train_micro_batch_size_per_gpu"
GRAD_ACCUM_KEY = "gradient_accumulation_steps"
LR_PATHS = (("optimizer", "params", "lr"), ("scheduler", "params", "warmup_max_lr"))


class RemedyError(ValueError):
    """The remedy cannot be applied to this spec; the message is one line."""


@dataclass(frozen=True)
class _Loc:
    """Where a flag's value sits in args: its own token, or after the '=' of `--flag=VALUE`."""

    index: int
    inline: bool


def _locate(args: list[str], flag: str) -> list[_Loc]:
    locs: list[_Loc] = []
    for i, token in enumerate(args):
        if token == flag and i + 1 < len(args):
            locs.append(_Loc(i + 1, False))
        elif token.startswith(flag + "="):
            locs.append(_Loc(i, True))
    return locs


def _get(args: list[str], loc: _Loc) -> str:
    token = args[loc.index]
    return token.split("=", 1)[1] if loc.inline else token


def _put(args: list[str], loc: _Loc, value: str) -> None:
    if loc.inline:
        args[loc.index] = args[loc.index].split("=", 1)[0] + "=" + value
    else:
        args[loc.index] = value


def _arg_int(args: list[str], loc: _Loc, flag: str) -> int:
    text = _get(args, loc)
    try:
        return int(text)
    except ValueError:
        raise RemedyError(f"{flag} {text!r} in args is not a whole number") from None


def _arg_float(args: list[str], loc: _Loc, flag: str) -> float:
    text = _get(args, loc)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RemedyError(f"{flag} {text!r} in args is not a number")
    return value


def _config_int(config: dict[str, Any] | None, key: str) -> int | None:
    """The config's whole number at `key`; None when absent or "auto"."""
    value = None if config is None else config.get(key)
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise RemedyError(f"deepspeed_config {key} {value!r} is not a whole number")
    return int(value)


def _load_config(spec: job_pb2.JobSpec) -> dict[str, Any] | None:
    if not spec.deepspeed_config_json:
        return None
    try:
        config = json.loads(spec.deepspeed_config_json)
    except ValueError:
        raise RemedyError(f"job {spec.name}: deepspeed_config_json is not valid JSON") from None
    if not isinstance(config, dict):
        raise RemedyError(f"job {spec.name}: deepspeed_config_json is not a JSON object")
    return config


class _Edit:
    def __init__(self, spec: job_pb2.JobSpec) -> None:
        self.args = list(spec.args)
        self.config = _load_config(spec)
        self.config_changed = False

    def set_config(self, key: str, value: object) -> None:
        assert self.config is not None
        self.config[key] = value
        self.config_changed = True

    def double_grad_accum(self, add_flag: bool) -> None:
        """Doubles accumulation wherever it is set; adds the flag when asked and it is absent."""
        locs = _locate(self.args, GRAD_ACCUM_FLAG)
        in_config = _config_int(self.config, GRAD_ACCUM_KEY)
        for loc in locs:
            _put(self.args, loc, str(2 * _arg_int(self.args, loc, GRAD_ACCUM_FLAG)))
        if in_config is not None:
            self.set_config(GRAD_ACCUM_KEY, 2 * in_config)
        if not locs and add_flag:
            self.args += [GRAD_ACCUM_FLAG, str(2 * (in_config or 1))]
        elif not locs and in_config is None:
            if self.config is None:
                raise RemedyError(
                    f"no gradient accumulation to raise: no {GRAD_ACCUM_FLAG} or "
                    f"{MICRO_BATCH_FLAG} in args and no DeepSpeed config"
                )
            self.set_config(GRAD_ACCUM_KEY, 2)

    def raise_grad_accum(self) -> None:
        # The flag goes in only where accumulation is set nowhere and args carry the micro batch.
        unset = _config_int(self.config, GRAD_ACCUM_KEY) is None
        self.double_grad_accum(add_flag=unset and bool(_locate(self.args, MICRO_BATCH_FLAG)))

    def halve_micro_batch(self) -> None:
        locs = _locate(self.args, MICRO_BATCH_FLAG)
        in_args = [_arg_int(self.args, loc, MICRO_BATCH_FLAG) for loc in locs]
        in_config = _config_int(self.config, MICRO_BATCH_KEY)
        effective = in_args[-1] if in_args else in_config  # the last flag wins, as in argparse
        if effective is None:
            raise RemedyError(
                f"no micro batch to halve: no {MICRO_BATCH_FLAG} in args and no numeric "
                f"{MICRO_BATCH_KEY} in the DeepSpeed config"
            )
        if effective <= 1:
            raise RemedyError(f"the micro batch is already {effective}: it cannot be halved")
        for loc, value in zip(locs, in_args, strict=True):
            _put(self.args, loc, str(max(value // 2, 1)))
        if in_config is not None and in_config > 1:
            self.set_config(MICRO_BATCH_KEY, in_config // 2)
        self.double_grad_accum(add_flag=bool(locs))

    def halve_learning_rate(self) -> None:
        changed = False
        for loc in _locate(self.args, LR_FLAG):
            _put(self.args, loc, repr(_arg_float(self.args, loc, LR_FLAG) / 2))
            changed = True
        for path in LR_PATHS:
            parent: object = self.config
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            value = parent.get(path[-1])
            if isinstance(value, int | float) and not isinstance(value, bool):
                parent[path[-1]] = value / 2
                self.config_changed = changed = True
        if not changed:
            raise RemedyError(
                f"no learning rate to lower: no {LR_FLAG} in args and no numeric "
                "optimizer.params.lr in the DeepSpeed config"
            )


_EDITS: dict[str, Callable[[_Edit], None]] = {
    "halve-micro-batch": _Edit.halve_micro_batch,
    "set-grad-accum": _Edit.raise_grad_accum,
    "lower-lr": _Edit.halve_learning_rate,
}

APPLICABLE_KINDS = frozenset(_EDITS)


def apply_remedy(remedy: Remedy, spec: job_pb2.JobSpec) -> job_pb2.JobSpec:
    """An edited copy of `spec`; `spec` itself is left as it is."""
    edit_fn = _EDITS.get(remedy.kind)
    if edit_fn is None:
        raise RemedyError(f"remedy {remedy.kind!r} changes no job spec: {remedy.summary}")
    edit = _Edit(spec)
    edit_fn(edit)
    new = job_pb2.JobSpec()
    new.CopyFrom(spec)
    del new.args[:]
    new.args.extend(edit.args)
    if edit.config_changed:
        new.deepspeed_config_json = json.dumps(edit.config, indent=2)  # as console.model.job_spec
    return new


# --- describe_changes ---------------------------------------------------------------------


def _flags(args: list[str]) -> dict[str, str | None]:
    """Each `--flag` with its value (None for a bare switch); the last occurrence wins."""
    flags: dict[str, str | None] = {}
    for i, token in enumerate(args):
        if not token.startswith("--") or token == "--":
            continue
        if "=" in token:
            name, value = token.split("=", 1)
            flags[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            flags[token] = args[i + 1]
        else:
            flags[token] = None
    return flags


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _diff(
    where: str, old: dict[str, Any], new: dict[str, Any], show: Callable[[Any], str]
) -> list[str]:
    lines: list[str] = []
    for key in old:
        if key not in new:
            lines.append(f"{where}: {key} removed (was {show(old[key])})")
        elif new[key] != old[key]:
            lines.append(f"{where}: {key} {show(old[key])} -> {show(new[key])}")
    lines += [f"{where}: {key} {show(new[key])} (added)" for key in new if key not in old]
    return lines


def _show_arg(value: str | None) -> str:
    return "(switch)" if value is None else value


def _config_doc(text: str) -> object:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def describe_changes(old: job_pb2.JobSpec, new: job_pb2.JobSpec) -> list[str]:
    """One line per change from `old` to `new`: args by flag, the DeepSpeed config by key
    path, any other field by name."""
    lines: list[str] = []
    old_args, new_args = list(old.args), list(new.args)
    if old_args != new_args:
        by_flag = _diff("args", _flags(old_args), _flags(new_args), _show_arg)
        lines += by_flag or [f"args: {shlex.join(old_args)} -> {shlex.join(new_args)}"]
    if old.deepspeed_config_json != new.deepspeed_config_json:
        before = _config_doc(old.deepspeed_config_json)
        after = _config_doc(new.deepspeed_config_json)
        if isinstance(before, dict) and isinstance(after, dict):
            lines += _diff("deepspeed_config", _flatten(before), _flatten(after), json.dumps)
        elif before is None or after is None:
            lines.append("deepspeed_config " + ("added" if before is None else "removed"))
        else:
            lines.append("deepspeed_config replaced")
    for descriptor in job_pb2.JobSpec.DESCRIPTOR.fields:
        name = descriptor.name
        if name in ("args", "deepspeed_config_json"):
            continue
        before_value, after_value = getattr(old, name), getattr(new, name)
        if before_value == after_value:
            continue
        if isinstance(before_value, str | int | float):
            lines.append(f"{name}: {before_value!r} -> {after_value!r}")
        else:
            lines.append(f"{name} changed")
    return lines
