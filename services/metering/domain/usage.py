"""How a billable metric's aggregation reads event payloads: JSONPath to SQL, pure."""

from __future__ import annotations

from libs.core import jsonpath
from libs.core.errors import InvalidArgument

WINDOW_SIZES = {"MINUTE": "minute", "HOUR": "hour", "DAY": "day", "MONTH": "month"}


def jsonpath_segments(path: str) -> list[str]:
    """'$.usage.tokens' -> ['usage', 'tokens'] (for PostgreSQL's #> operator)."""
    return jsonpath.segments(path)


def window_unit(window_size: str | None) -> str | None:
    if window_size is None:
        return None
    if window_size not in WINDOW_SIZES:
        raise InvalidArgument("windowSize", f"windowSize must be one of {', '.join(WINDOW_SIZES)}", reason="INVALID_ENUM_VALUE")
    return WINDOW_SIZES[window_size]
