"""The billing timeline's durable due work: the ``due_work`` table and its queries.

One row per (subscription_id, sequence_number, kind, attempt) (the primary key:
inserting a row twice, on a retry or a race, leaves one; ``attempt`` numbers a collect's
charge attempts of one invoice, 0 for every other kind), due at ``due_at`` in the subscription's time,
on the lane of its test clock (``test_clock_id``; NULL = real time). A row is pending
until ``done_at`` is set, which happens in the transaction that inserts its follow-ups,
so a run killed anywhere leaves either the row pending (it runs again; invoicing's RPCs
are idempotent) or done with its follow-ups laid.

Claims (``claim``) lock rows ``FOR UPDATE SKIP LOCKED`` and take only the head of each
customer's pending work in its lane (no earlier pending row of the same customer), so a
customer's rows run one at a time in time order even with several claimers, and two
claimers never hold one row. Done rows stay: they are the history the unique key
checks follow-ups against, and what a termination reads (the last closed invoice).

The table is declared on the subscription service's metadata (services/subscription/
store.py); migrations 0004_due_work.py and 0005_collection.py make it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.subscription.domain.timeline import KIND_ORDER, Due, Kind
from services.subscription.store import metadata

TS = sa.DateTime(timezone=True)

due_work = sa.Table(
    "due_work",
    metadata,
    sa.Column("subscription_id", sa.Text, primary_key=True),
    sa.Column("sequence_number", sa.BigInteger, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    # a collect's charge attempt (0 at issue, 1.. the dunning retries); 0 for other kinds
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("test_clock_id", sa.Text),
    # in the subscription's time (its clock's when it has one)
    sa.Column("due_at", TS, nullable=False),
    # end 0, open 1, close 2, issue 3, collect 4: the order of rows due at one instant
    sa.Column("kind_order", sa.SmallInteger, nullable=False),
    # laid by a termination: the final invoice's rows
    sa.Column("final", sa.Boolean, nullable=False),
    # real (service) time of completion; NULL while pending
    sa.Column("done_at", TS),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    # real time before which a failed real-time row is not retried
    sa.Column("retry_at", TS),
    sa.Column("created_at", TS, nullable=False),
    # a collect: the invoice it charges and the instant of its first automatic attempt
    # (the dunning schedule counts from it), in the subscription's time
    sa.Column("invoice_id", sa.Text),
    sa.Column("first_attempt_at", TS),
    sa.CheckConstraint("kind IN ('end', 'open', 'close', 'issue', 'collect')", name="ck_due_work_kind"),
    sa.CheckConstraint("kind <> 'collect' OR invoice_id IS NOT NULL", name="ck_due_work_collect_invoice"),
    # a lane's pending rows in execution order (the claim's scan)
    sa.Index(
        "ix_due_work_lane_pending",
        "test_clock_id",
        "due_at",
        "kind_order",
        "subscription_id",
        "sequence_number",
        "attempt",
        postgresql_where=sa.text("done_at IS NULL"),
    ),
    # a customer's pending rows (the claim's "is it the head?" probe)
    sa.Index(
        "ix_due_work_customer_pending",
        "customer_id",
        "due_at",
        "kind_order",
        "subscription_id",
        "sequence_number",
        "attempt",
        postgresql_where=sa.text("done_at IS NULL"),
    ),
)

# a row's identity: (subscription_id, sequence_number, kind, attempt)
Key = tuple[str, int, str, int]

# ``pg_advisory_lock(ADVISORY_CLASS, hashtext(clock id))``: one advance of a clock at a time
ADVISORY_CLASS = 0x41_63_72  # "Acr"


@dataclass(frozen=True, slots=True)
class Lane:
    """Whose rows a claim takes: one test clock's, the real-time ones, or one subscription's."""

    clock_id: str | None = None
    real_time: bool = False
    subscription_id: str | None = None

    @classmethod
    def clock(cls, clock_id: str) -> Lane:
        return cls(clock_id=clock_id)

    @classmethod
    def system(cls) -> Lane:
        return cls(real_time=True)

    @classmethod
    def of_subscription(cls, subscription_id: str) -> Lane:
        return cls(subscription_id=subscription_id)


@dataclass(frozen=True, slots=True)
class DueRow:
    """A stored row."""

    subscription_id: str
    sequence_number: int
    kind: Kind
    merchant_id: str
    customer_id: str
    test_clock_id: str | None
    due_at: datetime
    final: bool
    attempts: int
    done: bool = False
    attempt: int = 0
    invoice_id: str | None = None
    first_attempt_at: datetime | None = None

    @property
    def key(self) -> Key:
        return (self.subscription_id, self.sequence_number, self.kind.value, self.attempt)

    @property
    def due(self) -> Due:
        return Due(
            self.kind,
            self.sequence_number,
            self.due_at,
            final=self.final,
            attempt=self.attempt,
            invoice_id=self.invoice_id,
            first_attempt_at=self.first_attempt_at,
        )


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose rows are laid: the subscription's identity columns."""

    subscription_id: str
    merchant_id: str
    customer_id: str
    test_clock_id: str | None


