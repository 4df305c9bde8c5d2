"""Collection (issue 11): an invoice keeps its checkout session (payment_session_id,
payment_url), counts its retryPayment attempts and names the charge attempt that paid
it (paid_by_attempt_key); charge outcomes reported by the payment service are kept by
attempt key; credit notes get a kind (balance: a final
invoice below zero; refund: a PAID invoice refunded), a tax split, what they took off the
rounding carry, the processor's refund and a void; at most one ISSUED refund per invoice.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ATOMIC = sa.Numeric(38, 0)


def upgrade() -> None:
    op.add_column("invoices", sa.Column("payment_session_id", sa.Text))
    op.add_column("invoices", sa.Column("payment_url", sa.Text))
    op.add_column("invoices", sa.Column("retry_attempts", sa.Integer, nullable=False, server_default="0"))
    op.alter_column("invoices", "retry_attempts", server_default=None)
    # the charge attempt whose success paid it (unset: paid out of band, or unpaid)
    op.add_column("invoices", sa.Column("paid_by_attempt_key", sa.Text))

    # every credit note so far is a final invoice's balance
    op.add_column("credit_notes", sa.Column("kind", sa.Text, nullable=False, server_default="balance"))
    op.alter_column("credit_notes", "kind", server_default=None)
    for name in ("tax_amount", "carry_amount"):
        op.add_column("credit_notes", sa.Column(name, ATOMIC, nullable=False, server_default="0"))
        op.alter_column("credit_notes", name, server_default=None)
    op.add_column("credit_notes", sa.Column("refunded", sa.Boolean, nullable=False, server_default=sa.false()))
    op.alter_column("credit_notes", "refunded", server_default=None)
    op.add_column("credit_notes", sa.Column("provider_refund_ref", sa.Text))
    op.add_column("credit_notes", sa.Column("voided_at", TS))
    op.add_column("credit_notes", sa.Column("void_reason", sa.Text))
    op.alter_column("credit_notes", "reason", nullable=True)
    op.create_index(
        "uq_credit_notes_issued_refund",
        "credit_notes",
        ["invoice_id"],
        unique=True,
        postgresql_where=sa.text("kind = 'refund' AND status = 'ISSUED'"),
    )

    op.create_table(
        "charge_outcomes",
        sa.Column("attempt_key", sa.Text, primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("status", sa.Text, primary_key=True),
        sa.Column("amount", ATOMIC),
        sa.Column("provider_payment_ref", sa.Text),
        sa.Column("failure_code", sa.Text),
        sa.Column("payment_session_id", sa.Text),
        sa.Column("effective_time", TS),
        sa.Column("received_at", TS, nullable=False),
    )
    op.create_index("ix_charge_outcomes_invoice", "charge_outcomes", ["invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_charge_outcomes_invoice", table_name="charge_outcomes")
    op.drop_table("charge_outcomes")
    op.drop_index("uq_credit_notes_issued_refund", table_name="credit_notes")
    op.execute("DELETE FROM credit_notes WHERE kind <> 'balance'")
    op.execute("UPDATE credit_notes SET reason = '' WHERE reason IS NULL")
    op.alter_column("credit_notes", "reason", nullable=False)
    for name in ("void_reason", "voided_at", "provider_refund_ref", "refunded", "carry_amount", "tax_amount", "kind"):
        op.drop_column("credit_notes", name)
    for name in ("paid_by_attempt_key", "retry_attempts", "payment_url", "payment_session_id"):
        op.drop_column("invoices", name)
