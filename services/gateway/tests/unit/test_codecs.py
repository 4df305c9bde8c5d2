"""The precomputed codecs (services/gateway/codecs.py) give json_format's answers.

For every request and response type of every REST route, JSON objects drawn from the
message's own descriptor (valid values, wrong types, nulls, unknown keys, naive and
out-of-range date-times, names given twice) are parsed through restjson.parse_into (fast
path first) and through json_format alone: the same message, or the same field-named
error. Messages are printed both ways: the same JSON.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.core.errors import InvalidArgument
from libs.core.json_limits import check_json
from libs.infra.declared import is_map
from services.gateway import codecs, restjson
from services.gateway.transcoding import build_routes

pytestmark = pytest.mark.unit

_ROUTES = build_routes()
_TYPES: dict[str, type[Message]] = {}
for _route in _ROUTES:
    for _cls in (_route.request_class, _route.response_class, _route.batch_request_class, _route.batch_response_class):
        if _cls is not None:
            _TYPES.setdefault(_cls.DESCRIPTOR.full_name, _cls)
_NAMES = sorted(_TYPES)

_TIMESTAMPS = st.sampled_from(
    [
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00",
        "2026-12-01T10:00:00.123456Z",
        "2026-12-01T10:00:00+02:00",
        "2026-12-01T10:00:00+25:00",
        "2026-12-01T10:00:00-23:59",
        "2026-13-01T10:00:00Z",
        "yesterday",
        "",
    ]
)
_JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
_JSON = st.recursive(
    _JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8
)
_WRONG = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1e3, 1e3), st.text(max_size=4), st.just([]), st.just({}))


def _scalar(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=12)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-(2**60), 2**60))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.name for v in field.enum_type.values] + ["NOT_A_VALUE"])
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.sampled_from(["", "YWJj", "not base64!"])
    return st.integers(-(2**65), 2**65) | st.integers(-1000, 1000)


def _value(field: Any, depth: int, element: bool = False) -> st.SearchStrategy[Any]:
    if field.is_repeated and not element:
        if is_map(field):
            return st.dictionaries(st.text(max_size=4), _value(field.message_type.fields_by_name["value"], depth), max_size=2)
        return st.lists(_value(field, depth, element=True), max_size=3)
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return _TIMESTAMPS
        if name in ("google.protobuf.Struct",):
            return st.dictionaries(st.text(max_size=5), _JSON, max_size=3)
        if name.startswith("google.protobuf."):
            return _JSON
        if depth > 2:
            return st.just({})
        return _object(field.message_type, depth + 1)
    return _scalar(field)


def _object(descriptor: Any, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        good = _value(field, depth)
        optional[field.json_name] = st.one_of(good, good, good, _WRONG)
        if field.json_name != field.name:
            optional[field.name] = st.one_of(good, _WRONG)
    optional["notAField"] = _WRONG
    return st.fixed_dictionaries({}, optional=optional)


def _slow(cls: type[Message], value: dict[str, Any]) -> Message | tuple[str | None, str]:
    message = cls()
    try:
        value = copy.deepcopy(value)
        check_json(value)  # what parse_into checks before either path
        restjson.parse_with_json_format(message, value)
    except InvalidArgument as err:
        return err.field, err.message
    return message


def _fast(cls: type[Message], value: dict[str, Any]) -> Message | tuple[str | None, str]:
    message = cls()
    try:
        restjson.parse_into(message, copy.deepcopy(value))
    except InvalidArgument as err:
        return err.field, err.message
    return message


@pytest.mark.parametrize("name", _NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_parsing_gives_json_formats_answer(name: str, data: st.DataObject) -> None:
    cls = _TYPES[name]
    value = data.draw(_object(cls.DESCRIPTOR))
    expected = _slow(cls, value)
    assert _fast(cls, value) == expected


@pytest.mark.parametrize("name", _NAMES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_printing_gives_json_formats_answer(name: str, data: st.DataObject) -> None:
    cls = _TYPES[name]
    parsed = _slow(cls, data.draw(_object(cls.DESCRIPTOR)))
    if not isinstance(parsed, Message):
        return
    assert restjson.message_to_json(parsed) == restjson.print_with_json_format(parsed)


def test_the_meter_event_routes_take_the_fast_path() -> None:
    """The hot path's types must not fall back (a silent fallback would only be slow)."""
    from accrue.metering.v1 import metering_service_pb2 as svc

    event = {"type": "t", "source": "s", "subject": "cus_1", "data": {"tokens": 1, "m": "x"}, "timestamp": "2026-12-01T10:00:00Z"}
    single = svc.IngestEventRequest()
    codecs.Codec.of(single.DESCRIPTOR).parse(single, dict(event))
    assert single.data["tokens"] == 1 and single.timestamp.seconds > 0
    batch = svc.BatchIngestEventsRequest()
    codecs.Codec.of(batch.DESCRIPTOR).parse(batch, {"events": [dict(event), dict(event)]})
    assert len(batch.events) == 2
    response = svc.BatchIngestEventsResponse(object="list", accepted=1)
    response.receipts.add(index=0, status="accepted", id="evt_1")
    printed = codecs.Codec.of(response.DESCRIPTOR).print(response)
    assert printed == restjson.print_with_json_format(response)