_COLUMNS = (
    "subscription_id, sequence_number, kind, attempt, merchant_id, customer_id, test_clock_id, due_at, final, attempts, done_at,"
    " invoice_id, first_attempt_at"
)


def _row(r: sa.Row[tuple[object, ...]]) -> DueRow:
    m = r._mapping
    return DueRow(
        subscription_id=m["subscription_id"],
        sequence_number=int(m["sequence_number"]),
        kind=Kind(m["kind"]),
        merchant_id=m["merchant_id"],
        customer_id=m["customer_id"],
        test_clock_id=m["test_clock_id"],
        due_at=m["due_at"],
        final=bool(m["final"]),
        attempts=int(m["attempts"]),
        done=m["done_at"] is not None,
        attempt=int(m["attempt"]),
        invoice_id=m["invoice_id"],
        first_attempt_at=m["first_attempt_at"],
    )


_LAY = sa.text(
    """INSERT INTO due_work (subscription_id, sequence_number, kind, attempt, merchant_id, customer_id, test_clock_id,
                             due_at, kind_order, final, attempts, created_at, invoice_id, first_attempt_at)
       SELECT s, n, k, a, m, c, clk, d, o, f, 0, :now, inv, fa
       FROM unnest(CAST(:subs AS text[]), CAST(:seqs AS bigint[]), CAST(:kinds AS text[]), CAST(:attempts AS integer[]),
                   CAST(:merchants AS text[]), CAST(:customers AS text[]), CAST(:clocks AS text[]), CAST(:dues AS timestamptz[]),
                   CAST(:orders AS smallint[]), CAST(:finals AS boolean[]), CAST(:invoices AS text[]),
                   CAST(:firsts AS timestamptz[])) AS r(s, n, k, a, m, c, clk, d, o, f, inv, fa)
       ON CONFLICT DO NOTHING"""
)


async def lay(conn: AsyncConnection, rows: Iterable[tuple[Owner, Due]], *, now: datetime) -> int:
    """Insert due rows; a row that exists (pending or done) is left as it is. One
    statement of arrays for any number of rows (its text never changes, so it is prepared
    once). Answers how many were new."""
    laid = list(rows)
    if not laid:
        return 0
    result = await conn.execute(
        _LAY,
        {
            "now": now,
            "subs": [o.subscription_id for o, _ in laid],
            "seqs": [d.sequence_number for _, d in laid],
            "kinds": [d.kind.value for _, d in laid],
            "attempts": [d.attempt for _, d in laid],
            "merchants": [o.merchant_id for o, _ in laid],
            "customers": [o.customer_id for o, _ in laid],
            "clocks": [o.test_clock_id for o, _ in laid],
            "dues": [d.due_at for _, d in laid],
            "orders": [KIND_ORDER[d.kind] for _, d in laid],
            "finals": [d.final for _, d in laid],
            "invoices": [d.invoice_id for _, d in laid],
            "firsts": [d.first_attempt_at for _, d in laid],
        },
    )
    return int(result.rowcount)


