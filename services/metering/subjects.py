"""External subjects: which customer a meter event sent with only ``externalSubject`` belongs to.

A merchant may send usage under its own key for a customer (``externalSubject``, matched
against ``Customer.externalId``) before the customer exists in Accrue, or before metering
has heard of it. Such an event is stored with ``subject = ''`` and is attributed
retroactively once a customer with that external id is known (paygentic-api.md §3.7).

Metering learns customers from the subscription service's ``CustomerChanged`` events
(``on_customer_event``) into ``subject_map``, one last-writer-wins register per
(merchant, external subject):

* Order. Events may arrive out of order and more than once. Each one carries the
  producer's ``sequence``, which orders causally dependent changes (see
  subscription_events.proto); a row only takes a change with a larger sequence than
  the one it holds. With distinct external ids among a merchant's live customers (the
  producer's contract), every change is a fact "as of sequence s, external id x names
  customer C" or "... names no customer", so the largest sequence is the current truth
  whatever the delivery order: created(x) after deleted(x) is ignored, a late update
  of customer A that freed x does not undo customer B taking x afterwards.
* Tombstones. A delete, or an update that moved a customer off x, writes "x names no
  customer" (customer_id NULL) with its sequence instead of deleting the row, so that
  an older created/updated arriving late cannot resurrect the mapping.
* Attribution is at first resolution. An event keeps the customer it was first
  attributed to; reassigning an external id later affects events stored after that
  (Paygentic: "after reassignment old mapping may persist").

New events are resolved by the aggregator (``resolve_subjects``, in the transaction that
inserts them), older ones by the backfill in ``on_customer_event``; the locking that
makes the two never miss each other is described in ``resolve_subjects``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from accrue.subscription.v1 import subscription_events_pb2 as subscription_events
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.infra.db import UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent
from libs.infra.proto_time import from_timestamp
from services.metering import store

log = get_logger(__name__)

# metering's consumer of the subscription service's customer events
# (services.subscription.events: STREAM, CUSTOMER_SUBJECTS)
CUSTOMER_DURABLE = "metering-subjects"

_KINDS = frozenset(
    {
        subscription_events.CUSTOMER_CHANGE_KIND_CREATED,
        subscription_events.CUSTOMER_CHANGE_KIND_UPDATED,
        subscription_events.CUSTOMER_CHANGE_KIND_DELETED,
    }
)


def _facts(change: subscription_events.CustomerChanged) -> dict[str, str | None]:
    """What the change says about external ids: external id -> customer id, or None for
    "names no customer (any more)"."""
    customer = change.customer
    current = customer.external_id if customer.HasField("external_id") and customer.external_id else None
    previous = change.previous_external_id if change.HasField("previous_external_id") and change.previous_external_id else None
    facts: dict[str, str | None] = {}
    if previous is not None and previous != current:
        facts[previous] = None
    if current is not None:
        facts[current] = None if change.kind == subscription_events.CUSTOMER_CHANGE_KIND_DELETED else customer.id
    return facts


async def on_customer_event(event: ReceivedEvent, uow: UnitOfWork) -> None:
    """Keep subject_map from a CustomerChanged, then attribute the merchant's stored events
    that were waiting for the external ids this change maps. One transaction (the
    consumer's unit of work, with its inbox claim)."""
    change = subscription_events.CustomerChanged.FromString(event.payload)
    customer = change.customer
    merchant_id = change.merchant_id or customer.merchant_id
    if change.kind not in _KINDS or not customer.id or not merchant_id:
        log.warning("customer_event_ignored", reason="malformed", event_id=event.event_id, subject=event.subject)
        return
    if (event.merchant_id and event.merchant_id != merchant_id) or (customer.merchant_id and customer.merchant_id != merchant_id):
        log.warning("customer_event_ignored", reason="merchant_mismatch", event_id=event.event_id, subject=event.subject)
        return
    if change.sequence <= 0:
        # a producer bug: without an order the register cannot be kept right; fail loudly
        raise ValueError(f"CustomerChanged {event.event_id} has no sequence (must be > 0)")
    facts = _facts(change)
    if not facts:
        return
    updated_at = from_timestamp(change.change_time) if change.HasField("change_time") else datetime.now(UTC)
    t = store.subject_map
    stmt = pg.insert(t).values(
        [
            {
                "merchant_id": merchant_id,
                "external_subject": external_subject,
                "customer_id": customer_id,
                "sequence": change.sequence,
                "updated_at": updated_at,
            }
            # sorted: every writer of subject_map locks its rows in the same order
            for external_subject, customer_id in sorted(facts.items())
        ]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.merchant_id, t.c.external_subject],
        set_={"customer_id": stmt.excluded.customer_id, "sequence": stmt.excluded.sequence, "updated_at": stmt.excluded.updated_at},
        # newest wins; a stale change still locks the row (ON CONFLICT locks it either way)
        where=t.c.sequence < stmt.excluded.sequence,
    )
    await uow.conn.execute(stmt)
    mapped = [external_subject for external_subject, customer_id in facts.items() if customer_id is not None]
    if mapped:
        attributed = await attribute_stored_events(uow.conn, merchant_id, mapped)
        if attributed:
            log.info("meter_events_attributed", merchant_id=merchant_id, customer_id=customer.id, events=attributed)


async def attribute_stored_events(conn: AsyncConnection, merchant_id: str, external_subjects: Iterable[str]) -> int:
    """Give every stored, still unattributed event of these external subjects the customer
    its external subject names now (per subject_map as this transaction sees it). Uses
    the partial index ix_meter_events_unattributed. Returns the number of events."""
    e, m = store.meter_events, store.subject_map
    stmt = (
        e.update()
        .values(subject=m.c.customer_id)
        .where(
            m.c.merchant_id == merchant_id,
            m.c.external_subject.in_(sorted(set(external_subjects))),
            m.c.customer_id.is_not(None),
            e.c.merchant_id == merchant_id,
            e.c.external_subject == m.c.external_subject,
            # a literal, not a parameter: a generic plan must still match the partial index
            e.c.subject == sa.literal_column("''"),
        )
    )
    result = await conn.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


