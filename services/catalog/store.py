"""Tables of the catalog's own database, and the queries the servicer needs.

SQLAlchemy Core, not the ORM: rows map to protos in server.py, rules live in domain/.
Every query is scoped by merchant_id; a row of another merchant is simply not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.errors import NotFound
from libs.infra.db import add_infra_tables

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
    sa.UniqueConstraint("product_id", "key", name="uq_features_product_key"),
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
    sa.Column("deleted_at", TS),
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
    sa.Column("deleted_at", TS),
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


async def get_row(
    conn: AsyncConnection,
    table: sa.Table,
    merchant_id: str,
    row_id: str,
    resource: str,
    *,
    field: str | None = None,
    lock: bool = False,
) -> sa.Row[Any]:
    """One live row of the merchant, or NotFound (also for another merchant's row)."""
    query = sa.select(table).where(table.c.id == row_id, table.c.merchant_id == merchant_id)
    if "deleted_at" in table.c:
        query = query.where(table.c.deleted_at.is_(None))
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(resource, row_id, field=field)
    return row


async def list_page(
    conn: AsyncConnection, table: sa.Table, conditions: Sequence[sa.ColumnElement[bool]], limit: int, offset: int
) -> tuple[list[sa.Row[Any]], int]:
    """A page, newest first, and the total matching."""
    where = sa.and_(*conditions)
    total = (await conn.execute(sa.select(sa.func.count()).select_from(table).where(where))).scalar_one()
    rows = (
        await conn.execute(sa.select(table).where(where).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit).offset(offset))
    ).all()
    return list(rows), int(total)


async def version_lines(conn: AsyncConnection, version_ids: Sequence[str]) -> dict[str, list[tuple[str, sa.Row[Any]]]]:
    """For each plan version: its (key, price row) pairs in line order, deleted prices included."""
    if not version_ids:
        return {}
    rows = (
        await conn.execute(
            sa.select(plan_version_prices.c.plan_version_id, plan_version_prices.c.key, prices)
            .join(prices, prices.c.id == plan_version_prices.c.price_id)
            .where(plan_version_prices.c.plan_version_id.in_(version_ids))
            .order_by(plan_version_prices.c.plan_version_id, plan_version_prices.c.position)
        )
    ).all()
    out: dict[str, list[tuple[str, sa.Row[Any]]]] = {vid: [] for vid in version_ids}
    for row in rows:
        out[row.plan_version_id].append((row.key, row))
    return out


async def features_by_id(conn: AsyncConnection, feature_ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    ids = [f for f in feature_ids if f]
    if not ids:
        return {}
    rows = (await conn.execute(sa.select(features).where(features.c.id.in_(ids)))).all()
    return {row.id: row for row in rows}
