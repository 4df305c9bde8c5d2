"""Customers, consumers, test clocks and subscriptions; the sequence of customer changes.

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
    op.execute(sa.schema.CreateSequence(sa.Sequence("customer_change_sequence")))
    op.create_table(
        "consumers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("email_normalized", sa.Text, nullable=False),
        sa.Column("address", pg.JSONB, nullable=False),
        sa.Column("phone", sa.Text),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
    )
    op.create_index("uq_consumers_merchant_email", "consumers", ["merchant_id", "email_normalized"], unique=True)
    op.create_table(
        "customers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("consumer_id", sa.Text, sa.ForeignKey("consumers.id"), nullable=False),
        sa.Column("external_id", sa.Text),
        sa.Column("tax_id", sa.Text),
        sa.Column("tax_rates", pg.JSONB, nullable=False),
        sa.Column("notification_settings", pg.JSONB, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.Column("delete_time", TS),
    )
    op.create_index("ix_customers_merchant_created", "customers", ["merchant_id", "create_time"])
    op.create_index(
        "uq_customers_merchant_live_external_id",
        "customers",
        ["merchant_id", "external_id"],
        unique=True,
        postgresql_where=sa.text("delete_time IS NULL AND external_id IS NOT NULL"),
    )
    op.create_index(
        "uq_customers_merchant_live_consumer",
        "customers",
        ["merchant_id", "consumer_id"],
        unique=True,
        postgresql_where=sa.text("delete_time IS NULL"),
    )
    op.create_table(
        "test_clocks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text),
        sa.Column("description", sa.Text),
        sa.Column("current_time", TS, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.Column("delete_time", TS),
    )
    op.create_index("ix_test_clocks_merchant_created", "test_clocks", ["merchant_id", "create_time"])
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("plan_id", sa.Text, nullable=False),
        sa.Column("plan_version_id", sa.Text, nullable=False),
        sa.Column("version_number", sa.Integer, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("version_policy", sa.Text, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("billing_starts_at", TS, nullable=False),
        sa.Column("elapsed_period_billing", sa.Text, nullable=False),
        sa.Column("billing_anchor", TS, nullable=False),
        sa.Column("billing_cadence", sa.Text, nullable=False),
        sa.Column("payment_term_days", sa.Integer, nullable=False),
        sa.Column("auto_charge", sa.Boolean, nullable=False),
        sa.Column("tax_exempt", sa.Boolean, nullable=False),
        sa.Column("tax_behavior", sa.Text, nullable=False),
        sa.Column("default_tax_rate", sa.Text, nullable=False),
        sa.Column("ending_at", TS),
        sa.Column("terminated_at", TS),
        sa.Column("terminated_by", sa.Text),
        sa.Column("termination_reason", sa.Text),
        sa.Column("termination_change_reason", sa.Text),
        sa.Column("test_clock_id", sa.Text, sa.ForeignKey("test_clocks.id")),
        sa.Column("renewal_reminder_enabled", sa.Boolean, nullable=False),
        sa.Column("renewal_reminder_days", sa.Integer, nullable=False),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("change_reason", sa.Text),
        sa.Column("change_description", sa.Text),
        sa.Column("change_metadata", pg.JSONB, nullable=False),
        sa.Column("redirect_urls", pg.JSONB, nullable=False),
        sa.Column("session_expiry_minutes", sa.Float, nullable=False),
        sa.Column("invoice_zero_id", sa.Text),
        sa.Column("invoice_zero_status", sa.Text),
        sa.Column("invoice_zero_amount", sa.Text),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.CheckConstraint("status IN ('pending_payment', 'active', 'terminated')", name="ck_subscriptions_status"),
    )
    op.create_index("ix_subscriptions_merchant_created", "subscriptions", ["merchant_id", "create_time"])
    op.create_index("ix_subscriptions_customer", "subscriptions", ["customer_id"])
    op.create_index("ix_subscriptions_test_clock", "subscriptions", ["test_clock_id"])


def downgrade() -> None:
    op.drop_table("subscriptions")
    op.drop_table("test_clocks")
    op.drop_table("customers")
    op.drop_table("consumers")
    op.execute(sa.schema.DropSequence(sa.Sequence("customer_change_sequence")))
