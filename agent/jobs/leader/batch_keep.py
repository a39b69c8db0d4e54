"""Keeping a job's global batch when an attempt runs on fewer ranks (``--exclude``) or on
all of them again (``--include``). Pure but for reading the job's DeepSpeed config file.

The global batch is micro batch x gradient accumulation x ranks. The job's spec is written
for its whole world; an attempt without some nodes runs with gradient accumulation raised
by the ratio of the worlds, so the batch stays when that ratio divides evenly, and says
which batch it becomes when it does not. The accumulation is read, and rewritten for the
attempt only (the job's spec is unchanged), where the job sets it: the args'
``--gradient_accumulation_steps``, else the job's ``deepspeed_config_json``, else the
config file its args name with ``--deepspeed_config``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gantry.v1 import job_pb2

__all__ = ["BatchPlan", "batch_for_world", "world_size"]

GAS_FLAG = "--gradient_accumulation_steps"
MICRO_FLAG = "--per_device_train_batch_size"
DS_CONFIG_FLAG = "--deepspeed_config"
GAS_KEY = "gradient_accumulation_steps"
MICRO_KEY = "train_micro_batch_size_per_gpu"
BATCH_KEY = "train_batch_size"


@dataclass(frozen=True)
class BatchPlan:
    """The spec an attempt's ranks run and what it did to the global batch."""

    spec: job_pb2.JobSpec
    message: str = ""  # "" when the attempt runs the whole world as the spec says
    details: dict[str, str] = field(default_factory=dict)


def world_size(spec: job_pb2.JobSpec, excluded: set[str] | frozenset[str] = frozenset()) -> int:
    return sum(n.slots or 1 for n in spec.nodes if n.node not in excluded)


def _flag_value(args: list[str], flag: str) -> tuple[int, str] | None:
    """(index of the word holding the value, the value) of the last ``flag``."""
    found: tuple[int, str] | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            found = (i + 1, args[i + 1])
        elif arg.startswith(flag + "="):
            found = (i, arg.split("=", 1)[1])
    return found


def _whole(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _config(spec: job_pb2.JobSpec) -> dict[str, object] | None:
    """The job's DeepSpeed config: the spec's own, else the file its args name (the
    rank is then given the spec's, written to a file, in place of that one)."""
    text = spec.deepspeed_config_json
    if not text:
        named = _flag_value(list(spec.args), DS_CONFIG_FLAG)
        if named is None:
            return None
        path = Path(named[1])
        if not path.is_absolute() and spec.working_dir:
            path = Path(spec.working_dir) / path
        try:
            text = path.read_text()
        except OSError:
            return None
    try:
        config = json.loads(text)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def batch_for_world(spec: job_pb2.JobSpec, excluded: set[str] | frozenset[str]) -> BatchPlan:
    """``spec`` as an attempt without ``excluded`` runs it, keeping the global batch."""
    full, world = world_size(spec), world_size(spec, excluded)
    if world == full or world == 0:
        return BatchPlan(spec)
    args = list(spec.args)
    in_args = _flag_value(args, GAS_FLAG)
    config = _config(spec)
    gas = _whole(in_args[1]) if in_args is not None else None
    if gas is None and config is not None:
        gas = _whole(config.get(GAS_KEY))
    micro_arg = _flag_value(args, MICRO_FLAG)
    micro = _whole(micro_arg[1]) if micro_arg is not None else None
    if micro is None and config is not None:
        micro = _whole(config.get(MICRO_KEY))
    if gas is None:
        return BatchPlan(
            spec,
            f"the global batch changes from {full} to {world} ranks' worth: the job sets no"
            f" gradient accumulation to raise ({GAS_FLAG} in args, or {GAS_KEY} in its"
            " DeepSpeed config)",
            {"ranks": f"{full}->{world}"},
        )
    kept = gas * full % world == 0
    new_gas = gas * full // world if kept else max(1, gas * full // world)

    def batch(g: int, ranks: int) -> str:
        return str(micro * g * ranks) if micro is not None else f"{g * ranks} x micro batch"

    before, after = batch(gas, full), batch(new_gas, world)
    if kept:
        message = (
            f"gradient accumulation {gas} -> {new_gas} on {world} of {full} ranks keeps the"
            f" global batch at {before}"
        )
    else:
        message = (
            f"the global batch becomes {after} (was {before}): gradient accumulation {gas} on"
            f" {full} ranks cannot be kept on {world}; it is {new_gas}"
        )
    details = {
        "gradient_accumulation_steps": f"{gas}->{new_gas}",
        "global_batch": f"{before}->{after}",
        "ranks": f"{full}->{world}",
    }
    out = job_pb2.JobSpec()
    out.CopyFrom(spec)
    if in_args is not None and _whole(in_args[1]) is not None:
        index, _ = in_args
        word = args[index]
        args[index] = f"{GAS_FLAG}={new_gas}" if word.startswith(GAS_FLAG + "=") else str(new_gas)
        out.args[:] = args
    else:
        assert config is not None
        config = {**config, GAS_KEY: new_gas}
        if _whole(config.get(BATCH_KEY)) is not None:
            if micro is not None:
                config[BATCH_KEY] = micro * new_gas * world
            else:
                del config[BATCH_KEY]  # DeepSpeed derives it from the other two
        out.deepspeed_config_json = json.dumps(config)
    return BatchPlan(out, message, details)
