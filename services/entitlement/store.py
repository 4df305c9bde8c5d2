"""The entitlement service's own database: its tables and the repositories that read and write
them (loading and saving the domain's aggregates). Every table is declared here and
created by a migration in migrations/versions (tests/integration/test_migrations.py
checks that the two agree).

* entitlements: one row per provisioned or hand-issued feature of a customer. The check
  path is one indexed query on (merchant_id, customer_id, feature_key); a subscription
  has at most one entitlement per feature (the unique index provisioning relies on).
* grants: units of metered entitlements; an idempotency key is unique per entitlement, a
  purchase mints one grant.
* grant_purchases: units sold through an ad-hoc invoice, pending until it is paid.

Units are exact ``numeric``; SQLAlchemy Core, a row becomes an aggregate by column name
(libs/infra/repository.py). Every query is scoped by merchant_id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.domain import EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from libs.infra.db import Database, ReadConnections, add_infra_tables, psycopg_sql
from libs.infra.repository import RepositoryUnitOfWork, TableRepository, load_aggregate
from services.entitlement.domain.commands import EntitlementFilters, GrantFilters
from services.entitlement.domain.model import Entitlement, Grant, GrantPurchase

metadata = sa.MetaData()
add_infra_tables(metadata)

TS = sa.DateTime(timezone=True)
UNITS = sa.Numeric()

entitlements = sa.Table(
    "entitlements",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("feature_id", sa.Text, nullable=False),
    sa.Column("feature_key", sa.Text, nullable=False),
    sa.Column("feature_name", sa.Text, nullable=False),
    sa.Column("product_id", sa.Text, nullable=False),
    sa.Column("feature_type", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("active_from", TS, nullable=False),
    sa.Column("active_to", TS),
    sa.Column("canceled_at", TS),
    sa.Column("template", pg.JSONB, nullable=False),
    sa.Column("usage_period", sa.Text),
    sa.Column("anchor", TS),
    sa.Column("is_soft_limit", sa.Boolean, nullable=False),
    sa.Column("preserve_overage_at_reset", sa.Boolean, nullable=False),
    sa.Column("billable_metric_id", sa.Text),
    sa.Column("test_clock_id", sa.Text),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("feature_type IN ('boolean', 'static', 'metered')", name="ck_entitlements_feature_type"),
    sa.CheckConstraint("source IN ('subscription', 'manual')", name="ck_entitlements_source"),
    # the check path, and a customer's list
    sa.Index("ix_entitlements_customer_feature_key", "merchant_id", "customer_id", "feature_key"),
    # provisioning is idempotent by (subscription, feature)
    sa.Index(
        "uq_entitlements_subscription_feature",
        "subscription_id",
        "feature_id",
        unique=True,
        postgresql_where=sa.text("source = 'subscription'"),
    ),
    sa.Index("ix_entitlements_subscription", "subscription_id", "billable_metric_id"),
)

grants = sa.Table(
    "grants",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("entitlement_id", sa.Text, sa.ForeignKey("entitlements.id"), nullable=False),
    sa.Column("amount", UNITS, nullable=False),
    sa.Column("effective_at", TS, nullable=False),
    sa.Column("expires_at", TS),
    sa.Column("voided_at", TS),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("reset_min_rollover", UNITS, nullable=False),
    sa.Column("reset_max_rollover", UNITS, nullable=False),
    sa.Column("recurring", sa.Boolean, nullable=False),
    sa.Column("recurrence_period", sa.Text),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("request_hash", sa.Text),
    sa.Column("invoice_id", sa.Text),
    sa.Column("purchase_id", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("source IN ('manual', 'reset', 'purchase')", name="ck_grants_source"),
    sa.Index("ix_grants_entitlement_created", "entitlement_id", "created_at"),
    sa.Index(
        "uq_grants_entitlement_key",
        "entitlement_id",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index("uq_grants_purchase", "purchase_id", unique=True, postgresql_where=sa.text("purchase_id IS NOT NULL")),
)

grant_purchases = sa.Table(
    "grant_purchases",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("entitlement_id", sa.Text, sa.ForeignKey("entitlements.id"), nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("amount", UNITS, nullable=False),
    sa.Column("price", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("effective_at", TS),
    sa.Column("expires_at", TS),
    sa.Column("reset_min_rollover", UNITS),
    sa.Column("reset_max_rollover", UNITS),
    sa.Column("success_url", sa.Text),
    sa.Column("cancel_url", sa.Text),
    sa.Column("payment_expires_at", TS),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text),
    sa.Column("grant_id", sa.Text),
    sa.Column("paid_at", TS),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("status IN ('pending', 'paid')", name="ck_grant_purchases_status"),
    sa.Index("uq_grant_purchases_entitlement_key", "entitlement_id", "idempotency_key", unique=True),
    sa.Index("ix_grant_purchases_invoice", "merchant_id", "invoice_id"),
)


async def _advisory_lock(conn: AsyncConnection, key: str) -> None:
    """A transaction lock on ``key``: a concurrent claim of the same key waits for this
    transaction, then sees its row (so no unique violation)."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))


