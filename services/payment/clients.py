"""The services the payment service calls, behind its domain ports (domain/ports.py): the
subscription service (customers) and invoicing (an invoice's state before a page charges
it; RecordChargeOutcome after a decided charge).

Each call carries the merchant token of the request being served, or one this process
mints for the merchant outside any request (the janitor, consumers:
libs.infra.context.acting_for), never the caller's Idempotency-Key: that belongs to the
caller's own mutation. Channels are made lazily, inside the running event loop, one per
address (libs/infra/grpc_client.shared_channel).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from accrue.invoicing.v1 import invoicing_service_pb2 as invoicing_svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as subscription_svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.core.errors import NotFound, Unavailable
from libs.infra import grpc_client
from libs.infra.context import acting_for, current_merchant_id
from libs.infra.proto_time import to_timestamp
from services.payment.domain.ports import ChargeReport, InvoiceState, RecordedOutcome

CALLER = "the payment service"
RECORD_TIMEOUT_SECONDS = 15.0


class SubscriptionClient:
    """domain/ports.Customers over the subscription service's GetCustomer."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    def _stub(self) -> subscription_service_pb2_grpc.SubscriptionServiceStub:
        if self._address is None:
            raise grpc_client.unconfigured("subscription", caller=CALLER)
        return subscription_service_pb2_grpc.SubscriptionServiceStub(grpc_client.shared_channel(self._address))

    async def ensure_customer(self, customer_id: str, *, field: str = "customerId") -> None:
        try:
            with acting_for(current_merchant_id()):
                await self._stub().GetCustomer(subscription_svc.GetCustomerRequest(id=customer_id))
        except NotFound:
            raise NotFound("customer", customer_id, field=field) from None


class InvoicingClient:
    """domain/ports.Invoicing over invoicing's GetInvoice and RecordChargeOutcome."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    def _stub(self) -> invoicing_service_pb2_grpc.InvoicingServiceStub:
        if self._address is None:
            raise grpc_client.unconfigured("invoicing", caller=CALLER)
        return invoicing_service_pb2_grpc.InvoicingServiceStub(grpc_client.shared_channel(self._address))

    async def invoice_state(self, invoice_id: str) -> InvoiceState:
        with acting_for(current_merchant_id()):
            invoice = await self._stub().GetInvoice(invoicing_svc.GetInvoiceRequest(id=invoice_id))
        try:
            unpaid = Decimal(invoice.unpaid_amount or "0")
        except InvalidOperation:
            raise Unavailable("INVOICE_UNREADABLE", f"invoicing answered unpaidAmount {invoice.unpaid_amount!r}") from None
        return InvoiceState(status=invoice.status, unpaid_amount=unpaid, currency=invoice.currency)

    async def record_charge_outcome(self, report: ChargeReport) -> RecordedOutcome:
        request = invoicing_svc.RecordChargeOutcomeRequest(
            invoice_id=report.invoice_id,
            status=report.status,
            attempt_key=report.attempt_key,
            amount=report.amount,
        )
        if report.effective_time is not None:
            request.effective_time.CopyFrom(to_timestamp(report.effective_time))
        if report.provider_payment_ref is not None:
            request.provider_payment_ref = report.provider_payment_ref
        if report.failure_code is not None:
            request.failure_code = report.failure_code
        if report.payment_session_id is not None:
            request.payment_session_id = report.payment_session_id
        with acting_for(current_merchant_id()):
            # paying Invoice 0 activates the subscription and its entitlements before it answers
            invoice = await self._stub().RecordChargeOutcome(request, timeout=RECORD_TIMEOUT_SECONDS)
        paid_by = invoice.paid_by_attempt_key if invoice.HasField("paid_by_attempt_key") else None
        return RecordedOutcome(status=invoice.status, paid_by_attempt_key=paid_by or None)
