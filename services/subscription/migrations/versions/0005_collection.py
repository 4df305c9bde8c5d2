"""Automatic collection (issue 11): due rows of kind ``collect`` numbered by charge attempt,
naming the invoice they charge and the instant of its first automatic attempt; Invoice 0's
checkout as invoicing answered it (its session id and page URL) on the subscription.

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
_ORDER = ["due_at", "kind_order", "subscription_id", "sequence_number"]


def upgrade() -> None:
    # existing rows are attempt 0 (every row before collection existed)
    op.add_column("due_work", sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
    op.alter_column("due_work", "attempt", server_default=None)
    op.add_column("due_work", sa.Column("invoice_id", sa.Text(), nullable=True))
    op.add_column("due_work", sa.Column("first_attempt_at", TS, nullable=True))
    op.drop_constraint("due_work_pkey", "due_work", type_="primary")
    op.create_primary_key("due_work_pkey", "due_work", ["subscription_id", "sequence_number", "kind", "attempt"])
    op.drop_constraint("ck_due_work_kind", "due_work", type_="check")
    op.create_check_constraint("ck_due_work_kind", "due_work", "kind IN ('end', 'open', 'close', 'issue', 'collect')")
    op.create_check_constraint("ck_due_work_collect_invoice", "due_work", "kind <> 'collect' OR invoice_id IS NOT NULL")
    for name, first in (("ix_due_work_lane_pending", "test_clock_id"), ("ix_due_work_customer_pending", "customer_id")):
        op.drop_index(name, table_name="due_work")
        op.create_index(name, "due_work", [first, *_ORDER, "attempt"], unique=False, postgresql_where=sa.text("done_at IS NULL"))
    op.add_column("subscriptions", sa.Column("invoice_zero_session_id", sa.Text(), nullable=True))
    op.add_column("subscriptions", sa.Column("invoice_zero_payment_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("subscriptions", "invoice_zero_payment_url")
    op.drop_column("subscriptions", "invoice_zero_session_id")
    op.execute("DELETE FROM due_work WHERE kind = 'collect'")
    for name, first in (("ix_due_work_lane_pending", "test_clock_id"), ("ix_due_work_customer_pending", "customer_id")):
        op.drop_index(name, table_name="due_work")
        op.create_index(name, "due_work", [first, *_ORDER], unique=False, postgresql_where=sa.text("done_at IS NULL"))
    op.drop_constraint("ck_due_work_collect_invoice", "due_work", type_="check")
    op.drop_constraint("ck_due_work_kind", "due_work", type_="check")
    op.create_check_constraint("ck_due_work_kind", "due_work", "kind IN ('end', 'open', 'close', 'issue')")
    op.drop_constraint("due_work_pkey", "due_work", type_="primary")
    op.create_primary_key("due_work_pkey", "due_work", ["subscription_id", "sequence_number", "kind"])
    op.drop_column("due_work", "first_attempt_at")
    op.drop_column("due_work", "invoice_id")
    op.drop_column("due_work", "attempt")
