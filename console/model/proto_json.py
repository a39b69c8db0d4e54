"""Protobuf messages as JSON for `--json` output: proto3's JSON mapping, except that 64-bit
integers are numbers (the mapping writes them as strings, for JavaScript's sake); the keys
and everything else are as `json_format.MessageToDict` writes them."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["message_json"]

_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_json(message: Message) -> dict[str, Any]:
    """`message` as a JSON object (camelCase keys, fields at their default left out),
    with every 64-bit integer field a number."""
    doc = json_format.MessageToDict(message, always_print_fields_with_no_presence=False)
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]  # upb's, same API
    return _numbers(doc, descriptor)


def _int(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else value


def _value(value: Any, field: FieldDescriptor) -> Any:
    if field.type in _INT64_TYPES:
        return _int(value)
    if field.message_type is not None and isinstance(value, dict):
        return _numbers(value, field.message_type)
    return value  # well-known types (Timestamp: a string) arrive as non-dicts


def _numbers(doc: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    if descriptor.full_name.startswith("google.protobuf."):
        return doc  # Struct, Any...: their JSON form is their own
    for field in descriptor.fields:
        key = field.json_name
        if key not in doc:
            continue
        value = doc[key]
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            # JSON object keys stay strings; the values follow the map's value type.
            value_field = entry.fields_by_name["value"]
            doc[key] = {k: _value(v, value_field) for k, v in value.items()}
        elif isinstance(value, list):
            doc[key] = [_value(v, field) for v in value]
        else:
            doc[key] = _value(value, field)
    return doc
