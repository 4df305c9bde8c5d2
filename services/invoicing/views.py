"""What the unit of work sends for a recorded event: the invoice as it is at commit,
rendered as the API renders it (without lines), built into InvoiceChanged by events.py.
The invoice is the copy the unit of work last wrote (store.py), read again only when it
wrote none."""

from __future__ import annotations

from libs.core.domain import DomainEvent
from libs.infra.db import OutboxMessage
from services.invoicing import events, mapping
from services.invoicing.domain.model import InvoiceChanged
from services.invoicing.store import SqlInvoicingUnitOfWork


async def outbox_message(uow: SqlInvoicingUnitOfWork, event: DomainEvent) -> OutboxMessage:
    assert isinstance(event, InvoiceChanged), f"invoicing records InvoiceChanged, not {type(event).__name__}"
    written = uow.invoices.written.get(event.invoice_id)
    found = written if written is not None and written.merchant_id == event.merchant_id else None
    if found is None:
        found = await uow.invoices.get(event.merchant_id, event.invoice_id)
    return events.invoice_changed(event, mapping.invoice(found))
