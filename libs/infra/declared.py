"""The request-field rules declared in the protos, checked before any handler runs.

A field says what it accepts with ``google.api.field_behavior = REQUIRED`` and Accrue's
``accrue.api.v1.field`` option (values a string takes, integer bounds, lengths, item
counts). The same declarations generate the gateway's OpenAPI document, so what the
document promises and what every service enforces are one list.

Checks are compiled once per message type: a message with no declared rules anywhere
beneath it costs one dictionary look-up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from accrue.api.v1 import annotations_pb2 as accrue_annotations
from google.api import field_behavior_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from libs.core.errors import InvalidArgument

# Descriptors are typed Any: protobuf hands out pure-Python or upb classes.
Check = Callable[[Message, str], None]

_QUOTE_AT_MOST = 60


def rules_of(field: Any) -> accrue_annotations.FieldRules | None:
    options = field.GetOptions()
    if options.HasExtension(accrue_annotations.field):
        rules: accrue_annotations.FieldRules = options.Extensions[accrue_annotations.field]
        return rules
    return None


def is_required(field: Any) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.FieldBehavior.REQUIRED in behaviors


def is_map(field: Any) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


# each protobuf integer type's range (also the gateway's fast JSON codecs, services/gateway/codecs.py)
INTEGER_TYPE_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def integer_bounds(field: Any) -> tuple[int, int] | None:
    """The values an integer field takes: its type's range, narrowed by declared bounds."""
    bounds = INTEGER_TYPE_BOUNDS.get(field.type)
    if bounds is None:
        return None
    low, high = bounds
    rules = rules_of(field)
    if rules is not None:
        low = rules.minimum if rules.HasField("minimum") else low
        high = rules.maximum if rules.HasField("maximum") else high
    return low, high


def _present(message: Message, field: Any) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    return getattr(message, field.name) not in ("", 0, b"", False)


def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTE_AT_MOST else value[:_QUOTE_AT_MOST] + "…")


def _string_check(rules: accrue_annotations.FieldRules, override: str = "") -> Callable[[str, str], None]:
    allowed = tuple(rules.one_of)
    max_length = rules.max_length if rules.HasField("max_length") else None
    min_length = rules.min_length if rules.HasField("min_length") else None
    pattern = re.compile(rules.pattern) if rules.pattern else None
    not_blank = rules.not_blank

    def check(value: str, where: str) -> None:
        if not_blank and value and value.isspace():
            raise InvalidArgument(where, f"{where} must not be blank", reason="REQUIRED")
        if allowed and value not in allowed:
            raise InvalidArgument(
                where, f"{where} must be one of {', '.join(allowed)}; got {_quote(value)}", reason=override or "INVALID_ENUM_VALUE"
            )
        if min_length is not None and len(value) < min_length:
            if min_length == 1:
                raise InvalidArgument(where, f"{where} must not be empty", reason=override or "REQUIRED")
            raise InvalidArgument(where, f"{where} must be at least {min_length} characters long", reason=override or "TOO_SHORT")
        if max_length is not None and len(value) > max_length:
            raise InvalidArgument(
                where, f"{where} is {len(value)} characters long; at most {max_length} are allowed", reason=override or "TOO_LONG"
            )
        if pattern is not None and pattern.fullmatch(value) is None:
            raise InvalidArgument(where, f"{where} must match {rules.pattern}; got {_quote(value)}", reason=override or "INVALID_FORMAT")

    return check


def _integer_check(rules: accrue_annotations.FieldRules, override: str = "") -> Callable[[int, str], None]:
    low = rules.minimum if rules.HasField("minimum") else None
    high = rules.maximum if rules.HasField("maximum") else None

    def check(value: int, where: str) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (
                f"between {low} and {high}"
                if low is not None and high is not None
                else (f"{low} or more" if low is not None else f"{high} or less")
            )
            raise InvalidArgument(where, f"{where} must be {bounds}; got {value}", reason=override or "OUT_OF_RANGE")

    return check


