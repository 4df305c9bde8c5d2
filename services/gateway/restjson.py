"""Protobuf <-> Paygentic JSON, on top of protobuf's own JSON mapping (json_format).

Two adjustments to the standard mapping, both driven by descriptors, none per endpoint:
* out: every field without presence is printed (defaults included), and an unset field
  *with* presence is printed as null: Paygentic's `req·null` fields (itemId) need the key,
  and null is valid for every optional field;
* in: date-times without an offset are UTC (the SDK sends naive datetimes bare).
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from libs.core.errors import InvalidArgument

# Descriptor parameters are typed Any: protobuf hands out either the pure-Python or the
# upb descriptor classes, which the stubs model as unrelated types.
# Well-known types print as JSON scalars/objects of their own; never walk into them.
_OPAQUE = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.Empty",
}
_HAS_OFFSET = re.compile(r"(Z|z|[+-]\d\d:?\d\d)$")
_TS = "google.protobuf.Timestamp"


def _is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _fill_nulls(message: Message, out: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        key = field.json_name
        if field.is_repeated:
            if field.message_type is not None and not _is_map(field) and field.message_type.full_name not in _OPAQUE:
                for item, rendered in zip(getattr(message, field.name), out.get(key, []), strict=False):
                    _fill_nulls(item, rendered)
            continue
        if field.has_presence and not message.HasField(field.name):
            if field.containing_oneof is None or field.containing_oneof.name.startswith("_"):
                out[key] = None
            continue
        if field.message_type is not None and field.message_type.full_name not in _OPAQUE and key in out:
            _fill_nulls(getattr(message, field.name), out[key])


def message_to_json(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _fill_nulls(message, out)
    return out


def _field_for_key(descriptor: Any, key: str) -> Any:
    for field in descriptor.fields:
        if field.json_name == key or field.name == key:
            return field
    return None


def normalize_timestamps(descriptor: Any, value: Any) -> Any:
    """Give offset-less date-time strings a Z, at every Timestamp field of the message."""
    if not isinstance(value, dict):
        return value
    for key, item in value.items():
        field = _field_for_key(descriptor, key)
        if field is None or field.message_type is None or _is_map(field):
            continue
        name = field.message_type.full_name
        if name == _TS:
            if isinstance(item, str) and not _HAS_OFFSET.search(item):
                value[key] = item + "Z"
        elif name not in _OPAQUE:
            if field.is_repeated and isinstance(item, list):
                for element in item:
                    normalize_timestamps(field.message_type, element)
            else:
                normalize_timestamps(field.message_type, item)
    return value


_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')
_AT_PATH = re.compile(r" at [A-Za-z0-9_]+\.([A-Za-z0-9_.\[\]]+)\.?$")


MAX_DEPTH = 32


def check_text(value: Any, path: str = "", depth: int = 0) -> None:
    """No NUL characters anywhere (PostgreSQL text cannot hold them) and bounded nesting
    (protobuf refuses more than 100 levels): both are bad input, answered 400 here."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(path or "body", f"{path or 'the body'} is nested more than {MAX_DEPTH} levels deep", reason="TOO_DEEP")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgument(path or "body", f"{path or 'a value'} contains a NUL character", reason="INVALID_CHARACTER")
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                raise InvalidArgument(path or "body", "a key contains a NUL character", reason="INVALID_CHARACTER")
            check_text(item, here, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{path}[{index}]", depth + 1)


def parse_into(message: Message, value: dict[str, Any]) -> None:
    """Fill ``message`` from a JSON object, turning parse errors into field-named 400s."""
    check_text(value)
    normalize_timestamps(message.DESCRIPTOR, value)
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        text = str(exc)
        unknown = _NO_FIELD.search(text)
        if unknown:
            raise InvalidArgument(unknown.group(1), f"unknown field {unknown.group(1)!r}", reason="UNKNOWN_FIELD") from exc
        bad = _PARSE_FIELD.findall(text)
        at_path = _AT_PATH.search(text)
        if not bad and at_path:  # "Expected true or false ... at CreatePriceRequest.isObligation"
            bad = at_path.group(1).split(".")
        field = ".".join(bad) if bad else "body"
        field_descriptor = _field_for_key(message.DESCRIPTOR, bad[0]) if bad else None
        if field_descriptor is not None:
            field = ".".join([field_descriptor.json_name, *bad[1:]])
        raise InvalidArgument(field, f"{field} has the wrong type or format: {text}", reason="INVALID_FIELD") from exc


def mask_paths(descriptor: Any, body: dict[str, Any]) -> list[str]:
    """Top-level JSON keys sent in a PATCH body, as proto field names (AIP-134)."""
    paths = []
    for key in body:
        field = _field_for_key(descriptor, key)
        if field is not None and field.name != "update_mask":
            paths.append(field.name)
    return paths


def query_to_json(descriptor: Any, query: list[tuple[str, str]]) -> dict[str, Any]:
    """Query parameters to the JSON object json_format expects (repeated keys -> lists)."""
    out: dict[str, Any] = {}
    for key, raw in query:
        field = _field_for_key(descriptor, key)
        if field is None:
            raise InvalidArgument(key, f"unknown query parameter {key!r}", reason="UNKNOWN_FIELD")
        value: Any = raw
        if field.type == FieldDescriptor.TYPE_BOOL:
            value = raw.lower() in ("true", "1")
        if field.is_repeated:
            out.setdefault(field.json_name, []).append(value)
        else:
            out[field.json_name] = value
    return out
