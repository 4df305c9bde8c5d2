"""The sandbox processor: tokens, payment methods, charges, refunds, events, deliveries.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _card() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("brand", sa.Text, nullable=False),
        sa.Column("last4", sa.Text, nullable=False),
        sa.Column("exp_month", sa.Integer, nullable=False),
        sa.Column("exp_year", sa.Integer, nullable=False),
        sa.Column("behaviour", sa.Text, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.Text, primary_key=True),
        *_card(),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("used_by", sa.Text),
        sa.CheckConstraint("length(last4) = 4", name="ck_tokens_last4"),
    )
    op.create_table(
        "payment_methods",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("customer", sa.Text, nullable=False),
        sa.Column("token_id", sa.Text, sa.ForeignKey("tokens.id"), nullable=False, unique=True),
        *_card(),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "charges",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("token_id", sa.Text, sa.ForeignKey("tokens.id")),
        sa.Column("payment_method_id", sa.Text, sa.ForeignKey("payment_methods.id")),
        sa.Column("off_session", sa.Boolean, nullable=False),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("webhook_url", sa.Text),
        *_card(),
        sa.Column("failure_code", sa.Text),
        sa.Column("decline_code", sa.Text),
        sa.Column("failure_message", sa.Text),
        sa.Column("amount_refunded", sa.BigInteger, nullable=False),
        sa.Column("event_seq", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("completes_at", TS),
        sa.CheckConstraint("status IN ('processing', 'succeeded', 'failed')", name="ck_charges_status"),
        sa.CheckConstraint("amount > 0", name="ck_charges_amount"),
        sa.CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="ck_charges_amount_refunded"),
        sa.CheckConstraint("(token_id IS NULL) <> (payment_method_id IS NULL)", name="ck_charges_one_source"),
        sa.UniqueConstraint("account", "idempotency_key", name="uq_charges_account_idempotency_key"),
    )
    op.create_index("ix_charges_processing", "charges", ["completes_at"], postgresql_where=sa.text("status = 'processing'"))
    op.create_table(
        "refunds",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("account", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("charge_id", sa.Text, sa.ForeignKey("charges.id"), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("event_seq", sa.Integer, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_refunds_amount"),
        sa.UniqueConstraint("account", "idempotency_key", name="uq_refunds_account_idempotency_key"),
    )
    op.create_index("ix_refunds_charge_id", "refunds", ["charge_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("object_id", sa.Text, nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("object_id", "sequence", name="uq_events_object_sequence"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Text, sa.ForeignKey("events.id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("claimed_until", TS),
        sa.Column("last_status", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("status IN ('pending', 'sending', 'delivered', 'failed')", name="ck_deliveries_status"),
        sa.CheckConstraint("kind IN ('first', 'duplicate', 'late', 'manual')", name="ck_deliveries_kind"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["due_at"], postgresql_where=sa.text("status IN ('pending', 'sending')"))
    op.create_index("ix_deliveries_event_id", "deliveries", ["event_id"])


def downgrade() -> None:
    for table in ("deliveries", "events", "refunds", "charges", "payment_methods", "tokens"):
        op.drop_table(table)
