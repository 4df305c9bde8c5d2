"""Offset pagination, one rule for every list: ``limit`` 1..100, ``offset`` 0 or more.

The default page size is one constant for every service. The Paygentic REST contract
gives a few lists another default (meter events: 20); such a list passes its own
``default=`` and names the contract where it does so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from libs.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE: Final = 10
MAX_PAGE_SIZE: Final = 100


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def page(limit: int | None, offset: int | None, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> Page:
    """The page asked for (absent values take the defaults), or InvalidArgument naming the field."""
    size = default if limit is None else limit
    skip = 0 if offset is None else offset
    if not 1 <= size <= maximum:
        raise InvalidArgument("limit", f"limit must be between 1 and {maximum}; got {size}", reason="OUT_OF_RANGE")
    if skip < 0:
        raise InvalidArgument("offset", f"offset must be 0 or more; got {skip}", reason="OUT_OF_RANGE")
    return Page(size, skip)
