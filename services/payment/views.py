"""Aggregates -> protos. The RPCs answer through these, and the unit of work renders a
recorded event through them too (the resource as it is at commit).

Amounts are decimal strings with the currency's places ("49.00"); a field that does not
apply is left unset (the gateway renders it as null).
"""

from __future__ import annotations

from typing import Any

from accrue.payment.v1 import payment_service_pb2 as svc

from libs.core.domain import DomainEvent
from libs.infra.db import OutboxMessage
from libs.infra.proto_struct import dict_to_struct
from libs.infra.proto_time import to_timestamp
from services.payment import events, store
from services.payment.domain.model import (
    ChargeAttempt,
    ChargeDecided,
    CollectionSettings,
    PayableType,
    Payment,
    PaymentMethod,
    PaymentMethodSaved,
    PaymentSession,
    SessionChanged,
    amount_text,
)
from services.payment.domain.use_cases import CheckoutView, Outcome, outcome_of


def _set(message: Any, name: str, value: Any) -> None:
    if value is not None:
        setattr(message, name, value)


def session(found: PaymentSession) -> svc.PaymentSession:
    out = svc.PaymentSession(
        object="payment_session",
        id=found.id,
        entity_type=found.entity_type,
        entity_id=found.entity_id,
        amount=amount_text(found.amount, found.currency) if found.amount is not None else "0",
        currency=found.currency or "",
        status=found.status,
        create_time=to_timestamp(found.create_time),
        update_time=to_timestamp(found.update_time),
        expires_at=to_timestamp(found.expires_at),
        mode=found.mode,
    )
    _set(out, "entity_label", found.entity_label)
    if found.processor:
        out.merchant_payment_account_id = f"acct_{found.processor}_{found.merchant_id}"
    _set(out, "provider_payment_ref", found.provider_payment_ref)
    if found.completed_at is not None:
        out.completed_at.CopyFrom(to_timestamp(found.completed_at))
    _set(out, "url", found.url)
    _set(out, "customer_id", found.customer_id)
    _set(out, "subscription_id", found.subscription_id)
    return out


def customer_session(found: PaymentSession) -> svc.CustomerPaymentSession:
    out = svc.CustomerPaymentSession(
        object="paymentSession",
        id=found.id,
        mode=found.mode,
        status=found.status,
        url=found.url or "",
        expires_at=to_timestamp(found.expires_at),
        create_time=to_timestamp(found.create_time),
    )
    _set(out, "success_redirect_url", found.success_redirect_url)
    _set(out, "failure_redirect_url", found.failure_redirect_url)
    if found.metadata:
        out.metadata.CopyFrom(dict_to_struct(dict(found.metadata)))
    if found.completed_at is not None:
        out.completed_at.CopyFrom(to_timestamp(found.completed_at))
    return out


def payment(found: Payment, page: PaymentSession | None = None, *, created: bool = True) -> svc.Payment:
    out = svc.Payment(
        id=found.id,
        object="payment",
        amount=amount_text(found.amount, found.currency),
        currency=found.currency,
        status=found.status,
        create_time=to_timestamp(found.create_time),
        metadata=dict(found.metadata),
        expires_at=to_timestamp(found.expires_at),
        merchant_id=found.merchant_id,
        created=created,
    )
    if page is not None and page.url:
        out.payment_url = page.url
    _set(out, "customer_id", found.customer_id)
    _set(out, "idempotency_key", found.idempotency_key)
    _set(out, "reference", found.reference)
    _set(out, "payment_session_id", found.payment_session_id)
    for item in found.line_items:
        line = svc.PaymentLineItem(description=str(item.get("description", "")), amount=str(item.get("amount", "")))
        line.quantity = int(item.get("quantity", 1))
        out.line_items.append(line)
    if found.completed_at is not None:
        out.completed_at.CopyFrom(to_timestamp(found.completed_at))
    return out


def method(found: PaymentMethod) -> svc.PaymentMethod:
    return svc.PaymentMethod(
        object="paymentMethod",
        id=found.id,
        create_time=to_timestamp(found.create_time),
        type="card",
        brand=found.brand,
        last4=found.last4,
        exp_month=found.exp_month,
        exp_year=found.exp_year,
    )


