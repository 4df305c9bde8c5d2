"""The billing engine against real PostgreSQL: due rows laid at creation, run in time
order by a test clock's advance, follow-ups laid in the transaction that marks a row done,
terminations re-laying the final invoice, concurrent advances, an advance killed halfway,
failures retried, and the real-time lane.

Invoicing is a recording fake here (its RPCs answer an Invoice and remember each call;
invoicing's own tests and the end-to-end scenarios cover the real one), and so is the
subscription store port (the engine reads only the attributes the timeline names)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from accrue.invoicing.v1 import invoicing_service_pb2 as inv

from libs.core.clock import FakeClock
from libs.core.errors import FailedPrecondition, Unavailable
from libs.infra.db import Database, create_engine
from libs.infra.proto_time import from_timestamp
from libs.testing.fixtures import Infra
from services.subscription.domain.timeline import BilledSubscription
from services.subscription.engine import Scheduler, Timeline
from services.subscription.engine_store import due_work
from services.subscription.store import metadata

pytestmark = pytest.mark.integration

CLOCK = "clk_engine"
MERCHANT = "org_engine"
T0 = datetime(2026, 1, 31, 10, tzinfo=UTC)
GRACE = timedelta(hours=1)


@dataclass
class Sub:
    id: str
    started_at: datetime = T0
    billing_anchor: datetime = T0
    billing_cadence: str = "P1M"
    billing_starts_at: datetime | None = T0
    elapsed_period_billing: str | None = "none"
    ending_at: datetime | None = None
    terminated_at: datetime | None = None
    merchant_id: str = MERCHANT
    customer_id: str = ""
    plan_id: str = "plan_1"
    plan_version_id: str = "plv_1"
    currency: str = "USD"
    status: str = "pending_payment"
    test_clock_id: str | None = CLOCK
    payment_term_days: int = 0
    tax_exempt: bool = False
    tax_behavior: str = "exclusive"
    default_tax_rate: str = "0"
    customer_tax_rates: Mapping[str, str] = field(default_factory=dict)
    auto_charge: bool = False
    redirect_urls: Mapping[str, str] = field(default_factory=dict)
    session_expiry_minutes: float = 240.0

    def __post_init__(self) -> None:
        self.customer_id = self.customer_id or f"cus_{self.id}"


class FakeSubscriptions:
    def __init__(self) -> None:
        self.subs: dict[str, Sub] = {}
        self.terminated: list[tuple[str, datetime]] = []
        self.reasons: list[str | None] = []
        self.invoice_zero: list[tuple[str, str]] = []
        self.invoice_zero_paid: list[tuple[str, str]] = []

    async def load_many(self, session: Any, merchant_id: str, ids: Sequence[str]) -> Mapping[str, BilledSubscription]:
        return {i: self.subs[i] for i in ids if i in self.subs and self.subs[i].merchant_id == merchant_id}

    async def mark_terminated(self, session: Any, subscription: BilledSubscription, at: datetime, *, reason: str | None = None) -> None:
        sub = self.subs[subscription.id]
        sub.status, sub.terminated_at = "terminated", at
        self.terminated.append((sub.id, at))
        self.reasons.append(reason)

    async def record_invoice_zero(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None:
        self.invoice_zero.append((subscription.id, invoice.id))

    async def record_invoice_zero_paid(self, session: Any, subscription: BilledSubscription, invoice: inv.Invoice) -> None:
        self.invoice_zero_paid.append((subscription.id, invoice.id))
        sub = self.subs[subscription.id]
        if sub.status == "pending_payment":
            sub.status = "active"


@dataclass
class Call:
    op: str
    subscription_id: str
    sequence_number: int
    at: datetime
    request: Any


class FakeInvoicing:
    """Records every call; ``fail`` decides whether a call raises (before any effect).
    Issued invoices owe ``amount`` (``amounts`` by subscription id, sequence) and are kept
    by id for GetInvoice (a fake payment marks them paid)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.fail: Any = None
        self.refuse: Any = None
        self.delay = 0.0
        self.amount = "10.00"
        self.amounts: dict[tuple[str, int], str] = {}
        self.invoices: dict[str, inv.Invoice] = {}
        self.reads: list[str] = []

    async def _answer(self, op: str, merchant_id: str, request: Any) -> inv.Invoice:
        assert merchant_id == MERCHANT
        if self.delay:
            await asyncio.sleep(self.delay)
        call = Call(op, request.terms.subscription_id, request.sequence_number, from_timestamp(request.effective_time), request)
        if self.fail is not None and self.fail(call):
            raise Unavailable("USAGE_NOT_COMPLETE", "metering is not complete yet")
        if self.refuse is not None and self.refuse(call):
            raise FailedPrecondition("PLAN_VERSION_GONE", "the pinned plan version cannot be read")
        self.calls.append(call)
        status = {"open": "ACTIVE", "close": "CLOSING", "issue": "ISSUED"}[op]
        invoice_id = f"inv_{call.subscription_id}_{call.sequence_number}"
        if op == "issue" and invoice_id in self.invoices:  # idempotent: the issued invoice as it is now
            return inv.Invoice.FromString(self.invoices[invoice_id].SerializeToString())
        invoice = inv.Invoice(
            id=invoice_id,
            status=status,
            sequence_number=call.sequence_number,
            subscription_id=call.subscription_id,
            customer_id=request.terms.customer_id,
            currency=request.terms.currency,
        )
        if op == "issue":
            owed = self.amounts.get((call.subscription_id, call.sequence_number), self.amount)
            invoice.grand_total = invoice.unpaid_amount = owed
            if owed in ("0", "0.00"):
                invoice.status = "PAID"
            self.invoices[invoice_id] = invoice
        return inv.Invoice.FromString(invoice.SerializeToString())

    async def get_invoice(self, merchant_id: str, invoice_id: str) -> inv.Invoice:
        assert merchant_id == MERCHANT
        self.reads.append(invoice_id)
        return inv.Invoice.FromString(self.invoices[invoice_id].SerializeToString())

    def pay(self, invoice_id: str) -> None:
        invoice = self.invoices[invoice_id]
        invoice.status, invoice.paid_amount, invoice.unpaid_amount = "PAID", invoice.grand_total, "0.00"

    async def open_invoice(self, merchant_id: str, request: inv.OpenInvoiceRequest) -> inv.Invoice:
        return await self._answer("open", merchant_id, request)

    async def close_invoice(self, merchant_id: str, request: inv.CloseInvoiceRequest) -> inv.Invoice:
        return await self._answer("close", merchant_id, request)

    async def issue_invoice(self, merchant_id: str, request: inv.IssueInvoiceRequest) -> inv.Invoice:
        return await self._answer("issue", merchant_id, request)

    def effects(self) -> list[tuple[str, int, str]]:
        return [(c.subscription_id, c.sequence_number, c.op) for c in self.calls]