def _lane_filter(lane: Lane, alias: str) -> tuple[str, dict[str, object]]:
    if lane.subscription_id is not None:
        return f"{alias}.subscription_id = :lane_sub", {"lane_sub": lane.subscription_id}
    if lane.real_time:
        return f"{alias}.test_clock_id IS NULL", {}
    return f"{alias}.test_clock_id = :lane_clock", {"lane_clock": lane.clock_id}


async def claim(
    conn: AsyncConnection,
    lane: Lane,
    *,
    until: datetime,
    limit: int,
    now: datetime | None = None,
    same_instant: bool = False,
    wait: bool = False,
) -> list[DueRow]:
    """Lock and answer up to ``limit`` pending rows of ``lane`` due by ``until``, in
    (due_at, kind order, subscription, sequence) order, each the head of its customer's
    pending rows in the lane (one per customer), skipping rows another transaction holds.

    ``now`` (real time): leave out rows whose retry time has not come. ``same_instant``:
    only rows due at the lane's earliest pending instant, so that across customers too
    nothing runs before all earlier work is done (a test clock's advance). ``wait``: wait
    for locked rows instead of skipping them (one subscription's rows, which a caller
    needs done before it answers). For one subscription the head is per subscription."""
    lane_sql, params = _lane_filter(lane, "d")
    where = [lane_sql, "d.done_at IS NULL", "d.due_at <= :until"]
    params |= {"until": until, "limit": limit}
    if now is not None:
        where.append("(d.retry_at IS NULL OR d.retry_at <= :now)")
        params["now"] = now
    if same_instant:
        inner, _ = _lane_filter(lane, "m")
        where.append(f"d.due_at = (SELECT min(m.due_at) FROM due_work m WHERE {inner} AND m.done_at IS NULL)")
    head_of = "e.subscription_id = d.subscription_id" if lane.subscription_id is not None else "e.customer_id = d.customer_id"
    where.append(
        f"""NOT EXISTS (
            SELECT 1 FROM due_work e
            WHERE {head_of} AND e.done_at IS NULL
              AND e.test_clock_id IS NOT DISTINCT FROM d.test_clock_id
              AND (e.due_at, e.kind_order, e.subscription_id, e.sequence_number, e.attempt)
                  < (d.due_at, d.kind_order, d.subscription_id, d.sequence_number, d.attempt))"""
    )
    lock = "FOR UPDATE OF d" if wait else "FOR UPDATE OF d SKIP LOCKED"
    sql = f"""
        SELECT {", ".join("d." + c.strip() for c in _COLUMNS.split(","))}
        FROM due_work d
        WHERE {" AND ".join(where)}
        ORDER BY d.due_at, d.kind_order, d.subscription_id, d.sequence_number, d.attempt
        LIMIT :limit
        {lock}"""
    result = await conn.execute(sa.text(sql), params)
    return [_row(r) for r in result]


async def pending(conn: AsyncConnection, lane: Lane, *, until: datetime) -> bool:
    """Whether the lane has pending rows due by ``until`` (claimed by someone or not)."""
    lane_sql, params = _lane_filter(lane, "d")
    sql = f"SELECT EXISTS (SELECT 1 FROM due_work d WHERE {lane_sql} AND d.done_at IS NULL AND d.due_at <= :until)"
    return bool((await conn.execute(sa.text(sql), params | {"until": until})).scalar())


async def next_due(conn: AsyncConnection, lane: Lane) -> datetime | None:
    """The earliest pending instant of the lane."""
    lane_sql, params = _lane_filter(lane, "d")
    sql = f"SELECT min(d.due_at) FROM due_work d WHERE {lane_sql} AND d.done_at IS NULL"
    value: datetime | None = (await conn.execute(sa.text(sql), params)).scalar()
    return value


def _keyed(key: Key) -> sa.ColumnElement[bool]:
    s, n, k, a = key
    return sa.and_(
        due_work.c.subscription_id == s,
        due_work.c.sequence_number == n,
        due_work.c.kind == k,
        due_work.c.attempt == a,
        due_work.c.done_at.is_(None),
    )


