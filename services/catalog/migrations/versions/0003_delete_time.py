"""One deletion convention: delete_time on every deletable resource.

Prices and plans had ``deleted_at``; features were hard-deleted (so their key was free
again); fees were rewritten to a ``deleted:<merchant>`` merchant id. Now each of them
gets ``delete_time`` and stays. Fee rows rewritten before get their merchant back, with
their last update as the delete time. A feature's key stays free after a delete: the
unique index covers live features only.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_DELETED_PREFIX = "deleted:"


def upgrade() -> None:
    op.alter_column("prices", "deleted_at", new_column_name="delete_time")
    op.alter_column("plans", "deleted_at", new_column_name="delete_time")
    op.add_column("features", sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint("uq_features_product_key", "features", type_="unique")
    op.create_index(
        "uq_features_product_live_key",
        "features",
        ["product_id", "key"],
        unique=True,
        postgresql_where=sa.text("delete_time IS NULL"),
    )
    op.add_column("fees", sa.Column("delete_time", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        sa.text(
            "UPDATE fees SET merchant_id = substr(merchant_id, :start), delete_time = updated_at WHERE merchant_id LIKE :pattern"
        ).bindparams(start=len(_DELETED_PREFIX) + 1, pattern=_DELETED_PREFIX + "%")
    )


def downgrade() -> None:
    # back to the old conventions: deleted fees rewritten, deleted features removed
    # (with the deleted prices' references to them, as the old delete did)
    op.execute(
        sa.text("UPDATE fees SET merchant_id = :prefix || merchant_id WHERE delete_time IS NOT NULL").bindparams(prefix=_DELETED_PREFIX)
    )
    op.drop_column("fees", "delete_time")
    op.execute(
        "UPDATE prices SET feature_id = NULL, price_feature_id = NULL "
        "WHERE feature_id IN (SELECT id FROM features WHERE delete_time IS NOT NULL)"
    )
    op.execute("DELETE FROM features WHERE delete_time IS NOT NULL")
    op.drop_index("uq_features_product_live_key", table_name="features")
    op.create_unique_constraint("uq_features_product_key", "features", ["product_id", "key"])
    op.drop_column("features", "delete_time")
    op.alter_column("plans", "delete_time", new_column_name="deleted_at")
    op.alter_column("prices", "delete_time", new_column_name="deleted_at")
