"""What every JSON value we accept must satisfy, whoever receives it first.

No NUL characters (PostgreSQL text and JSONB cannot hold them) and bounded nesting
(protobuf refuses more than 100 message levels, and a JSON level is two of them inside a
Struct): both are bad input, answered 400 naming the field. The gateway checks whole
request bodies; metering checks meter-event data (which gRPC callers send directly),
and there numbers must also be exact as doubles. Pure: plain Python values in, errors out.
"""

from __future__ import annotations

from typing import Any

from libs.core.errors import InvalidArgument

MAX_DEPTH = 32
# Integers beyond this lose digits in a JSON number's trip through a double.
MAX_EXACT_INTEGER = 2**53


def check_no_nul(value: str | None, field: str) -> None:
    if value is not None and "\x00" in value:
        raise InvalidArgument(field, f"{field} contains a NUL character", reason="INVALID_CHARACTER")


def check_json(value: Any, path: str = "", *, exact_numbers: bool = False, depth: int = 0) -> None:
    """Walk a JSON value (dicts, lists, scalars); ``path`` is where it sits in the request,
    in the REST spelling ("" for the whole body). With ``exact_numbers``, a number a
    double cannot hold exactly is refused: large quantities belong in decimal strings."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(path or "body", f"{path or 'the body'} is nested more than {MAX_DEPTH} levels deep", reason="TOO_DEEP")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidArgument(path or "body", f"{path or 'a value'} contains a NUL character", reason="INVALID_CHARACTER")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in str(key):
                raise InvalidArgument(path or "body", "a key contains a NUL character", reason="INVALID_CHARACTER")
            check_json(item, f"{path}.{key}" if path else str(key), exact_numbers=exact_numbers, depth=depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]", exact_numbers=exact_numbers, depth=depth + 1)
    elif exact_numbers and isinstance(value, int | float) and not isinstance(value, bool) and not _exact(value):
        raise InvalidArgument(
            path, f"{path} is too large to be exact as a JSON number; send it as a decimal string", reason="NUMBER_NOT_EXACT"
        )


def _exact(number: float) -> bool:
    return number == number and abs(number) < MAX_EXACT_INTEGER  # NaN is not equal to itself; infinity is not below