class EntitlementRepository(TableRepository[Entitlement]):
    resource = "entitlement"

    async def add_provisioned(self, entitlement: Entitlement) -> bool:
        t = entitlements
        stmt = (
            pg.insert(t)
            .values(**self._values(entitlement))
            .on_conflict_do_nothing(index_elements=[t.c.subscription_id, t.c.feature_id], index_where=sa.text("source = 'subscription'"))
            .returning(t.c.id)
        )
        inserted = (await self._conn.execute(stmt)).first() is not None
        if inserted:
            self._seen.track(entitlement)
        return inserted

    async def of_subscription(self, merchant_id: str, subscription_id: str, *, lock: bool = False) -> list[Entitlement]:
        t = entitlements
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.subscription_id == subscription_id).order_by(t.c.create_time, t.c.id)
        if lock:
            query = query.with_for_update()
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def of_customer_feature(self, merchant_id: str, customer_id: str, feature_id: str) -> list[Entitlement]:
        await _advisory_lock(self._conn, f"entitlement:{merchant_id}:{customer_id}:{feature_id}")
        t = entitlements
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.customer_id == customer_id, t.c.feature_id == feature_id)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def metered_of_subscriptions(self, merchant_id: str, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Entitlement]:
        wanted = sorted(set(pairs))
        if not wanted:
            return {}
        t = entitlements
        query = (
            sa.select(t)
            .where(
                t.c.merchant_id == merchant_id,
                t.c.feature_type == "metered",
                sa.tuple_(t.c.subscription_id, t.c.billable_metric_id).in_(wanted),
            )
            # the oldest one first: a subscription's own, provisioned at activation
            .order_by(t.c.create_time, t.c.id)
        )
        out: dict[tuple[str, str], Entitlement] = {}
        for row in (await self._conn.execute(query)).all():
            out.setdefault((row.subscription_id, row.billable_metric_id), self._load(row))
        return out


