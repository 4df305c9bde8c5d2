"""Infrastructure tables v2 (the dead letters every consumer shares); the aggregator's
own ``meter_dead_letters`` moves into them.

The aggregator's dead letters are per event: a ``MeterEventBatch`` holding the one event
(the shape of a stream message, so a replay runs it through the aggregator's handler),
``event_id`` its idempotency key. A row kept from an undecodable message keeps its bytes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from libs.infra.migration_ops import create_infra_tables, drop_infra_tables
from libs.infra.tables import INFRA_VERSIONS

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CONSUMER = "metering-aggregator"
BATCH_TYPE = "accrue.metering.v1.MeterEventBatch"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _batch_of(event: bytes) -> bytes:
    """MeterEventBatch{events: [event]}, wire format: field 1, length-delimited."""
    return b"\x0a" + _varint(len(event)) + event


def _event_of(batch: bytes) -> bytes:
    """The one event of a batch written by _batch_of (the inverse, for downgrade)."""
    if not batch.startswith(b"\x0a"):
        return batch
    shift, length, i = 0, 0, 1
    while i < len(batch):
        byte = batch[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    return batch[i:] if len(batch) - i == length else batch


def _meter_dead_letters() -> sa.Table:
    return sa.Table(
        "meter_dead_letters",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("merchant_id", sa.Text, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def _dead_letters() -> sa.Table:
    (table,) = INFRA_VERSIONS[1](sa.MetaData())
    return table


def upgrade() -> None:
    create_infra_tables(2)
    conn = op.get_bind()
    old = _meter_dead_letters()
    rows = conn.execute(sa.select(old).order_by(old.c.id)).all()
    if rows:
        conn.execute(
            _dead_letters().insert(),
            [
                {
                    "consumer": CONSUMER,
                    "event_id": r.idempotency_key,
                    "subject": "",
                    "event_type": BATCH_TYPE,
                    "merchant_id": r.merchant_id,
                    # an empty merchant: the row kept an undecodable message's bytes
                    "payload": _batch_of(r.event) if r.merchant_id else r.event,
                    "headers": {},
                    "error": r.error,
                    "failed_at": r.created_at,
                }
                for r in rows
            ],
        )
    op.drop_table("meter_dead_letters")


def downgrade() -> None:
    old = _meter_dead_letters()
    old.create(op.get_bind())
    conn = op.get_bind()
    dl = _dead_letters()
    rows = conn.execute(
        sa.select(dl.c.event_id, dl.c.merchant_id, dl.c.payload, dl.c.error, dl.c.failed_at).where(
            dl.c.consumer == CONSUMER, dl.c.replayed_at.is_(None)
        )
    ).all()
    if rows:
        conn.execute(
            old.insert(),
            [
                {
                    "merchant_id": r.merchant_id,
                    "idempotency_key": r.event_id,
                    "event": _event_of(r.payload) if r.merchant_id else r.payload,
                    "error": r.error,
                    "created_at": r.failed_at,
                }
                for r in rows
            ],
        )
    drop_infra_tables(2)