# One statement for the whole batch, on two array parameters (no bind-parameter limit).
#   known: subject_map rows of the batch's external subjects in this statement's snapshot.
#   held:  the known rows naming no customer, share-locked in key order; the lock waits
#          for a concurrent mapping change of that row and returns its newest committed
#          version (READ COMMITTED re-reads a row locked after a concurrent update).
#   fresh: external subjects with no row in the snapshot get a placeholder row (customer
#          NULL, sequence 0); if a concurrent transaction inserted the row meanwhile, ON
#          CONFLICT waits for it and DO UPDATE locks and returns its newest version.
# Rows named by a customer in the snapshot are used as they are, unlocked.
_RESOLVE = sa.text(
    """
    WITH pairs AS (
        SELECT p.merchant_id, p.external_subject
        FROM unnest(:merchant_ids, :external_subjects) AS p (merchant_id, external_subject)
    ),
    known AS (
        SELECT m.merchant_id, m.external_subject, m.customer_id
        FROM subject_map AS m
        JOIN pairs AS p ON p.merchant_id = m.merchant_id AND p.external_subject = m.external_subject
    ),
    held AS (
        SELECT m.merchant_id, m.external_subject, m.customer_id
        FROM subject_map AS m
        JOIN known AS k ON k.merchant_id = m.merchant_id AND k.external_subject = m.external_subject
        WHERE k.customer_id IS NULL
        ORDER BY m.merchant_id, m.external_subject
        FOR SHARE OF m
    ),
    fresh AS (
        INSERT INTO subject_map AS m (merchant_id, external_subject, customer_id, sequence, updated_at)
        SELECT p.merchant_id, p.external_subject, NULL, 0, now()
        FROM pairs AS p
        WHERE NOT EXISTS (
            SELECT 1 FROM known AS k WHERE k.merchant_id = p.merchant_id AND k.external_subject = p.external_subject
        )
        ORDER BY p.merchant_id, p.external_subject
        ON CONFLICT (merchant_id, external_subject) DO UPDATE SET customer_id = m.customer_id
        RETURNING m.merchant_id, m.external_subject, m.customer_id
    )
    SELECT merchant_id, external_subject, customer_id FROM known WHERE customer_id IS NOT NULL
    UNION ALL
    SELECT merchant_id, external_subject, customer_id FROM held WHERE customer_id IS NOT NULL
    UNION ALL
    SELECT merchant_id, external_subject, customer_id FROM fresh WHERE customer_id IS NOT NULL
    """
).bindparams(
    sa.bindparam("merchant_ids", type_=pg.ARRAY(sa.Text)),
    sa.bindparam("external_subjects", type_=pg.ARRAY(sa.Text)),
)


def _unresolved(row: dict[str, Any]) -> bool:
    return not row["subject"] and bool(row.get("external_subject"))


async def resolve_subjects(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Fill ``row["subject"]`` of the rows (as built by aggregator.row_of) that carry only
    an external subject, from subject_map: one statement per batch, none when every row
    has a subject. Rows whose external subject names no customer keep ``subject = ''``.

    MUST run in the transaction that then inserts the rows, before the insert: the row
    locks it takes are what keeps the race below closed, and they last until commit.

    The race: a customer event maps x -> C (transaction M: upsert subject_map, backfill
    meter_events, commit) while a batch with an event of x is being stored (transaction
    B: resolve, insert, commit). The event would stay unattributed for good if B resolved
    before M committed and M's backfill ran before B committed. It cannot happen:

    * x named a customer in B's snapshot: B attributes the event to it. (If M is
      reassigning x at that moment, the event goes to the previous holder, which is the
      documented eventual consistency of a reassignment, not a lost attribution.)
    * x's row named no customer in B's snapshot: B share-locks it. M's upsert takes the
      row's exclusive lock, so the two are serialised on that row. If M held it first,
      B's lock waits for M's commit and reads the row's newest version, so B sees C. If
      B held it first, M's upsert waits for B's commit, and M's backfill, a later
      statement of M, sees B's committed event.
    * x had no row in B's snapshot: B inserts a placeholder row. If M inserted the row
      (committed or not) B's insert conflicts, waits for M, and ON CONFLICT DO UPDATE
      returns the committed newest version, C. If B's placeholder came first, M's upsert
      conflicts with it and waits for B's commit, and M's backfill sees B's event.

    Either B reads C or M's backfill reads B's event, whatever the timing. The cost on
    the hot path is this one statement, one share lock (no blocking between aggregator
    replicas) per unmapped external subject in the batch, and one placeholder insert the
    first time an external subject is seen. Lock order is by (merchant, external subject)
    within each step; a deadlock with a concurrent writer (only possible when a batch
    holds two unmapped external subjects that a customer change moves between at that
    very moment) is detected by PostgreSQL, and the aborted transaction is redelivered.
    """
    pending = sorted({(row["merchant_id"], row["external_subject"]) for row in rows if _unresolved(row)})
    if not pending:
        return
    found = await conn.execute(
        _RESOLVE,
        {"merchant_ids": [merchant_id for merchant_id, _ in pending], "external_subjects": [subject for _, subject in pending]},
    )
    customers = {(r.merchant_id, r.external_subject): r.customer_id for r in found}
    for row in rows:
        if _unresolved(row):
            row["subject"] = customers.get((row["merchant_id"], row["external_subject"]), "")