class GrantRepository(TableRepository[Grant]):
    resource = "grant"
    created_column = "created_at"

    async def get(  # type: ignore[override]
        self, merchant_id: str, entitlement_id: str, grant_id: str, *, lock: bool = False
    ) -> Grant:
        t = grants
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.entitlement_id == entitlement_id, t.c.id == grant_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        if row is None:
            raise NotFound("grant", grant_id, field="grantId")
        return self._load(row)

    async def by_key(self, entitlement_id: str, key: str) -> Grant | None:
        await _advisory_lock(self._conn, f"grant-key:{entitlement_id}:{key}")
        t = grants
        row = (await self._conn.execute(sa.select(t).where(t.c.entitlement_id == entitlement_id, t.c.idempotency_key == key))).first()
        return None if row is None else self._load(row)

    async def of_entitlements(self, entitlement_ids: Sequence[str]) -> dict[str, list[Grant]]:
        ids = sorted(set(entitlement_ids))
        out: dict[str, list[Grant]] = {i: [] for i in ids}
        if not ids:
            return out
        t = grants
        rows = (await self._conn.execute(sa.select(t).where(t.c.entitlement_id.in_(ids)).order_by(t.c.created_at, t.c.id))).all()
        for row in rows:
            out[row.entitlement_id].append(self._load(row))
        return out

    async def list_page(self, merchant_id: str, entitlement_id: str, filters: GrantFilters, page: Page) -> tuple[list[Grant], int]:
        t = grants
        conditions = [t.c.merchant_id == merchant_id, t.c.entitlement_id == entitlement_id]
        if not filters.include_voided:
            conditions.append(t.c.voided_at.is_(None))
        where = sa.and_(*conditions)
        total = (await self._conn.execute(sa.select(sa.func.count()).select_from(t).where(where))).scalar_one()
        # oldest first (the burn's creation order)
        query = sa.select(t).where(where).order_by(t.c.created_at, t.c.id).limit(page.limit).offset(page.offset)
        return [self._load(row) for row in (await self._conn.execute(query)).all()], int(total)


class PurchaseRepository(TableRepository[GrantPurchase]):
    resource = "grant_purchase"

    async def by_key(self, entitlement_id: str, key: str) -> GrantPurchase | None:
        await _advisory_lock(self._conn, f"purchase-key:{entitlement_id}:{key}")
        t = grant_purchases
        row = (await self._conn.execute(sa.select(t).where(t.c.entitlement_id == entitlement_id, t.c.idempotency_key == key))).first()
        return None if row is None else self._load(row)

    async def by_invoice(self, merchant_id: str, invoice_id: str, *, lock: bool = False) -> GrantPurchase | None:
        t = grant_purchases
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.invoice_id == invoice_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)


class SqlEntitlementUnitOfWork(RepositoryUnitOfWork):
    """The entitlement service's unit of work over PostgreSQL (domain/ports): one
    libs/infra/db.UnitOfWork and the repositories on its connection. ``translate``
    renders a recorded event at commit (views.outbox_message)."""

    entitlements: EntitlementRepository
    grants: GrantRepository
    purchases: PurchaseRepository

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self.entitlements = EntitlementRepository(conn, seen, entitlements, Entitlement)
        self.grants = GrantRepository(conn, seen, grants, Grant)
        self.purchases = PurchaseRepository(conn, seen, grant_purchases, GrantPurchase)


_FILTERS = ("feature_key", "product_id", "subscription_id")


def _customer_query(filters: tuple[str, ...]) -> sa.Select[Any]:
    e, g = entitlements, grants
    conditions = [e.c.merchant_id == sa.bindparam("merchant_id"), e.c.customer_id == sa.bindparam("customer_id")]
    conditions.extend(e.c[name] == sa.bindparam(name) for name in filters)
    grant_columns = [column.label(f"g_{column.name}") for column in g.c]
    return sa.select(e, *grant_columns).select_from(e.outerjoin(g, g.c.entitlement_id == e.c.id)).where(*conditions)


# built once per combination of filters: the read paths only bind their values
_CUSTOMER_QUERIES: dict[tuple[str, ...], sa.Select[Any]] = {}
_ENTITLEMENT_COLUMNS = [column.name for column in entitlements.c]
_GRANT_COLUMNS = [(column.name, f"g_{column.name}") for column in grants.c]


def _rows_of_customer(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Entitlement, list[Grant]]]:
    found: dict[str, tuple[Entitlement, list[Grant]]] = {}
    for mapping in rows:
        entitlement_id = mapping["id"]
        if entitlement_id not in found:
            found[entitlement_id] = (Entitlement(**{name: mapping[name] for name in _ENTITLEMENT_COLUMNS}), [])
        if mapping["g_id"] is not None:
            found[entitlement_id][1].append(Grant(**{name: mapping[label] for name, label in _GRANT_COLUMNS}))
    out = sorted(found.values(), key=lambda item: (item[0].create_time, item[0].id), reverse=True)
    for _, its in out:
        its.sort(key=lambda grant: (grant.created_at, grant.id))
    return out


