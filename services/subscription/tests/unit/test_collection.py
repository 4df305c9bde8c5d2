"""Automatic collection, one collect row at a time, without a database: what the engine
asks of invoicing and payment for a collect (the invoice read first, ChargeInvoice with
the attempt key, amount, first attempt and effective time), what each outcome leads to
with a fake payment client, and what the subscription hands invoicing for checkout
(BillingTerms) and shows of Invoice 0's session (the ``payment`` union)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.payment.v1 import payment_service_pb2 as pay
from accrue.subscription.v1 import subscription_service_pb2 as svc

from libs.core.clock import FakeClock
from libs.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.subscription import mapping, views
from services.subscription.clients import InvoicingCheckouts
from services.subscription.domain import use_cases
from services.subscription.domain.model import Subscription
from services.subscription.domain.ports import Checkout
from services.subscription.domain.timeline import COLLECT_RECHECK, AfterCharge, Due, Kind
from services.subscription.engine import Timeline, _Outcome, billing_terms
from services.subscription.engine_store import DueRow
from services.subscription.tests.unit.world import MERCHANT, NOW, World

FIRST = datetime(2026, 2, 28, 11, tzinfo=UTC)


@dataclass
class Invoices:
    """GetInvoice of the one invoice."""

    invoice: inv.Invoice
    reads: list[str] = field(default_factory=list)

    async def get_invoice(self, merchant_id: str, invoice_id: str) -> inv.Invoice:
        assert merchant_id == MERCHANT and invoice_id == self.invoice.id
        self.reads.append(invoice_id)
        return self.invoice


@dataclass
class Payments:
    """ChargeInvoice answering ``answer`` (or raising it)."""

    answer: pay.ChargeOutcome | Exception
    requests: list[pay.ChargeInvoiceRequest] = field(default_factory=list)

    async def charge_invoice(self, merchant_id: str, request: pay.ChargeInvoiceRequest) -> pay.ChargeOutcome:
        assert merchant_id == MERCHANT
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _subscription(**extra: Any) -> Subscription:
    w = World()
    customer = await w.customer()
    command = w.subscribe(customer.id, **{"auto_charge": True, **extra})
    return await use_cases.create_subscription(w.uow, MERCHANT, NOW, command, catalog=w.catalog, timeline=None)


def _row(sub: Subscription, attempt: int = 1, at: datetime = FIRST + timedelta(days=3), clock: str | None = "clk_1") -> DueRow:
    return DueRow(
        subscription_id=sub.id,
        sequence_number=2,
        kind=Kind.COLLECT,
        merchant_id=MERCHANT,
        customer_id=sub.customer_id,
        test_clock_id=clock,
        due_at=at,
        final=False,
        attempts=0,
        attempt=attempt,
        invoice_id="inv_2",
        first_attempt_at=FIRST,
    )


def _invoice(status: str = "PAYMENT_FAILED", unpaid: str = "49.00") -> inv.Invoice:
    return inv.Invoice(id="inv_2", status=status, unpaid_amount=unpaid, grand_total="49.00", currency="USD", customer_id="cus_x")


async def _collect(
    sub: Subscription, invoices: Invoices, payments: Payments, row: DueRow | None = None, clock: FakeClock | None = None
) -> _Outcome:
    # a collect's calls need no database: the batch around them is test_engine_collection's
    timeline = Timeline(db=cast(Any, None), invoicing=cast(Any, invoices), payment=payments, unit_of_work=cast(Any, object), clock=clock)
    outcome = _Outcome(row or _row(sub), sub)
    await timeline._collect(outcome)
    return outcome


async def test_a_collect_reads_the_invoice_then_charges_what_is_unpaid_with_its_attempt_key() -> None:
    sub = await _subscription()
    failed = pay.ChargeOutcome(status="failed", attempt_key="inv_2:auto:1", failure_code="card_declined")
    failed.next_attempt_at.CopyFrom(to_timestamp(FIRST + timedelta(days=5)))
    invoices, payments = Invoices(_invoice(unpaid="12.50")), Payments(failed)
    outcome = await _collect(sub, invoices, payments)
    (request,) = payments.requests
    assert (request.invoice_id, request.customer_id, request.subscription_id, request.amount, request.currency) == (
        "inv_2", "cus_x", sub.id, "12.50", "USD",
    )  # fmt: skip
    assert (request.attempt_key, request.attempt_number, request.trigger) == ("inv_2:auto:1", 1, "automatic")
    assert from_timestamp(request.first_attempt_at) == FIRST
    assert from_timestamp(request.effective_time) == FIRST + timedelta(days=3)
    assert invoices.reads == ["inv_2"] and outcome.error is None and outcome.charge == failed
    assert outcome.after == AfterCharge(
        follow_ups=(Due(Kind.COLLECT, 2, FIRST + timedelta(days=5), attempt=2, invoice_id="inv_2", first_attempt_at=FIRST),)
    )


@pytest.mark.parametrize(("status", "unpaid"), [("PAID", "0.00"), ("CANCELLED", "49.00"), ("ISSUED", "0.00")])
async def test_an_invoice_no_longer_owed_is_not_charged(status: str, unpaid: str) -> None:
    sub = await _subscription()
    payments = Payments(pay.ChargeOutcome(status="succeeded"))
    outcome = await _collect(sub, Invoices(_invoice(status, unpaid)), payments)
    assert payments.requests == [] and outcome.after is None and outcome.error is None


async def test_a_subscription_that_stopped_charging_automatically_is_not_charged() -> None:
    sub = await _subscription()
    sub.auto_charge = False
    invoices, payments = Invoices(_invoice()), Payments(pay.ChargeOutcome(status="succeeded"))
    outcome = await _collect(sub, invoices, payments)
    assert invoices.reads == [] and payments.requests == [] and outcome.after is None


async def test_processing_and_a_concurrent_attempt_run_the_same_attempt_again_an_hour_later() -> None:
    sub = await _subscription()
    row = _row(sub)
    processing = await _collect(sub, Invoices(_invoice()), Payments(pay.ChargeOutcome(status="processing")), row)
    assert processing.after == AfterCharge(again_at=row.due_at + COLLECT_RECHECK)
    busy = FailedPrecondition("CONCURRENT_ATTEMPT", "another attempt of inv_2 is in flight")
    concurrent = await _collect(sub, Invoices(_invoice()), Payments(busy), row)
    assert concurrent.after == AfterCharge(again_at=row.due_at + COLLECT_RECHECK) and concurrent.error is None
    # in real time a row may run after its instant: asked again an hour after it ran
    late = row.due_at + timedelta(hours=3)
    real_time = _row(sub, clock=None)
    ran_late = await _collect(sub, Invoices(_invoice()), Payments(pay.ChargeOutcome(status="processing")), real_time, FakeClock(late))
    assert ran_late.after == AfterCharge(again_at=late + COLLECT_RECHECK)


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("PAYMENT_UNAVAILABLE", "the payment service is restarting"),
        FailedPrecondition("INVOICE_NOT_CHARGEABLE", "no"),
        InvalidArgument("amount", "amount must be positive"),
    ],
)
async def test_a_failing_charge_leaves_the_row_to_the_engines_retries(error: Exception) -> None:
    sub = await _subscription()
    outcome = await _collect(sub, Invoices(_invoice()), Payments(error))
    assert outcome.error is error and outcome.after is None


async def test_an_outcome_status_the_engine_does_not_know_is_an_error_not_a_guess() -> None:
    sub = await _subscription()
    outcome = await _collect(sub, Invoices(_invoice()), Payments(pay.ChargeOutcome(status="refunded")))
    assert isinstance(outcome.error, Unavailable) and outcome.after is None


async def test_billing_terms_carry_auto_charge_and_invoice_zeros_checkout_settings() -> None:
    sub = await _subscription(
        redirect_urls={"on_success": "https://shop.example/ok", "on_failure": "https://shop.example/no"}, session_expiry_minutes=30.0
    )
    terms = billing_terms(sub)
    assert terms.auto_charge
    assert (terms.success_redirect_url, terms.failure_redirect_url, terms.session_expiry_minutes) == (
        "https://shop.example/ok", "https://shop.example/no", 30,
    )  # fmt: skip
    plain = billing_terms(await _subscription(auto_charge=False))
    assert not plain.auto_charge
    assert not plain.HasField("success_redirect_url") and not plain.HasField("failure_redirect_url")
    assert plain.session_expiry_minutes == 240  # the default, from creation


async def test_invoice_zeros_checkout_is_what_invoicing_answered() -> None:
    sub = await _subscription()
    sub.record_invoice_zero(
        "inv_0",
        paid=False,
        amount="49.00",
        now=NOW,
        effective_now=NOW,
        session_id="ps_abc",
        payment_url="https://pay.example/checkout/org_m/ps_abc",
    )
    shown = mapping.payment(sub)
    assert shown is not None
    assert (shown.status, shown.invoice_id, shown.payment_session_id, shown.checkout_url) == (
        "pending", "inv_0", "ps_abc", "https://pay.example/checkout/org_m/ps_abc",
    )  # fmt: skip
    # no session (invoicing could not open one): no link rather than a made-up one
    sub.record_invoice_zero("inv_0", paid=False, amount="49.00", now=NOW, effective_now=NOW)
    bare = mapping.payment(sub)
    assert bare is not None and not bare.HasField("checkout_url") and not bare.HasField("payment_session_id")
    sub.invoice_paid("inv_0", 0, "49.00", NOW, NOW)
    paid = mapping.payment(sub)
    assert paid is not None and paid.status == "paid" and not paid.HasField("checkout_url")
    assert sub.status == "active"


@dataclass
class Checkouts:
    """Invoice 0's current checkout per invoice id (absent: None, as invoicing down)."""

    current: dict[str, Checkout] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def invoice_zero_checkout(self, invoice_id: str) -> Checkout | None:
        self.asked.append(invoice_id)
        return self.current.get(invoice_id)


