"""Precomputed JSON <-> protobuf codecs for the common shapes: the gateway's fast path.

protobuf's json_format walks descriptors in Python for every field of every request; at
thousands of requests a second that was the largest share of the gateway's own CPU (a
single meter event: about 45 us to parse, 13 us to print; a batch of 1,000: 40 ms). The
codecs here are built once per message type from its descriptor and do the same mapping
with one dict lookup and one type check per field.

They cover strings, bools, integers, doubles, enums by name, Timestamps, Structs, nested
and repeated messages, repeated strings and maps of string to scalar. Anything else, and any input the fast path
is not sure about (a null, a wrong type, a field given twice, an out-of-range value, two
members of one oneof), raises ``Slow``: restjson then runs json_format on the original
input, which gives the answer, or the field-named error, it always gave. So the fast path
changes speed only; ``services/gateway/tests/unit/test_codecs.py`` holds it to the same
results as json_format.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from libs.infra.declared import INTEGER_TYPE_BOUNDS, is_map

TIMESTAMP = _TS = "google.protobuf.Timestamp"
_STRUCT = "google.protobuf.Struct"
_HAS_OFFSET = re.compile(r"(Z|z|[+-]\d\d:?\d\d)$")
_OFFSET = re.compile(r"[+-](\d\d):?(\d\d)$")
_INT_RANGES = INTEGER_TYPE_BOUNDS
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}


class Slow(Exception):
    """The fast path does not handle this input or message: use json_format."""


Setter = Callable[[Message, Any], None]
Getter = Callable[[Message], Any]


def utc_date_time(text: str) -> str | None:
    """A date-time string as protobuf's parser should get it: without an offset it is UTC
    (the SDK sends naive date-times bare: Z appended); None for an offset past RFC 3339's
    ±23:59, which protobuf's parser would take (+25:00)."""
    if not _HAS_OFFSET.search(text):
        return text + "Z"
    offset = _OFFSET.search(text)
    if offset is not None and (int(offset[1]) > 23 or int(offset[2]) > 59):
        return None
    return text


def _timestamp_text(value: Any) -> str:
    fixed = utc_date_time(value) if type(value) is str else None
    if fixed is None:
        raise Slow  # json_format and restjson's checks give the answer, by name
    return fixed


def _scalar_setter(field: Any) -> Setter | None:
    name = field.name
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:

        def set_string(message: Message, value: Any) -> None:
            if type(value) is not str:
                raise Slow
            setattr(message, name, value)

        return set_string
    if kind == FieldDescriptor.TYPE_BOOL:

        def set_bool(message: Message, value: Any) -> None:
            if type(value) is not bool:
                raise Slow
            setattr(message, name, value)

        return set_bool
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]

        def set_int(message: Message, value: Any) -> None:
            if type(value) is not int or not low <= value <= high:
                raise Slow
            setattr(message, name, value)

        return set_int
    if kind == FieldDescriptor.TYPE_DOUBLE:

        def set_double(message: Message, value: Any) -> None:
            if type(value) is float:
                setattr(message, name, value)
            elif type(value) is int and abs(value) < 2**53:
                setattr(message, name, float(value))
            else:
                raise Slow

        return set_double
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = {v.name: v.number for v in field.enum_type.values}

        def set_enum(message: Message, value: Any) -> None:
            if type(value) is not str or value not in numbers:
                raise Slow
            setattr(message, name, numbers[value])

        return set_enum
    return None


def _map_value_check(field: Any) -> Callable[[Any], bool] | None:
    """For a map<string, scalar>: whether a JSON value is one its values take as is."""
    key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
    if key.type != FieldDescriptor.TYPE_STRING or value.message_type is not None:
        return None
    if value.type == FieldDescriptor.TYPE_STRING:
        return lambda item: type(item) is str
    if value.type == FieldDescriptor.TYPE_BOOL:
        return lambda item: type(item) is bool
    if value.type in _INT_RANGES:
        low, high = _INT_RANGES[value.type]
        return lambda item: type(item) is int and low <= item <= high
    if value.type == FieldDescriptor.TYPE_DOUBLE:
        return lambda item: type(item) is float
    return None


def _setter(field: Any) -> Setter | None:
    """How one JSON value lands in ``field``, or None when only json_format can do it."""
    name = field.name
    if field.message_type is not None and is_map(field):
        takes = _map_value_check(field)
        if takes is None:
            return None

        def set_map(message: Message, value: Any) -> None:
            if type(value) is not dict or not all(takes(item) for item in value.values()):
                raise Slow
            getattr(message, name).update(value)

        return set_map
    if field.is_repeated:
        if field.message_type is not None:
            full_name = field.message_type.full_name
            if full_name.startswith("google.protobuf."):
                return None
            element = Codec.of(field.message_type)

            def set_messages(message: Message, value: Any) -> None:
                if type(value) is not list:
                    raise Slow
                items = getattr(message, name)
                for item in value:
                    element.parse(items.add(), item)

            return set_messages
        if field.type != FieldDescriptor.TYPE_STRING:
            return None

        def set_strings(message: Message, value: Any) -> None:
            if type(value) is not list or any(type(item) is not str for item in value):
                raise Slow
            getattr(message, name).extend(value)

        return set_strings
    if field.message_type is None:
        return _scalar_setter(field)
    full_name = field.message_type.full_name
    if full_name == _TS:

        def set_timestamp(message: Message, value: Any) -> None:
            try:
                getattr(message, name).FromJsonString(_timestamp_text(value))
            except ValueError as exc:
                raise Slow from exc

        return set_timestamp
    if full_name == _STRUCT:

        def set_struct(message: Message, value: Any) -> None:
            if type(value) is not dict:
                raise Slow
            struct = getattr(message, name)
            struct.SetInParent()
            try:
                struct.update(value)
            except (ValueError, TypeError, OverflowError) as exc:
                raise Slow from exc

        return set_struct
    if full_name.startswith("google.protobuf."):
        return None
    nested = Codec.of(field.message_type)

    def set_message(message: Message, value: Any) -> None:
        sub = getattr(message, name)
        sub.SetInParent()
        nested.parse(sub, value)

    return set_message


