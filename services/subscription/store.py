"""The subscription service's own database: its tables and the repositories that read and
write them (loading and saving the domain's aggregates). Every table is declared here and
created by a migration in migrations/versions (tests/integration/test_migrations.py
checks that the two agree); the billing engine's ``due_work`` table is declared on the
same metadata by engine_store.py.

SQLAlchemy Core, as services/catalog does it: a row becomes an aggregate (attributes are
column names) and an aggregate is written back whole. Every query is scoped by
merchant_id and blind to deleted rows. Deletion is one convention: ``delete_time``.

The functions at the end are what the billing engine (engine.py) uses: it runs in its own
transactions (a libs/infra/db.UnitOfWork) and reads and ends subscriptions through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.clock import SystemClock
from libs.core.domain import Aggregate, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from libs.infra.db import UnitOfWork, add_infra_tables
from libs.infra.repository import RepositoryUnitOfWork, TableRepository, load_aggregate
from services.subscription.domain.model import Consumer, Customer, Subscription, TestClock
from services.subscription.domain.ports import CustomerFilters, SubscriptionFilters
from services.subscription.domain.rules import LIVE_STATUSES

metadata = sa.MetaData()
add_infra_tables(metadata)

TS = sa.DateTime(timezone=True)

# CustomerChanged.sequence: drawn in the changing transaction after the row is written
customer_change_sequence = sa.Sequence("customer_change_sequence", metadata=metadata)

consumers = sa.Table(
    "consumers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("email_normalized", sa.Text, nullable=False),
    sa.Column("address", pg.JSONB, nullable=False),
    sa.Column("phone", sa.Text),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    # consumers are found again by email: one per merchant and (case-folded) email
    sa.Index("uq_consumers_merchant_email", "merchant_id", "email_normalized", unique=True),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("consumer_id", sa.Text, sa.ForeignKey("consumers.id"), nullable=False),
    sa.Column("external_id", sa.Text),
    sa.Column("tax_id", sa.Text),
    # key -> percent as a decimal string
    sa.Column("tax_rates", pg.JSONB, nullable=False),
    sa.Column("notification_settings", pg.JSONB, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Column("delete_time", TS),
    sa.Index("ix_customers_merchant_created", "merchant_id", "create_time"),
    # the producer contract of CustomerChanged: distinct external ids among live customers
    sa.Index(
        "uq_customers_merchant_live_external_id",
        "merchant_id",
        "external_id",
        unique=True,
        postgresql_where=sa.text("delete_time IS NULL AND external_id IS NOT NULL"),
    ),
    # one live customer per consumer of a merchant
    sa.Index(
        "uq_customers_merchant_live_consumer", "merchant_id", "consumer_id", unique=True, postgresql_where=sa.text("delete_time IS NULL")
    ),
)

test_clocks = sa.Table(
    "test_clocks",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("description", sa.Text),
    sa.Column("current_time", TS, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Column("delete_time", TS),
    sa.Index("ix_test_clocks_merchant_created", "merchant_id", "create_time"),
)

subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("plan_id", sa.Text, nullable=False),
    sa.Column("plan_version_id", sa.Text, nullable=False),
    sa.Column("version_number", sa.Integer, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("version_policy", sa.Text, nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("billing_starts_at", TS, nullable=False),
    sa.Column("elapsed_period_billing", sa.Text, nullable=False),
    sa.Column("billing_anchor", TS, nullable=False),
    sa.Column("billing_cadence", sa.Text, nullable=False),
    sa.Column("payment_term_days", sa.Integer, nullable=False),
    sa.Column("auto_charge", sa.Boolean, nullable=False),
    sa.Column("tax_exempt", sa.Boolean, nullable=False),
    sa.Column("tax_behavior", sa.Text, nullable=False),
    sa.Column("default_tax_rate", sa.Text, nullable=False),
    sa.Column("ending_at", TS),
    sa.Column("terminated_at", TS),
    sa.Column("terminated_by", sa.Text),
    sa.Column("termination_reason", sa.Text),
    sa.Column("termination_change_reason", sa.Text),
    sa.Column("test_clock_id", sa.Text, sa.ForeignKey("test_clocks.id")),
    sa.Column("renewal_reminder_enabled", sa.Boolean, nullable=False),
    sa.Column("renewal_reminder_days", sa.Integer, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("change_reason", sa.Text),
    sa.Column("change_description", sa.Text),
    sa.Column("change_metadata", pg.JSONB, nullable=False),
    sa.Column("redirect_urls", pg.JSONB, nullable=False),
    sa.Column("session_expiry_minutes", sa.Float, nullable=False),
    sa.Column("invoice_zero_id", sa.Text),
    sa.Column("invoice_zero_status", sa.Text),
    sa.Column("invoice_zero_amount", sa.Text),
    # Invoice 0's checkout as invoicing answered it (the payment service's session)
    sa.Column("invoice_zero_session_id", sa.Text),
    sa.Column("invoice_zero_payment_url", sa.Text),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("status IN ('pending_payment', 'active', 'terminated')", name="ck_subscriptions_status"),
    sa.Index("ix_subscriptions_merchant_created", "merchant_id", "create_time"),
    sa.Index("ix_subscriptions_customer", "customer_id"),
    sa.Index("ix_subscriptions_test_clock", "test_clock_id"),
)

A = TypeVar("A", bound=Aggregate)


_aggregate = load_aggregate


def _like(text: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def _advisory_lock(conn: AsyncConnection, key: str) -> None:
    """A transaction lock on ``key``: a concurrent claim of the same key waits for this
    transaction, then sees its row (so no unique violation)."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))


