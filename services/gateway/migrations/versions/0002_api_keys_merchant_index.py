"""An index on api_keys.merchant_id: listing a merchant's keys (`accrue key list`).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_api_keys_merchant_id", "api_keys", ["merchant_id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_merchant_id", table_name="api_keys")
