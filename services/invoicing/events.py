"""The invoicing service's event contract: its stream, the subjects it publishes on, and
the builder of its one event (protos/accrue/invoicing/v1/invoicing_events.proto).

Every change worth telling is one ``InvoiceChanged`` on
``accrue.invoicing.v1.invoice.<issued|paid|payment_failed|voided|refunded|refund_voided>``, carrying the invoice
after the change (without lines). The aggregate records it (domain/model.py); the unit
of work writes it to the outbox in the same transaction. Consumers (the subscription
service's activation, later payment and entitlement) import these names and stay
idempotent: paying Invoice 0 also tells the subscription service synchronously.
"""

from __future__ import annotations

from accrue.invoicing.v1 import invoicing_events_pb2 as ev
from accrue.invoicing.v1 import invoicing_service_pb2 as svc

from libs.infra.db import OutboxMessage
from libs.infra.proto_time import to_timestamp
from services.invoicing.domain.model import ChangeKind, InvoiceChanged

STREAM = "ACCRUE_INVOICING"
SUBJECT_PREFIX = "accrue.invoicing.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

INVOICE_ISSUED = f"{SUBJECT_PREFIX}.invoice.issued"
INVOICE_PAID = f"{SUBJECT_PREFIX}.invoice.paid"
INVOICE_PAYMENT_FAILED = f"{SUBJECT_PREFIX}.invoice.payment_failed"
INVOICE_VOIDED = f"{SUBJECT_PREFIX}.invoice.voided"
INVOICE_REFUNDED = f"{SUBJECT_PREFIX}.invoice.refunded"
INVOICE_REFUND_VOIDED = f"{SUBJECT_PREFIX}.invoice.refund_voided"
# every invoice change (a consumer's filter subject)
INVOICE_SUBJECTS = f"{SUBJECT_PREFIX}.invoice.>"

_KINDS: dict[ChangeKind, tuple[int, str]] = {
    ChangeKind.ISSUED: (ev.INVOICE_CHANGE_KIND_ISSUED, INVOICE_ISSUED),
    ChangeKind.PAID: (ev.INVOICE_CHANGE_KIND_PAID, INVOICE_PAID),
    ChangeKind.PAYMENT_FAILED: (ev.INVOICE_CHANGE_KIND_PAYMENT_FAILED, INVOICE_PAYMENT_FAILED),
    ChangeKind.VOIDED: (ev.INVOICE_CHANGE_KIND_VOIDED, INVOICE_VOIDED),
    ChangeKind.REFUNDED: (ev.INVOICE_CHANGE_KIND_REFUNDED, INVOICE_REFUNDED),
    ChangeKind.REFUND_VOIDED: (ev.INVOICE_CHANGE_KIND_REFUND_VOIDED, INVOICE_REFUND_VOIDED),
}


def subject(kind: ChangeKind) -> str:
    return _KINDS[kind][1]


def invoice_changed(event: InvoiceChanged, invoice: svc.Invoice) -> OutboxMessage:
    """The outbox message of a recorded change, given the invoice rendered as a proto."""
    kind, subject_name = _KINDS[event.kind]
    message = ev.InvoiceChanged(
        kind=kind,  # type: ignore[arg-type]
        merchant_id=event.merchant_id,
        invoice=invoice,
        effective_time=to_timestamp(event.effective_time),
    )
    return OutboxMessage(subject_name, message, event.merchant_id)