class ConsumerRepository(TableRepository[Consumer]):
    resource = "consumer"

    async def claim_email(self, merchant_id: str, email: str) -> Consumer | None:
        normalized = email.strip().lower()
        await _advisory_lock(self._conn, f"consumer-email:{merchant_id}:{normalized}")
        t = consumers
        row = (await self._conn.execute(sa.select(t).where(t.c.merchant_id == merchant_id, t.c.email_normalized == normalized))).first()
        return None if row is None else self._load(row)

    async def by_ids(self, consumer_ids: Sequence[str]) -> dict[str, Consumer]:
        ids = sorted({c for c in consumer_ids if c})
        if not ids:
            return {}
        rows = await self._conn.execute(sa.select(consumers).where(consumers.c.id.in_(ids)))
        return {row.id: _aggregate(Consumer, consumers, row) for row in rows}


class CustomerRepository(TableRepository[Customer]):
    resource = "customer"

    async def live_of_consumer(self, merchant_id: str, consumer_id: str) -> Customer | None:
        # one live customer per consumer: a concurrent create for the same consumer waits here
        await _advisory_lock(self._conn, f"customer-of-consumer:{merchant_id}:{consumer_id}")
        t = customers
        row = (await self._conn.execute(sa.select(t).where(*self._live(merchant_id), t.c.consumer_id == consumer_id))).first()
        return None if row is None else self._load(row)

    async def claim_external_id(self, merchant_id: str, external_id: str) -> Customer | None:
        await _advisory_lock(self._conn, f"customer-external-id:{merchant_id}:{external_id}")
        t = customers
        row = (await self._conn.execute(sa.select(t).where(*self._live(merchant_id), t.c.external_id == external_id))).first()
        return None if row is None else self._load(row)

    async def list_page(self, merchant_id: str, filters: CustomerFilters, page: Page) -> tuple[list[Customer], int]:
        t, c = customers, consumers
        conditions = self._live(merchant_id)
        if filters.external_id is not None:
            conditions.append(t.c.external_id == filters.external_id)
        if filters.name is not None:
            conditions.append(c.c.name.ilike(_like(filters.name), escape="\\"))
        if filters.email is not None:
            conditions.append(c.c.email.ilike(_like(filters.email), escape="\\"))
        return await self._page(sa.and_(*conditions), page, t.join(c, c.c.id == t.c.consumer_id))


class TestClockRepository(TableRepository[TestClock]):
    __test__ = False
    resource = "test_clock"

    async def list_page(self, merchant_id: str, page: Page) -> tuple[list[TestClock], int]:
        return await self._page(sa.and_(*self._live(merchant_id)), page)


