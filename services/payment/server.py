"""PaymentService: proto -> command -> use case -> proto, and nothing else.

Rules live in domain/ (aggregates in model.py, use cases in use_cases.py), queries in
store.py, rendering in views.py, the other services in clients.py, the card processor
behind processors/base.py. The plumbing (merchant, clock, transaction, Idempotency-Key
replays, pages) is libs/infra/service_layer.py.

CreatePayment is idempotent by its own key (the body's ``idempotencyKey``, else the
Idempotency-Key header): a repeat answers the payment with ``created`` false (REST 200),
so it does not go through the generic replay. The internal calls (OpenSessions,
ChargeInvoice, RefundInvoice, the page's and the processor's) are idempotent on their own
terms (entity, attempt key, credit note, page render, event id) and do not replay their
callers' keys either: those belong to the callers' own mutations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeAlias, TypeVar

import grpc
from accrue.payment.v1 import payment_service_pb2 as svc
from accrue.payment.v1 import payment_service_pb2_grpc

from libs.core.clock import Clock, as_utc
from libs.core.errors import InvalidArgument
from libs.core.grid import parse_duration
from libs.core.money import parse_decimal
from libs.infra.context import current_idempotency_key, current_merchant_id
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import from_timestamp
from libs.infra.service_layer import ServiceLayer, check_merchant, opt, page_of, pagination
from services.payment import views
from services.payment.domain import commands
from services.payment.domain.model import MAX_LINE_ITEMS, check_idempotency_key
from services.payment.domain.use_cases import Payments
from services.payment.store import SqlPaymentUnitOfWork

R = TypeVar("R")
Uow: TypeAlias = SqlPaymentUnitOfWork
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _time(message: Any, name: str) -> datetime | None:
    return as_utc(from_timestamp(getattr(message, name))) if message.HasField(name) else None


def _create_payment(request: svc.CreatePaymentRequest) -> commands.CreatePayment:
    amount = parse_decimal(request.amount, "amount")
    if len(request.line_items) > MAX_LINE_ITEMS:
        raise InvalidArgument("lineItems", f"lineItems has at most {MAX_LINE_ITEMS} items", reason="TOO_MANY_ITEMS")
    items = [
        commands.LineItem(
            description=item.description,
            amount=parse_decimal(item.amount, f"lineItems[{i}].amount"),
            quantity=item.quantity if item.HasField("quantity") else 1,
        )
        for i, item in enumerate(request.line_items)
    ]
    expires_in = parse_duration(request.expires_in, "expiresIn") if request.HasField("expires_in") else None
    body_key = opt(request, "idempotency_key")
    if body_key is not None:  # the header's rule (the gateway checks the header itself)
        check_idempotency_key(body_key)
    key = body_key or current_idempotency_key() or None
    given: dict[str, Any] = {
        "amount": format(amount.normalize(), "f"),
        "currency": request.currency,
        "customerId": opt(request, "customer_id"),
        "reference": opt(request, "reference"),
        "metadata": dict(request.metadata),
        "lineItems": [[i.description, format(i.amount, "f"), i.quantity] for i in items],
        "successRedirectUrl": opt(request, "success_redirect_url"),
        "failureRedirectUrl": opt(request, "failure_redirect_url"),
        "savePaymentMethod": bool(opt(request, "save_payment_method")),
        "expiresIn": str(expires_in) if expires_in is not None else None,
    }
    return commands.CreatePayment(
        amount=amount,
        currency=request.currency,
        idempotency_key=key,
        customer_id=opt(request, "customer_id") or None,
        reference=opt(request, "reference"),
        metadata=dict(request.metadata),
        line_items=items,
        success_redirect_url=opt(request, "success_redirect_url"),
        failure_redirect_url=opt(request, "failure_redirect_url"),
        save_payment_method=bool(opt(request, "save_payment_method")),
        expires_in=expires_in,
        given=given,
    )


def _open_session(item: svc.OpenSessionRequest, i: int) -> commands.OpenSession:
    return commands.OpenSession(
        entity_type=item.entity_type,
        entity_id=item.entity_id,
        customer_id=item.customer_id,
        amount=parse_decimal(item.amount, f"items[{i}].amount"),
        currency=item.currency,
        subscription_id=opt(item, "subscription_id") or None,
        entity_label=opt(item, "entity_label"),
        lines=[commands.CheckoutLine(line.description, line.amount, line.quantity or "1") for line in item.lines],
        success_redirect_url=opt(item, "success_redirect_url"),
        failure_redirect_url=opt(item, "failure_redirect_url"),
        expires_at=_time(item, "expires_at"),
        replace=item.replace,
        save_payment_method=item.save_payment_method,
    )


class PaymentServicer(payment_service_pb2_grpc.PaymentServiceServicer):
    def __init__(self, payments: Payments, unit_of_work: Callable[[], SqlPaymentUnitOfWork], clock: Clock) -> None:
        self._payments = payments
        self._unit_of_work = unit_of_work
        self._service: ServiceLayer[Uow, Uow] = ServiceLayer(clock, unit_of_work, unit_of_work)

    async def _read(self, work: Callable[[Uow, str], Awaitable[R]]) -> R:
        merchant_id = current_merchant_id()
        async with self._unit_of_work() as uow:
            return await work(uow, merchant_id)

    # --- one-off payments ---------------------------------------------------------------

    async def CreatePayment(self, request: svc.CreatePaymentRequest, context: Context) -> svc.Payment:
        merchant_id = current_merchant_id()
        check_merchant(request.merchant_id, merchant_id)
        made = await self._payments.create_payment(merchant_id, _create_payment(request))
        return views.payment(made.payment, made.session, created=made.created)

    async def GetPayment(self, request: svc.GetPaymentRequest, context: Context) -> svc.Payment:
        async def work(uow: Uow, merchant_id: str) -> svc.Payment:
            found = await uow.payments.get(merchant_id, request.id, field="id")
            page = await uow.sessions.get(merchant_id, found.payment_session_id) if found.payment_session_id else None
            return views.payment(found, page)

        return await self._read(work)

    async def ListPayments(self, request: svc.ListPaymentsRequest, context: Context) -> svc.ListPaymentsResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListPaymentsResponse:
            check_merchant(request.merchant_id, merchant_id)
            page = page_of(request)
            filters = commands.PaymentFilters(status=opt(request, "status"), customer_id=opt(request, "customer_id"))
            found, total = await uow.payments.list_page(merchant_id, filters, page)
            data = []
            for payment in found:
                session = await uow.sessions.get(merchant_id, payment.payment_session_id) if payment.payment_session_id else None
                data.append(views.payment(payment, session))
            return svc.ListPaymentsResponse(object="list", data=data, pagination=pagination(page, total))

        return await self._read(work)

    # --- sessions -----------------------------------------------------------------------

    async def ListPaymentSessions(self, request: svc.ListPaymentSessionsRequest, context: Context) -> svc.ListPaymentSessionsResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListPaymentSessionsResponse:
            check_merchant(request.merchant_id, merchant_id)
            page = page_of(request)
            filters = commands.SessionFilters(
                subscription_id=opt(request, "subscription_id"),
                customer_id=opt(request, "customer_id"),
                status=opt(request, "status"),
                entity_type=opt(request, "entity_type"),
            )
            found, total = await uow.sessions.list_page(merchant_id, filters, page)
            return svc.ListPaymentSessionsResponse(
                object="list", data=[views.session(s) for s in found], pagination=pagination(page, total)
            )

        return await self._read(work)

    # --- methods and setup sessions -------------------------------------------------------

    async def ListCustomerPaymentMethods(
        self, request: svc.ListCustomerPaymentMethodsRequest, context: Context
    ) -> svc.ListCustomerPaymentMethodsResponse:
        found = await self._payments.customer_methods(current_merchant_id(), request.id)
        return svc.ListCustomerPaymentMethodsResponse(object="list", data=[views.method(m) for m in found])

    async def CreateCustomerPaymentMethod(
        self, request: svc.CreateCustomerPaymentMethodRequest, context: Context
    ) -> svc.CustomerPaymentSession:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.CustomerPaymentSession:
            command = commands.CreateSetupSession(
                customer_id=request.id,
                success_redirect_url=opt(request, "success_redirect_url"),
                failure_redirect_url=opt(request, "failure_redirect_url"),
                metadata=struct_to_dict(request.metadata) if request.HasField("metadata") else {},
                expires_at=_time(request, "expires_at"),
            )
            return views.customer_session(await self._payments.create_setup_session(uow, merchant_id, now, command))

        return await self._service.mutate("CreateCustomerPaymentMethod", request, svc.CustomerPaymentSession, work)

    # --- settings -----------------------------------------------------------------------

    async def GetPaymentSettings(self, request: svc.GetPaymentSettingsRequest, context: Context) -> svc.PaymentSettings:
        async def work(uow: Uow, merchant_id: str) -> svc.PaymentSettings:
            check_merchant(request.merchant_id, merchant_id)
            return views.settings(await uow.settings.get(merchant_id))

        return await self._read(work)

    async def UpdatePaymentSettings(self, request: svc.UpdatePaymentSettingsRequest, context: Context) -> svc.PaymentSettings:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.PaymentSettings:
            check_merchant(request.merchant_id, merchant_id)
            days: list[int] | None = None
            if request.retry_schedule_days or request.clear_retry_schedule:
                days = list(request.retry_schedule_days)
            command = commands.UpdateSettings(retry_schedule_days=days, after_final_failure=opt(request, "after_final_failure"))
            return views.settings(await self._payments.update_settings(uow, merchant_id, now, command))

        return await self._service.mutate("UpdatePaymentSettings", request, svc.PaymentSettings, work)

    # --- internal: invoicing ------------------------------------------------------------

    async def OpenSessions(self, request: svc.OpenSessionsRequest, context: Context) -> svc.OpenSessionsResponse:
        items = [_open_session(item, i) for i, item in enumerate(request.items)]
        opened = await self._payments.open_sessions(current_merchant_id(), items)
        return svc.OpenSessionsResponse(sessions=[views.session(s) for s in opened])

    async def ChargeInvoice(self, request: svc.ChargeInvoiceRequest, context: Context) -> svc.ChargeOutcome:
        command = commands.ChargeInvoice(
            invoice_id=request.invoice_id,
            customer_id=request.customer_id,
            amount=parse_decimal(request.amount, "amount"),
            currency=request.currency,
            attempt_key=request.attempt_key,
            trigger=request.trigger or "automatic",
            attempt_number=request.attempt_number,
            subscription_id=opt(request, "subscription_id") or None,
            first_attempt_at=_time(request, "first_attempt_at"),
            effective_time=_time(request, "effective_time"),
        )
        return views.outcome(await self._payments.charge_invoice(current_merchant_id(), command))

    async def RefundInvoice(self, request: svc.RefundInvoiceRequest, context: Context) -> svc.RefundInvoiceResponse:
        command = commands.RefundInvoice(
            invoice_id=request.invoice_id,
            credit_note_id=request.credit_note_id,
            amount=parse_decimal(request.amount, "amount"),
            currency=request.currency,
            reason=opt(request, "reason"),
        )
        result = await self._payments.refund_invoice(current_merchant_id(), command)
        out = svc.RefundInvoiceResponse(refunded=result.refunded, status=result.status)
        if result.provider_refund_ref is not None:
            out.provider_refund_ref = result.provider_refund_ref
        return out

    # --- internal: hosted pages and processor webhooks ----------------------------------

    async def GetCheckout(self, request: svc.GetCheckoutRequest, context: Context) -> svc.Checkout:
        return views.checkout(await self._payments.get_checkout(current_merchant_id(), request.session_id))

    async def CompleteCheckout(self, request: svc.CompleteCheckoutRequest, context: Context) -> svc.Checkout:
        command = commands.CompleteCheckout(
            session_id=request.session_id, card_token=request.card_token, submit_nonce=request.submit_nonce or None
        )
        return views.checkout(await self._payments.complete_checkout(current_merchant_id(), command))

    async def HandleProcessorWebhook(
        self, request: svc.HandleProcessorWebhookRequest, context: Context
    ) -> svc.HandleProcessorWebhookResponse:
        headers = {key.lower(): value for key, value in request.headers.items()}
        result = await self._payments.handle_webhook(current_merchant_id(), request.processor, headers, request.body)
        return svc.HandleProcessorWebhookResponse(result=result)
