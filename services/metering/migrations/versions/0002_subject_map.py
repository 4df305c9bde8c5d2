"""subject map: external subject -> customer, and the index of unattributed events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_map",
        sa.Column("merchant_id", sa.Text(), nullable=False),
        sa.Column("external_subject", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merchant_id", "external_subject"),
    )
    op.create_index(
        "ix_meter_events_unattributed",
        "meter_events",
        ["merchant_id", "external_subject"],
        unique=False,
        postgresql_where=sa.text("subject = ''"),
    )


def downgrade() -> None:
    op.drop_index("ix_meter_events_unattributed", table_name="meter_events", postgresql_where=sa.text("subject = ''"))
    op.drop_table("subject_map")