def _shown(status: str, payment: str, invoice_id: str = "inv_0") -> svc.Subscription:
    return svc.Subscription(
        id="sub_" + invoice_id,
        status=status,
        payment=svc.SubscriptionPayment(status=payment, invoice_id=invoice_id, checkout_url="https://old", payment_session_id="ps_old"),
    )


async def test_a_pending_subscription_shows_invoice_zeros_current_checkout_else_the_recorded_one() -> None:
    checkouts = Checkouts({"inv_0": Checkout("ps_new", "https://new")})
    pending, unknown, active = _shown("pending_payment", "pending"), _shown("pending_payment", "pending", "inv_9"), _shown("active", "paid")
    await views.with_current_checkouts([pending, unknown, active], checkouts)
    assert (pending.payment.payment_session_id, pending.payment.checkout_url) == ("ps_new", "https://new")
    # invoicing not answering (or no open session): the recorded checkout stays
    assert (unknown.payment.payment_session_id, unknown.payment.checkout_url) == ("ps_old", "https://old")
    assert checkouts.asked == ["inv_0", "inv_9"]  # a paid one is not asked
    await views.with_current_checkouts([pending], None)  # no invoicing configured: nothing asked


async def test_invoicing_down_reads_as_no_current_checkout() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    assert await InvoicingCheckouts(address, timeout=1.0).invoice_zero_checkout("inv_0") is None
    assert await InvoicingCheckouts(None).invoice_zero_checkout("inv_0") is None
