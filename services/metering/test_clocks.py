"""Test clocks in metering: which customers live on which clock, and each clock's time.

An event whose customer (``subject``, or the customer its ``externalSubject`` names) is on
a test clock is judged in the clock's time (DESIGN section 7): its default timestamp is
the clock's time, and "at most 5 minutes ahead" and the backdating window are measured
from the clock's time. Everything else about the event is unchanged.

Where metering learns it (every path applies the same monotone rules, so any order and
any repetition give the same state):

* ``SyncTestClock``, synchronously from the subscription service after a clock moved,
  was deleted, or got a subscription; and the subscription stream's ``TestClockChanged``
  events (``accrue.subscription.v1.test_clock.<created|advanced|deleted>``, the durable
  consumer ``on_test_clock_event``, idempotent by its inbox). Both write the tables
  ``test_clocks`` / ``test_clock_customers`` (``record``).
* The rules: a clock's time only moves forward (an older time is ignored); a deleted
  clock stays deleted (a tombstone row no late message undoes) and releases its
  customers; customers named on a live clock are added to it (a customer lives on at
  most one clock: the latest clock naming it holds it).

The hot path reads ``ClockIndex``, an in-process cache per merchant, never the database
per event. A merchant with no customer on a clock costs one dict look-up per call.
Keeping the caches of several metering processes current:

* the process answering SyncTestClock updates its cache after the commit and broadcasts
  the clock's new state on core NATS (``SYNCED_SUBJECT``); every process listens to it,
  to the TestClockChanged subjects themselves and to CustomerChanged (a clock customer's
  external id) (``ClockListener``), so a move reaches every cache within milliseconds;
* a merchant's entry is read again after ``TTL_WITH_CLOCKS_SECONDS`` (merchants with a
  customer on a clock) or ``TTL_SECONDS`` (others), should a broadcast be lost; changes
  heard in the last ``RECENT_SECONDS`` are applied again on top of every read, so a read
  of the database that predates one (e.g. a TestClockChanged the durable consumer has
  not stored yet) cannot undo it;
* and the answer never rests on a stale cache where it matters: an event refused by a
  time bound (too far ahead, too old) and an event without timestamp of a customer the
  cache puts on a clock are judged again after reading those customers' clocks from the
  database (one statement per call, only for such calls). So an event of a clock's
  present is never refused because another process moved the clock a moment ago, and a
  default timestamp is the clock's time as committed.

What remains eventually consistent (milliseconds by broadcast, at most the TTL): an event
with a timestamp, alone in its call, of a customer whose clock another process has just
moved may still be accepted by the backdating window of the clock's previous time; and
an event without timestamp of a customer this process does not yet know to be on a clock
(a subscription created through another process a moment ago) gets the server's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from accrue.subscription.v1 import subscription_events_pb2 as subscription_events
from accrue.subscription.v1 import subscription_service_pb2 as subscription
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.infra.db import Database, UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.metering import store
from services.subscription import events as subscription_stream

log = get_logger(__name__)

# the subscription service's TestClockChanged subjects (subscription_events.proto)
TEST_CLOCK_SUBJECTS = f"{subscription_stream.SUBJECT_PREFIX}.test_clock.>"
TEST_CLOCK_DURABLE = "metering-test-clocks"
# core NATS only (no stream captures it): "this clock is now so", from the process that
# answered a SyncTestClock, to every metering process's cache
SYNCED_SUBJECT = "accrue.metering.v1.cache.test_clock"
# how long a merchant's entry is trusted before it is read again (a lost broadcast)
TTL_SECONDS = 30.0
TTL_WITH_CLOCKS_SECONDS = 2.0
# how long a change heard is applied again on every read of the database (longer than the
# durable consumer takes to store an event)
RECENT_SECONDS = 30.0


@dataclass(frozen=True)
class ClockChange:
    """One fact about a clock, from any source."""

    merchant_id: str
    clock_id: str
    time: datetime
    customer_ids: tuple[str, ...] = ()
    deleted: bool = False


def change_of(message: subscription_events.TestClockChanged, subject: str = "") -> ClockChange | None:
    """A TestClockChanged as a ClockChange; None when it lacks what is needed."""
    clock = message.test_clock
    merchant_id = message.merchant_id or clock.merchant_id
    if not merchant_id or not clock.id or not clock.HasField("current_time"):
        return None
    if clock.merchant_id and clock.merchant_id != merchant_id:
        return None
    return ClockChange(
        merchant_id=merchant_id,
        clock_id=clock.id,
        time=from_timestamp(clock.current_time),
        customer_ids=tuple(c for c in message.customer_ids if c),
        deleted=clock.HasField("delete_time") or subject.endswith(".deleted"),
    )


def message_of(change: ClockChange) -> subscription_events.TestClockChanged:
    clock = subscription.TestClock(id=change.clock_id, merchant_id=change.merchant_id, current_time=to_timestamp(change.time))
    if change.deleted:
        clock.delete_time.CopyFrom(clock.current_time)
    return subscription_events.TestClockChanged(merchant_id=change.merchant_id, test_clock=clock, customer_ids=change.customer_ids)


# --- the tables -------------------------------------------------------------------------


async def record(conn: AsyncConnection, change: ClockChange, now: datetime) -> ClockChange:
    """Apply the change to the tables; returns the clock as they now hold it (its time,
    whether it is deleted, the change's customers). The clock row's lock serialises
    concurrent changes of one clock: customers are never added to a clock deleted by a
    transaction that committed first."""
    k = store.test_clocks
    stmt = pg.insert(k).values(
        merchant_id=change.merchant_id, id=change.clock_id, clock_time=change.time, deleted=change.deleted, updated_at=now
    )
    upsert = stmt.on_conflict_do_update(
        index_elements=[k.c.merchant_id, k.c.id],
        set_={
            "clock_time": sa.func.greatest(k.c.clock_time, stmt.excluded.clock_time),
            "deleted": k.c.deleted | stmt.excluded.deleted,
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(k.c.clock_time, k.c.deleted)
    row = (await conn.execute(upsert)).one()
    held = ClockChange(change.merchant_id, change.clock_id, row.clock_time, change.customer_ids, bool(row.deleted))
    c = store.test_clock_customers
    if held.deleted:
        await conn.execute(c.delete().where(c.c.merchant_id == change.merchant_id, c.c.test_clock_id == change.clock_id))
    elif change.customer_ids:
        insert = pg.insert(c).values(
            [
                {"merchant_id": change.merchant_id, "customer_id": customer_id, "test_clock_id": change.clock_id, "updated_at": now}
                for customer_id in sorted(set(change.customer_ids))  # one lock order for every writer
            ]
        )
        await conn.execute(
            insert.on_conflict_do_update(
                index_elements=[c.c.merchant_id, c.c.customer_id],
                set_={"test_clock_id": insert.excluded.test_clock_id, "updated_at": insert.excluded.updated_at},
                where=c.c.test_clock_id != insert.excluded.test_clock_id,
            )
        )
    return held


async def on_test_clock_event(event: ReceivedEvent, uow: UnitOfWork) -> None:
    """The durable consumer of TestClockChanged: into the tables, in the consumer's unit of
    work (with its inbox claim). The caches learn it from ``ClockListener``."""
    try:
        change = change_of(subscription_events.TestClockChanged.FromString(event.payload), event.subject)
    except DecodeError:
        change = None
    if change is None or (event.merchant_id and event.merchant_id != change.merchant_id):
        log.warning("test_clock_event_ignored", reason="malformed", event_id=event.event_id, subject=event.subject)
        return
    await record(uow.conn, change, datetime.now(UTC))


# a merchant's live clocks, their customers and those customers' external subjects
_LOAD_MERCHANT = sa.text(
    """
    SELECT k.id AS clock_id, k.clock_time, false AS deleted, c.customer_id, m.external_subject
    FROM test_clocks AS k
    LEFT JOIN test_clock_customers AS c ON c.merchant_id = k.merchant_id AND c.test_clock_id = k.id
    LEFT JOIN subject_map AS m ON m.merchant_id = c.merchant_id AND m.customer_id = c.customer_id
    WHERE k.merchant_id = :merchant_id AND NOT k.deleted
    UNION ALL
    SELECT k.id, k.clock_time, true, NULL, NULL
    FROM test_clocks AS k
    WHERE k.merchant_id = :merchant_id AND k.deleted AND k.id = ANY(:recent)
    """
).bindparams(sa.bindparam("recent", type_=pg.ARRAY(sa.Text)))
# the live clocks of some customers, and of the customers some external subjects name now
# (and, in both, the tombstones of the recently changed clocks, ``recent``)
_LOAD_SOME = sa.text(
    """
    SELECT k.id AS clock_id, k.clock_time, false AS deleted, c.customer_id, NULL AS external_subject
    FROM test_clock_customers AS c
    JOIN test_clocks AS k ON k.merchant_id = c.merchant_id AND k.id = c.test_clock_id
    WHERE c.merchant_id = :merchant_id AND c.customer_id = ANY(:customers) AND NOT k.deleted
    UNION ALL
    SELECT k.id, k.clock_time, false, c.customer_id, m.external_subject
    FROM subject_map AS m
    JOIN test_clock_customers AS c ON c.merchant_id = m.merchant_id AND c.customer_id = m.customer_id
    JOIN test_clocks AS k ON k.merchant_id = c.merchant_id AND k.id = c.test_clock_id
    WHERE m.merchant_id = :merchant_id AND m.external_subject = ANY(:externals) AND NOT k.deleted
    UNION ALL
    SELECT k.id, k.clock_time, true, NULL, NULL
    FROM test_clocks AS k
    WHERE k.merchant_id = :merchant_id AND k.deleted AND k.id = ANY(:recent)
    """
).bindparams(
    sa.bindparam("customers", type_=pg.ARRAY(sa.Text)),
    sa.bindparam("externals", type_=pg.ARRAY(sa.Text)),
    sa.bindparam("recent", type_=pg.ARRAY(sa.Text)),
)


# --- the cache --------------------------------------------------------------------------


@dataclass
class ClockState:
    id: str
    time: datetime
    # the time as the event's timestamp (built once per move, not per event)
    timestamp: timestamp_pb2.Timestamp
    deleted: bool = False

    def advance(self, when: datetime) -> None:
        if when > self.time:
            self.time = when
            self.timestamp = to_timestamp(when)


@dataclass
class MerchantClocks:
    """One merchant's clocks as this process knows them."""

    clocks: dict[str, ClockState] = field(default_factory=dict)
    # customer id -> clock id (live clocks only)
    customers: dict[str, str] = field(default_factory=dict)
    # external subject -> customer id, for customers on a clock
    externals: dict[str, str] = field(default_factory=dict)
    expires: float = 0.0

    def clock_of(self, subject: str, external_subject: str | None) -> ClockState | None:
        """The live clock of the event's customer: ``subject``, else the customer its
        external subject names."""
        customer = subject or (self.externals.get(external_subject) if external_subject else None)
        if not customer:
            return None
        clock_id = self.customers.get(customer)
        state = self.clocks.get(clock_id) if clock_id is not None else None
        return state if state is not None and not state.deleted else None

    def clock(self, clock_id: str, when: datetime) -> ClockState:
        state = self.clocks.get(clock_id)
        if state is None:
            state = self.clocks[clock_id] = ClockState(clock_id, when, to_timestamp(when))
        else:
            state.advance(when)
        return state

    def apply(self, change: ClockChange) -> bool:
        """The change's monotone rules; True when it named customers this entry did not
        know (their external subjects are then unknown here: read the entry again)."""
        state = self.clock(change.clock_id, change.time)
        if change.deleted and not state.deleted:
            state.deleted = True
            released = {customer for customer, clock_id in self.customers.items() if clock_id == change.clock_id}
            for customer in released:
                del self.customers[customer]
            self.externals = {x: customer for x, customer in self.externals.items() if customer not in released}
        if state.deleted:
            return False
        fresh = False
        for customer in change.customer_ids:
            if self.customers.get(customer) != change.clock_id:
                fresh = fresh or customer not in self.customers
                self.customers[customer] = change.clock_id
        return fresh


class ClockIndex:
    """Per merchant, the live test clocks, their customers and times (see the module doc).

    Every change this process hears of is also kept for ``RECENT_SECONDS`` and applied
    again on top of each read of the database: a read whose snapshot predates a change
    (one heard during the read, or one the durable consumer has not stored yet) cannot
    undo it. Re-applying is harmless (the rules are monotone), and the read returns the
    tombstones of recently changed clocks, so a deleted clock stays deleted."""

    def __init__(self, db: Database, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._monotonic = monotonic
        self._entries: dict[str, MerchantClocks] = {}
        self._recent: dict[str, deque[tuple[float, ClockChange]]] = {}
        self._full: dict[str, asyncio.Future[MerchantClocks]] = {}

    async def current(self, merchant_id: str) -> MerchantClocks | None:
        """The merchant's entry, or None when no customer of it is on a clock (the hot
        path's common case: nothing to look up per event)."""
        entry = self._entries.get(merchant_id)
        if entry is None or entry.expires <= self._monotonic():
            entry = await self._load_merchant(merchant_id)
        return entry if entry.customers else None

    async def reread(self, merchant_id: str, customers: Iterable[str], externals: Iterable[str]) -> MerchantClocks | None:
        """Read these customers' clocks (and those of the customers these external
        subjects name) from the database into the entry, then answer as ``current``."""
        wanted, named = sorted(set(customers)), sorted(set(externals))
        entry = await self.current(merchant_id)
        if not wanted and not named:
            return entry
        recent = self._recent_changes(merchant_id)
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    _LOAD_SOME,
                    {"merchant_id": merchant_id, "customers": wanted, "externals": named, "recent": _clock_ids(recent)},
                )
            ).all()
        entry = self._entries.setdefault(merchant_id, MerchantClocks())
        for customer in wanted:
            entry.customers.pop(customer, None)
        for external in named:
            entry.externals.pop(external, None)
        _fill(entry, rows, recent)
        return entry if entry.customers else None

    def apply(self, change: ClockChange) -> None:
        """A change committed (or published) elsewhere, into this process's cache."""
        now = self._monotonic()
        log_ = self._recent.setdefault(change.merchant_id, deque())
        log_.append((now, change))
        while log_ and log_[0][0] < now - RECENT_SECONDS:
            log_.popleft()
        entry = self._entries.get(change.merchant_id)
        if entry is not None and entry.apply(change):
            entry.expires = 0.0  # new customers: learn their external subjects at the next call

    def customer_changed(self, change: subscription_events.CustomerChanged) -> None:
        """A customer's external id as the subscription service just published it: for a
        customer on a clock, its external subject names it here at once (the tables are
        kept by subjects.py's consumer, which the next read of the entry sees)."""
        customer = change.customer
        merchant_id = change.merchant_id or customer.merchant_id
        entry = self._entries.get(merchant_id)
        if entry is None or customer.id not in entry.customers:
            return
        previous = change.previous_external_id if change.HasField("previous_external_id") else ""
        current = customer.external_id if customer.HasField("external_id") else ""
        for external in (previous, current):
            if external and entry.externals.get(external) == customer.id:
                del entry.externals[external]
        if current and change.kind != subscription_events.CUSTOMER_CHANGE_KIND_DELETED:
            entry.externals[current] = customer.id

    def _recent_changes(self, merchant_id: str) -> list[ClockChange]:
        horizon = self._monotonic() - RECENT_SECONDS
        log_ = self._recent.get(merchant_id)
        if not log_:
            return []
        while log_ and log_[0][0] < horizon:
            log_.popleft()
        return [change for _, change in log_]

    async def _load_merchant(self, merchant_id: str) -> MerchantClocks:
        """One read of the merchant at a time; concurrent callers share it."""
        running = self._full.get(merchant_id)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[MerchantClocks] = asyncio.get_running_loop().create_future()
        self._full[merchant_id] = future
        try:
            entry = await self._read_merchant(merchant_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody shares it
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            self._full.pop(merchant_id, None)

    async def _read_merchant(self, merchant_id: str) -> MerchantClocks:
        recent = self._recent_changes(merchant_id)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(_LOAD_MERCHANT, {"merchant_id": merchant_id, "recent": _clock_ids(recent)})).all()
        entry = MerchantClocks()
        previous = self._entries.get(merchant_id)
        if previous is not None:  # a time this process has seen is never taken back
            for clock_id, state in previous.clocks.items():
                entry.clock(clock_id, state.time)
        _fill(entry, rows, recent)
        # clocks of the previous entry gone from the database and not recently heard of: dropped
        kept = {row.clock_id for row in rows} | {change.clock_id for change in recent}
        entry.clocks = {clock_id: state for clock_id, state in entry.clocks.items() if clock_id in kept}
        entry.expires = self._monotonic() + (TTL_WITH_CLOCKS_SECONDS if entry.customers else TTL_SECONDS)
        self._entries[merchant_id] = entry
        return entry