async def mark_done(conn: AsyncConnection, keys: Sequence[Key], *, now: datetime) -> int:
    """Pending rows become done (one statement); answers how many."""
    if not keys:
        return 0
    result = await conn.execute(
        sa.text(
            """UPDATE due_work d SET done_at = :now, last_error = NULL, retry_at = NULL
               FROM unnest(CAST(:subs AS text[]), CAST(:seqs AS bigint[]), CAST(:kinds AS text[]), CAST(:attempts AS integer[]))
                    AS k(s, n, kind, a)
               WHERE d.subscription_id = k.s AND d.sequence_number = k.n AND d.kind = k.kind AND d.attempt = k.a
                 AND d.done_at IS NULL"""
        ),
        {
            "now": now,
            "subs": [k[0] for k in keys],
            "seqs": [k[1] for k in keys],
            "kinds": [k[2] for k in keys],
            "attempts": [k[3] for k in keys],
        },
    )
    return int(result.rowcount)


async def mark_failed(conn: AsyncConnection, key: Key, *, error: str, retry_at: datetime | None) -> None:
    """A row's attempt failed: it stays pending, with the error and when to retry."""
    values = {"attempts": due_work.c.attempts + 1, "last_error": error[:2000], "retry_at": retry_at}
    await conn.execute(due_work.update().where(_keyed(key)).values(**values))


async def postpone(conn: AsyncConnection, key: Key, *, due_at: datetime) -> int:
    """A pending row runs again, as itself (same identity), at ``due_at`` (a collect whose
    charge outcome is not known yet); answers 1, or 0 when it is not pending."""
    result = await conn.execute(due_work.update().where(_keyed(key)).values(due_at=due_at, last_error=None, retry_at=None))
    return int(result.rowcount)


async def rows_of(conn: AsyncConnection, subscription_id: str, *, lock: bool = False) -> list[DueRow]:
    """Every row of a subscription (done ones too), locked when asked (a termination
    waits for a batch holding one of them)."""
    sql = f"SELECT {_COLUMNS} FROM due_work WHERE subscription_id = :s ORDER BY due_at, kind_order, sequence_number, attempt"
    if lock:
        sql += " FOR UPDATE"
    return [_row(r) for r in await conn.execute(sa.text(sql), {"s": subscription_id})]


async def drop_pending(
    conn: AsyncConnection, subscription_id: str, *, from_sequence: int | None, ends: bool, keep: Key | None = None
) -> int:
    """Delete a subscription's pending rows of invoices ``from_sequence`` on (None: none)
    and, with ``ends``, its pending ``end`` row; ``keep`` is spared (the row running)."""
    conditions = []
    if from_sequence is not None:
        conditions.append(sa.and_(due_work.c.kind != Kind.END.value, due_work.c.sequence_number >= from_sequence))
    if ends:
        conditions.append(due_work.c.kind == Kind.END.value)
    if not conditions:
        return 0
    stmt = due_work.delete().where(due_work.c.subscription_id == subscription_id, due_work.c.done_at.is_(None), sa.or_(*conditions))
    if keep is not None:
        _, n, k, a = keep
        stmt = stmt.where(sa.not_(sa.and_(due_work.c.sequence_number == n, due_work.c.kind == k, due_work.c.attempt == a)))
    result = await conn.execute(stmt)
    return int(result.rowcount)


async def lock_clock(conn: AsyncConnection, clock_id: str) -> None:
    """Wait for, then hold until ``conn`` ends or unlock_clock, the clock's advance lock."""
    await conn.execute(sa.text("SELECT pg_advisory_lock(:c, hashtext(:k))"), {"c": ADVISORY_CLASS, "k": clock_id})


async def unlock_clock(conn: AsyncConnection, clock_id: str) -> None:
    await conn.execute(sa.text("SELECT pg_advisory_unlock(:c, hashtext(:k))"), {"c": ADVISORY_CLASS, "k": clock_id})
