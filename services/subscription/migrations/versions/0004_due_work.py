"""The billing timeline's due work (services/subscription/engine_store.py).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
_ORDER = ["due_at", "kind_order", "subscription_id", "sequence_number"]


def upgrade() -> None:
    op.create_table(
        "due_work",
        sa.Column("subscription_id", sa.Text(), nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("merchant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("test_clock_id", sa.Text(), nullable=True),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("kind_order", sa.SmallInteger(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("done_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("retry_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("kind IN ('end', 'open', 'close', 'issue')", name="ck_due_work_kind"),
        sa.PrimaryKeyConstraint("subscription_id", "sequence_number", "kind"),
    )
    op.create_index(
        "ix_due_work_lane_pending", "due_work", ["test_clock_id", *_ORDER], unique=False, postgresql_where=sa.text("done_at IS NULL")
    )
    op.create_index(
        "ix_due_work_customer_pending", "due_work", ["customer_id", *_ORDER], unique=False, postgresql_where=sa.text("done_at IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_due_work_customer_pending", table_name="due_work")
    op.drop_index("ix_due_work_lane_pending", table_name="due_work")
    op.drop_table("due_work")
