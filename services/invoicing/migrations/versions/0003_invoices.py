"""Invoices, their lines, what they billed, the rounding carry, credit notes and numbering.

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
ATOMIC = sa.Numeric(38, 0)
EXACT = sa.Numeric()


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("sequence_number", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("billing_anchor", TS),
        sa.Column("billing_cadence", sa.Text, nullable=False),
        sa.Column("terms", pg.JSONB, nullable=False),
        sa.Column("composition", pg.JSONB, nullable=False),
        sa.Column("grace_period_end", TS, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("period_end", TS, nullable=False),
        sa.Column("test_clock_id", sa.Text),
        sa.Column("auto_approve", sa.Boolean, nullable=False),
        sa.Column("subtotal", ATOMIC, nullable=False),
        sa.Column("total_tax", ATOMIC, nullable=False),
        sa.Column("grand_total", ATOMIC, nullable=False),
        sa.Column("paid_amount", ATOMIC, nullable=False),
        sa.Column("item_count", sa.Integer, nullable=False),
        sa.Column("invoice_number", sa.Text),
        sa.Column("issued_at", TS),
        sa.Column("due_at", TS),
        sa.Column("paid_at", TS),
        sa.Column("payment_reason", sa.Text),
        sa.Column("failure_reason", sa.Text),
        sa.Column("opened_at", TS, nullable=False),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("subscription_id", "sequence_number", name="uq_invoices_subscription_sequence"),
        sa.UniqueConstraint("merchant_id", "invoice_number", name="uq_invoices_merchant_number"),
    )
    op.create_index("ix_invoices_merchant_created", "invoices", ["merchant_id", "created_at"])
    op.create_index("ix_invoices_merchant_customer", "invoices", ["merchant_id", "customer_id"])
    op.create_table(
        "invoice_lines",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("price_id", sa.Text),
        sa.Column("source_id", sa.Text),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("payment_term", sa.Text),
        sa.Column("window", pg.JSONB),
        sa.Column("quantity", EXACT, nullable=False),
        sa.Column("unit_price", EXACT, nullable=False),
        sa.Column("exact_amount", EXACT, nullable=False),
        sa.Column("amount", ATOMIC, nullable=False),
        sa.Column("tax_rate", EXACT, nullable=False),
        sa.Column("tax", ATOMIC, nullable=False),
        sa.Column("total", ATOMIC, nullable=False),
        sa.Column("corrects", pg.JSONB),
        sa.Column("provenance", pg.JSONB, nullable=False),
        sa.Column("metric_name", sa.Text, nullable=False),
        sa.Column("metric_unit", sa.Text, nullable=False),
        sa.Column("metric_description", sa.Text, nullable=False),
        sa.UniqueConstraint("invoice_id", "position", name="uq_invoice_lines_position"),
    )
    op.create_table(
        "billed_periods",
        sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("subscription_id", sa.Text, nullable=False),
        sa.Column("price_id", sa.Text, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("window_end", TS, nullable=False),
        sa.Column("period_start", TS, nullable=False),
        sa.Column("period_end", TS, nullable=False),
        sa.Column("period_index", sa.BigInteger, nullable=False),
        sa.Column("quantity", EXACT, nullable=False),
        sa.Column("exact_amount", EXACT, nullable=False),
        sa.Column("tax_rate", EXACT),
    )
    op.create_index("ix_billed_periods_subscription_end", "billed_periods", ["subscription_id", "window_end"])
    op.create_table(
        "customer_carry",
        sa.Column("merchant_id", sa.Text, primary_key=True),
        sa.Column("customer_id", sa.Text, primary_key=True),
        sa.Column("currency", sa.Text, primary_key=True),
        sa.Column("exact_total", EXACT, nullable=False),
        sa.Column("billed_total", ATOMIC, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("amount", ATOMIC, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_credit_notes_invoice", "credit_notes", ["invoice_id"])
    op.create_table(
        "invoice_counters",
        sa.Column("merchant_id", sa.Text, primary_key=True),
        sa.Column("last_number", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invoice_counters")
    op.drop_index("ix_credit_notes_invoice", table_name="credit_notes")
    op.drop_table("credit_notes")
    op.drop_table("customer_carry")
    op.drop_index("ix_billed_periods_subscription_end", table_name="billed_periods")
    op.drop_table("billed_periods")
    op.drop_table("invoice_lines")
    op.drop_index("ix_invoices_merchant_customer", table_name="invoices")
    op.drop_index("ix_invoices_merchant_created", table_name="invoices")
    op.drop_table("invoices")