def _getter(field: Any) -> Getter | None:
    """How ``field`` prints (json_format's mapping plus restjson's nulls), or None."""
    name = field.name
    if field.message_type is not None and is_map(field):
        if _map_value_check(field) is None:
            return None
        value_field = field.message_type.fields_by_name["value"]
        if value_field.type in _INT64:
            return lambda message: {key: str(item) for key, item in getattr(message, name).items()}
        if value_field.type == FieldDescriptor.TYPE_DOUBLE:

            def finite_values(message: Message) -> Any:
                out = dict(getattr(message, name))
                if any(math.isinf(item) or math.isnan(item) for item in out.values()):
                    raise Slow
                return out

            return finite_values
        return lambda message: dict(getattr(message, name))
    if field.is_repeated:
        if field.message_type is not None:
            if field.message_type.full_name.startswith("google.protobuf."):
                return None
            element = Codec.of(field.message_type)
            return lambda message: [element.print(item) for item in getattr(message, name)]
        if field.type == FieldDescriptor.TYPE_STRING or field.type == FieldDescriptor.TYPE_BOOL:
            return lambda message: list(getattr(message, name))
        if field.type in _INT_RANGES:
            if field.type in _INT64:
                return lambda message: [str(item) for item in getattr(message, name)]
            return lambda message: list(getattr(message, name))
        return None
    value_of = _value_getter(field)
    if value_of is None:
        return None
    if not field.has_presence:
        return value_of
    real_oneof = field.containing_oneof is not None and not field.containing_oneof.name.startswith("_")
    absent = _OMIT if real_oneof else None

    def present_or_null(message: Message) -> Any:
        return value_of(message) if message.HasField(name) else absent

    return present_or_null


_OMIT = object()  # an unset member of a real oneof prints no key at all


def _value_getter(field: Any) -> Getter | None:
    name = field.name
    kind = field.type
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name == _TS:
            return lambda message: getattr(message, name).ToJsonString()
        if full_name == _STRUCT:
            return lambda message: json_format.MessageToDict(getattr(message, name))
        if full_name.startswith("google.protobuf."):
            return None
        nested = Codec.of(field.message_type)
        return lambda message: nested.print(getattr(message, name))
    if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BOOL):
        return lambda message: getattr(message, name)
    if kind in _INT_RANGES:
        if kind in _INT64:
            return lambda message: str(getattr(message, name))
        return lambda message: getattr(message, name)
    if kind == FieldDescriptor.TYPE_DOUBLE:

        def finite(message: Message) -> Any:
            value = getattr(message, name)
            if math.isinf(value) or math.isnan(value):
                raise Slow  # json_format spells them "Infinity"/"NaN"
            return value

        return finite
    if kind == FieldDescriptor.TYPE_ENUM:
        names = {v.number: v.name for v in field.enum_type.values}

        def enum_name(message: Message) -> Any:
            number = getattr(message, name)
            if number not in names:
                raise Slow
            return names[number]

        return enum_name
    return None


class Codec:
    """The fast JSON mapping of one message type (built once, cached by full name)."""

    _cache: ClassVar[dict[str, Codec]] = {}

    def __init__(self, descriptor: Any) -> None:
        self.full_name: str = descriptor.full_name
        Codec._cache[self.full_name] = self  # before the fields: a message may nest itself
        self._setters: dict[str, tuple[Setter | None, str, str | None]] = {}
        self._getters: list[tuple[str, Getter | None]] = []
        for field in descriptor.fields:
            oneof = field.containing_oneof
            oneof_name = oneof.name if oneof is not None and not oneof.name.startswith("_") else None
            setter = _setter(field)
            for key in {field.json_name, field.name}:
                self._setters[key] = (setter, field.name, oneof_name)
            self._getters.append((field.json_name, _getter(field)))
        self._printable = all(getter is not None for _, getter in self._getters)

    @classmethod
    def of(cls, descriptor: Any) -> Codec:
        found = cls._cache.get(descriptor.full_name)
        return found if found is not None else cls(descriptor)

    def parse(self, message: Message, value: Any) -> None:
        """Fill ``message`` from a JSON object, or raise Slow (``message`` is then partly
        filled: the caller clears it)."""
        if type(value) is not dict:
            raise Slow
        seen: set[str] = set()
        for key, item in value.items():
            entry = self._setters.get(key)
            if entry is None or item is None:
                raise Slow
            setter, field_name, oneof_name = entry
            if setter is None or field_name in seen:
                raise Slow
            seen.add(field_name)
            if oneof_name is not None:
                if "oneof " + oneof_name in seen:
                    raise Slow
                seen.add("oneof " + oneof_name)
            try:
                setter(message, item)
            except (ValueError, TypeError, OverflowError) as exc:  # e.g. a lone surrogate in a string
                raise Slow from exc

    def print(self, message: Message) -> dict[str, Any]:
        if not self._printable:
            raise Slow
        out: dict[str, Any] = {}
        for key, getter in self._getters:
            value = getter(message)  # type: ignore[misc]
            if value is not _OMIT:
                out[key] = value
        return out
