"""Merchant names for the routes that carry no API key (hosted checkout pages, processor
webhooks): the merchant named in the path must be one this gateway's database knows.

Merchants are never renamed or deleted (services/gateway/store.py), so a name once found
is remembered for a while; an unknown id is asked again every time (it may be created a
moment later), and the page answers 404 for it without calling any service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from services.gateway import store

_REMEMBER_SECONDS = 60.0
_MAX_REMEMBERED = 10_000


class MerchantDirectory(Protocol):
    """Merchant id -> its display name, None when unknown (tests pass a fake)."""

    async def name_of(self, merchant_id: str) -> str | None: ...


class StoredMerchants:
    """The gateway's merchants table, with known names cached per process."""

    def __init__(self, engine: AsyncEngine, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._monotonic = monotonic
        self._names: dict[str, tuple[str, float]] = {}

    async def name_of(self, merchant_id: str) -> str | None:
        now = self._monotonic()
        found = self._names.get(merchant_id)
        if found is not None and found[1] > now:
            return found[0]
        name = await store.merchant_name(self._engine, merchant_id)
        if name is not None:
            if len(self._names) >= _MAX_REMEMBERED:
                self._names.clear()
            self._names[merchant_id] = (name, now + _REMEMBER_SECONDS)
        return name
