"""Entitlements, their grants and grant purchases.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "entitlements",
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
    )
    op.create_index("ix_entitlements_customer_feature_key", "entitlements", ["merchant_id", "customer_id", "feature_key"])
    op.create_index(
        "uq_entitlements_subscription_feature",
        "entitlements",
        ["subscription_id", "feature_id"],
        unique=True,
        postgresql_where=sa.text("source = 'subscription'"),
    )
    op.create_index("ix_entitlements_subscription", "entitlements", ["subscription_id", "billable_metric_id"])
    op.create_table(
        "grants",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("entitlement_id", sa.Text, sa.ForeignKey("entitlements.id"), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("effective_at", TS, nullable=False),
        sa.Column("expires_at", TS),
        sa.Column("voided_at", TS),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("reset_min_rollover", sa.Numeric(), nullable=False),
        sa.Column("reset_max_rollover", sa.Numeric(), nullable=False),
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
    )
    op.create_index("ix_grants_entitlement_created", "grants", ["entitlement_id", "created_at"])
    op.create_index(
        "uq_grants_entitlement_key",
        "grants",
        ["entitlement_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("uq_grants_purchase", "grants", ["purchase_id"], unique=True, postgresql_where=sa.text("purchase_id IS NOT NULL"))
    op.create_table(
        "grant_purchases",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("entitlement_id", sa.Text, sa.ForeignKey("entitlements.id"), nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("price", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("effective_at", TS),
        sa.Column("expires_at", TS),
        sa.Column("reset_min_rollover", sa.Numeric()),
        sa.Column("reset_max_rollover", sa.Numeric()),
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
    )
    op.create_index("uq_grant_purchases_entitlement_key", "grant_purchases", ["entitlement_id", "idempotency_key"], unique=True)
    op.create_index("ix_grant_purchases_invoice", "grant_purchases", ["merchant_id", "invoice_id"])


def downgrade() -> None:
    op.drop_table("grant_purchases")
    op.drop_table("grants")
    op.drop_table("entitlements")
