"""Refunds: a ``PAID`` invoice is refunded in full once (``POST /v2/invoices/{id}/refunds``
-> 201, a credit note ``crn_...``), with a refund at the processor for the charge that
paid it (the sandbox's own records; its idempotency key is the credit note id); a second
refund is refused (409), also when both are sent at once; the credit note is listed and
voidable (voiding again answers it as it is). An invoice paid out of band gets a credit
note and no processor refund; an unpaid invoice is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from paygentic_sdk import models
from paygentic_sdk.utils.unmarshal_json_response import unmarshal_json_response

from libs.infra.runner import Mesh
from libs.testing.billing import at, invoice_0
from libs.testing.billing import pay as pay_out_of_band
from libs.testing.fixtures import MerchantClient
from libs.testing.payments import (
    CARD_SUCCEEDS,
    Sandbox,
    checkout_of,
    concurrently,
    invoice_state,
    minor,
    pay,
    pending_subscription,
    problem,
    rest,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox(mesh: Mesh) -> Sandbox:
    return Sandbox.of(mesh)


def _paid_through_the_processor(client: MerchantClient, sandbox: Sandbox, name: str, amount: str) -> tuple[str, dict[str, Any]]:
    """Invoice 0 of a new subscription paid on its page with 4242: (invoice id, the charge)."""
    sub = pending_subscription(client, name, at("2027-07-01T00:00:00Z"), amount=amount)
    checkout = checkout_of(sub)
    assert pay(checkout.checkout_url, CARD_SUCCEEDS)["status"] == "completed"
    invoice_id = invoice_0(client, sub).id
    assert invoice_state(client, invoice_id) == ("PAID", amount, "0.00")
    [charge] = sandbox.charges_of(checkout.payment_session_id)
    assert (charge["status"], charge["amount"]) == ("succeeded", minor(amount))
    return invoice_id, charge


def _refund(client: MerchantClient, invoice_id: str, reason: str | None = "Customer asked") -> Any:
    return rest(client, "POST", f"/v2/invoices/{invoice_id}/refunds", json={} if reason is None else {"reason": reason})


def test_a_paid_invoice_is_refunded_once_listed_and_not_voidable(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    invoice_id, charge = _paid_through_the_processor(merchant_a, sandbox, "Refund once", "49.00")

    created = _refund(merchant_a, invoice_id)

    assert created.status_code == 201, created.text
    refund = unmarshal_json_response(models.InvoiceRefund, created)  # as the SDK parses it
    body = created.json()
    assert refund.id.startswith("crn_")
    assert (refund.invoice_id, refund.merchant_id, refund.currency, refund.status) == (invoice_id, merchant_a.merchant_id, "USD", "ISSUED")
    assert (refund.amount, refund.tax_amount, refund.total) == ("49.00", "0.00", "49.00")
    assert refund.reason == "Customer asked"
    # money went back through the processor, keyed by the credit note
    [processor_refund] = sandbox.refunds_of_charge(charge["id"])
    assert body["providerRefundRef"] == processor_refund["id"]
    assert str(processor_refund["id"]).startswith("re_")
    assert (processor_refund["amount"], processor_refund["status"]) == (minor("49.00"), "succeeded")
    assert processor_refund.get("idempotencyKey", refund.id) == refund.id
    # the invoice stays PAID
    assert invoice_state(merchant_a, invoice_id) == ("PAID", "49.00", "0.00")

    # a second refund is refused; the processor refunded once
    again = _refund(merchant_a, invoice_id, reason="Again")
    assert problem(again)[:2] == (409, "INVOICE_ALREADY_REFUNDED"), again.text
    assert sandbox.refunds_of_charge(charge["id"]) == [processor_refund]

    listed = merchant_a.sdk.invoices_v2.list_invoice_refunds(id=invoice_id)
    assert [(r.id, r.status, r.total) for r in listed.data] == [(refund.id, "ISSUED", "49.00")]

    # the money went back through the processor: a void would not bring it back, so it is refused
    refused = rest(merchant_a, "POST", f"/v2/invoices/{invoice_id}/refunds/{refund.id}/void", json={"reason": "Issued by mistake"})
    assert problem(refused)[:2] == (409, "REFUND_SETTLED"), refused.text
    listed = merchant_a.sdk.invoices_v2.list_invoice_refunds(id=invoice_id)
    assert [(r.id, r.status) for r in listed.data] == [(refund.id, "ISSUED")]
    assert problem(_refund(merchant_a, invoice_id))[:2] == (409, "INVOICE_ALREADY_REFUNDED")
    assert sandbox.refunds_of_charge(charge["id"]) == [processor_refund]
    assert invoice_state(merchant_a, invoice_id) == ("PAID", "49.00", "0.00")


def test_refunds_sent_at_once_refund_once(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    invoice_id, charge = _paid_through_the_processor(merchant_a, sandbox, "Refund at once", "20.00")

    answers = concurrently([lambda: _refund(merchant_a, invoice_id) for _ in range(6)])

    shown = [(answer.status_code, answer.text) for answer in answers]
    assert sorted(answer.status_code for answer in answers) == [201, 409, 409, 409, 409, 409], shown
    [created] = [answer.json() for answer in answers if answer.status_code == 201]
    assert all(problem(answer)[1] == "INVOICE_ALREADY_REFUNDED" for answer in answers if answer.status_code == 409), shown
    assert [r.id for r in merchant_a.sdk.invoices_v2.list_invoice_refunds(id=invoice_id).data] == [created["id"]]
    refunds = sandbox.refunds_of_charge(charge["id"])
    assert [(r["id"], r["amount"]) for r in refunds] == [(created["providerRefundRef"], minor("20.00"))], refunds


def test_an_out_of_band_invoice_gets_a_credit_note_and_no_processor_refund(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Refund out of band", at("2027-07-01T00:00:00Z"), amount="35.00")
    invoice_id = invoice_0(merchant_a, sub).id
    pay_out_of_band(merchant_a, invoice_id)
    refunds_before = sandbox.refunds()

    created = _refund(merchant_a, invoice_id)

    assert created.status_code == 201, created.text
    refund = unmarshal_json_response(models.InvoiceRefund, created)
    assert (refund.status, refund.total) == ("ISSUED", "35.00")
    assert created.json().get("providerRefundRef") is None
    # nothing was charged for it, nothing refunded
    assert sandbox.charges_of(checkout_of(sub).payment_session_id) == []
    assert sandbox.charges_of(invoice_id) == []
    assert sandbox.refunds() == refunds_before
    assert not [r for r in sandbox.refunds() if r.get("idempotencyKey") == refund.id]
    assert problem(_refund(merchant_a, invoice_id))[:2] == (409, "INVOICE_ALREADY_REFUNDED")

    # no money moved, so the credit note is voidable (and voiding again answers it as it is)
    voided = merchant_a.sdk.invoices_v2.void_invoice_refund(id=invoice_id, refund_id=refund.id, reason="Issued by mistake")
    assert (voided.id, voided.status) == (refund.id, "VOIDED")
    assert voided.voided_at is not None
    twice = rest(merchant_a, "POST", f"/v2/invoices/{invoice_id}/refunds/{refund.id}/void", json={})
    assert twice.status_code == 200, twice.text
    assert (twice.json()["status"], unmarshal_json_response(models.InvoiceRefund, twice).voided_at) == ("VOIDED", voided.voided_at)
    listed = merchant_a.sdk.invoices_v2.list_invoice_refunds(id=invoice_id)
    assert [(r.id, r.status) for r in listed.data] == [(refund.id, "VOIDED")]
    assert sandbox.refunds() == refunds_before


def test_an_unpaid_invoice_is_not_refunded(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Refund unpaid", at("2027-07-01T00:00:00Z"), amount="18.00")
    invoice_id = invoice_0(merchant_a, sub).id
    refunds_before = sandbox.refunds()

    refused = _refund(merchant_a, invoice_id)

    assert problem(refused)[:2] == (409, "INVOICE_NOT_PAID"), refused.text
    assert merchant_a.sdk.invoices_v2.list_invoice_refunds(id=invoice_id).data == []
    assert invoice_state(merchant_a, invoice_id) == ("ISSUED", "0.00", "18.00")
    assert sandbox.refunds() == refunds_before


def test_voiding_an_unknown_refund_is_not_found(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    invoice_id, _ = _paid_through_the_processor(merchant_a, sandbox, "Void unknown", "11.00")
    missing = rest(merchant_a, "POST", f"/v2/invoices/{invoice_id}/refunds/crn_doesnotexist0000/void", json={})
    assert missing.status_code == 404, missing.text
