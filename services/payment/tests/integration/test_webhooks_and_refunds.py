"""Processor webhooks (verified, deduplicated by event id, applied monotonically: a late
older state never overwrites a newer one; a disagreeing final state settled by the
processor's look-up) and refunds (once per credit note)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.core.errors import InvalidArgument, NotFound
from services.payment.processors.base import ChargeStatus
from services.payment.tests.fakes import SLOW, render_nonce, token
from services.payment.tests.integration.conftest import World


def hook(headers: dict[str, str], body: bytes, processor: str = "fake") -> pay.HandleProcessorWebhookRequest:
    return pay.HandleProcessorWebhookRequest(processor=processor, body=body, headers=headers)


async def test_duplicate_and_out_of_order_webhooks_apply_once(world: World) -> None:
    customer = await world.customer()
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    answer = await world.payments.CompleteCheckout(
        pay.CompleteCheckoutRequest(session_id=session.id, card_token=token(SLOW), submit_nonce=render_nonce()), metadata=world.md()
    )
    assert answer.session.status == "processing"
    key = f"{session.id}:1"
    processing = world.processor.charges[(world.merchant, key)]
    done = world.processor.finish(world.merchant, key)
    succeeded = world.processor.webhook(done, event_type="charge.succeeded", sequence=2)
    late_processing = world.processor.webhook(processing, event_type="charge.processing", sequence=1)

    first = await world.payments.HandleProcessorWebhook(hook(*succeeded), metadata=world.md())
    assert first.result == "applied"
    page = await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=session.id), metadata=world.md())
    assert page.session.status == "completed"
    assert world.invoicing.reported(invoice) == [(key, "succeeded")]
    again = await world.payments.HandleProcessorWebhook(hook(*succeeded), metadata=world.md())
    assert again.result == "duplicate"
    stale = await world.payments.HandleProcessorWebhook(hook(*late_processing), metadata=world.md())
    assert stale.result == "stale"
    (row,) = await world.attempts(invoice)
    assert (row.status, row.processor_sequence) == ("succeeded", 2)
    assert world.invoicing.reported(invoice) == [(key, "succeeded")]
    assert world.processor.charge_calls == [key]
    # the same final state told again by a newer event changes nothing
    repeat = world.processor.webhook(done, event_type="charge.succeeded", sequence=3)
    assert (await world.payments.HandleProcessorWebhook(hook(*repeat), metadata=world.md())).result == "duplicate"


async def test_a_webhook_disagreeing_with_the_recorded_outcome_is_settled_by_the_processor(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    key = f"{invoice}:retry:1"
    await world.payments.ChargeInvoice(world.charge(invoice, customer, key), metadata=world.md())
    charge = world.processor.charges[(world.merchant, key)]
    wrong = world.processor.webhook(
        replace(charge, status=ChargeStatus.FAILED, failure_code="card_declined"), event_type="charge.failed", sequence=5
    )
    result = await world.payments.HandleProcessorWebhook(hook(*wrong), metadata=world.md())
    assert result.result == "stale"
    (row,) = await world.attempts(invoice)
    assert row.status == "succeeded"


async def test_webhooks_that_do_not_verify_or_name_nothing_of_ours(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    key = f"{invoice}:retry:1"
    await world.payments.ChargeInvoice(world.charge(invoice, customer, key), metadata=world.md())
    headers, body = world.processor.webhook(world.processor.charges[(world.merchant, key)], event_type="charge.succeeded", sequence=2)
    with pytest.raises(InvalidArgument) as bad:
        await world.payments.HandleProcessorWebhook(hook({"fake-signature": "0" * 64}, body), metadata=world.md())
    assert (bad.value.reason, bad.value.field) == ("INVALID_WEBHOOK_SIGNATURE", "body")
    with pytest.raises(NotFound):
        await world.payments.HandleProcessorWebhook(hook(headers, body, processor="stripe"), metadata=world.md())
    # another merchant's path: not its charge
    other = await world.payments.HandleProcessorWebhook(hook(headers, body), metadata=world.md(f"org_{uuid.uuid4().hex[:12]}"))
    assert other.result == "ignored"


async def test_a_paid_invoice_is_refunded_once_per_credit_note(world: World) -> None:
    customer = await world.customer()
    await world.save_card(customer)
    invoice = world.invoice()
    paid = await world.payments.ChargeInvoice(world.charge(invoice, customer, f"{invoice}:retry:1"), metadata=world.md())
    request = pay.RefundInvoiceRequest(invoice_id=invoice, credit_note_id="crn_1", amount="49.00", currency="USD", reason="asked")
    first = await world.payments.RefundInvoice(request, metadata=world.md())
    again = await world.payments.RefundInvoice(request, metadata=world.md())
    assert (first.refunded, first.status) == (True, "succeeded") and first.provider_refund_ref.startswith("re_")
    assert again.provider_refund_ref == first.provider_refund_ref
    (refund,) = world.processor.refunds.values()
    assert (refund.charge_ref, refund.amount_minor, refund.idempotency_key) == (paid.provider_payment_ref, 4900, "crn_1")
    with pytest.raises(InvalidArgument) as too_much:
        await world.payments.RefundInvoice(
            pay.RefundInvoiceRequest(invoice_id=invoice, credit_note_id="crn_2", amount="50.00", currency="USD"), metadata=world.md()
        )
    assert too_much.value.field == "amount"
    # paid out of band (no charge here): nothing goes back through the processor
    unpaid = await world.payments.RefundInvoice(
        pay.RefundInvoiceRequest(invoice_id=world.invoice(), credit_note_id="crn_3", amount="10.00", currency="USD"), metadata=world.md()
    )
    assert (unpaid.refunded, unpaid.HasField("provider_refund_ref")) == (False, False)
    assert len(world.processor.refunds) == 1
