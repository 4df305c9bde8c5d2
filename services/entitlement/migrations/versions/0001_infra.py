"""Infrastructure tables: outbox, inbox, idempotency keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from libs.infra.migration_ops import create_infra_tables_v1, drop_infra_tables_v1

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_infra_tables_v1()


def downgrade() -> None:
    drop_infra_tables_v1()
