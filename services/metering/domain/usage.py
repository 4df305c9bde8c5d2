"""How a billable metric's aggregation reads event payloads: JSONPath to SQL, pure."""

from __future__ import annotations

import re

from libs.core.errors import InvalidArgument

WINDOW_SIZES = {"MINUTE": "minute", "HOUR": "hour", "DAY": "day", "MONTH": "month"}
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\['([^']+)'\]")


def jsonpath_segments(path: str) -> list[str]:
    """'$.usage.tokens' -> ['usage', 'tokens'] (for PostgreSQL's #> operator)."""
    if not path.startswith("$"):
        raise ValueError(f"not a JSONPath: {path}")
    segments: list[str] = []
    position = 1
    for match in _SEGMENT.finditer(path, 1):
        if match.start() != position:
            raise ValueError(f"unsupported JSONPath: {path}")
        segments.append(next(group for group in match.groups() if group is not None))
        position = match.end()
    if position != len(path) or not segments:
        raise ValueError(f"unsupported JSONPath: {path}")
    return segments


def window_unit(window_size: str | None) -> str | None:
    if window_size is None:
        return None
    if window_size not in WINDOW_SIZES:
        raise InvalidArgument("windowSize", f"windowSize must be one of {', '.join(WINDOW_SIZES)}", reason="INVALID_ENUM_VALUE")
    return WINDOW_SIZES[window_size]
