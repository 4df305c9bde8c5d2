"""What the payment service consumes, outside any request: invoicing's ``invoice.paid``.
An invoice paid another way (out of band, or an off-session charge) closes its open
hosted pages, so a customer holding one cannot pay it twice (the page's submit also asks
invoicing first; this makes the page read "cancelled" without a submit).

The durable consumer claims each event in its inbox (libs/infra/messaging.EventConsumer)
and runs the use case as the merchant of the event (libs.infra.context.acting_for).
"""

from __future__ import annotations

from accrue.invoicing.v1 import invoicing_events_pb2 as invoicing_events

from libs.infra.context import acting_for
from libs.infra.db import UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent
from services.payment.domain.use_cases import Payments

log = get_logger(__name__)

INVOICE_DURABLE = "payment-invoices"


class PaidInvoices:
    """Handler of ``accrue.invoicing.v1.invoice.paid``: the invoice's open pages are cancelled."""

    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def __call__(self, event: ReceivedEvent, inbox: UnitOfWork) -> None:
        change = invoicing_events.InvoiceChanged.FromString(event.payload)
        if change.kind != invoicing_events.INVOICE_CHANGE_KIND_PAID:
            return
        merchant_id = change.merchant_id or change.invoice.merchant_id
        if not merchant_id or not change.invoice.id:
            log.warning("invoice_event_ignored", reason="malformed", event_id=event.event_id)
            return
        with acting_for(merchant_id):
            cancelled = await self._payments.invoice_paid(merchant_id, change.invoice.id)
        if cancelled:
            log.info("checkout_cancelled_invoice_paid", invoice_id=change.invoice.id, sessions=cancelled)
