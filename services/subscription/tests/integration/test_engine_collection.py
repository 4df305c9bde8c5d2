"""Automatic collection on the billing timeline against real PostgreSQL: an autoCharge
subscription's issued invoices are charged once by a ``collect`` row laid when the issue
committed, failures are retried on the payment service's schedule as a test clock passes
the days, the terminate policy ends the subscription after the last one, an unknown
outcome runs the same attempt (same key) an hour later, and a crash mid-charge resumes
with the same attempt key. Invoicing and payment are recording fakes (test_engine's
invoicing; a payment that answers like ChargeInvoice: idempotent by attempt key, the
merchant's schedule in its failures)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.core.errors import FailedPrecondition, Unavailable
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.subscription.engine_store import due_work
from services.subscription.tests.integration import test_engine as base
from services.subscription.tests.integration.test_engine import CLOCK, GRACE, MERCHANT, T0, FakeInvoicing, Sub, World

pytestmark = pytest.mark.integration

world = base.world  # the fixture: a fresh database with the subscription tables, the fakes

DAY = timedelta(days=1)
FEB28 = datetime(2026, 2, 28, 10, tzinfo=UTC)


@dataclass
class FakePayment:
    """ChargeInvoice: ``decide`` says how each new attempt ends (default succeeded); an
    attempt key answers its recorded outcome (a processing one is decided again). The
    outcome is reported to the fake invoicing once per key (a success pays the invoice, a
    failure makes it PAYMENT_FAILED); a failure carries the next attempt's instant from
    ``schedule`` (days from the first attempt) or, exhausted, ``policy``. ``hang`` waits
    and ``crash`` raises after the processor decided and before the outcome is reported
    (a process killed there, an answer lost on the way back)."""

    invoicing: FakeInvoicing
    decide: Callable[[pay.ChargeInvoiceRequest], str] = lambda request: "succeeded"
    schedule: tuple[int, ...] = (3, 5, 7)
    policy: str = "keep_active"
    crash: Callable[[pay.ChargeInvoiceRequest], bool] | None = None
    hang: float = 0.0
    refuse_concurrent: int = 0
    calls: list[pay.ChargeInvoiceRequest] = field(default_factory=list)
    outcomes: dict[str, pay.ChargeOutcome] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    # how many invoicing calls had been made when each charge came (time order across the two)
    invoicing_calls_before: list[int] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [c.attempt_key for c in self.calls]

    @property
    def charged(self) -> int:
        """Attempts decided (what a processor would have seen: one charge per key)."""
        return len(self.outcomes)

    async def charge_invoice(self, merchant_id: str, request: pay.ChargeInvoiceRequest) -> pay.ChargeOutcome:
        assert merchant_id == MERCHANT
        self.calls.append(request)
        self.invoicing_calls_before.append(len(self.invoicing.calls))
        if self.refuse_concurrent:
            self.refuse_concurrent -= 1
            raise FailedPrecondition("CONCURRENT_ATTEMPT", f"another attempt of invoice {request.invoice_id} is in flight")
        outcome = self.outcomes.get(request.attempt_key)
        if outcome is None or outcome.status == "processing":
            outcome = self._decide(request)
            self.outcomes[request.attempt_key] = outcome
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.crash is not None and self.crash(request):
            raise Unavailable("PAYMENT_UNAVAILABLE", "the payment service went away mid-answer")
        if request.attempt_key not in self.reported and outcome.status in ("succeeded", "failed"):
            self.reported.add(request.attempt_key)
            if outcome.status == "succeeded":
                self.invoicing.pay(request.invoice_id)
            else:
                self.invoicing.invoices[request.invoice_id].status = "PAYMENT_FAILED"
        return outcome

    def _decide(self, request: pay.ChargeInvoiceRequest) -> pay.ChargeOutcome:
        status = self.decide(request)
        outcome = pay.ChargeOutcome(status=status, attempt_key=request.attempt_key)
        if status == "succeeded":
            outcome.provider_payment_ref = f"ch_{request.attempt_key}"
        elif status == "failed":
            outcome.failure_code = "card_declined"
            n = request.attempt_number
            if n < len(self.schedule):
                outcome.next_attempt_at.CopyFrom(to_timestamp(from_timestamp(request.first_attempt_at) + self.schedule[n] * DAY))
            else:
                outcome.after_final_failure = self.policy
        return outcome


@pytest.fixture
def payment(world: World) -> FakePayment:
    fake = world.payment = FakePayment(world.invoicing)
    return fake


async def collect_rows(world: World) -> list[tuple[str, int, int, datetime, bool]]:
    async with world.db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(due_work.c.subscription_id, due_work.c.sequence_number, due_work.c.attempt, due_work.c.due_at, due_work.c.done_at)
            .where(due_work.c.kind == "collect")
            .order_by(due_work.c.due_at, due_work.c.attempt)
        )
        return [(r[0], r[1], r[2], r[3], r[4] is not None) for r in rows]


async def test_an_auto_charge_subscription_is_charged_once_when_each_invoice_is_issued(world: World, payment: FakePayment) -> None:
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    # Invoice 0 is charged in the run after creation: the subscription is active when it answers
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    zero = payment.calls[0]
    assert (zero.invoice_id, zero.customer_id, zero.subscription_id, zero.amount, zero.currency, zero.trigger) == (
        "inv_sub_a_0", "cus_sub_a", "sub_a", "10.00", "USD", "automatic",
    )  # fmt: skip
    assert (zero.attempt_number, from_timestamp(zero.first_attempt_at), from_timestamp(zero.effective_time)) == (0, T0, T0)
    assert world.subs.invoice_zero_paid == [("sub_a", "inv_sub_a_0")]
    assert world.subs.subs["sub_a"].status == "active"

    world.invoicing.amounts[("sub_a", 1)] = "12.34"
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert payment.keys == ["inv_sub_a_0:auto:0", "inv_sub_a_1:auto:0"]
    renewal = payment.calls[1]
    issued = FEB28 + GRACE
    assert (renewal.amount, from_timestamp(renewal.effective_time), from_timestamp(renewal.first_attempt_at)) == ("12.34", issued, issued)
    # after invoice 1's issue, in time order with the rest of the timeline
    ran_before = [(c.op, c.sequence_number) for c in world.invoicing.calls[: payment.invoicing_calls_before[1]]]
    assert ran_before[-1] == ("issue", 1)
    assert all(c.at <= issued for c in world.invoicing.calls[: payment.invoicing_calls_before[1]])
    assert await collect_rows(world) == [("sub_a", 0, 0, T0, True), ("sub_a", 1, 0, issued, True)]
    assert world.invoicing.invoices["inv_sub_a_1"].status == "PAID"

    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert len(payment.calls) == 2


async def test_nothing_is_charged_without_auto_charge_or_with_nothing_owed(world: World, payment: FakePayment) -> None:
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_off"), T0)
    world.invoicing.amounts[("sub_zero", 0)] = "0.00"  # nothing due in advance: PAID at issue
    world.invoicing.amounts[("sub_zero", 1)] = "0.00"
    await world.create(timeline, Sub("sub_zero", auto_charge=True), T0)
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert payment.calls == []
    assert await collect_rows(world) == []


async def test_a_collect_is_laid_by_the_committed_issue_never_run_in_its_batch(world: World, payment: FakePayment) -> None:
    timeline = world.timeline()
    failures: list[str] = []
    record = world.subs.record_invoice_zero

    async def fails_once(session: object, subscription: object, invoice: object) -> None:
        if not failures:
            failures.append("issue 0")
            raise Unavailable("SUBSCRIPTION_STORE", "the batch of the issue never commits")
        await record(session, subscription, invoice)  # type: ignore[arg-type]

    world.subs.record_invoice_zero = fails_once  # type: ignore[method-assign]
    sub = Sub("sub_a", auto_charge=True)
    world.subs.subs[sub.id] = sub
    async with world.db.uow() as uow:
        await timeline.schedule_new(uow, sub, T0)
    with pytest.raises(Unavailable):
        await timeline.run_subscription(MERCHANT, sub.id, T0)
    # invoicing issued Invoice 0, but its batch rolled back: nothing was charged, no collect laid
    assert payment.calls == [] and await collect_rows(world) == []
    await timeline.run_subscription(MERCHANT, sub.id, T0)
    assert [op for _, k, op in world.invoicing.effects() if k == 0] == ["open", "issue", "issue"]
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    assert await collect_rows(world) == [("sub_a", 0, 0, T0, True)]


async def test_a_failed_charge_is_retried_at_3_5_and_7_days_as_the_clock_passes_them(world: World, payment: FakePayment) -> None:
    payment.decide = lambda request: "failed"
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    assert world.invoicing.invoices["inv_sub_a_0"].status == "PAYMENT_FAILED"
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 3 * DAY - timedelta(seconds=1))
    assert len(payment.calls) == 1
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 3 * DAY)
    assert len(payment.calls) == 2
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 20 * DAY)
    assert payment.keys == [f"inv_sub_a_0:auto:{n}" for n in range(4)]
    assert [from_timestamp(c.effective_time) for c in payment.calls] == [T0, T0 + 3 * DAY, T0 + 5 * DAY, T0 + 7 * DAY]
    assert {from_timestamp(c.first_attempt_at) for c in payment.calls} == {T0}
    assert [c.attempt_number for c in payment.calls] == [0, 1, 2, 3]
    assert {c.amount for c in payment.calls} == {"10.00"}
    # keep_active: nothing after the last one, the subscription lives on
    assert world.subs.terminated == []
    assert [(n, at, done) for _, _, n, at, done in await collect_rows(world)] == [
        (0, T0, True), (1, T0 + 3 * DAY, True), (2, T0 + 5 * DAY, True), (3, T0 + 7 * DAY, True),
    ]  # fmt: skip
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 2, 27, tzinfo=UTC))
    assert len(payment.calls) == 4


async def test_the_terminate_policy_ends_the_subscription_after_the_last_retry(world: World, payment: FakePayment) -> None:
    payment.decide = lambda request: "failed" if request.invoice_id == "inv_sub_a_0" else "succeeded"
    payment.policy = "terminate"
    world.invoicing.amounts[("sub_a", 1)] = "0.00"  # the final invoice credits the unused period
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 6 * DAY)
    assert world.subs.terminated == []
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 20 * DAY)
    end = T0 + 7 * DAY
    assert world.subs.terminated == [("sub_a", end)]
    assert world.subs.reasons == ["payment_failed"]
    # through the termination path: invoice 1 becomes the final one, closed at the end
    final = [(c.op, c.sequence_number, c.at) for c in world.invoicing.calls if c.op == "close" and c.request.HasField("composition")]
    assert final == [("close", 1, end)]
    assert ("issue", 1, end + GRACE) in [(c.op, c.sequence_number, c.at) for c in world.invoicing.calls]
    assert len(payment.calls) == 4
    assert await world.pending() == []


async def test_an_unknown_outcome_runs_the_same_attempt_an_hour_later(world: World, payment: FakePayment) -> None:
    answers = iter(["processing", "processing", "succeeded"])
    payment.decide = lambda request: next(answers)
    timeline = world.timeline(postponed_pause_seconds=0)
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    assert world.subs.invoice_zero_paid == []
    assert await collect_rows(world) == [("sub_a", 0, 0, T0 + timedelta(hours=1), False)]
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + timedelta(minutes=59))
    assert len(payment.calls) == 1
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + timedelta(hours=5))
    # the same attempt (same key, same number, same first instant) each hour until decided
    assert payment.keys == ["inv_sub_a_0:auto:0"] * 3
    assert [from_timestamp(c.effective_time) for c in payment.calls] == [T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    assert {(c.attempt_number, from_timestamp(c.first_attempt_at)) for c in payment.calls} == {(0, T0)}
    assert await collect_rows(world) == [("sub_a", 0, 0, T0 + timedelta(hours=2), True)]
    assert world.subs.invoice_zero_paid == [("sub_a", "inv_sub_a_0")]


async def test_another_attempt_in_flight_postpones_the_charge(world: World, payment: FakePayment) -> None:
    payment.refuse_concurrent = 1  # the customer is paying on the page at that moment
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + timedelta(hours=2))
    assert payment.keys == ["inv_sub_a_0:auto:0"] * 2
    assert payment.charged == 1
    assert await collect_rows(world) == [("sub_a", 0, 0, T0 + timedelta(hours=1), True)]


async def test_a_lost_answer_is_asked_again_with_the_same_key(world: World, payment: FakePayment) -> None:
    payment.crash = lambda request: len(payment.calls) == 1  # the first answer never arrives
    timeline = world.timeline(retry_base_seconds=0.01)
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    assert payment.keys == ["inv_sub_a_0:auto:0"] * 2
    assert payment.charged == 1
    assert world.subs.invoice_zero_paid == [("sub_a", "inv_sub_a_0")]


async def test_an_advance_killed_mid_charge_resumes_without_a_second_attempt_key(world: World, payment: FakePayment) -> None:
    world.invoicing.amounts[("sub_a", 0)] = "0.00"
    payment.decide = lambda request: "failed"
    timeline = world.timeline(finish_when_caller_leaves=False)
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    await timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 1, tzinfo=UTC))
    assert payment.keys == ["inv_sub_a_1:auto:0"]
    payment.hang = 30.0  # the retry at +3 days is sent, then the process dies before recording it
    task = asyncio.create_task(timeline.advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 6, tzinfo=UTC)))
    while len(payment.calls) < 2:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    payment.hang = 0.0
    await world.timeline().advance_clock(MERCHANT, CLOCK, datetime(2026, 3, 6, tzinfo=UTC))
    first = FEB28 + GRACE
    assert payment.keys == ["inv_sub_a_1:auto:0", "inv_sub_a_1:auto:1", "inv_sub_a_1:auto:1", "inv_sub_a_1:auto:2"]
    assert [from_timestamp(c.effective_time) for c in payment.calls] == [first, first + 3 * DAY, first + 3 * DAY, first + 5 * DAY]
    assert payment.charged == 3  # one decision per key: the repeat was answered, not charged
    assert [(n, done) for _, k, n, _, done in await collect_rows(world) if k == 1] == [(0, True), (1, True), (2, True), (3, False)]


async def test_an_invoice_paid_meanwhile_is_not_charged_again(world: World, payment: FakePayment) -> None:
    payment.decide = lambda request: "failed"
    timeline = world.timeline()
    await world.create(timeline, Sub("sub_a", auto_charge=True), T0)
    world.invoicing.pay("inv_sub_a_0")  # paid out of band before the first retry
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 10 * DAY)
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    assert world.invoicing.reads.count("inv_sub_a_0") == 2  # read before each attempt
    assert [(n, done) for _, _, n, _, done in await collect_rows(world)] == [(0, True), (1, True)]


async def test_turning_auto_charge_off_stops_the_retries(world: World, payment: FakePayment) -> None:
    payment.decide = lambda request: "failed"
    timeline = world.timeline()
    sub = Sub("sub_a", auto_charge=True)
    await world.create(timeline, sub, T0)
    sub.auto_charge = False
    await timeline.advance_clock(MERCHANT, CLOCK, T0 + 10 * DAY)
    assert payment.keys == ["inv_sub_a_0:auto:0"]
    assert [(n, done) for _, _, n, _, done in await collect_rows(world)] == [(0, True), (1, True)]
