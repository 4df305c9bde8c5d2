"""test clocks: each clock's time and the customers living on it; subject_map by customer

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


def upgrade() -> None:
    op.create_table(
        "test_clocks",
        sa.Column("merchant_id", sa.Text(), nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("clock_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", "id"),
    )
    op.create_table(
        "test_clock_customers",
        sa.Column("merchant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("test_clock_id", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", "customer_id"),
    )
    op.create_index("ix_test_clock_customers_clock", "test_clock_customers", ["merchant_id", "test_clock_id"], unique=False)
    op.create_index("ix_subject_map_customer", "subject_map", ["merchant_id", "customer_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_subject_map_customer", table_name="subject_map")
    op.drop_index("ix_test_clock_customers_clock", table_name="test_clock_customers")
    op.drop_table("test_clock_customers")
    op.drop_table("test_clocks")
