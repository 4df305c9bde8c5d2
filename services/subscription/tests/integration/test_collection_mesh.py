"""Automatic collection through the real services in-process (catalog, invoicing, the
subscription service and its engine; test_invoice_zero's stand-in payment service):

* an autoCharge subscription whose customer can be charged is charged for Invoice 0 in the
  run after creation and answers ``active``; the paying chain (invoicing records the
  payment and tells the subscription, RecordInvoicePaid) commits while the charging
  batch's transaction is still open, so the batch holds no lock that chain needs;
* a card that keeps failing is retried at 3, 5 and 7 days from the first attempt as a
  test clock passes them, and the terminate policy ends the subscription after the last.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.subscription.v1 import subscription_service_pb2 as svc

from libs.infra.proto_time import from_timestamp, to_timestamp
from services.subscription.tests.integration import test_invoice_zero as base
from services.subscription.tests.integration.test_invoice_zero import Mesh

pytestmark = pytest.mark.integration

mesh = base.mesh  # the fixture: catalog, invoicing, subscription and the stand-in payment service


async def test_an_auto_charge_subscription_is_charged_at_creation_and_answers_active(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="49.00")
    started = time.monotonic()
    sub = await mesh.subscribe(plan_id, auto_charge=True)
    assert time.monotonic() - started < 10  # no lock waited for a charge's deadline
    assert (sub.status, sub.payment.status, sub.auto_charge) == ("active", "paid", True)
    (charge,) = mesh.payment.charges
    invoice_id = sub.payment.invoice_id
    assert (charge.invoice_id, charge.attempt_key, charge.attempt_number, charge.trigger) == (
        invoice_id, f"{invoice_id}:auto:0", 0, "automatic",
    )  # fmt: skip
    assert (charge.amount, charge.currency, charge.subscription_id, charge.customer_id) == ("49.00", "USD", sub.id, sub.customer_id)
    assert charge.first_attempt_at == charge.effective_time
    # inside the charge, invoicing had recorded the payment and the subscription read active
    assert mesh.payment.seen == ["active"]
    invoice = await mesh.invoicing.GetInvoice(inv.GetInvoiceRequest(id=invoice_id), metadata=mesh.md)
    assert invoice.status == "PAID"


async def test_dunning_under_a_test_clock_retries_on_schedule_then_terminates(mesh: Mesh) -> None:
    mesh.payment.decline = True
    mesh.payment.policy = "terminate"
    plan_id = await mesh.plan(fee="20.00", metered=False)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    clock = await mesh.subscriptions.CreateTestClock(svc.CreateTestClockRequest(current_time=to_timestamp(start)), metadata=mesh.md)
    sub = await mesh.subscribe(plan_id, started_at=start, test_clock_id=clock.id, auto_charge=True)
    assert sub.status == "pending_payment"
    assert [c.attempt_key for c in mesh.payment.charges] == [f"{sub.payment.invoice_id}:auto:0"]

    async def advance(by: str) -> None:
        await mesh.subscriptions.AdvanceTestClock(svc.AdvanceTestClockRequest(id=clock.id, advance_by=by), metadata=mesh.md)

    await advance("P2D")
    assert len(mesh.payment.charges) == 1
    await advance("P1D")  # day 3: the first retry
    assert len(mesh.payment.charges) == 2
    await advance("P3D")  # day 6: the second (day 5)
    assert len(mesh.payment.charges) == 3
    current = await mesh.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=sub.id), metadata=mesh.md)
    assert current.status == "pending_payment"
    await advance("P10D")  # the third (day 7), then the merchant's policy
    charges = mesh.payment.charges
    assert [c.attempt_key for c in charges] == [f"{sub.payment.invoice_id}:auto:{n}" for n in range(4)]
    assert [from_timestamp(c.effective_time) for c in charges] == [start + timedelta(days=d) for d in (0, 3, 5, 7)]
    assert {from_timestamp(c.first_attempt_at) for c in charges} == {start}
    ended = await mesh.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=sub.id), metadata=mesh.md)
    assert (ended.status, ended.terminated_at, ended.termination_reason) == (
        "terminated",
        to_timestamp(start + timedelta(days=7)),
        "payment_failed",
    )
    listed = await mesh.invoicing.ListInvoices(inv.ListInvoicesRequest(subscription_id=sub.id, limit=10), metadata=mesh.md)
    final = max(listed.data, key=lambda i: i.sequence_number)
    # the termination path made the final invoice, issued at the end (grace 0)
    assert final.sequence_number == 1 and final.issued_at == to_timestamp(start + timedelta(days=7))