@dataclass
class World:
    db: Database
    subs: FakeSubscriptions
    invoicing: FakeInvoicing
    clock: FakeClock
    # the payment service (test_engine_collection's fake); None: not configured
    payment: Any = None

    def timeline(self, **kwargs: Any) -> Timeline:
        kwargs.setdefault("grace_seconds", GRACE.total_seconds())
        kwargs.setdefault("payment", self.payment)
        return Timeline(db=self.db, invoicing=self.invoicing, subscriptions=self.subs, clock=self.clock, **kwargs)

    async def create(self, timeline: Timeline, sub: Sub, now: datetime) -> None:
        self.subs.subs[sub.id] = sub
        async with self.db.uow() as uow:
            await timeline.schedule_new(uow, sub, now)
        await timeline.run_subscription(sub.merchant_id, sub.id, now)

    async def pending(self) -> list[tuple[str, int, str]]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(due_work.c.subscription_id, due_work.c.sequence_number, due_work.c.kind)
                .where(due_work.c.done_at.is_(None))
                .order_by(due_work.c.due_at, due_work.c.kind_order)
            )
            return [(r[0], r[1], r[2]) for r in rows]


@pytest.fixture
async def world(infra: Infra) -> AsyncIterator[World]:
    engine = create_engine(infra.new_database_url("engine"), pool_size=8)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    db = Database(engine, metadata)
    yield World(db, FakeSubscriptions(), FakeInvoicing(), FakeClock(datetime(2026, 12, 1, tzinfo=UTC)))
    await db.dispose()


