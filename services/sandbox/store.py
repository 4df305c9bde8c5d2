"""The sandbox processor's own database: its tables and the queries on them.

No table has a column for a card number or a security code: a card is kept as its brand,
last four digits, expiry and test behaviour (services/sandbox/domain/cards.py), and a
test scans every table to hold that (services/sandbox/tests/integration).

* tokens: one-time card tokens the browser made; used up by a saved method or a charge.
* payment_methods: cards saved for a customer (from a token).
* charges: unique by (account, idempotency_key), so however many requests carry one key,
  concurrently or not, there is one charge; ``event_seq`` numbers its events.
* refunds: unique by (account, idempotency_key) too; their sum never exceeds the charge.
* events: every webhook event, its exact JSON body; deliveries: each attempt plan of an
  event to a URL (first, duplicate, late, manual), retried until a 2xx.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)


def _card_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("brand", sa.Text, nullable=False),
        sa.Column("last4", sa.Text, nullable=False),
        sa.Column("exp_month", sa.Integer, nullable=False),
        sa.Column("exp_year", sa.Integer, nullable=False),
        sa.Column("behaviour", sa.Text, nullable=False),
    ]


tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    *_card_columns(),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("used_at", TS),
    # what used it up: a pm_... or a ch_...
    sa.Column("used_by", sa.Text),
    sa.CheckConstraint("length(last4) = 4", name="ck_tokens_last4"),
)

payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("customer", sa.Text, nullable=False),
    # the token it was made from: saving one token again answers this method
    sa.Column("token_id", sa.Text, sa.ForeignKey("tokens.id"), nullable=False, unique=True),
    *_card_columns(),
    sa.Column("created_at", TS, nullable=False),
)

charges = sa.Table(
    "charges",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("token_id", sa.Text, sa.ForeignKey("tokens.id")),
    sa.Column("payment_method_id", sa.Text, sa.ForeignKey("payment_methods.id")),
    sa.Column("off_session", sa.Boolean, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("webhook_url", sa.Text),
    *_card_columns(),
    sa.Column("failure_code", sa.Text),
    sa.Column("decline_code", sa.Text),
    sa.Column("failure_message", sa.Text),
    sa.Column("amount_refunded", sa.BigInteger, nullable=False),
    # the sequence number of its latest event (its first is 1)
    sa.Column("event_seq", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    # a slow charge: when it leaves `processing`
    sa.Column("completes_at", TS),
    sa.CheckConstraint("status IN ('processing', 'succeeded', 'failed')", name="ck_charges_status"),
    sa.CheckConstraint("amount > 0", name="ck_charges_amount"),
    sa.CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="ck_charges_amount_refunded"),
    sa.CheckConstraint("(token_id IS NULL) <> (payment_method_id IS NULL)", name="ck_charges_one_source"),
    sa.UniqueConstraint("account", "idempotency_key", name="uq_charges_account_idempotency_key"),
    sa.Index("ix_charges_processing", "completes_at", postgresql_where=sa.text("status = 'processing'")),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("account", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("charge_id", sa.Text, sa.ForeignKey("charges.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("event_seq", sa.Integer, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.CheckConstraint("amount > 0", name="ck_refunds_amount"),
    sa.UniqueConstraint("account", "idempotency_key", name="uq_refunds_account_idempotency_key"),
    sa.Index("ix_refunds_charge_id", "charge_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("object_id", sa.Text, nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    # the exact JSON body every delivery sends (and signs)
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("object_id", "sequence", name="uq_events_object_sequence"),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("event_id", sa.Text, sa.ForeignKey("events.id"), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("due_at", TS, nullable=False),
    # a delivery being sent: another sender may take it once this has passed (a crash)
    sa.Column("claimed_until", TS),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", TS),
    sa.Column("created_at", TS, nullable=False),
    sa.CheckConstraint("status IN ('pending', 'sending', 'delivered', 'failed')", name="ck_deliveries_status"),
    sa.CheckConstraint("kind IN ('first', 'duplicate', 'late', 'manual')", name="ck_deliveries_kind"),
    sa.Index("ix_deliveries_due", "due_at", postgresql_where=sa.text("status IN ('pending', 'sending')")),
    sa.Index("ix_deliveries_event_id", "event_id"),
)

Row = Mapping[str, Any]


async def one(conn: AsyncConnection, query: sa.Executable) -> Row | None:
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def all_rows(conn: AsyncConnection, query: sa.Executable) -> list[Row]:
    return [dict(row) for row in (await conn.execute(query)).mappings().all()]


async def lock_key(conn: AsyncConnection, scope: str, account: str, key: str) -> None:
    """Serialises the requests that carry one idempotency key (the unique constraint is
    what guarantees one row; the lock lets the second request find the first's row
    instead of failing on it)."""
    # keys and accounts are printable: a newline cannot occur inside one
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"{scope}\n{account}\n{key}", 0))))


async def charge_by_key(conn: AsyncConnection, account: str, key: str) -> Row | None:
    return await one(conn, sa.select(charges).where(charges.c.account == account, charges.c.idempotency_key == key))


async def charge_by_id(conn: AsyncConnection, charge_id: str, *, for_update: bool = False) -> Row | None:
    query = sa.select(charges).where(charges.c.id == charge_id)
    return await one(conn, query.with_for_update() if for_update else query)


async def refund_by_key(conn: AsyncConnection, account: str, key: str) -> Row | None:
    return await one(conn, sa.select(refunds).where(refunds.c.account == account, refunds.c.idempotency_key == key))


async def use_token(conn: AsyncConnection, token_id: str, used_by: str, now: datetime) -> Row | None:
    """Uses a token up; None when there is no such token or it was used already."""
    return await one(
        conn,
        sa.update(tokens)
        .where(tokens.c.id == token_id, tokens.c.used_at.is_(None))
        .values(used_at=now, used_by=used_by)
        .returning(*tokens.c),
    )


async def insert_event(conn: AsyncConnection, row: Row, deliveries_due: Sequence[tuple[str, str, datetime]], now: datetime) -> None:
    """An event and its planned deliveries ((url, kind, due_at) each)."""
    await conn.execute(sa.insert(events).values(**row))
    for url, kind, due_at in deliveries_due:
        await conn.execute(
            sa.insert(deliveries).values(
                event_id=row["id"], url=url, kind=kind, status="pending", attempts=0, due_at=due_at, created_at=now
            )
        )
