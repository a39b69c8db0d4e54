"""What changed between two job specs, as short phrases for an event or the audit trail,
e.g. ``args --per_device_train_batch_size 16 -> 8`` or ``env NCCL_IB_DISABLE unset -> 1``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence

from google.protobuf.message import Message

from gantry.v1 import job_pb2

__all__ = ["spec_changes"]

UNSET = "unset"
# More changed keys than this in the DeepSpeed config: one summary phrase, not a list.
MAX_CONFIG_CHANGES = 4
# Fields with a phrase of their own; every other field is compared generically.
_SPECIAL = {"nodes", "command", "args", "env", "deepspeed_config_json"}


def spec_changes(old: job_pb2.JobSpec, new: job_pb2.JobSpec) -> list[str]:
    """One phrase per change, in the order of the spec's fields; empty when equal."""
    changes: list[str] = []
    for field in job_pb2.JobSpec.DESCRIPTOR.fields:
        name = field.name
        if name == "nodes":
            before, after = _nodes(old.nodes), _nodes(new.nodes)
            if before != after:
                changes.append(f"nodes {before or UNSET} -> {after or UNSET}")
        elif name == "command":
            if list(old.command) != list(new.command):
                changes.append(f"command {_join(old.command)} -> {_join(new.command)}")
        elif name == "args":
            changes.extend(f"args {c}" for c in _args_changes(old.args, new.args))
        elif name == "env":
            changes.extend(f"env {c}" for c in _map_changes(dict(old.env), dict(new.env)))
        elif name == "deepspeed_config_json":
            changes.extend(_config_changes(old.deepspeed_config_json, new.deepspeed_config_json))
        elif field.message_type is not None:
            changes.extend(_message_changes(name, old, new))
        else:
            before, after = getattr(old, name), getattr(new, name)
            if before != after:
                changes.append(f"{name} {_show(before)} -> {_show(after)}")
    return changes


def _show(value: object) -> str:
    if value is None or value == "":
        return UNSET
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return shlex.quote(value)
    return str(value)


def _join(words: Sequence[str]) -> str:
    return shlex.join(words) if words else UNSET


def _nodes(nodes: Sequence[job_pb2.NodeSlots]) -> str:
    return ", ".join(f"{n.node} slots={n.slots}" if n.slots else n.node for n in nodes)


def _message_changes(name: str, old: Message, new: Message) -> Iterator[str]:
    """A nested message (restart policy, cost, eval targets), field by field."""
    before, after = getattr(old, name), getattr(new, name)
    if before == after:
        return
    for sub in before.DESCRIPTOR.fields:
        present = sub.has_presence and sub.message_type is None
        a = getattr(before, sub.name) if not present or before.HasField(sub.name) else None
        b = getattr(after, sub.name) if not present or after.HasField(sub.name) else None
        if a != b:
            yield f"{name}.{sub.name} {_show(a)} -> {_show(b)}"


def _map_changes(before: dict[str, str], after: dict[str, str]) -> Iterator[str]:
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a != b:
            yield f"{key} {_show(a)} -> {_show(b)}"


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative number is a value
    except ValueError:
        return True
    return False


def _parse_args(args: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Leading positionals, and each flag's values (``--f v``, ``--f=v``, ``--f`` alone)."""
    positionals: list[str] = []
    flags: dict[str, list[str]] = {}
    current: str | None = None
    for token in args:
        if _is_flag(token):
            flag, eq, value = token.partition("=")
            values = flags.setdefault(flag, [])
            if eq:
                values.append(value)
                current = None
            else:
                current = flag
        elif current is not None:
            flags[current].append(token)
            current = None
        elif not flags:
            positionals.append(token)
        else:
            # A value after a flag that already has one: keep it with the last flag.
            flags[next(reversed(flags))].append(token)
    return positionals, flags


def _flag_value(values: list[str] | None) -> str:
    if values is None:
        return UNSET
    return shlex.join(values) if values else "set"


def _args_changes(old: Sequence[str], new: Sequence[str]) -> list[str]:
    if list(old) == list(new):
        return []
    old_pos, old_flags = _parse_args(old)
    new_pos, new_flags = _parse_args(new)
    changes: list[str] = []
    if old_pos != new_pos:
        changes.append(f"{_join(old_pos)} -> {_join(new_pos)}")
    for flag in [*old_flags, *(f for f in new_flags if f not in old_flags)]:
        a, b = old_flags.get(flag), new_flags.get(flag)
        if a != b:
            changes.append(f"{flag} {_flag_value(a)} -> {_flag_value(b)}")
    return changes or ["reordered"]


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _config_changes(old: str, new: str) -> list[str]:
    if old == new:
        return []
    if not old or not new:
        return [f"deepspeed config {'added' if new else 'removed'}"]
    try:
        before, after = _flatten(json.loads(old)), _flatten(json.loads(new))
    except (ValueError, RecursionError):
        return ["deepspeed config changed"]
    shown = [
        (key, _json(before, key), _json(after, key))
        for key in [*before, *(k for k in after if k not in before)]
    ]
    changed = [(key, a, b) for key, a, b in shown if a != b]
    if not changed:
        return []  # only the layout of the JSON text differs
    if len(changed) > MAX_CONFIG_CHANGES:
        return [f"deepspeed config changed ({len(changed)} keys)"]
    return [f"deepspeed config {key} {a} -> {b}" for key, a, b in changed]


def _json(flat: dict[str, object], key: str) -> str:
    # As JSON text, so that 1 and true (equal in Python) still differ.
    return json.dumps(flat[key], separators=(",", ":")) if key in flat else UNSET