class SubscriptionRepository(TableRepository[Subscription]):
    resource = "subscription"

    def _values(self, aggregate: Subscription) -> dict[str, Any]:
        return {name: getattr(aggregate, name) for name in [column.name for column in subscriptions.c]}

    async def _with_rates(self, found: list[Subscription]) -> list[Subscription]:
        await fill_customer_tax_rates(self._conn, found)
        return found

    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> Subscription:
        found = await super().get(merchant_id, resource_id, field=field, lock=lock)
        await self._with_rates([found])
        return found

    async def list_page(self, merchant_id: str, filters: SubscriptionFilters, page: Page) -> tuple[list[Subscription], int]:
        t = subscriptions
        conditions = self._live(merchant_id)
        source: Any = t
        if filters.customer_id is not None:
            conditions.append(t.c.customer_id == filters.customer_id)
        if filters.consumer_id is not None:
            source = t.join(customers, customers.c.id == t.c.customer_id)
            conditions.append(customers.c.consumer_id == filters.consumer_id)
        if filters.statuses:
            conditions.append(t.c.status.in_(list(filters.statuses)))
        if filters.started_before is not None:
            conditions.append(t.c.started_at <= filters.started_before)
        found, total = await self._page(sa.and_(*conditions), page, source)
        return await self._with_rates(found), total

    async def _first_id(self, query: sa.Select[Any]) -> str | None:
        row = (await self._conn.execute(query.limit(1))).first()
        return None if row is None else str(row[0])

    async def live_of_customer(self, customer_id: str) -> str | None:
        t = subscriptions
        return await self._first_id(sa.select(t.c.id).where(t.c.customer_id == customer_id, t.c.status.in_(LIVE_STATUSES)))

    async def live_on_clock(self, clock_id: str) -> str | None:
        t = subscriptions
        return await self._first_id(sa.select(t.c.id).where(t.c.test_clock_id == clock_id, t.c.status.in_(LIVE_STATUSES)))

    async def customers_on_clock(self, clock_id: str) -> list[str]:
        t = subscriptions
        rows = await self._conn.execute(
            sa.select(t.c.customer_id).where(t.c.test_clock_id == clock_id).distinct().order_by(t.c.customer_id)
        )
        return [str(row[0]) for row in rows]

    async def clock_conflict(self, customer_id: str, test_clock_id: str | None) -> str | None:
        t, tc = subscriptions, test_clocks
        other_clock = t.c.test_clock_id.is_distinct_from(test_clock_id)
        # a live subscription in another time, or any subscription on another clock that still exists
        on_live_clock = sa.and_(t.c.test_clock_id.is_not(None), tc.c.delete_time.is_(None))
        query = (
            sa.select(t.c.id)
            .select_from(t.outerjoin(tc, tc.c.id == t.c.test_clock_id))
            .where(t.c.customer_id == customer_id, other_clock, sa.or_(t.c.status.in_(LIVE_STATUSES), on_live_clock))
        )
        return await self._first_id(query)