async def test_creation_runs_invoice_zero_and_opens_the_next_invoice(world: World) -> None:
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a"), T0)
    assert world.invoicing.effects() == [("sub_a", 0, "open"), ("sub_a", 1, "open"), ("sub_a", 0, "issue")]
    zero = world.invoicing.calls[0].request
    assert zero.composition.one_time_fees
    assert [(from_timestamp(w.start), from_timestamp(w.end)) for w in zero.composition.advance] == [
        (T0, datetime(2026, 2, 28, 10, tzinfo=UTC))
    ]
    assert zero.terms.test_clock_id == CLOCK and zero.terms.currency == "USD" and zero.terms.auto_approve
    assert world.subs.invoice_zero == [("sub_a", "inv_sub_a_0")]
    assert await world.pending() == [("sub_a", 1, "close")]


async def test_an_advance_runs_every_boundary_in_time_order_with_month_end_clamping(world: World) -> None:
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a"), T0)
    await world.create(
        timeline,
        Sub("sub_b", started_at=T0 + timedelta(days=3), billing_anchor=T0 + timedelta(days=3), billing_starts_at=T0 + timedelta(days=3)),
        T0 + timedelta(days=3),
    )
    world.invoicing.calls.clear()
    until = datetime(2026, 5, 1, tzinfo=UTC)
    await timeline.advance_clock(MERCHANT, CLOCK, until)
    a = [(c.op, c.sequence_number, c.at) for c in world.invoicing.calls if c.subscription_id == "sub_a"]
    feb28, mar31, apr30 = (datetime(2026, m, d, 10, tzinfo=UTC) for m, d in ((2, 28), (3, 31), (4, 30)))
    assert a == [
        ("close", 1, feb28),
        ("open", 2, feb28),
        ("issue", 1, feb28 + GRACE),
        ("close", 2, mar31),
        ("open", 3, mar31),
        ("issue", 2, mar31 + GRACE),
        ("close", 3, apr30),
        ("open", 4, apr30),
        ("issue", 3, apr30 + GRACE),
    ]
    # across subscriptions too, nothing ran before earlier work
    times = [c.at for c in world.invoicing.calls]
    assert times == sorted(times)
    close = next(c for c in world.invoicing.calls if c.op == "close")
    assert from_timestamp(close.request.grace_period_end) == feb28 + GRACE
    assert not close.request.HasField("composition")
    opened = next(c for c in world.invoicing.calls if c.op == "open" and c.sequence_number == 2 and c.subscription_id == "sub_a")
    # invoice 2: period 1 in arrears, period 2 in advance
    assert [(from_timestamp(w.start), from_timestamp(w.end)) for w in opened.request.composition.arrears] == [(feb28, mar31)]
    assert [(from_timestamp(w.start), from_timestamp(w.end)) for w in opened.request.composition.advance] == [(mar31, apr30)]
    # a second advance to the same instant finds nothing to do
    world.invoicing.calls.clear()
    await timeline.advance_clock(MERCHANT, CLOCK, until)
    assert world.invoicing.calls == []


async def test_two_concurrent_advances_of_one_clock_never_run_a_row_twice(world: World) -> None:
    timeline = world.timeline(batch_size=7)
    other = world.timeline(batch_size=11)
    for i in range(40):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    world.invoicing.calls.clear()
    world.invoicing.delay = 0.001
    until = datetime(2026, 7, 1, tzinfo=UTC)
    await asyncio.gather(timeline.advance_clock(MERCHANT, CLOCK, until), other.advance_clock(MERCHANT, CLOCK, until))
    counts = Counter(world.invoicing.effects())
    assert len(counts) == 40 * 5 * 3  # 5 boundaries, close + open + issue each
    assert set(counts.values()) == {1}