def _of_customer(
    merchant_id: str, customer_id: str, feature_key: str | None, product_id: str | None, subscription_id: str | None
) -> tuple[tuple[str, ...], dict[str, Any]]:
    given = {"feature_key": feature_key, "product_id": product_id, "subscription_id": subscription_id}
    filters = tuple(name for name in _FILTERS if given[name] is not None)
    return filters, {"merchant_id": merchant_id, "customer_id": customer_id, **{name: given[name] for name in filters}}


async def load_of_customer(
    conn: AsyncConnection,
    merchant_id: str,
    customer_id: str,
    *,
    feature_key: str | None = None,
    product_id: str | None = None,
    subscription_id: str | None = None,
) -> list[tuple[Entitlement, list[Grant]]]:
    """The read paths' one query: a customer's entitlements (of a key, a product, a
    subscription) with their grants, newest first (grants oldest first); a left join on
    the (merchant, customer, feature_key) index. A customer has few entitlements (one per
    feature per subscription), so lists page them here. In a transaction; the checks run
    the same statement outside one (SqlCheckReads)."""
    filters, values = _of_customer(merchant_id, customer_id, feature_key, product_id, subscription_id)
    query = _CUSTOMER_QUERIES.get(filters)
    if query is None:
        query = _CUSTOMER_QUERIES[filters] = _customer_query(filters)
    return _rows_of_customer([row._mapping for row in (await conn.execute(query, values)).all()])


async def read_entitlement(conn: AsyncConnection, entitlement_id: str) -> Entitlement | None:
    """An entitlement as it is in this transaction (rendering a recorded event)."""
    row = (await conn.execute(sa.select(entitlements).where(entitlements.c.id == entitlement_id))).first()
    return None if row is None else load_aggregate(Entitlement, entitlements, row)


async def read_grant(conn: AsyncConnection, grant_id: str) -> Grant | None:
    row = (await conn.execute(sa.select(grants).where(grants.c.id == grant_id))).first()
    return None if row is None else load_aggregate(Grant, grants, row)


class SqlCheckReads:
    """domain/ports.CheckReads: the read paths' one query (load_of_customer's statement,
    compiled once per combination of filters), one prepared statement on an autocommit
    connection of ReadConnections: a check runs no SQLAlchemy execution layer (it was
    about a third of a check's CPU)."""

    def __init__(self, db: Database) -> None:
        self._reads = ReadConnections.beside(db)
        self._statements: dict[tuple[str, ...], tuple[str, list[str]]] = {}

    async def _of_customer(
        self, merchant_id: str, customer_id: str, feature_key: str | None, product_id: str | None, subscription_id: str | None
    ) -> list[tuple[Entitlement, list[Grant]]]:
        filters, values = _of_customer(merchant_id, customer_id, feature_key, product_id, subscription_id)
        statement = self._statements.get(filters)
        if statement is None:
            statement = self._statements[filters] = psycopg_sql(_customer_query(filters))
        sql, names = statement
        rows = await self._reads.fetch_all(sql, values)
        return _rows_of_customer([dict(zip(names, row, strict=True)) for row in rows])

    async def for_check(
        self, merchant_id: str, customer_id: str, feature_key: str, product_id: str | None
    ) -> list[tuple[Entitlement, list[Grant]]]:
        return await self._of_customer(merchant_id, customer_id, feature_key, product_id, None)

    async def of_customer(self, merchant_id: str, customer_id: str, filters: EntitlementFilters) -> list[tuple[Entitlement, list[Grant]]]:
        return await self._of_customer(merchant_id, customer_id, filters.feature_key, filters.product_id, filters.subscription_id)


__all__ = [
    "SqlCheckReads",
    "SqlEntitlementUnitOfWork",
    "entitlements",
    "grant_purchases",
    "grants",
    "load_of_customer",
    "metadata",
    "read_entitlement",
    "read_grant",
]
