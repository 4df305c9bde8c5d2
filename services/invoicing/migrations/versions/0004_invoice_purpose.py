"""Invoices get a purpose (subscription: the timeline's; grant_purchase: ad hoc) and, ad
hoc, a reference unique per merchant and purpose; the one-invoice-per-(subscription, k)
key becomes the timeline's only.

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


def upgrade() -> None:
    # every invoice so far is a timeline's
    op.add_column("invoices", sa.Column("purpose", sa.Text, nullable=False, server_default="subscription"))
    op.alter_column("invoices", "purpose", server_default=None)
    op.add_column("invoices", sa.Column("reference", sa.Text))
    op.drop_constraint("uq_invoices_subscription_sequence", "invoices", type_="unique")
    op.create_index(
        "uq_invoices_subscription_sequence",
        "invoices",
        ["subscription_id", "sequence_number"],
        unique=True,
        postgresql_where=sa.text("purpose = 'subscription'"),
    )
    op.create_unique_constraint("uq_invoices_merchant_purpose_reference", "invoices", ["merchant_id", "purpose", "reference"])


def downgrade() -> None:
    op.drop_constraint("uq_invoices_merchant_purpose_reference", "invoices", type_="unique")
    op.drop_index("uq_invoices_subscription_sequence", table_name="invoices")
    op.execute("DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM invoices WHERE purpose <> 'subscription')")
    op.execute("DELETE FROM invoices WHERE purpose <> 'subscription'")
    op.create_unique_constraint("uq_invoices_subscription_sequence", "invoices", ["subscription_id", "sequence_number"])
    op.drop_column("invoices", "reference")
    op.drop_column("invoices", "purpose")
