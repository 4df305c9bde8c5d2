"""Tables of the catalog's own database, and the repositories over them.

SQLAlchemy Core, not the ORM: a row becomes a domain aggregate (its attributes are the
column names) and an aggregate is written back whole. Repositories implement
domain/ports.py: named queries, every one scoped by merchant_id and blind to deleted
rows, so another merchant's resource or a deleted one is simply not found. Each
aggregate a repository returns or adds is registered in the unit of work's ``seen``;
the unit of work writes their recorded events to the outbox at commit.

Deletion is one convention: ``delete_time`` is set, nothing is removed.

Gets of the resources that render from their own row alone (products, billable metrics,
features, fees) skip the unit of work: ``LiveRows`` reads the row with one prepared
statement on an autocommit psycopg connection of ``ReadConnections``, with the same
scoping (merchant, live rows only) and the same NotFound. A single statement sees what
committed before it started, as the one-statement transaction it replaces did, so a
caller reads its own committed writes. (bench/get_product.py: the SQLAlchemy unit of
work cost about 0.6-0.8 ms of CPU per Get, BEGIN + SELECT + COMMIT three round trips;
this path about 0.1 ms and one round trip.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.domain import EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from libs.infra.db import ReadConnections, add_infra_tables
from libs.infra.repository import RepositoryUnitOfWork, TableRepository, load_aggregate
from services.catalog.domain.model import BillableMetric, CatalogAggregate, Feature, Fee, Plan, PlanVersion, Price, Product
from services.catalog.domain.rules import PlanLine

metadata = sa.MetaData()
add_infra_tables(metadata)

TS = sa.DateTime(timezone=True)

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_products_merchant_created", "merchant_id", "created_at"),
)

billable_metrics = sa.Table(
    "billable_metrics",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("aggregation", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("value_property", sa.Text),
    sa.Column("group_by", pg.JSONB, nullable=False),
    sa.Column("item_id", sa.Text),
    sa.Column("event_from", TS),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Index("ix_billable_metrics_merchant_created", "merchant_id", "created_at"),
    sa.Index("ix_billable_metrics_merchant_event_type", "merchant_id", "event_type"),
)

features = sa.Table(
    "features",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("delete_time", TS),
    # a key is unique among the product's live features: deleting one frees its key
    sa.Index("uq_features_product_live_key", "product_id", "key", unique=True, postgresql_where=sa.text("delete_time IS NULL")),
)

fees = sa.Table(
    "fees",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("item_id", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("delete_time", TS),
    sa.Index("ix_fees_merchant_created", "merchant_id", "created_at"),
)

prices = sa.Table(
    "prices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("billable_metric_id", sa.Text, sa.ForeignKey("billable_metrics.id")),
    sa.Column("fee_id", sa.Text, sa.ForeignKey("fees.id")),
    sa.Column("invoice_display_name", sa.Text, nullable=False),
    sa.Column("invoice_display_group", sa.Text),
    sa.Column("payment_term", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    # money as integer atomic units (JSON integers are exact numerics in JSONB)
    sa.Column("properties", pg.JSONB, nullable=False),
    sa.Column("billing_cadence", sa.Text),
    sa.Column("grant_discount_enabled", sa.Boolean, nullable=False),
    sa.Column("is_obligation", sa.Boolean, nullable=False),
    sa.Column("rate_type", sa.Text),
    sa.Column("supply_scope", sa.Text, nullable=False),
    sa.Column("outside_scope_label", sa.Text),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("price_feature_id", sa.Text),
    sa.Column("feature_id", sa.Text, sa.ForeignKey("features.id")),
    sa.Column("entitlement_template", pg.JSONB),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("delete_time", TS),
    sa.CheckConstraint("(billable_metric_id IS NULL) <> (fee_id IS NULL)", name="ck_prices_metric_xor_fee"),
    sa.Index("ix_prices_merchant_created", "merchant_id", "created_at"),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("billing_cadence", sa.Text, nullable=False),
    sa.Column("invoice_display_name", sa.Text),
    sa.Column("default_tax_code", sa.Text, nullable=False),
    sa.Column("default_tax_rate", sa.Numeric(9, 6), nullable=False),
    sa.Column("tax_behavior", sa.Text, nullable=False),
    sa.Column("renewal_reminder_enabled", sa.Boolean, nullable=False),
    sa.Column("renewal_reminder_days", sa.Integer, nullable=False),
    sa.Column("billing_version", sa.Integer, nullable=False),
    sa.Column("billing_anchor", TS),
    sa.Column("credit_allocations", pg.JSONB, nullable=False),
    sa.Column("stable_price_ids", sa.Boolean, nullable=False),
    sa.Column("version_effective_date", sa.Text, nullable=False),
    sa.Column("default_version_id", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("delete_time", TS),
    sa.Index("ix_plans_merchant_created", "merchant_id", "created_at"),
)

plan_versions = sa.Table(
    "plan_versions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("plan_id", sa.Text, sa.ForeignKey("plans.id"), nullable=False),
    sa.Column("version_number", sa.Integer, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("based_on_version_id", sa.Text),
    sa.Column("subscription_count", sa.Integer, nullable=False),
    sa.Column("published_at", TS, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("plan_id", "version_number", name="uq_plan_versions_number"),
)

plan_version_prices = sa.Table(
    "plan_version_prices",
    metadata,
    sa.Column("plan_version_id", sa.Text, sa.ForeignKey("plan_versions.id"), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("price_id", sa.Text, sa.ForeignKey("prices.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Index("ix_plan_version_prices_price", "price_id"),
)


A = TypeVar("A", bound=CatalogAggregate)


_aggregate = load_aggregate


class Repository(TableRepository[A]):
    """get / add / save / list_page of one catalog aggregate over its table."""

    created_column = "created_at"

    def _resource(self) -> str:
        return str(self._kind.resource.value)

    async def list_page(self, merchant_id: str, filters: Mapping[str, str], page: Page) -> tuple[list[A], int]:
        t = self._table
        return await self._page(sa.and_(*self._live(merchant_id), *(t.c[name] == value for name, value in filters.items())), page)


class FeatureRepository(Repository[Feature]):
    async def claim_key(self, product_id: str, key: str) -> Feature | None:
        # a transaction lock on (product, key): a concurrent create or rename of the same
        # key waits for this transaction, then sees its row (so no unique violation)
        await self._conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"feature-key:{product_id}:{key}", 0))))
        t = features
        row = (
            await self._conn.execute(sa.select(t).where(t.c.product_id == product_id, t.c.key == key, t.c.delete_time.is_(None)))
        ).first()
        return None if row is None else self._load(row)


class PriceRepository(Repository[Price]):
    async def _first_id(self, query: sa.Select[Any]) -> str | None:
        row = (await self._conn.execute(query.limit(1))).first()
        return None if row is None else str(row[0])

    async def live_price_using_feature(self, feature_id: str) -> str | None:
        return await self._first_id(sa.select(prices.c.id).where(prices.c.feature_id == feature_id, prices.c.delete_time.is_(None)))

    async def live_price_of_fee(self, fee_id: str) -> str | None:
        return await self._first_id(sa.select(prices.c.id).where(prices.c.fee_id == fee_id, prices.c.delete_time.is_(None)))

    async def is_price_in_live_plan(self, price_id: str) -> str | None:
        pvp, pv, pl = plan_version_prices, plan_versions, plans
        return await self._first_id(
            sa.select(pl.c.id)
            .select_from(pvp.join(pv, pv.c.id == pvp.c.plan_version_id).join(pl, pl.c.id == pv.c.plan_id))
            .where(pvp.c.price_id == price_id, pv.c.status == "published", pl.c.delete_time.is_(None))
        )

    async def release_feature_from_deleted(self, feature_id: str) -> None:
        p = prices
        await self._conn.execute(
            p.update().where(p.c.feature_id == feature_id, p.c.delete_time.is_not(None)).values(feature_id=None, price_feature_id=None)
        )

    async def product_of(self, price: Price) -> str:
        owner, owner_id = (billable_metrics, price.billable_metric_id) if price.billable_metric_id else (fees, price.fee_id)
        return str((await self._conn.execute(sa.select(owner.c.product_id).where(owner.c.id == owner_id))).scalar_one())


class PlanVersionRepository:
    def __init__(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self._conn = conn
        self._seen = seen

    async def _lines(self, version_ids: Sequence[str]) -> dict[str, list[PlanLine]]:
        pvp = plan_version_prices
        out: dict[str, list[PlanLine]] = {vid: [] for vid in version_ids}
        if version_ids:
            rows = await self._conn.execute(
                sa.select(pvp.c.plan_version_id, pvp.c.price_id, pvp.c.key)
                .where(pvp.c.plan_version_id.in_(version_ids))
                .order_by(pvp.c.plan_version_id, pvp.c.position)
            )
            for row in rows:
                out[row.plan_version_id].append(PlanLine(price_id=row.price_id, key=row.key))
        return out

    async def _load(self, rows: Sequence[sa.Row[Any]]) -> list[PlanVersion]:
        lines = await self._lines([row.id for row in rows])
        return [self._seen.track(_aggregate(PlanVersion, plan_versions, row, lines=lines[row.id])) for row in rows]

    async def get_by_number(self, plan: Plan, number: int, *, lock: bool = False) -> PlanVersion:
        pv = plan_versions
        query = sa.select(pv).where(pv.c.plan_id == plan.id, pv.c.version_number == number)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        if row is None:
            raise NotFound("plan_version", f"{plan.id}/versions/{number}", field="versionNumber")
        (version,) = await self._load([row])
        return version

    async def by_id(self, version_id: str) -> PlanVersion | None:
        row = (await self._conn.execute(sa.select(plan_versions).where(plan_versions.c.id == version_id))).first()
        return None if row is None else (await self._load([row]))[0]

    async def last_number(self, plan_id: str) -> int:
        pv = plan_versions
        number = (await self._conn.execute(sa.select(sa.func.max(pv.c.version_number)).where(pv.c.plan_id == plan_id))).scalar_one()
        return int(number or 0)

    async def add(self, version: PlanVersion) -> None:
        await self._conn.execute(plan_versions.insert().values(**{c.name: getattr(version, c.name) for c in plan_versions.c}))
        if version.lines:
            await self._conn.execute(
                plan_version_prices.insert(),
                [
                    {"plan_version_id": version.id, "key": ln.key, "price_id": ln.price_id, "position": i}
                    for i, ln in enumerate(version.lines)
                ],
            )
        self._seen.track(version)

    async def save(self, version: PlanVersion) -> None:
        # a version's lines never change; its status and times do
        await self._conn.execute(
            plan_versions.update().where(plan_versions.c.id == version.id).values(status=version.status, updated_at=version.updated_at)
        )
        self._seen.track(version)

    async def list_page(self, plan: Plan, page: Page) -> tuple[list[PlanVersion], int]:
        pv = plan_versions
        total = (await self._conn.execute(sa.select(sa.func.count()).where(pv.c.plan_id == plan.id))).scalar_one()
        query = sa.select(pv).where(pv.c.plan_id == plan.id).order_by(pv.c.version_number.desc()).limit(page.limit).offset(page.offset)
        rows = (await self._conn.execute(query)).all()
        return await self._load(rows), int(total)


class CatalogReads:
    """What rendering needs beyond the aggregates: a version's prices (deleted ones
    included: they are history) and the features prices show."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def version_prices(self, version_ids: Sequence[str]) -> dict[str, list[tuple[str, Price]]]:
        """For each plan version: its (key, price) pairs in line order."""
        out: dict[str, list[tuple[str, Price]]] = {vid: [] for vid in version_ids}
        if not version_ids:
            return out
        pvp = plan_version_prices
        rows = await self._conn.execute(
            sa.select(pvp.c.plan_version_id, pvp.c.key, prices)
            .join(prices, prices.c.id == pvp.c.price_id)
            .where(pvp.c.plan_version_id.in_(version_ids))
            .order_by(pvp.c.plan_version_id, pvp.c.position)
        )
        for row in rows:
            out[row.plan_version_id].append((row.key, _aggregate(Price, prices, row)))
        return out

    async def features_by_id(self, feature_ids: Sequence[str | None]) -> dict[str, Feature]:
        ids = [f for f in feature_ids if f]
        if not ids:
            return {}
        rows = await self._conn.execute(sa.select(features).where(features.c.id.in_(ids)))
        return {row.id: _aggregate(Feature, features, row) for row in rows}


