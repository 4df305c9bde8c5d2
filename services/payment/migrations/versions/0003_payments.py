"""Payment sessions, one-off payments, saved methods, charge attempts, processed webhooks,
collection settings and refunds.

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
        "payment_sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("entity_type", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text),
        sa.Column("subscription_id", sa.Text),
        sa.Column("amount", sa.Numeric()),
        sa.Column("currency", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("entity_label", sa.Text),
        sa.Column("lines", pg.JSONB, nullable=False),
        sa.Column("success_redirect_url", sa.Text),
        sa.Column("failure_redirect_url", sa.Text),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("save_payment_method", sa.Boolean, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("completed_at", TS),
        sa.Column("provider_payment_ref", sa.Text),
        sa.Column("failure_code", sa.Text),
        sa.Column("failure_message", sa.Text),
        sa.Column("payment_method_id", sa.Text),
        sa.Column("submit_nonce", sa.Text),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("processor", sa.Text),
        sa.CheckConstraint("mode IN ('payment', 'setup')", name="ck_payment_sessions_mode"),
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'expired', 'cancelled')", name="ck_payment_sessions_status"
        ),
        sa.CheckConstraint(
            "entity_type IN ('invoice', 'subscription', 'topup', 'payment', 'customer')", name="ck_payment_sessions_entity_type"
        ),
    )
    op.create_index(
        "uq_payment_sessions_open_entity",
        "payment_sessions",
        ["merchant_id", "entity_type", "entity_id"],
        unique=True,
        postgresql_where=sa.text("mode = 'payment' AND status IN ('pending', 'processing')"),
    )
    op.create_index("ix_payment_sessions_merchant_created", "payment_sessions", ["merchant_id", "create_time"])
    op.create_index("ix_payment_sessions_entity", "payment_sessions", ["merchant_id", "entity_id"])
    op.create_index("ix_payment_sessions_pending_expiry", "payment_sessions", ["expires_at"], postgresql_where=sa.text("status = 'pending'"))

    op.create_table(
        "payments",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text, nullable=False),
        sa.Column("reference", sa.Text),
        sa.Column("metadata", pg.JSONB, nullable=False),
        sa.Column("line_items", pg.JSONB, nullable=False),
        sa.Column("success_redirect_url", sa.Text),
        sa.Column("failure_redirect_url", sa.Text),
        sa.Column("save_payment_method", sa.Boolean, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("payment_session_id", sa.Text),
        sa.Column("completed_at", TS),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.CheckConstraint("status IN ('pending', 'processing', 'completed', 'expired', 'cancelled')", name="ck_payments_status"),
    )
    op.create_index(
        "uq_payments_merchant_key",
        "payments",
        ["merchant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_payments_merchant_created", "payments", ["merchant_id", "create_time"])
    op.create_index("ix_payments_pending_expiry", "payments", ["expires_at"], postgresql_where=sa.text("status = 'pending'"))

    op.create_table(
        "payment_methods",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("customer_id", sa.Text, nullable=False),
        sa.Column("processor", sa.Text, nullable=False),
        sa.Column("processor_ref", sa.Text, nullable=False),
        sa.Column("brand", sa.Text, nullable=False),
        sa.Column("last4", sa.Text, nullable=False),
        sa.Column("exp_month", sa.Integer, nullable=False),
        sa.Column("exp_year", sa.Integer, nullable=False),
        sa.Column("create_time", TS, nullable=False),
        sa.CheckConstraint("last4 ~ '^[0-9]{4}$'", name="ck_payment_methods_last4"),
    )
    op.create_index("ix_payment_methods_customer", "payment_methods", ["merchant_id", "customer_id", "create_time"])
    op.create_index("uq_payment_methods_ref", "payment_methods", ["merchant_id", "processor", "processor_ref"], unique=True)

    op.create_table(
        "charge_attempts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("attempt_key", sa.Text, nullable=False),
        sa.Column("payable_type", sa.Text, nullable=False),
        sa.Column("payable_id", sa.Text, nullable=False),
        sa.Column("session_id", sa.Text),
        sa.Column("customer_id", sa.Text),
        sa.Column("subscription_id", sa.Text),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("source_kind", sa.Text, nullable=False),
        sa.Column("source_ref", sa.Text, nullable=False),
        sa.Column("payment_method_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("provider_ref", sa.Text),
        sa.Column("failure_code", sa.Text),
        sa.Column("decline_code", sa.Text),
        sa.Column("failure_message", sa.Text),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("first_attempt_at", TS),
        sa.Column("effective_time", TS),
        sa.Column("submit_nonce", sa.Text),
        sa.Column("processor_sequence", sa.BigInteger),
        sa.Column("next_attempt_at", TS),
        sa.Column("after_final_failure", sa.Text),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("decided_at", TS),
        sa.Column("reported_at", TS),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.CheckConstraint("status IN ('sending', 'processing', 'succeeded', 'failed')", name="ck_charge_attempts_status"),
        sa.CheckConstraint("payable_type IN ('invoice', 'payment')", name="ck_charge_attempts_payable_type"),
        sa.CheckConstraint("trigger IN ('automatic', 'manual', 'page')", name="ck_charge_attempts_trigger"),
        sa.CheckConstraint("source_kind IN ('token', 'method')", name="ck_charge_attempts_source_kind"),
        sa.CheckConstraint("amount_minor > 0", name="ck_charge_attempts_amount"),
    )
    op.create_index("uq_charge_attempts_key", "charge_attempts", ["merchant_id", "attempt_key"], unique=True)
    op.create_index(
        "uq_charge_attempts_in_flight",
        "charge_attempts",
        ["merchant_id", "payable_type", "payable_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('sending', 'processing')"),
    )
    op.create_index(
        "uq_charge_attempts_succeeded",
        "charge_attempts",
        ["merchant_id", "payable_type", "payable_id"],
        unique=True,
        postgresql_where=sa.text("status = 'succeeded'"),
    )
    op.create_index(
        "uq_charge_attempts_session_nonce",
        "charge_attempts",
        ["session_id", "submit_nonce"],
        unique=True,
        postgresql_where=sa.text("submit_nonce IS NOT NULL"),
    )
    op.create_index("ix_charge_attempts_payable", "charge_attempts", ["merchant_id", "payable_type", "payable_id"])
    op.create_index(
        "ix_charge_attempts_unsettled", "charge_attempts", ["update_time"], postgresql_where=sa.text("status IN ('sending', 'processing')")
    )
    op.create_index(
        "ix_charge_attempts_unreported",
        "charge_attempts",
        ["decided_at"],
        postgresql_where=sa.text("reported_at IS NULL AND payable_type = 'invoice' AND status IN ('succeeded', 'failed')"),
    )

    op.create_table(
        "processed_webhooks",
        sa.Column("processor", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("received_at", TS, nullable=False),
    )

    op.create_table(
        "payment_settings",
        sa.Column("merchant_id", sa.Text, primary_key=True),
        sa.Column("retry_schedule_days", pg.ARRAY(sa.Integer), nullable=False),
        sa.Column("after_final_failure", sa.Text, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.CheckConstraint("after_final_failure IN ('keep_active', 'terminate')", name="ck_payment_settings_after_final_failure"),
    )

    op.create_table(
        "refunds",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("credit_note_id", sa.Text, nullable=False),
        sa.Column("invoice_id", sa.Text, nullable=False),
        sa.Column("attempt_id", sa.Text, nullable=False),
        sa.Column("charge_ref", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("provider_refund_ref", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.CheckConstraint("status IN ('sending', 'pending', 'succeeded', 'failed')", name="ck_refunds_status"),
    )
    op.create_index("uq_refunds_credit_note", "refunds", ["merchant_id", "credit_note_id"], unique=True)
    op.create_index("ix_refunds_pending", "refunds", ["update_time"], postgresql_where=sa.text("status = 'pending'"))


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("payment_settings")
    op.drop_table("processed_webhooks")
    op.drop_table("charge_attempts")
    op.drop_table("payment_methods")
    op.drop_table("payments")
    op.drop_table("payment_sessions")