class SubscriptionReads:
    """What rendering needs beyond the aggregates: customers' consumers."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def customers_by_id(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        rows = await self._conn.execute(sa.select(customers).where(customers.c.id.in_(ids)))
        return {row.id: _aggregate(Customer, customers, row) for row in rows}

    async def consumers_by_id(self, consumer_ids: Sequence[str]) -> dict[str, Consumer]:
        ids = sorted(set(consumer_ids))
        if not ids:
            return {}
        rows = await self._conn.execute(sa.select(consumers).where(consumers.c.id.in_(ids)))
        return {row.id: _aggregate(Consumer, consumers, row) for row in rows}

    async def customers_on_clock(self, clock_id: str) -> list[str]:
        t = subscriptions
        rows = await self._conn.execute(
            sa.select(t.c.customer_id).where(t.c.test_clock_id == clock_id).distinct().order_by(t.c.customer_id)
        )
        return [str(row[0]) for row in rows]

    async def clock_by_id(self, clock_id: str) -> TestClock | None:
        """A clock, deleted or not (its deleted event shows it)."""
        row = (await self._conn.execute(sa.select(test_clocks).where(test_clocks.c.id == clock_id))).first()
        return None if row is None else _aggregate(TestClock, test_clocks, row)

    async def subscription_by_id(self, subscription_id: str) -> Subscription | None:
        row = (await self._conn.execute(sa.select(subscriptions).where(subscriptions.c.id == subscription_id))).first()
        if row is None:
            return None
        found = _aggregate(Subscription, subscriptions, row)
        await fill_customer_tax_rates(self._conn, [found])
        return found

    async def next_customer_sequence(self) -> int:
        return int((await self._conn.execute(sa.select(customer_change_sequence.next_value()))).scalar_one())


class SqlSubscriptionUnitOfWork(RepositoryUnitOfWork):
    """The subscription service's unit of work over PostgreSQL (domain/ports): one
    libs/infra/db.UnitOfWork and the repositories on its connection. ``translate``
    renders a recorded event at commit (views.outbox_message)."""

    consumers: ConsumerRepository
    customers: CustomerRepository
    test_clocks: TestClockRepository
    subscriptions: SubscriptionRepository
    reads: SubscriptionReads

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self.consumers = ConsumerRepository(conn, seen, consumers, Consumer)
        self.customers = CustomerRepository(conn, seen, customers, Customer)
        self.test_clocks = TestClockRepository(conn, seen, test_clocks, TestClock)
        self.subscriptions = SubscriptionRepository(conn, seen, subscriptions, Subscription)
        self.reads = SubscriptionReads(conn)

    @property
    def session(self) -> UnitOfWork:
        """What the billing engine writes its due work in."""
        return self._uow


class _SessionView:
    """Repositories over an engine session (a libs UnitOfWork or ours): the engine's own
    transactions read and end subscriptions through the same queries."""

    def __init__(self, session: Any) -> None:
        self.transaction: UnitOfWork = session.transaction if isinstance(session, SqlSubscriptionUnitOfWork) else session
        conn = self.transaction.conn
        self.seen = EventCollector()  # events are recorded explicitly below (the session may have no translator)
        self.subscriptions = SubscriptionRepository(conn, self.seen, subscriptions, Subscription)
        self.test_clocks = TestClockRepository(conn, self.seen, test_clocks, TestClock)
        self.customers = CustomerRepository(conn, self.seen, customers, Customer)
        self.consumers = ConsumerRepository(conn, self.seen, consumers, Consumer)
        self.reads = SubscriptionReads(conn)
        self.conn = conn

    @property
    def session(self) -> UnitOfWork:
        return self.transaction


async def fill_customer_tax_rates(conn: AsyncConnection, found: Sequence[Subscription]) -> None:
    """Each subscription's ``customer_tax_rates``: its customer's current rates."""
    ids = sorted({s.customer_id for s in found})
    if not ids:
        return
    rows = await conn.execute(sa.select(customers.c.id, customers.c.tax_rates).where(customers.c.id.in_(ids)))
    rates = {row.id: dict(row.tax_rates or {}) for row in rows}
    for subscription in found:
        subscription.customer_tax_rates = {str(k): str(v) for k, v in rates.get(subscription.customer_id, {}).items()}


async def _publish(view: _SessionView, aggregate: Aggregate, now: datetime) -> None:
    from services.subscription import views  # views renders through this module's reads

    for _, event in aggregate.take_events():
        message = await views.outbox_message(view, event)
        await view.transaction.record_event(message.subject, message.event, merchant_id=message.merchant_id, now=now)


# --- what the billing engine uses ----------------------------------------------------


async def load_subscription(session: Any, merchant_id: str, subscription_id: str, *, lock: bool = False) -> Subscription:
    """The merchant's subscription (NotFound otherwise), with its customer's current tax rates."""
    return await _SessionView(session).subscriptions.get(merchant_id, subscription_id, lock=lock)


async def load_subscriptions(session: Any, merchant_id: str, ids: Sequence[str]) -> dict[str, Subscription]:
    """The merchant's subscriptions among ``ids`` (missing ones are left out)."""
    view = _SessionView(session)
    t = subscriptions
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = (await view.conn.execute(sa.select(t).where(t.c.merchant_id == merchant_id, t.c.id.in_(wanted)))).all()
    found = [_aggregate(Subscription, t, row) for row in rows]
    await fill_customer_tax_rates(view.conn, found)
    return {s.id: s for s in found}