class SqlCatalogUnitOfWork(RepositoryUnitOfWork):
    """The catalog's unit of work over PostgreSQL (domain/ports.CatalogUnitOfWork): one
    libs/infra/db.UnitOfWork and the repositories on its connection.

    ``translate`` renders a recorded event (events.py builds the proto); it gets this
    unit of work to read the resource as it is at commit.
    """

    products: Repository[Product]
    billable_metrics: Repository[BillableMetric]
    features: FeatureRepository
    fees: Repository[Fee]
    prices: PriceRepository
    plans: Repository[Plan]
    plan_versions: PlanVersionRepository
    reads: CatalogReads

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self.products = Repository(conn, seen, products, Product)
        self.billable_metrics = Repository(conn, seen, billable_metrics, BillableMetric)
        self.features = FeatureRepository(conn, seen, features, Feature)
        self.fees = Repository(conn, seen, fees, Fee)
        self.prices = PriceRepository(conn, seen, prices, Price)
        self.plans = Repository(conn, seen, plans, Plan)
        self.plan_versions = PlanVersionRepository(conn, seen)
        self.reads = CatalogReads(conn)


class LiveRows:
    """``get`` of the aggregates that render from their own row (products, billable
    metrics, features, fees), outside a unit of work: TableRepository.get's query (the
    merchant's, live rows only) and its NotFound. Nothing it returns is tracked: a read
    records no events."""

    KINDS: Mapping[type[CatalogAggregate], sa.Table] = {
        Product: products,
        BillableMetric: billable_metrics,
        Feature: features,
        Fee: fees,
    }

    def __init__(self, connections: ReadConnections) -> None:
        self._connections = connections
        self._queries = {kind: self._query(table, "id = %s") for kind, table in self.KINDS.items()}
        # one array parameter: the same prepared statement whatever the number of ids
        self._many = {kind: self._query(table, "id = ANY(%s)") for kind, table in self.KINDS.items()}

    @staticmethod
    def _query(table: sa.Table, which: str) -> tuple[str, tuple[str, ...]]:
        # rendered once from the table, so the columns and the scoping follow store.py's definition
        names = tuple(column.name for column in table.c)
        live = " AND delete_time IS NULL" if "delete_time" in table.c else ""
        columns = ", ".join(f'"{name}"' for name in names)
        return f'SELECT {columns} FROM "{table.name}" WHERE {which} AND merchant_id = %s{live}', names

    async def get_many(self, kind: type[A], merchant_id: str, resource_ids: Sequence[str]) -> dict[str, A]:
        """The merchant's live ones among ``resource_ids``, by id (one statement; ids not
        found are absent)."""
        query, names = self._many[kind]
        rows = await self._connections.fetch_all(query, (list(dict.fromkeys(resource_ids)), merchant_id))
        found = (kind(**dict(zip(names, row, strict=True))) for row in rows)
        return {aggregate.id: aggregate for aggregate in found}

    async def get(self, kind: type[A], merchant_id: str, resource_id: str) -> A:
        query, names = self._queries[kind]
        row = await self._connections.fetch_one(query, (resource_id, merchant_id))
        if row is None:
            raise NotFound(str(kind.resource.value), resource_id)
        return kind(**dict(zip(names, row, strict=True)))