def _field_check(field: Any, nested: Check | None) -> Check | None:
    rules = rules_of(field)
    required = is_required(field)
    if rules is None and not required and nested is None:
        return None
    name, json_name = field.name, field.json_name
    override = rules.reason if rules is not None else ""
    is_string = field.type == field.TYPE_STRING
    checks_items = rules is not None and rules.items_checked_by_handler
    value_check: Callable[[Any, str], None] | None = None
    if rules is not None and is_string:
        value_check = _string_check(rules, override)
    elif rules is not None and (rules.HasField("minimum") or rules.HasField("maximum")):
        value_check = _integer_check(rules, override)
    max_items = rules.max_items if rules is not None and rules.HasField("max_items") else None
    map_value_check: Callable[[str, str], None] | None = None
    max_key_length = rules.max_key_length if rules is not None and rules.HasField("max_key_length") else None
    if is_map(field) and rules is not None and rules.HasField("max_length"):
        map_value_check = _string_check(rules)

    def check(message: Message, prefix: str) -> None:
        where = prefix + json_name
        if not _present(message, field):
            if required:
                raise InvalidArgument(where, f"{where} is required", reason="REQUIRED")
            return
        value = getattr(message, name)
        if field.is_repeated:
            if max_items is not None and len(value) > max_items:
                raise InvalidArgument(
                    where, f"{where} has {len(value)} entries; at most {max_items} are allowed", reason=override or "TOO_MANY_ITEMS"
                )
            if is_map(field):
                for key, item in value.items():
                    if max_key_length is not None and len(key) > max_key_length:
                        raise InvalidArgument(
                            where,
                            f"a key of {where} is {len(key)} characters long; at most {max_key_length} are allowed",
                            reason="KEY_TOO_LONG",
                        )
                    if map_value_check is not None:
                        map_value_check(item, f"{where}.{key}")
                return
            if checks_items:
                return
            for index, item in enumerate(value):
                if nested is not None:
                    nested(item, f"{where}[{index}].")
                elif value_check is not None:
                    value_check(item, f"{where}[{index}]")
            return
        if nested is not None:
            nested(value, where + ".")
        elif value_check is not None:
            value_check(value, where)

    return check


def _clear_check(descriptor: Any) -> Check:
    """AIP-134: a path in the mask whose field is unset clears it (REST: null), which only
    fields declared ``clearable`` allow."""
    fixed = {
        f.name: f.json_name
        for f in descriptor.fields
        if f.has_presence and not f.is_repeated and f.name != "update_mask" and not (rules_of(f) is not None and rules_of(f).clearable)  # type: ignore[union-attr]
    }

    def check(message: Message, prefix: str) -> None:
        for path in message.update_mask.paths:  # type: ignore[attr-defined]
            json_name = fixed.get(path)
            if json_name is not None and not message.HasField(path):
                where = prefix + json_name
                raise InvalidArgument(where, f"{where} cannot be cleared", reason="FIELD_NOT_CLEARABLE")

    return check


_COMPILED: dict[str, Check | None] = {}
_IN_PROGRESS = object()


def _compile(descriptor: Any) -> Check | None:
    name = descriptor.full_name
    if name in _COMPILED:
        return _COMPILED[name]
    if name.startswith("google.protobuf."):
        _COMPILED[name] = None
        return None
    _COMPILED[name] = None  # a message that refers to itself checks its own fields once
    checks: list[Check] = []
    if "update_mask" in descriptor.fields_by_name:
        checks.append(_clear_check(descriptor))
    for field in descriptor.fields:
        nested = _compile(field.message_type) if field.message_type is not None and not is_map(field) else None
        check = _field_check(field, nested)
        if check is not None:
            checks.append(check)
    if not checks:
        return None

    def check_all(message: Message, prefix: str) -> None:
        for one in checks:
            one(message, prefix)

    _COMPILED[name] = check_all
    return check_all


def check_declared(message: Message) -> None:
    """Raise InvalidArgument (naming the REST field) for the first declared rule broken."""
    check = _COMPILED.get(message.DESCRIPTOR.full_name, _IN_PROGRESS)
    if check is _IN_PROGRESS:
        check = _compile(message.DESCRIPTOR)
    if check is not None:
        check(message, "")  # type: ignore[operator]
