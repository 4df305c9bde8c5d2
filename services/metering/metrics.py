"""Metering's view of billable metrics: a projection table fed by catalog events, and an
in-memory index of (merchant, event type) the ingest path checks without a query.

An event type the index does not know is looked up in the catalog, synchronously, so a
metric created a moment ago is accepted at once (read your writes) however late its
catalog event is, and an unknown type is refused as fast as a known one is accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from accrue.catalog.v1 import catalog_events_pb2 as catalog_events
from accrue.catalog.v1 import catalog_resources_pb2 as catalog_resources
from accrue.catalog.v1 import catalog_service_pb2 as catalog_service
from accrue.catalog.v1 import catalog_service_pb2_grpc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.errors import DomainError, NotFound
from libs.infra import grpc_client
from libs.infra.db import Database, UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent
from libs.infra.proto_time import from_timestamp
from services.metering import store
from services.metering.domain import meter_events as rules

log = get_logger(__name__)

# How long a confirmed "no metric consumes this type" is trusted before asking again: a
# flood of one bad type costs one catalog look-up per merchant and interval. A metric
# created for a type refused less than this ago is accepted once it expires (at once on
# the replica that receives the metric's catalog event).
NEGATIVE_TTL_SECONDS = 1.0
# How long a merchant's known event types are trusted before they are read again.
POSITIVE_TTL_SECONDS = 30.0
# A catalog look-up's deadline (all its pages), and how long after a failed one unknown
# types are answered "unavailable" without asking again.
CATALOG_TIMEOUT_SECONDS = 1.0
CATALOG_RETRY_SECONDS = 1.0
_PAGE = 100

# A merchant's billable metrics, as the catalog lists them now.
CatalogLookup = Callable[[str], Awaitable[Sequence[catalog_resources.BillableMetric]]]


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


@dataclass(frozen=True)
class TypeCheck:
    """The outcome of checking a call's event types."""

    # types some metric of the merchant consumes
    known: set[str]
    # unknown types the catalog could not be asked about (answered 503, retryable)
    unconfirmed: set[str] = field(default_factory=set)


class CatalogUnavailable(Exception):
    pass


class CatalogClient:
    """ListBillableMetrics of the catalog service, for one merchant, every page."""

    def __init__(self, address: str, timeout: float = CATALOG_TIMEOUT_SECONDS) -> None:
        self._address = address
        self._timeout = timeout
        self._stub: catalog_service_pb2_grpc.CatalogServiceStub | None = None

    async def __call__(self, merchant_id: str) -> Sequence[catalog_resources.BillableMetric]:
        if self._stub is None:  # the channel belongs to the running event loop
            self._stub = catalog_service_pb2_grpc.CatalogServiceStub(grpc_client.channel(self._address, timeout=self._timeout))
        deadline = time.monotonic() + self._timeout
        out: list[catalog_resources.BillableMetric] = []
        try:
            while True:
                page = await self._stub.ListBillableMetrics(
                    catalog_service.ListBillableMetricsRequest(limit=_PAGE, offset=len(out)),
                    timeout=max(0.01, deadline - time.monotonic()),  # one deadline for all the pages
                )
                out.extend(page.data)
                if not page.data or len(out) >= page.pagination.total:
                    return out
        except DomainError as exc:
            raise CatalogUnavailable(f"catalog ListBillableMetrics failed: {exc.code.name} {exc.reason}") from exc