async def test_an_advance_killed_halfway_resumes_without_repeating_committed_work(world: World) -> None:
    timeline = world.timeline(batch_size=10, concurrency=4, finish_when_caller_leaves=False)
    for i in range(30):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    world.invoicing.calls.clear()
    world.invoicing.delay = 0.002
    until = datetime(2026, 4, 1, tzinfo=UTC)
    task = asyncio.create_task(timeline.advance_clock(MERCHANT, CLOCK, until))
    while len(world.invoicing.calls) < 45:
        await asyncio.sleep(0.001)
    task.cancel()  # the process dies mid-batch: its transaction never commits
    with pytest.raises(asyncio.CancelledError):
        await task
    before = Counter(world.invoicing.effects())
    world.invoicing.delay = 0
    await world.timeline().advance_clock(MERCHANT, CLOCK, until)
    after = Counter(world.invoicing.effects())
    steps = [(1, "close"), (2, "open"), (1, "issue"), (2, "close"), (3, "open"), (2, "issue")]  # Feb 28, Mar 31
    assert set(after) == {(f"sub_{i:02}", k, op) for i in range(30) for k, op in steps}
    repeated = [key for key, n in after.items() if n > 1]
    # only calls of the batch that never committed ran again (invoicing answers them as they are)
    assert 0 < len(repeated) <= 10
    assert all(before[key] == 1 for key in repeated)
    assert await world.pending() == [(f"sub_{i:02}", 3, "close") for i in range(30)]


async def test_an_advance_whose_caller_leaves_still_finishes(world: World) -> None:
    timeline = world.timeline(batch_size=5)
    for i in range(10):
        await world.create(timeline, Sub(f"sub_{i:02}"), T0)
    world.invoicing.calls.clear()
    world.invoicing.delay = 0.005
    until = datetime(2026, 3, 1, tzinfo=UTC)
    caller = asyncio.create_task(timeline.advance_clock(MERCHANT, CLOCK, until))
    while not world.invoicing.calls:
        await asyncio.sleep(0.001)
    caller.cancel()  # the gateway's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await caller
    await world.timeline().advance_clock(MERCHANT, CLOCK, until)  # takes its turn after the first
    assert Counter(world.invoicing.effects()) == Counter(
        {(f"sub_{i:02}", k, op): 1 for i in range(10) for k, op in ((1, "close"), (2, "open"), (1, "issue"))}
    )


async def test_a_termination_makes_the_open_invoice_final_and_drops_the_rest(world: World) -> None:
    timeline = world.timeline()
    sub = Sub("sub_a")
    await world.create(timeline, sub, T0)
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 10, tzinfo=UTC))
    world.invoicing.calls.clear()
    t = datetime(2026, 3, 15, 12, tzinfo=UTC)
    sub.status, sub.terminated_at = "terminated", t
    async with world.db.uow() as uow:
        await timeline.schedule_termination(uow, sub, t)
    await timeline.run_subscription(MERCHANT, sub.id, t)
    assert [(c.op, c.sequence_number) for c in world.invoicing.calls] == [("close", 2)]
    final = world.invoicing.calls[0].request
    mar31 = datetime(2026, 3, 31, 10, tzinfo=UTC)
    feb28 = datetime(2026, 2, 28, 10, tzinfo=UTC)
    assert final.composition.final
    assert [(from_timestamp(w.start), from_timestamp(w.end)) for w in final.composition.arrears] == [(feb28, t)]
    assert [(from_timestamp(w.start), from_timestamp(w.end), from_timestamp(w.period_start)) for w in final.composition.credits] == [
        (t, mar31, feb28)
    ]
    assert from_timestamp(final.grace_period_end) == t + GRACE
    assert await world.pending() == [("sub_a", 2, "issue")]
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 8, 1, tzinfo=UTC))
    assert [(c.op, c.sequence_number, c.at) for c in world.invoicing.calls[1:]] == [("issue", 2, t + GRACE)]
    assert await world.pending() == []