def _clock_ids(changes: Sequence[ClockChange]) -> list[str]:
    return sorted({change.clock_id for change in changes})


def _fill(entry: MerchantClocks, rows: Sequence[Any], recent: Sequence[ClockChange]) -> None:
    """Rows of _LOAD_MERCHANT / _LOAD_SOME into the entry, then the recent changes on top."""
    for row in rows:
        state = entry.clock(row.clock_id, row.clock_time)
        if row.deleted:
            if not state.deleted:
                entry.apply(ClockChange("", row.clock_id, row.clock_time, deleted=True))
            continue
        if row.customer_id is not None:
            entry.customers[row.customer_id] = row.clock_id
            if row.external_subject is not None:
                entry.externals[row.external_subject] = row.customer_id
    for change in recent:
        entry.apply(change)


# --- keeping every process's cache current ----------------------------------------------


async def broadcast(nc: NatsClient | None, change: ClockChange) -> None:
    """Tell every metering process's cache (best effort: the TTL covers a lost one)."""
    if nc is None:
        return
    try:
        await nc.publish(SYNCED_SUBJECT, message_of(change).SerializeToString())
    except Exception as exc:
        log.warning("test_clock_broadcast_failed", clock_id=change.clock_id, error=str(exc))


class ClockListener:
    """A worker of every metering process: core NATS subscriptions that feed its
    ClockIndex from SyncTestClock broadcasts, TestClockChanged events as they are
    published (the durable consumer keeps the tables) and customer changes (external ids)."""

    SUBJECTS: Sequence[str] = (SYNCED_SUBJECT, TEST_CLOCK_SUBJECTS, subscription_stream.CUSTOMER_SUBJECTS)

    def __init__(self, nc: NatsClient, index: ClockIndex) -> None:
        self._nc = nc
        self._index = index
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        subscriptions = [await self._nc.subscribe(subject, cb=self._on_message) for subject in self.SUBJECTS]
        try:
            await self._stopped.wait()
        finally:
            for subscription_ in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription_.unsubscribe()

    def stop(self) -> None:
        self._stopped.set()

    async def _on_message(self, msg: Msg) -> None:
        try:
            if msg.subject.startswith(f"{subscription_stream.SUBJECT_PREFIX}.customer."):
                self._index.customer_changed(subscription_events.CustomerChanged.FromString(msg.data))
                return
            change = change_of(subscription_events.TestClockChanged.FromString(msg.data), msg.subject)
            if change is not None:
                self._index.apply(change)
        except Exception as exc:  # a bad message must not stop the subscription
            log.warning("test_clock_message_ignored", subject=msg.subject, error=str(exc))