@dataclass
class _Flight:
    """One catalog look-up at a time per merchant. A caller may use the answer of a
    look-up that started after it arrived, never of one already under way (that one may
    have read the catalog before the caller's metric was committed)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started: int = 0
    answered: int = 0
    answer: set[str] | CatalogUnavailable = field(default_factory=set)


class MetricIndex:
    def __init__(self, db: Database, catalog: CatalogLookup | None = None, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._catalog = catalog
        self._monotonic = monotonic
        self._types: dict[str, set[str]] = {}
        self._loaded: set[str] = set()
        self._loaded_at: dict[str, float] = {}
        self._negative: dict[tuple[str, str], float] = {}
        self._flights: dict[str, _Flight] = {}
        self._catalog_down_until = 0.0

    async def _load(self, merchant_id: str) -> None:
        m = store.metrics
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(m.c.event_type).where(m.c.merchant_id == merchant_id, ~m.c.deleted))).all()
        self._types[merchant_id] = {r.event_type for r in rows}
        self._loaded.add(merchant_id)
        self._loaded_at[merchant_id] = self._monotonic()

    async def known_types(self, merchant_id: str, event_types: set[str]) -> TypeCheck:
        """Which of ``event_types`` some metric of the merchant consumes.

        Cached per merchant for POSITIVE_TTL_SECONDS (replicas that did not see a metric
        change through the catalog's events catch up within that). Types the cache does
        not know are asked of the catalog: one look-up per call, whatever its number of
        unknown types, shared with the merchant's other calls waiting for one, and none
        for a type refused less than NEGATIVE_TTL_SECONDS ago. Types ``check_type``
        refuses are never looked up. Without a catalog, or when it cannot be asked, the
        projection is read again; types still missing are then unknown (no catalog) or
        unconfirmed (a failing catalog). Nothing here waits for an event.
        """
        wanted = {t for t in event_types if rules.valid_type(t)}
        now = self._monotonic()
        if self._loaded_at.get(merchant_id, 0.0) + POSITIVE_TTL_SECONDS < now:
            await self._load(merchant_id)
        missing = self._missing(merchant_id, wanted, now)
        if not missing:
            return TypeCheck(wanted & self._types.get(merchant_id, set()))
        unconfirmed: set[str] = set()
        found: set[str] = set()
        asked = False
        if self._catalog is not None and self._catalog_down_until <= self._monotonic():
            try:
                found = await self._ask_catalog(merchant_id)
                asked = True
            except CatalogUnavailable as exc:
                log.warning("catalog_lookup_failed", merchant_id=merchant_id, error=str(exc))
                self._catalog_down_until = self._monotonic() + CATALOG_RETRY_SECONDS
        if asked:
            missing -= found
        else:  # no catalog to ask: the projection, which another replica may have updated
            await self._load(merchant_id)
            missing = self._missing(merchant_id, wanted, now)
            if self._catalog is not None:  # it could not be asked: not known to be unknown
                unconfirmed, missing = missing, set()
        if missing:
            expiry = self._monotonic() + NEGATIVE_TTL_SECONDS
            for event_type in missing:
                self._negative[(merchant_id, event_type)] = expiry
            if len(self._negative) > 10_000:  # bounded: drop what has expired
                self._negative = {k: v for k, v in self._negative.items() if v > self._monotonic()}
        return TypeCheck(wanted & (self._types.get(merchant_id, set()) | found), unconfirmed)

    def _missing(self, merchant_id: str, wanted: set[str], now: float) -> set[str]:
        known = self._types.get(merchant_id, set())
        return {t for t in wanted if t not in known and self._negative.get((merchant_id, t), 0.0) <= now}

    async def _ask_catalog(self, merchant_id: str) -> set[str]:
        """The merchant's event types per a catalog look-up that started after this call."""
        flight = self._flights.setdefault(merchant_id, _Flight())
        needed = flight.started + 1
        async with flight.lock:
            if flight.answered < needed:  # nobody asked since this call arrived: ask
                flight.started += 1
                number = flight.started
                try:
                    flight.answer = await self._refresh_from_catalog(merchant_id)
                except CatalogUnavailable as exc:
                    flight.answer = exc
                flight.answered = number
            if isinstance(flight.answer, CatalogUnavailable):
                raise flight.answer
            return flight.answer

    async def _refresh_from_catalog(self, merchant_id: str) -> set[str]:
        assert self._catalog is not None
        metrics = await self._catalog(merchant_id)
        known = self._types.setdefault(merchant_id, set())
        fresh = [bm for bm in metrics if bm.event_type not in known and bm.merchant_id == merchant_id]
        if fresh:  # into the projection too: usage queries know the metric at once as well
            async with self._db.engine.begin() as conn:
                for bm in fresh:
                    await _upsert(conn, bm, deleted=False)
        for bm in fresh:
            self.learned(merchant_id, bm.event_type)
        return {bm.event_type for bm in metrics}

    def learned(self, merchant_id: str, event_type: str) -> None:
        if merchant_id in self._loaded:
            self._types.setdefault(merchant_id, set()).add(event_type)
        self._negative.pop((merchant_id, event_type), None)

    def forget(self, merchant_id: str) -> None:
        self._loaded.discard(merchant_id)
        self._loaded_at.pop(merchant_id, None)
        self._types.pop(merchant_id, None)

    async def get(self, merchant_id: str, metric_id: str) -> Metric:
        """The merchant's metric. One created a moment ago, whose catalog event has not
        reached this projection (or went to another consumer of the durable), is asked of
        the catalog, as ingestion asks for an unknown type: usage queries read their
        writes too. An id that is still unknown is not asked again for a second."""
        row = await self._row(merchant_id, metric_id)
        key = (merchant_id, f"id:{metric_id}")
        if row is None and self._catalog is not None and self._negative.get(key, 0.0) <= self._monotonic():
            try:
                await self._ask_catalog(merchant_id)
            except CatalogUnavailable as exc:
                log.warning("catalog_lookup_failed", merchant_id=merchant_id, error=str(exc))
            row = await self._row(merchant_id, metric_id)
            if row is None:
                self._negative[key] = self._monotonic() + NEGATIVE_TTL_SECONDS
        if row is None:
            raise NotFound("billable_metric", metric_id, field="id")
        return _metric(row)

    async def _row(self, merchant_id: str, metric_id: str) -> Any:
        m = store.metrics
        async with self._db.engine.connect() as conn:
            return (await conn.execute(sa.select(m).where(m.c.id == metric_id, m.c.merchant_id == merchant_id, ~m.c.deleted))).first()

    async def on_catalog_event(self, event: ReceivedEvent, uow: UnitOfWork) -> None:
        """Keep the projection: billable metric created / updated / deleted."""
        change = catalog_events.CatalogResourceChanged.FromString(event.payload)
        if change.WhichOneof("resource") != "billable_metric":
            return
        bm = change.billable_metric
        await _upsert(uow.conn, bm, deleted=change.kind == catalog_events.CHANGE_KIND_DELETED)
        self.forget(bm.merchant_id)
        self.learned(bm.merchant_id, bm.event_type)


async def _upsert(conn: AsyncConnection, bm: catalog_resources.BillableMetric, *, deleted: bool) -> None:
    """Into the projection; events may arrive out of order across relay batches, and a
    catalog look-up may race its own event: the newest version wins."""
    values = {
        "merchant_id": bm.merchant_id,
        "event_type": bm.event_type,
        "aggregation": bm.aggregation,
        "value_property": bm.value_property if bm.HasField("value_property") else None,
        "group_by": dict(bm.group_by),
        "event_from": from_timestamp(bm.event_from_time) if bm.HasField("event_from_time") else None,
        "deleted": deleted,
        "updated_at": from_timestamp(bm.update_time) if bm.HasField("update_time") else datetime.now(UTC),
    }
    m = store.metrics
    stmt = pg.insert(m).values(id=bm.id, **values)
    stmt = stmt.on_conflict_do_update(index_elements=[m.c.id], set_=values, where=m.c.updated_at <= stmt.excluded.updated_at)
    await conn.execute(stmt)