def settings(found: CollectionSettings) -> svc.PaymentSettings:
    out = svc.PaymentSettings(
        object="payment_settings",
        merchant_id=found.merchant_id,
        retry_schedule_days=list(found.retry_schedule_days),
        after_final_failure=found.after_final_failure,
    )
    if found.update_time is not None:
        out.update_time.CopyFrom(to_timestamp(found.update_time))
    return out


def outcome(found: Outcome) -> svc.ChargeOutcome:
    out = svc.ChargeOutcome(status=found.status, attempt_key=found.attempt_key)
    _set(out, "provider_payment_ref", found.provider_payment_ref)
    _set(out, "failure_code", found.failure_code)
    _set(out, "failure_message", found.failure_message)
    _set(out, "decline_code", found.decline_code)
    if found.next_attempt_at is not None:
        out.next_attempt_at.CopyFrom(to_timestamp(found.next_attempt_at))
    _set(out, "after_final_failure", found.after_final_failure)
    _set(out, "payment_session_id", found.payment_session_id)
    return out


def _lines(found: PaymentSession) -> list[svc.CheckoutLine]:
    if found.lines:
        return [
            svc.CheckoutLine(
                description=str(line.get("description", "")), amount=str(line.get("amount", "")), quantity=str(line.get("quantity", "1"))
            )
            for line in found.lines
        ]
    if found.amount is None:
        return []
    label = found.entity_label or ("Payment" if found.entity_type == "payment" else "Invoice")
    return [svc.CheckoutLine(description=label, amount=amount_text(found.amount, found.currency), quantity="1")]


def checkout(found: CheckoutView) -> svc.Checkout:
    page = found.session
    out = svc.Checkout(
        mode=page.mode,
        merchant_id=page.merchant_id,
        lines=_lines(page),
        processor=found.public.processor,
        tokenize_url=found.public.tokenize_url,
        publishable_key=found.public.publishable_key,
    )
    out.session.CopyFrom(session(page))
    _set(out, "success_redirect_url", page.success_redirect_url)
    _set(out, "failure_redirect_url", page.failure_redirect_url)
    _set(out, "failure_code", page.failure_code)
    _set(out, "failure_message", page.failure_message)
    if found.saved_method is not None:
        out.saved_method.CopyFrom(method(found.saved_method))
    return out


def charge_decided(found: ChargeAttempt) -> OutboxMessage:
    invoice = found.payable_id if found.payable_type == PayableType.INVOICE else ""
    paid = found.payable_id if found.payable_type == PayableType.PAYMENT else ""
    assert found.decided_at is not None
    return events.charge_decided(
        found.state,
        found.merchant_id,
        invoice_id=invoice,
        payment_id=paid,
        outcome=outcome(outcome_of(found)),
        amount=amount_text(found.amount, found.currency),
        currency=found.currency,
        recorded_at=found.decided_at,
    )


async def outbox_message(uow: store.SqlPaymentUnitOfWork, event: DomainEvent) -> OutboxMessage:
    """The unit of work's translator: a recorded change rendered as it is at commit."""
    if isinstance(event, SessionChanged):
        found = await store.read_session(uow.conn, event.session_id)
        assert found is not None, f"payment session {event.session_id} recorded a change and is gone"
        return events.session_changed(event.kind, event.merchant_id, session(found))
    if isinstance(event, ChargeDecided):
        attempt = await store.read_attempt(uow.conn, event.attempt_id)
        assert attempt is not None, f"charge attempt {event.attempt_id} recorded a decision and is gone"
        return charge_decided(attempt)
    if isinstance(event, PaymentMethodSaved):
        saved = await store.read_method(uow.conn, event.method_id)
        assert saved is not None, f"payment method {event.method_id} was saved and is gone"
        return events.payment_method_saved(event.merchant_id, saved.customer_id, method(saved))
    raise TypeError(f"the payment service records no {type(event).__name__}")
