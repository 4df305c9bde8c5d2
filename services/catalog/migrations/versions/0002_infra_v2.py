"""Infrastructure tables v2: dead letters of the event consumers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from libs.infra.migration_ops import create_infra_tables, drop_infra_tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_infra_tables(2)


def downgrade() -> None:
    drop_infra_tables(2)
