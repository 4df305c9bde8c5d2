"""The infrastructure tables every service owns (v1: outbox, inbox, idempotency keys;
v2: dead letters), declared once.

Declarations are versioned deltas: ``INFRA_VERSIONS[0]`` declares v1's tables, each later
entry declares what its version adds. A service's table metadata (``add_infra_tables``)
applies every version; its migrations create each version's tables from the same
declarations (``migration_ops.create_infra_tables(n)``), so the schema the code uses
and the schema the migrations build cannot drift apart. A version is never edited once
released: a change is a new version and a migration in every service.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

TS = sa.DateTime(timezone=True)


def _v1(metadata: sa.MetaData) -> list[sa.Table]:
    return [
        sa.Table(
            "outbox",
            metadata,
            sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("event_id", sa.Text, nullable=False, unique=True),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("event_type", sa.Text, nullable=False),
            sa.Column("merchant_id", sa.Text, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("headers", pg.JSONB, nullable=False),
            sa.Column("created_at", TS, nullable=False),
            sa.Column("published_at", TS),
            sa.Index("ix_outbox_unpublished", "seq", postgresql_where=sa.text("published_at IS NULL")),
        ),
        sa.Table(
            "inbox",
            metadata,
            sa.Column("consumer", sa.Text, primary_key=True),
            sa.Column("event_id", sa.Text, primary_key=True),
            sa.Column("processed_at", TS, nullable=False),
        ),
        sa.Table(
            "idempotency_keys",
            metadata,
            sa.Column("merchant_id", sa.Text, primary_key=True),
            sa.Column("key", sa.Text, primary_key=True),
            sa.Column("method", sa.Text, nullable=False),
            sa.Column("request_hash", sa.Text, nullable=False),
            sa.Column("response", sa.LargeBinary),
            sa.Column("created_at", TS, nullable=False),
        ),
    ]


def _v2(metadata: sa.MetaData) -> list[sa.Table]:
    return [
        # events a consumer's handler failed on at its last delivery (libs/infra/messaging.py):
        # kept whole, acked off the stream, replayed through the same handler once fixed
        # (libs/infra/dead_letters.py, ``accrue dead-letters``)
        sa.Table(
            "dead_letters",
            metadata,
            sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
            sa.Column("consumer", sa.Text, nullable=False),
            sa.Column("event_id", sa.Text, nullable=False),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("event_type", sa.Text, nullable=False),
            sa.Column("merchant_id", sa.Text, nullable=False),
            sa.Column("payload", sa.LargeBinary, nullable=False),
            sa.Column("headers", pg.JSONB, nullable=False),
            sa.Column("error", sa.Text, nullable=False),
            sa.Column("failed_at", TS, nullable=False),
            sa.Column("replayed_at", TS),
            sa.Index("ix_dead_letters_pending", "consumer", "id", postgresql_where=sa.text("replayed_at IS NULL")),
        ),
    ]


# version n is INFRA_VERSIONS[n - 1]; append, never edit
INFRA_VERSIONS: list[Callable[[sa.MetaData], list[sa.Table]]] = [_v1, _v2]


def add_infra_tables(metadata: sa.MetaData) -> None:
    """Declare every version of the infrastructure tables on a service's metadata."""
    for declare in INFRA_VERSIONS:
        declare(metadata)
