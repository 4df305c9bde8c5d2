"""Metering's view of billable metrics: a projection table fed by catalog events, and an
in-memory index of (merchant, event type) the ingest path checks without a query."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from accrue.catalog.v1 import catalog_events_pb2 as catalog_events
from sqlalchemy.dialects import postgresql as pg

from libs.core.errors import NotFound
from libs.infra.db import Database, UnitOfWork
from libs.infra.messaging import ReceivedEvent
from libs.infra.proto_time import from_timestamp
from services.metering import store

# How long a confirmed "no metric consumes this type" is trusted before looking again.
NEGATIVE_TTL_SECONDS = 2.0
# How long a merchant's known event types are trusted before they are read again.
POSITIVE_TTL_SECONDS = 30.0
# How long a miss waits for a just-created metric to arrive through the catalog's events.
MISS_WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class Metric:
    id: str
    merchant_id: str
    event_type: str
    aggregation: str
    value_property: str | None
    group_by: dict[str, str]
    event_from: datetime | None


def _metric(row: Any) -> Metric:
    return Metric(row.id, row.merchant_id, row.event_type, row.aggregation, row.value_property, dict(row.group_by), row.event_from)


class MetricIndex:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._types: dict[str, set[str]] = {}
        self._loaded: set[str] = set()
        self._loaded_at: dict[str, float] = {}
        self._negative: dict[tuple[str, str], float] = {}
        self._changed = asyncio.Event()

    async def _load(self, merchant_id: str) -> None:
        m = store.metrics
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(m.c.event_type).where(m.c.merchant_id == merchant_id, ~m.c.deleted))).all()
        self._types[merchant_id] = {r.event_type for r in rows}
        self._loaded.add(merchant_id)
        self._loaded_at[merchant_id] = time.monotonic()

    async def known_types(self, merchant_id: str, event_types: set[str]) -> set[str]:
        """Which of ``event_types`` some metric of the merchant consumes.

        Cached per merchant for POSITIVE_TTL_SECONDS (replicas that did not see a metric
        change through the catalog's events catch up within that). An unknown type may
        be a metric created a moment ago whose event is still on its way: the call waits,
        once, at most MISS_WAIT_SECONDS for all its unknown types together.
        """
        now = time.monotonic()
        if self._loaded_at.get(merchant_id, 0.0) + POSITIVE_TTL_SECONDS < now:
            await self._load(merchant_id)
        known = self._types.get(merchant_id, set())
        missing = {t for t in event_types if t not in known and self._negative.get((merchant_id, t), 0.0) <= now}
        if missing:
            deadline = now + MISS_WAIT_SECONDS
            while True:
                await self._load(merchant_id)
                known = self._types[merchant_id]
                missing -= known
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            expiry = time.monotonic() + NEGATIVE_TTL_SECONDS
            for event_type in missing:
                self._negative[(merchant_id, event_type)] = expiry
            if len(self._negative) > 10_000:  # bounded: drop what has expired
                self._negative = {k: v for k, v in self._negative.items() if v > time.monotonic()}
        return {t for t in event_types if t in known}

    def learned(self, merchant_id: str, event_type: str) -> None:
        if merchant_id in self._loaded:
            self._types.setdefault(merchant_id, set()).add(event_type)
        self._negative.pop((merchant_id, event_type), None)
        self._changed.set()

    def forget(self, merchant_id: str) -> None:
        self._loaded.discard(merchant_id)
        self._loaded_at.pop(merchant_id, None)
        self._types.pop(merchant_id, None)

    async def get(self, merchant_id: str, metric_id: str) -> Metric:
        m = store.metrics
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(sa.select(m).where(m.c.id == metric_id, m.c.merchant_id == merchant_id, ~m.c.deleted))).first()
        if row is None:
            raise NotFound("billable_metric", metric_id, field="id")
        return _metric(row)

    async def on_catalog_event(self, event: ReceivedEvent, uow: UnitOfWork) -> None:
        """Keep the projection: billable metric created / updated / deleted."""
        change = catalog_events.CatalogResourceChanged.FromString(event.payload)
        if change.WhichOneof("resource") != "billable_metric":
            return
        bm = change.billable_metric
        values = {
            "merchant_id": bm.merchant_id,
            "event_type": bm.event_type,
            "aggregation": bm.aggregation,
            "value_property": bm.value_property if bm.HasField("value_property") else None,
            "group_by": dict(bm.group_by),
            "event_from": from_timestamp(bm.event_from_time) if bm.HasField("event_from_time") else None,
            "deleted": change.kind == catalog_events.CHANGE_KIND_DELETED,
            "updated_at": from_timestamp(bm.update_time) if bm.HasField("update_time") else datetime.now(UTC),
        }
        m = store.metrics
        stmt = pg.insert(m).values(id=bm.id, **values)
        # events may arrive out of order across relay batches: the newest version wins
        stmt = stmt.on_conflict_do_update(index_elements=[m.c.id], set_=values, where=m.c.updated_at <= stmt.excluded.updated_at)
        await uow.conn.execute(stmt)
        self.forget(bm.merchant_id)
        self.learned(bm.merchant_id, bm.event_type)
