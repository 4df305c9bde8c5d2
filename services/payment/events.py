"""The payment service's event contract: its stream, the subjects it publishes on and the
builders of its events (protos/accrue/payment/v1/payment_events.proto).

* ``PaymentSessionChanged`` on ``accrue.payment.v1.session.<opened|completed|cancelled|expired>``;
* ``ChargeDecided`` on ``accrue.payment.v1.charge.<succeeded|failed>``, once per decided
  attempt however many webhooks or look-ups told it (again only if the processor's own
  answer changed it);
* ``PaymentMethodSaved`` on ``accrue.payment.v1.payment_method.saved`` (brand, last4 and
  expiry only).

The aggregates record domain events (domain/model.py); views.py renders them at commit and
these builders make what the outbox sends. It consumes invoicing's ``invoice.paid``
(consumers.py: an invoice paid another way closes its open pages).
"""

from __future__ import annotations

from datetime import datetime

from accrue.payment.v1 import payment_events_pb2 as ev
from accrue.payment.v1 import payment_service_pb2 as svc

from libs.infra.db import OutboxMessage
from libs.infra.proto_time import to_timestamp
from services.payment.domain.model import AttemptStatus, SessionChangeKind

STREAM = "ACCRUE_PAYMENT"
SUBJECT_PREFIX = "accrue.payment.v1"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.>",)

SESSION_SUBJECTS = f"{SUBJECT_PREFIX}.session.>"
CHARGE_SUBJECTS = f"{SUBJECT_PREFIX}.charge.>"
CHARGE_SUCCEEDED = f"{SUBJECT_PREFIX}.charge.succeeded"
CHARGE_FAILED = f"{SUBJECT_PREFIX}.charge.failed"
PAYMENT_METHOD_SAVED = f"{SUBJECT_PREFIX}.payment_method.saved"

_SESSION_KINDS = {
    SessionChangeKind.OPENED: ev.SESSION_CHANGE_KIND_OPENED,
    SessionChangeKind.COMPLETED: ev.SESSION_CHANGE_KIND_COMPLETED,
    SessionChangeKind.CANCELLED: ev.SESSION_CHANGE_KIND_CANCELLED,
    SessionChangeKind.EXPIRED: ev.SESSION_CHANGE_KIND_EXPIRED,
}


def session_subject(kind: SessionChangeKind) -> str:
    return f"{SUBJECT_PREFIX}.session.{kind.value}"


def charge_subject(status: AttemptStatus) -> str:
    if not status.final:
        raise ValueError(f"a charge is decided succeeded or failed, not {status.value}")
    return f"{SUBJECT_PREFIX}.charge.{status.value}"


def session_changed(kind: SessionChangeKind, merchant_id: str, session: svc.PaymentSession) -> OutboxMessage:
    message = ev.PaymentSessionChanged(kind=_SESSION_KINDS[kind], merchant_id=merchant_id)
    message.session.CopyFrom(session)
    return OutboxMessage(session_subject(kind), message, merchant_id)


def charge_decided(
    status: AttemptStatus,
    merchant_id: str,
    *,
    invoice_id: str,
    payment_id: str,
    outcome: svc.ChargeOutcome,
    amount: str,
    currency: str,
    recorded_at: datetime,
) -> OutboxMessage:
    message = ev.ChargeDecided(
        merchant_id=merchant_id,
        invoice_id=invoice_id,
        payment_id=payment_id,
        amount=amount,
        currency=currency,
        recorded_at=to_timestamp(recorded_at),
    )
    message.outcome.CopyFrom(outcome)
    return OutboxMessage(charge_subject(status), message, merchant_id)


def payment_method_saved(merchant_id: str, customer_id: str, method: svc.PaymentMethod) -> OutboxMessage:
    message = ev.PaymentMethodSaved(merchant_id=merchant_id, customer_id=customer_id)
    message.payment_method.CopyFrom(method)
    return OutboxMessage(PAYMENT_METHOD_SAVED, message, merchant_id)
