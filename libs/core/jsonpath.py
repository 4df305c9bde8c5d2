"""The JSONPath subset billable metrics use to read meter-event payloads.

A contract between the catalog (which accepts ``valueProperty`` and ``groupBy`` paths)
and metering (which turns them into PostgreSQL path arrays): defined here once, so a
path the catalog accepts is always one metering can read.

Grammar: ``$`` followed by one or more segments, each ``.name`` (a letter or ``_``, then
letters, digits, ``_`` or ``-``), ``[index]`` or ``['quoted name']``.
"""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\['([^']+)'\]")
GRAMMAR = re.compile(r"\$(\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\['[^']+'\])+")


def is_jsonpath(path: str) -> bool:
    return GRAMMAR.fullmatch(path) is not None


def segments(path: str) -> list[str]:
    """'$.usage.tokens' -> ['usage', 'tokens'] (for PostgreSQL's ``#>`` operator).

    ValueError when the path is outside the grammar."""
    if not is_jsonpath(path):
        raise ValueError(f"unsupported JSONPath: {path}")
    return [next(group for group in match.groups() if group is not None) for match in _SEGMENT.finditer(path, 1)]
