"""What changed between two job specs: `diff_specs` as structured changes, `spec_changes` as
short phrases for an event or the audit trail, e.g. ``args --per_device_train_batch_size 16 -> 8``
or ``env NCCL_IB_DISABLE unset -> 1``. The one spec differ of both sides: the agent's events and
the console's remedy preview are built from it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from gantry.v1 import job_pb2

__all__ = ["CONFIG_FIELD", "SpecChange", "diff_specs", "spec_changes"]

UNSET = "unset"
CONFIG_FIELD = "deepspeed_config_json"
# More changed keys than this in the DeepSpeed config: one summary phrase, not a list.
MAX_CONFIG_CHANGES = 4


@dataclass(frozen=True)
class SpecChange:
    """One change between two specs, its values as shown: None for unset or empty, "" for a
    flag given without a value (a switch), else the value (quoted as a shell would need).

    `field` is the spec's field ("args", "env", "restart.backoff_s", "deepspeed_config_json");
    `key` what changed within it (a flag, a variable, a config key path), "" for the field as
    a whole; `summary`, when set, stands in for the values ("reordered", "added", "removed",
    "changed")."""

    field: str
    key: str = ""
    before: str | None = None
    after: str | None = None
    summary: str = ""


def diff_specs(old: job_pb2.JobSpec, new: job_pb2.JobSpec) -> list[SpecChange]:
    """Every change, in the order of the spec's fields; the DeepSpeed config key by key."""
    changes: list[SpecChange] = []
    for field in job_pb2.JobSpec.DESCRIPTOR.fields:
        name = field.name
        if name == "nodes":
            before, after = _nodes(old.nodes), _nodes(new.nodes)
            if before != after:
                changes.append(SpecChange(name, "", before or None, after or None))
        elif name == "command":
            if list(old.command) != list(new.command):
                changes.append(SpecChange(name, "", _join(old.command), _join(new.command)))
        elif name == "args":
            changes.extend(_args_changes(old.args, new.args))
        elif name == "env":
            changes.extend(_map_changes(name, dict(old.env), dict(new.env)))
        elif name == CONFIG_FIELD:
            changes.extend(_config_changes(old.deepspeed_config_json, new.deepspeed_config_json))
        elif field.message_type is not None:
            changes.extend(_message_changes(name, old, new))
        else:
            before, after = getattr(old, name), getattr(new, name)
            if before != after:
                changes.append(SpecChange(name, "", _show(before), _show(after)))
    return changes


def spec_changes(old: job_pb2.JobSpec, new: job_pb2.JobSpec) -> list[str]:
    """One phrase per change, in the order of the spec's fields; empty when equal. Over
    `MAX_CONFIG_CHANGES` keys of the DeepSpeed config changed read as one phrase."""
    changes = diff_specs(old, new)
    config_keys = sum(1 for c in changes if c.field == CONFIG_FIELD and c.key)
    phrases: list[str] = []
    for change in changes:
        if change.field == CONFIG_FIELD and change.key and config_keys > MAX_CONFIG_CHANGES:
            summary = f"deepspeed config changed ({config_keys} keys)"
            if summary not in phrases:
                phrases.append(summary)
        else:
            phrases.append(_phrase(change))
    return phrases


def _phrase(change: SpecChange) -> str:
    label = "deepspeed config" if change.field == CONFIG_FIELD else change.field
    values = change.summary or f"{_shown(change.before)} -> {_shown(change.after)}"
    return " ".join(part for part in (label, change.key, values) if part)


def _shown(value: str | None) -> str:
    if value is None:
        return UNSET
    return value or "set"


def _show(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return shlex.quote(value)
    return str(value)


def _join(words: Sequence[str]) -> str | None:
    return shlex.join(words) if words else None


def _nodes(nodes: Sequence[job_pb2.NodeSlots]) -> str:
    return ", ".join(f"{n.node} slots={n.slots}" if n.slots else n.node for n in nodes)


def _message_changes(name: str, old: Message, new: Message) -> Iterator[SpecChange]:
    """A nested message (restart policy, cost, eval targets), field by field."""
    before, after = getattr(old, name), getattr(new, name)
    if before == after:
        return
    for sub in before.DESCRIPTOR.fields:
        present = sub.has_presence and sub.message_type is None
        a = getattr(before, sub.name) if not present or before.HasField(sub.name) else None
        b = getattr(after, sub.name) if not present or after.HasField(sub.name) else None
        if a != b:
            yield SpecChange(f"{name}.{sub.name}", "", _show(a), _show(b))


def _map_changes(name: str, before: dict[str, str], after: dict[str, str]) -> Iterator[SpecChange]:
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if a != b:
            yield SpecChange(name, key, _show(a), _show(b))


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


def _flag_value(values: list[str] | None) -> str | None:
    if values is None:
        return None
    return shlex.join(values) if values else ""


def _args_changes(old: Sequence[str], new: Sequence[str]) -> list[SpecChange]:
    if list(old) == list(new):
        return []
    old_pos, old_flags = _parse_args(old)
    new_pos, new_flags = _parse_args(new)
    changes: list[SpecChange] = []
    if old_pos != new_pos:
        changes.append(SpecChange("args", "", _join(old_pos), _join(new_pos)))
    for flag in [*old_flags, *(f for f in new_flags if f not in old_flags)]:
        a, b = old_flags.get(flag), new_flags.get(flag)
        if a != b:
            changes.append(SpecChange("args", flag, _flag_value(a), _flag_value(b)))
    return changes or [SpecChange("args", "", _join(old), _join(new), summary="reordered")]


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _config_changes(old: str, new: str) -> list[SpecChange]:
    if old == new:
        return []
    if not old or not new:
        return [SpecChange(CONFIG_FIELD, summary="added" if new else "removed")]
    try:
        before, after = _flatten(json.loads(old)), _flatten(json.loads(new))
    except (ValueError, RecursionError):
        return [SpecChange(CONFIG_FIELD, summary="changed")]
    keys = [*before, *(k for k in after if k not in before)]
    # Only the layout of the JSON text differs when no key's value does.
    return [
        SpecChange(CONFIG_FIELD, key, _json(before, key), _json(after, key))
        for key in keys
        if _json(before, key) != _json(after, key)
    ]


def _json(flat: dict[str, object], key: str) -> str | None:
    # As JSON text, so that 1 and true (equal in Python) still differ.
    return json.dumps(flat[key], separators=(",", ":")) if key in flat else None
