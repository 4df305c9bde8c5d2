"""One NUL and depth check for every JSON value (the gateway's bodies, meter-event data):
the field each refusal names, in the REST spelling, and its reason."""

from __future__ import annotations

from typing import Any

import pytest

from libs.core.errors import InvalidArgument
from libs.core.json_limits import MAX_DEPTH, MAX_EXACT_INTEGER, check_json, check_no_nul


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"tokens": 1}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


def _refused(value: Any, path: str = "", *, exact_numbers: bool = False) -> tuple[str | None, str, str]:
    with pytest.raises(InvalidArgument) as caught:
        check_json(value, path, exact_numbers=exact_numbers)
    return caught.value.field, caught.value.reason, caught.value.message


@pytest.mark.parametrize(
    ("value", "path", "field", "reason"),
    [
        ({"name": "a\x00b"}, "", "name", "INVALID_CHARACTER"),
        ({"events": [{"data": {"note": "x\x00"}}]}, "", "events[0].data.note", "INVALID_CHARACTER"),
        ({"a\x00": 1}, "", "body", "INVALID_CHARACTER"),
        ({"meta": {"k\x00": 1}}, "", "meta", "INVALID_CHARACTER"),
        ({"note": "x\x00"}, "data", "data.note", "INVALID_CHARACTER"),
        ({"k\x00": 1}, "data", "data", "INVALID_CHARACTER"),
        ([["\x00"]], "data", "data[0][0]", "INVALID_CHARACTER"),
    ],
)
def test_a_nul_is_refused_naming_where_it_is(value: Any, path: str, field: str, reason: str) -> None:
    assert _refused(value, path)[:2] == (field, reason)


def test_nesting_is_counted_per_json_level() -> None:
    check_json(_nested(MAX_DEPTH))
    check_json({"data": _nested(MAX_DEPTH - 1)})
    field, reason, message = _refused(_nested(MAX_DEPTH + 1))
    assert (field, reason) == ("x." * MAX_DEPTH + "tokens", "TOO_DEEP")
    assert message == f"{field} is nested more than {MAX_DEPTH} levels deep"
    field, reason, _ = _refused([_nested(MAX_DEPTH)], "data")
    assert (field, reason) == ("data[0]." + "x." * (MAX_DEPTH - 1) + "tokens", "TOO_DEEP")


@pytest.mark.parametrize("number", [float(MAX_EXACT_INTEGER), -MAX_EXACT_INTEGER, 1e300, float("inf"), float("nan")])
def test_only_exact_numbers_pass_where_they_are_asked_for(number: float) -> None:
    assert _refused({"tokens": number}, "data", exact_numbers=True)[:2] == ("data.tokens", "NUMBER_NOT_EXACT")
    check_json({"tokens": number}, "data")  # a body elsewhere may hold any JSON number


def test_exact_numbers_and_booleans_pass() -> None:
    check_json({"tokens": MAX_EXACT_INTEGER - 1, "ratio": 0.25, "flag": True, "none": None}, "data", exact_numbers=True)


def test_a_text_field_with_a_nul_names_itself() -> None:
    check_no_nul(None, "subject")
    check_no_nul("cus_1", "subject")
    with pytest.raises(InvalidArgument) as caught:
        check_no_nul("cus\x00", "subject")
    assert (caught.value.field, caught.value.reason, caught.value.message) == (
        "subject",
        "INVALID_CHARACTER",
        "subject contains a NUL character",
    )
