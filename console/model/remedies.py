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
- "enable-gradient-checkpointing": add `--gradient_checkpointing` to `args` (or turn a false
  `--gradient_checkpointing false` true).

One kind is a restart rather than a spec edit: "exclude-node" (params["node"]) goes on without
that node. `plan_remedy` says what to restart with for any applicable kind; `apply_remedy`
edits the spec only.

`RemedyError` (one line) when the spec has nothing to edit or a value is not a number; a
remedy's params are for display only, but for "exclude-node"'s node.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gantry.v1 import job_pb2
from gantry.v1.spec_diff import CONFIG_FIELD, SpecChange, diff_specs

from console.model.advisor import Remedy

__all__ = [
    "APPLICABLE_KINDS",
    "RESTART_KINDS",
    "SPEC_KINDS",
    "RemedyError",
    "RemedyPlan",
    "apply_remedy",
    "describe_changes",
    "gradient_checkpointing_on",
    "plan_remedy",
]

MICRO_BATCH_FLAG = "--per_device_train_batch_size"
GRAD_ACCUM_FLAG = "--gradient_accumulation_steps"
LR_FLAG = "--learning_rate"
CHECKPOINTING_FLAG = "--gradient_checkpointing"
# What HfArgumentParser's string_to_bool reads as a bool flag's value.
_TRUE = frozenset({"yes", "true", "t", "y", "1"})
_FALSE = frozenset({"no", "false", "f", "n", "0"})
EXCLUDE_NODE = "exclude-node"
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

    def enable_gradient_checkpointing(self) -> None:
        state = _checkpointing(self.args)
        if state is True:
            raise RemedyError(f"{CHECKPOINTING_FLAG} is on already in args")
        if state is None:
            self.args.append(CHECKPOINTING_FLAG)
            return
        for i, token in enumerate(self.args):  # each false value made true
            if token.startswith(CHECKPOINTING_FLAG + "="):
                self.args[i] = CHECKPOINTING_FLAG + "=true"
            elif token == CHECKPOINTING_FLAG and _bool_at(self.args, i + 1) is False:
                self.args[i + 1] = "true"


def _bool_at(args: list[str], i: int) -> bool | None:
    """The bool value token at `i` (as HfArgumentParser reads it), None when there is none."""
    if i >= len(args):
        return None
    word = args[i].lower()
    return True if word in _TRUE else False if word in _FALSE else None


def _checkpointing(args: list[str]) -> bool | None:
    """Whether args turn gradient checkpointing on (the last flag wins); None: no flag."""
    state = None
    for i, token in enumerate(args):
        if token.startswith(CHECKPOINTING_FLAG + "="):
            state = token.split("=", 1)[1].lower() not in _FALSE
        elif token == CHECKPOINTING_FLAG:
            state = _bool_at(args, i + 1) is not False  # a bare flag is true
    return state


def gradient_checkpointing_on(args: list[str]) -> bool:
    """Whether the trainer's args turn gradient checkpointing on."""
    return _checkpointing(args) is True


_EDITS: dict[str, Callable[[_Edit], None]] = {
    "halve-micro-batch": _Edit.halve_micro_batch,
    "set-grad-accum": _Edit.raise_grad_accum,
    "lower-lr": _Edit.halve_learning_rate,
    "enable-gradient-checkpointing": _Edit.enable_gradient_checkpointing,
}

SPEC_KINDS = frozenset(_EDITS)  # remedies that edit the spec (apply_remedy)
RESTART_KINDS = frozenset({EXCLUDE_NODE})  # remedies that restart without a node
APPLICABLE_KINDS = SPEC_KINDS | RESTART_KINDS


@dataclass(frozen=True)
class RemedyPlan:
    """What applying a remedy restarts the job with: the spec (edited, or the same) and
    the nodes to go on without; `changes` says it, one line each."""

    spec: job_pb2.JobSpec
    exclude: tuple[str, ...]
    changes: list[str]


def plan_remedy(remedy: Remedy, spec: job_pb2.JobSpec) -> RemedyPlan:
    """The restart an applicable remedy asks for; RemedyError (one line) when there is none."""
    if remedy.kind != EXCLUDE_NODE:
        edited = apply_remedy(remedy, spec)
        return RemedyPlan(edited, (), describe_changes(spec, edited))
    node = remedy.params.get("node", "")
    nodes = [n.node for n in spec.nodes]
    if node not in nodes:
        raise RemedyError(f"no node {node!r} to go on without: the job runs on {nodes}")
    if len(set(nodes)) <= 1:
        raise RemedyError(f"cannot go on without {node}: the job has no other node")
    return RemedyPlan(spec, (node,), [f"nodes: without {node} (a smaller world, resumed)"])


def apply_remedy(remedy: Remedy, spec: job_pb2.JobSpec) -> job_pb2.JobSpec:
    """An edited copy of `spec`; `spec` itself is left as it is."""
    edit_fn = _EDITS.get(remedy.kind)
    if edit_fn is None:
        restart = " (a restart: see plan_remedy)" if remedy.kind in RESTART_KINDS else ""
        raise RemedyError(f"remedy {remedy.kind!r} changes no job spec{restart}: {remedy.summary}")
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

# What a remedy edits comes first in its preview.
_FIRST = {"args": 0, CONFIG_FIELD: 1}


def _value(value: str | None) -> str:
    return "unset" if value is None else value or "(switch)"


def _line(change: SpecChange) -> str:
    where = "deepspeed_config" if change.field == CONFIG_FIELD else change.field
    if change.summary:
        return f"{where} {change.summary}"
    if change.before is None and change.after is not None:
        shown = f"{_value(change.after)} (added)"
    elif change.after is None and change.before is not None:
        shown = f"removed (was {_value(change.before)})"
    else:
        shown = f"{_value(change.before)} -> {_value(change.after)}"
    return f"{where}: {change.key} {shown}" if change.key else f"{where}: {shown}"


def describe_changes(old: job_pb2.JobSpec, new: job_pb2.JobSpec) -> list[str]:
    """One line per change from `old` to `new` (`gantry.v1.spec_diff.diff_specs`): args by
    flag, then the DeepSpeed config by key path, then any other field by name."""
    changes = sorted(diff_specs(old, new), key=lambda c: _FIRST.get(c.field, 2))
    return [_line(change) for change in changes]
