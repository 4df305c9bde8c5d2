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
from libs.core.json_limits import check_json
from libs.infra.declared import integer_bounds, is_map
from services.gateway.codecs import TIMESTAMP, Codec, Slow, utc_date_time

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
_TS = TIMESTAMP


def _fill_nulls(message: Message, out: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        key = field.json_name
        if field.is_repeated:
            if field.message_type is not None and not is_map(field) and field.message_type.full_name not in _OPAQUE:
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
    try:  # the precomputed mapping (codecs.py); json_format for what it leaves
        return Codec.of(message.DESCRIPTOR).print(message)
    except Slow:
        return print_with_json_format(message)


def print_with_json_format(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    _fill_nulls(message, out)
    return out


def _field_for_key(descriptor: Any, key: str) -> Any:
    for field in descriptor.fields:
        if field.json_name == key or field.name == key:
            return field
    return None


_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def normalize_timestamps(descriptor: Any, value: Any, prefix: str = "") -> Any:
    """Prepare a JSON object for json_format, at every level of the message:
    offset-less date-time strings get a Z (UTC), null for a repeated or map field means
    absent (json_format has no null for a list), and true/false is no number (json_format
    would take true as 1.0 for a double: a grant of `"amount": true` is a mistake)."""
    if not isinstance(value, dict):
        return value
    for key in list(value):
        item = value[key]
        field = _field_for_key(descriptor, key)
        if field is None:
            continue
        if item is None and field.is_repeated:
            del value[key]
            continue
        if isinstance(item, bool) and field.type in _FLOATS and not field.is_repeated:
            name = f"{prefix}{field.json_name}"
            raise InvalidArgument(name, f"{name} must be a number; got {str(item).lower()}", reason="INVALID_FIELD")
        if field.message_type is None or is_map(field):
            continue
        name = field.message_type.full_name
        if name == _TS:
            if isinstance(item, str):
                fixed = utc_date_time(item)
                if fixed is None:
                    path = f"{prefix}{field.json_name}"
                    raise InvalidArgument(path, f"{path} must be {_WELL_KNOWN_TEXT[_TS]}", reason="INVALID_FIELD")
                value[key] = fixed
        elif name not in _OPAQUE:
            if field.is_repeated and isinstance(item, list):
                for element in item:
                    normalize_timestamps(field.message_type, element, f"{prefix}{field.json_name}[].")
            else:
                normalize_timestamps(field.message_type, item, f"{prefix}{field.json_name}.")
    return value


_WELL_KNOWN_TEXT = {
    _TS: "an RFC 3339 date-time such as 2026-01-31T12:00:00Z",
    "google.protobuf.Duration": "a duration such as 3.5s",
    "google.protobuf.Struct": "a JSON object",
    "google.protobuf.ListValue": "a JSON array",
    "google.protobuf.FieldMask": "a comma-separated list of field names",
}


def expected_value(field: Any, *, element: bool = False) -> str:
    """What a field takes, in the user's terms (for error messages)."""
    if field.is_repeated and not element:
        if is_map(field):
            return "a JSON object whose values are " + _plural(expected_value(field.message_type.fields_by_name["value"]))
        return "an array of " + _plural(expected_value(field, element=True))
    if field.message_type is not None:
        return _WELL_KNOWN_TEXT.get(field.message_type.full_name, "a JSON object")
    if field.enum_type is not None:
        return "one of " + ", ".join(v.name for v in field.enum_type.values)
    bounds = integer_bounds(field)
    if bounds is not None:
        return f"an integer from {bounds[0]} to {bounds[1]}"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "a number"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "a base64 string"
    return "a string"


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            noun = text[len(article) :]
            return (
                noun.replace("object", "objects", 1)
                .replace("string", "strings", 1)
                .replace("integer", "integers", 1)
                .replace("number", "numbers", 1)
                .replace("date-time", "date-times", 1)
            )
    return text


def _resolve(descriptor: Any, names: list[str]) -> tuple[str, Any]:
    """The REST spelling of a path of (json or proto) field names, and its last field."""
    spelled: list[str] = []
    field = None
    current = descriptor
    for name in names:
        index = ""
        if "[" in name:
            name, index = name[: name.index("[")], name[name.index("[") :]
        field = _field_for_key(current, name) if current is not None else None
        spelled.append((field.json_name if field is not None else name) + index)
        current = field.message_type if field is not None and field.message_type is not None and not is_map(field) else None
    return ".".join(spelled), field


_PARSE_FIELD = re.compile(r"Failed to parse (\w+) field")
_NO_FIELD = re.compile(r'has no field named "(.*)" at "([^"]*)"', re.DOTALL)
_AT_PATH = re.compile(r" at [A-Za-z0-9_]+\.([A-Za-z0-9_.\[\]]+?)\.?$")


def _parse_error(descriptor: Any, text: str) -> InvalidArgument:
    """json_format's text names Python parsers, protobuf types and field lists: none of
    that reaches a user. The error names the field in its REST spelling and says what it
    takes, from the descriptor."""
    unknown = _NO_FIELD.search(text)
    if unknown:
        parent_names = unknown.group(2).split(".")[1:]
        parent, _ = _resolve(descriptor, parent_names) if parent_names else ("", None)
        key = unknown.group(1)
        path = f"{parent}.{key}" if parent else key
        where = f" in {parent}" if parent else ""
        return InvalidArgument(path, f"unknown field {key!r}{where}", reason="UNKNOWN_FIELD")
    at_path = _AT_PATH.search(text)
    names = at_path.group(1).split(".") if at_path else _PARSE_FIELD.findall(text)
    if not names:
        return InvalidArgument("body", "the body does not match the request's fields", reason="INVALID_FIELD")
    path, field = _resolve(descriptor, names)
    message = f"{path} must be {expected_value(field)}" if field is not None else f"{path} has the wrong type"
    return InvalidArgument(path, message, reason="INVALID_FIELD")


def parse_into(message: Message, value: dict[str, Any]) -> None:
    """Fill ``message`` from a JSON object, turning parse errors into field-named 400s."""
    check_json(value)  # no NUL, bounded nesting: libs/core/json_limits.py
    try:  # the precomputed mapping (codecs.py); json_format for anything it leaves
        Codec.of(message.DESCRIPTOR).parse(message, value)
        return
    except Slow:
        message.Clear()
    parse_with_json_format(message, value)


def parse_with_json_format(message: Message, value: dict[str, Any]) -> None:
    normalize_timestamps(message.DESCRIPTOR, value)
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise _parse_error(message.DESCRIPTOR, str(exc)) from exc


def mask_paths(descriptor: Any, body: dict[str, Any]) -> list[str]:
    """Top-level JSON keys sent in a PATCH body, as proto field names (AIP-134)."""
    paths = []
    for key, value in body.items():
        field = _field_for_key(descriptor, key)
        if field is None or field.name == "update_mask":
            continue
        if value is None and field.is_repeated:  # null for a list or map means absent, not "clear"
            continue
        paths.append(field.name)
    return paths


_QUERY_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def query_to_json(descriptor: Any, query: list[tuple[str, str]]) -> dict[str, Any]:
    """Query parameters to the JSON object json_format expects (repeated keys -> lists)."""
    out: dict[str, Any] = {}
    for key, raw in query:
        field = _field_for_key(descriptor, key)
        if field is None:
            raise InvalidArgument(key, f"unknown query parameter {key!r}", reason="UNKNOWN_FIELD")
        value: Any = raw
        if field.type == FieldDescriptor.TYPE_BOOL:
            if raw.lower() not in _QUERY_BOOLS:
                raise InvalidArgument(field.json_name, f"{field.json_name} must be true or false; got {raw!r}", reason="INVALID_FIELD")
            value = _QUERY_BOOLS[raw.lower()]
        if field.is_repeated:
            out.setdefault(field.json_name, []).append(value)
        else:
            out[field.json_name] = value
    return out