async def clock_time(session: Any, merchant_id: str, test_clock_id: str) -> datetime:
    """A test clock's current time (deleted clocks included: their time stands still)."""
    view = _SessionView(session)
    t = test_clocks
    value = (
        await view.conn.execute(sa.select(t.c.current_time).where(t.c.merchant_id == merchant_id, t.c.id == test_clock_id))
    ).scalar_one_or_none()
    if value is None:
        raise NotFound("test_clock", test_clock_id)
    return value  # type: ignore[no-any-return]


async def mark_terminated(
    session: Any, subscription: Subscription, at: datetime, *, now: datetime | None = None, reason: str | None = None
) -> None:
    """The scheduled end came (the engine's ``end`` step), or automatic collection gave up
    under the merchant's terminate policy (``reason``): status terminated at ``at``,
    SubscriptionChanged terminated through the outbox. A repeat does nothing."""
    view = _SessionView(session)
    current = await view.subscriptions.get(subscription.merchant_id, subscription.id, lock=True)
    if current.end(at, now or SystemClock().now(), reason=reason):
        await view.subscriptions.save(current)
        await _publish(view, current, at)
    subscription.status, subscription.terminated_at = current.status, current.terminated_at


async def record_invoice_zero(session: Any, subscription: Subscription, invoice: Any, *, now: datetime | None = None) -> None:
    """The engine made Invoice 0 (``invoice``: the invoicing_pb2.Invoice IssueInvoice
    answered): its id, total, status and checkout (the session id and page URL invoicing
    answered) become the subscription's ``payment``; PAID (nothing due) activates the
    subscription. Idempotent: a paid Invoice 0 stays paid."""
    view = _SessionView(session)
    current = await view.subscriptions.get(subscription.merchant_id, subscription.id, lock=True)
    session_id = invoice.payment_session_id if invoice.HasField("payment_session_id") else None
    payment_url = invoice.payment_url if invoice.HasField("payment_url") else None
    if current.invoice_zero_id == invoice.id:
        if current.invoice_zero_status == "paid":
            return
        unchanged = (current.invoice_zero_session_id, current.invoice_zero_payment_url) == (session_id, payment_url)
        if invoice.status != "PAID" and unchanged:
            return
    service_now = now or SystemClock().now()
    at = service_now
    if current.test_clock_id is not None:
        at = await clock_time(view.transaction, current.merchant_id, current.test_clock_id)
    paid = invoice.status == "PAID"
    current.record_invoice_zero(
        invoice.id,
        paid=paid,
        amount=invoice.grand_total or "0.00",
        session_id=session_id,
        payment_url=payment_url,
        now=service_now,
        effective_now=at,
    )
    await view.subscriptions.save(current)
    await _publish(view, current, at)
    subscription.status = current.status


async def record_invoice_zero_paid(session: Any, subscription: Subscription, invoice: Any, *, now: datetime | None = None) -> None:
    """Automatic collection charged Invoice 0 (``invoice``: the invoicing_pb2.Invoice the
    charge was for): paid, and a pending_payment subscription active, as RecordInvoicePaid
    makes it when invoicing reports the payment (whichever comes first; a repeat does
    nothing)."""
    view = _SessionView(session)
    current = await view.subscriptions.get(subscription.merchant_id, subscription.id, lock=True)
    if current.invoice_zero_status == "paid" and current.status != "pending_payment":
        subscription.status = current.status
        return
    service_now = now or SystemClock().now()
    at = service_now
    if current.test_clock_id is not None:
        at = await clock_time(view.transaction, current.merchant_id, current.test_clock_id)
    current.invoice_paid(invoice.id, 0, invoice.grand_total, service_now, at)
    await view.subscriptions.save(current)
    await _publish(view, current, at)
    subscription.status = current.status


__all__ = [
    "SqlSubscriptionUnitOfWork",
    "clock_time",
    "consumers",
    "customers",
    "load_subscription",
    "load_subscriptions",
    "mark_terminated",
    "metadata",
    "record_invoice_zero",
    "record_invoice_zero_paid",
    "subscriptions",
    "test_clocks",
]