async def test_a_scheduled_end_terminates_and_lays_the_final_invoice(world: World) -> None:
    timeline = world.timeline()
    end = datetime(2026, 4, 10, tzinfo=UTC)
    await world.create(timeline, Sub("sub_a", ending_at=end), T0)
    world.invoicing.calls.clear()
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 9, 1, tzinfo=UTC))
    assert world.subs.terminated == [("sub_a", end)]
    ops = [(c.op, c.sequence_number, c.at) for c in world.invoicing.calls]
    mar31 = datetime(2026, 3, 31, 10, tzinfo=UTC)
    # invoice 3 was opened at its period's start; the end makes it the final one
    assert ops[-4:] == [("open", 3, mar31), ("issue", 2, mar31 + GRACE), ("close", 3, end), ("issue", 3, end + GRACE)]
    assert world.invoicing.calls[-2].request.composition.final
    assert ("open", 4) not in [(o, k) for o, k, _ in ops]
    assert await world.pending() == []


async def test_moving_the_scheduled_end(world: World) -> None:
    timeline = world.timeline()
    sub = Sub("sub_a", ending_at=datetime(2026, 4, 10, tzinfo=UTC))
    await world.create(timeline, sub, T0)
    async with world.db.uow() as uow:
        await timeline.schedule_end(uow, sub, None)
    assert ("sub_a", 0, "end") not in await world.pending()
    async with world.db.uow() as uow:
        await timeline.schedule_end(uow, sub, datetime(2026, 2, 10, tzinfo=UTC))
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert world.subs.terminated == [("sub_a", datetime(2026, 2, 10, tzinfo=UTC))]


async def test_a_failing_step_is_retried_then_the_advance_fails_and_the_next_one_resumes(world: World) -> None:
    timeline = world.timeline(max_attempts=3, retry_base_seconds=0.01)
    await world.create(timeline, Sub("sub_a"), T0)
    world.invoicing.calls.clear()
    failures = Counter[str]()

    def flaky(call: Call) -> bool:
        if call.op != "issue":
            return False
        failures["issue"] += 1
        return failures["issue"] <= 2  # fails twice, then works

    world.invoicing.fail = flaky
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert ("sub_a", 1, "issue") in world.invoicing.effects()
    world.invoicing.fail = lambda call: call.op == "issue"
    with pytest.raises(Unavailable):
        await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 4, 1, tzinfo=UTC))
    assert ("sub_a", 2, "issue") in await world.pending()
    async with world.db.engine.connect() as conn:
        attempts = (
            await conn.execute(sa.select(due_work.c.attempts).where(due_work.c.sequence_number == 2, due_work.c.kind == "issue"))
        ).scalar_one()
    assert attempts == 3
    world.invoicing.fail = None
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 4, 1, tzinfo=UTC))
    assert ("sub_a", 2, "issue") in world.invoicing.effects()


async def test_a_step_refused_for_good_fails_the_advance_at_once(world: World) -> None:
    timeline = world.timeline(max_attempts=50, retry_base_seconds=1.0)
    await world.create(timeline, Sub("sub_a"), T0)
    world.invoicing.refuse = lambda call: call.op == "close"
    with pytest.raises(FailedPrecondition):  # no retry: 50 attempts a second apart would not end
        await asyncio.wait_for(timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC)), 10)
    assert ("sub_a", 1, "close") in await world.pending()


async def test_the_real_time_scheduler_runs_due_rows_off_any_clock(world: World) -> None:
    start = world.clock.now()
    timeline = world.timeline()
    await world.create(
        timeline,
        Sub("sub_rt", started_at=start, billing_anchor=start, billing_starts_at=start, billing_cadence="P1D", test_clock_id=None),
        start,
    )
    await world.create(
        timeline, Sub("sub_clocked", started_at=start, billing_anchor=start, billing_starts_at=start, billing_cadence="P1D"), start
    )
    world.invoicing.calls.clear()
    scheduler = Scheduler(timeline, poll_seconds=0.05)
    task = asyncio.create_task(scheduler.run())
    try:
        await asyncio.sleep(0.2)
        assert world.invoicing.calls == []  # nothing due yet
        world.clock.advance(timedelta(days=1, hours=2))
        for _ in range(100):
            if len(world.invoicing.calls) >= 3:
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.stop()
        await asyncio.wait_for(task, 5)
    assert [(c.subscription_id, c.op, c.sequence_number) for c in world.invoicing.calls] == [
        ("sub_rt", "close", 1),
        ("sub_rt", "open", 2),
        ("sub_rt", "issue", 1),
    ]
