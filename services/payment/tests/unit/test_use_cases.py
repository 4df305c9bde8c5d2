"""The use cases on the in-memory unit of work and the fake processor: one charge per key,
no method no charge, the dunning answer, a timeout settled by the janitor's look-up, a
page declined then paid, a webhook applied once; what invoicing is told."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.core.clock import FakeClock
from libs.core.errors import FailedPrecondition, NotFound
from services.payment.domain import commands
from services.payment.domain.model import ChargeDecided, PaymentMethod, SessionChanged, SessionChangeKind
from services.payment.domain.ports import ChargeReport, InvoiceState, RecordedOutcome
from services.payment.domain.use_cases import Config, Payments
from services.payment.tests.fakes import DECLINE, INSUFFICIENT, OK, SLOW, VANISH, FakeProcessor, token
from services.payment.tests.unit.memory import Memory, MemoryUnitOfWork

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
MERCHANT = "org_unit"


class Invoicing:
    def __init__(self) -> None:
        self.states: dict[str, InvoiceState] = {}
        self.reports: list[ChargeReport] = []
        # what RecordChargeOutcome answers per invoice (unset: no answer read)
        self.answers: dict[str, RecordedOutcome] = {}

    async def invoice_state(self, invoice_id: str) -> InvoiceState:
        return self.states.get(invoice_id, InvoiceState("ISSUED", Decimal("49.00"), "USD"))

    async def record_charge_outcome(self, report: ChargeReport) -> RecordedOutcome | None:
        self.reports.append(report)
        return self.answers.get(report.invoice_id)


class Customers:
    async def ensure_customer(self, customer_id: str, *, field: str = "customerId") -> None:
        if not customer_id.startswith("cus_"):
            raise NotFound("customer", customer_id, field=field)


class World:
    def __init__(self) -> None:
        self.memory = Memory()
        self.processor = FakeProcessor()
        self.invoicing = Invoicing()
        self.clock = FakeClock(NOW)
        self.payments = Payments(
            lambda: MemoryUnitOfWork(self.memory),
            self.processor,
            self.invoicing,
            Customers(),
            self.clock,
            Config(public_url="http://gw.test", reconcile_after=timedelta(seconds=3), not_sent_after=timedelta(seconds=60)),
        )

    async def method(self, customer: str, behaviour: str = OK) -> None:
        saved = await self.processor.save_payment_method(merchant_id=MERCHANT, customer_ref=customer, token=token(behaviour))
        method = PaymentMethod.save(
            merchant_id=MERCHANT, customer_id=customer, processor="fake", processor_ref=saved.ref, brand="visa", last4="4242",
            exp_month=12, exp_year=2034, now=self.clock.now(),
        )  # fmt: skip
        self.clock.advance(timedelta(seconds=1))
        self.memory.methods[method.id] = method

    def charge(self, key: str, *, invoice: str = "inv_1", trigger: str = "manual", number: int = 0) -> commands.ChargeInvoice:
        return commands.ChargeInvoice(
            invoice_id=invoice, customer_id="cus_1", amount=Decimal("49.00"), currency="USD", attempt_key=key, trigger=trigger,
            attempt_number=number, first_attempt_at=NOW if trigger == "automatic" else None, effective_time=self.clock.now(),
        )  # fmt: skip

    def decided(self) -> list[ChargeDecided]:
        return [e for e in self.memory.events if isinstance(e, ChargeDecided)]


@contextlib.contextmanager
def _acting(merchant_id: str) -> Iterator[None]:
    yield


@pytest.fixture
def world() -> World:
    return World()


async def test_one_charge_per_key_and_per_invoice(world: World) -> None:
    await world.method("cus_1")
    first = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))
    again = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))
    other = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:2"))
    assert first.status == again.status == other.status == "succeeded"
    assert first.provider_payment_ref == again.provider_payment_ref == other.provider_payment_ref
    assert world.processor.charge_calls == ["inv_1:retry:1"]
    assert [(r.attempt_key, r.status, r.amount) for r in world.invoicing.reports] == [("inv_1:retry:1", "succeeded", "49.00")]
    assert len(world.decided()) == 1


async def test_no_saved_method_charges_nothing(world: World) -> None:
    answer = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:auto:0", trigger="automatic"))
    assert answer.status == "no_payment_method" and world.processor.charge_calls == [] and world.memory.attempts == {}


async def test_another_attempt_in_flight_is_a_concurrent_attempt(world: World) -> None:
    await world.method("cus_1", SLOW)
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))).status == "processing"
    with pytest.raises(FailedPrecondition) as refused:
        await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:2"))
    assert refused.value.reason == "CONCURRENT_ATTEMPT"
    assert world.processor.charge_calls == ["inv_1:retry:1"]


async def test_automatic_failures_answer_the_next_retry(world: World) -> None:
    await world.method("cus_1", INSUFFICIENT)
    answers = [
        await world.payments.charge_invoice(MERCHANT, world.charge(f"inv_1:auto:{n}", trigger="automatic", number=n)) for n in range(4)
    ]
    assert [a.next_attempt_at for a in answers] == [NOW + timedelta(days=d) for d in (3, 5, 7)] + [None]
    assert [a.after_final_failure for a in answers] == [None, None, None, "keep_active"]
    assert [(r.status, r.failure_code) for r in world.invoicing.reports] == [("failed", "insufficient_funds")] * 4


async def test_a_timeout_is_settled_by_the_janitors_look_up(world: World) -> None:
    await world.method("cus_1", SLOW)
    answer = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:auto:0", trigger="automatic"))
    assert answer.status == "processing" and world.invoicing.reports == []
    world.clock.advance(timedelta(seconds=5))
    report = await world.payments.janitor_pass(_acting)
    assert report.reconciled == 0  # still processing at the processor
    world.processor.finish(MERCHANT, "inv_1:auto:0")
    world.clock.advance(timedelta(seconds=5))
    report = await world.payments.janitor_pass(_acting)
    assert report.reconciled == 1
    assert [(r.attempt_key, r.status) for r in world.invoicing.reports] == [("inv_1:auto:0", "succeeded")]
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:auto:0", trigger="automatic"))).status == "succeeded"
    assert world.processor.charge_calls == ["inv_1:auto:0"]


async def test_a_page_declined_then_paid_tells_invoicing_only_the_payment(world: World) -> None:
    [session] = await world.payments.open_sessions(
        MERCHANT,
        [commands.OpenSession(entity_type="invoice", entity_id="inv_1", customer_id="cus_1", amount=Decimal("49.00"), currency="USD")],
    )
    assert session.url == f"http://gw.test/checkout/{MERCHANT}/{session.id}"
    declined = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(DECLINE), "render-1"))
    assert (declined.session.status, declined.session.failure_code) == ("pending", "card_declined")
    world.clock.advance(timedelta(seconds=10))
    await world.payments.janitor_pass(_acting)
    assert world.invoicing.reports == []
    paid = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(OK), "render-2"))
    assert paid.session.status == "completed"
    assert [(r.attempt_key, r.status, r.payment_session_id) for r in world.invoicing.reports] == [
        (f"{session.id}:2", "succeeded", session.id)
    ]
    kinds = [e.kind for e in world.memory.events if isinstance(e, SessionChanged)]
    assert kinds == [SessionChangeKind.OPENED, SessionChangeKind.COMPLETED]


async def test_a_webhook_decides_a_processing_page_once(world: World) -> None:
    [session] = await world.payments.open_sessions(
        MERCHANT,
        [commands.OpenSession(entity_type="invoice", entity_id="inv_1", customer_id="cus_1", amount=Decimal("49.00"), currency="USD")],
    )
    await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(SLOW), "render-1"))
    done = world.processor.finish(MERCHANT, f"{session.id}:1")
    headers, body = world.processor.webhook(done, event_type="charge.succeeded", sequence=2)
    assert await world.payments.handle_webhook(MERCHANT, "fake", headers, body) == "applied"
    assert await world.payments.handle_webhook(MERCHANT, "fake", headers, body) == "duplicate"
    late = world.processor.webhook(done, event_type="charge.processing", sequence=1)
    assert await world.payments.handle_webhook(MERCHANT, "fake", *late) == "stale"
    assert len(world.decided()) == 1 and len(world.invoicing.reports) == 1


async def test_an_invoice_that_no_longer_takes_payment_closes_its_page(world: World) -> None:
    [session] = await world.payments.open_sessions(
        MERCHANT,
        [commands.OpenSession(entity_type="invoice", entity_id="inv_1", customer_id="cus_1", amount=Decimal("49.00"), currency="USD")],
    )
    world.invoicing.states["inv_1"] = InvoiceState("PAID", Decimal("0"), "USD")
    closed = await world.payments.complete_checkout(MERCHANT, commands.CompleteCheckout(session.id, token(), "render-1"))
    assert closed.session.status == "cancelled" and world.processor.charge_calls == []


async def test_lapsed_sessions_and_payments_expire_in_the_janitors_pass(world: World) -> None:
    made = await world.payments.create_payment(MERCHANT, commands.CreatePayment(amount=Decimal("10.00"), currency="USD"))
    assert made.created and made.session.expires_at == NOW + timedelta(days=30)
    world.clock.advance(timedelta(days=30))
    report = await world.payments.janitor_pass(_acting)
    assert report.expired >= 1
    assert world.memory.sessions[made.session.id].status == "expired"
    assert world.memory.payments[made.payment.id].status == "expired"


class Killed(BaseException):
    """The process dies (ACCRUE_PAYMENT_FAULT=kill_after_charge_sent does it with SIGKILL)."""


async def test_a_death_between_the_charge_and_its_record_is_recorded_once_after(world: World) -> None:
    def die() -> None:
        raise Killed

    dying = Payments(
        lambda: MemoryUnitOfWork(world.memory),
        world.processor,
        world.invoicing,
        Customers(),
        world.clock,
        Config(public_url="http://gw.test", after_charge_sent=die),
    )
    await world.method("cus_1")
    with pytest.raises(Killed):
        await dying.charge_invoice(MERCHANT, world.charge("inv_1:auto:0", trigger="automatic"))
    (attempt,) = world.memory.attempts.values()
    assert attempt.status == "sending" and len(world.processor.succeeded(MERCHANT)) == 1
    # the restarted process: its janitor finds the charge by its key and records it once
    world.clock.advance(timedelta(seconds=5))
    assert (await world.payments.janitor_pass(_acting)).reconciled == 1
    assert (await world.payments.janitor_pass(_acting)).reconciled == 0
    assert [(r.attempt_key, r.status) for r in world.invoicing.reports] == [("inv_1:auto:0", "succeeded")]
    again = await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:auto:0", trigger="automatic"))
    assert again.status == "succeeded" and world.processor.charge_calls == ["inv_1:auto:0"]
    assert len(world.decided()) == 1


async def test_a_timeout_the_processor_never_received_fails_not_sent_and_frees_the_invoice(world: World) -> None:
    await world.method("cus_1", VANISH)
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:1"))).status == "processing"
    world.clock.advance(timedelta(seconds=30))
    await world.payments.janitor_pass(_acting)
    assert [a.status for a in world.memory.attempts.values()] == ["processing"]  # not yet: it may still arrive
    world.clock.advance(timedelta(seconds=31))
    assert (await world.payments.janitor_pass(_acting)).reconciled == 1
    (attempt,) = world.memory.attempts.values()
    assert (attempt.status, attempt.failure_code) == ("failed", "not_sent")
    assert [(r.attempt_key, r.status, r.failure_code) for r in world.invoicing.reports] == [("inv_1:retry:1", "failed", "not_sent")]
    await world.method("cus_1")  # a newer card
    assert (await world.payments.charge_invoice(MERCHANT, world.charge("inv_1:retry:2"))).status == "succeeded"
