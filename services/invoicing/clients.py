"""The services invoicing calls, over gRPC (domain/ports.py: Catalog, Meter, Subscriptions,
Entitlements, Payments).

Each call carries the merchant token of the request being served (libs/infra/grpc_client.py
forwards it): the engine's step or the REST call acts for one merchant, and so do these.
Channels are made lazily, inside the running event loop, one per address.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation

from accrue.catalog.v1 import catalog_resources_pb2 as catalog_res
from accrue.catalog.v1 import catalog_service_pb2 as catalog_svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.entitlement.v1 import entitlement_service_pb2 as entitlement_svc
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as metering_svc
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.payment.v1 import payment_service_pb2 as payment_svc
from accrue.payment.v1 import payment_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as subscription_svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.core.errors import NotFound, Unavailable
from libs.core.money import currency_exponent, format_major
from libs.infra import grpc_client
from libs.infra.context import acting_for, current_merchant_id
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.invoicing import mapping
from services.invoicing.domain.calculation import Charge, Coverage, GrantCovered
from services.invoicing.domain.model import Invoice, Terms
from services.invoicing.domain.ports import (
    ChargeRequest,
    ChargeResult,
    CoverageQuery,
    Reading,
    RefundResult,
    Session,
    SessionRequest,
)

# metric names and units change rarely; an invoice shows them as they were at most this old
METRIC_CACHE_SECONDS = 60.0
_VERSION_PAGE = 100


class CatalogClient:
    """The pinned plan version's price slots (GetPlanVersion; immutable, so kept) and the
    names of their metrics (GetBillableMetric, kept a minute)."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._versions: dict[tuple[str, str], catalog_res.PlanVersion] = {}
        self._metrics: dict[tuple[str, str], tuple[float, catalog_res.BillableMetric]] = {}

    def _stub(self) -> catalog_service_pb2_grpc.CatalogServiceStub:
        if self._address is None:
            raise grpc_client.unconfigured("catalog", caller="invoicing")
        return catalog_service_pb2_grpc.CatalogServiceStub(grpc_client.shared_channel(self._address))

    async def _version(self, merchant_id: str, terms: Terms) -> catalog_res.PlanVersion:
        key = (merchant_id, terms.plan_version_id)
        if key in self._versions:
            return self._versions[key]
        stub = self._stub()
        if terms.plan_version_number > 0:
            version: catalog_res.PlanVersion = await stub.GetPlanVersion(
                catalog_svc.GetPlanVersionRequest(id=terms.plan_id, version_number=terms.plan_version_number)
            )
        else:
            version = await self._find_version(stub, terms)
        self._versions[key] = version
        return version

    async def _find_version(self, stub: catalog_service_pb2_grpc.CatalogServiceStub, terms: Terms) -> catalog_res.PlanVersion:
        offset = 0
        while True:
            page: catalog_svc.ListPlanVersionsResponse = await stub.ListPlanVersions(
                catalog_svc.ListPlanVersionsRequest(id=terms.plan_id, limit=_VERSION_PAGE, offset=offset)
            )
            for version in page.data:
                if version.id == terms.plan_version_id:
                    found: catalog_res.PlanVersion = version
                    return found
            offset += len(page.data)
            if not page.data or offset >= page.pagination.total:
                raise NotFound("plan_version", terms.plan_version_id, field="terms.planVersionId")

    async def _metric(self, merchant_id: str, metric_id: str) -> catalog_res.BillableMetric:
        key = (merchant_id, metric_id)
        cached = self._metrics.get(key)
        if cached is not None and time.monotonic() - cached[0] < METRIC_CACHE_SECONDS:
            return cached[1]
        metric: catalog_res.BillableMetric = await self._stub().GetBillableMetric(catalog_svc.GetBillableMetricRequest(id=metric_id))
        self._metrics[key] = (time.monotonic(), metric)
        return metric

    async def charges(self, terms: Terms) -> list[Charge]:
        merchant_id = current_merchant_id()
        version = await self._version(merchant_id, terms)
        metric_ids = sorted({slot.billable_metric_id for slot in version.prices if slot.HasField("billable_metric_id")})
        metrics = dict(zip(metric_ids, await asyncio.gather(*(self._metric(merchant_id, m) for m in metric_ids)), strict=True))
        return [mapping.charge(slot, metrics.get(slot.billable_metric_id)) for slot in version.prices]


class MeterClient:
    """Usage of one metric for one customer over a window (GetMeter) with its watermark."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    async def usage(self, metric_id: str, subject: str, start: datetime, end: datetime) -> Reading:
        if self._address is None:
            raise grpc_client.unconfigured("metering", caller="invoicing")
        stub = metering_service_pb2_grpc.MeteringServiceStub(grpc_client.shared_channel(self._address))
        answer = await stub.GetMeter(
            metering_svc.GetMeterRequest(id=metric_id, from_time=to_timestamp(start), to_time=to_timestamp(end), subject=subject)
        )
        try:
            quantity = Decimal(answer.total_value_decimal or "0")
        except InvalidOperation:
            raise Unavailable("USAGE_UNREADABLE", f"metering answered {answer.total_value_decimal!r} for {metric_id}") from None
        complete_until = from_timestamp(answer.complete_until) if answer.HasField("complete_until") else None
        return Reading(
            quantity=quantity,
            complete_until=complete_until,
            query={
                "meter": "metering.GetMeter",
                "billableMetricId": metric_id,
                "subject": subject,
                "from": start.isoformat(),
                "to": end.isoformat(),
                "value": format(quantity, "f"),
                "completeUntil": None if complete_until is None else complete_until.isoformat(),
            },
        )

    async def usages(self, wanted: Sequence[tuple[str, str, datetime, datetime]]) -> tuple[list[Reading], datetime | None]:
        """Many readings in one GetUsages call (metering reads its watermark first)."""
        if self._address is None:
            raise grpc_client.unconfigured("metering", caller="invoicing")
        stub = metering_service_pb2_grpc.MeteringServiceStub(grpc_client.shared_channel(self._address))
        answer = await stub.GetUsages(
            metering_svc.GetUsagesRequest(
                readings=[
                    metering_svc.UsageReading(billable_metric_id=m, subject=s, from_time=to_timestamp(a), to_time=to_timestamp(b))
                    for m, s, a, b in wanted
                ]
            )
        )
        if len(answer.total_value_decimals) != len(wanted):
            raise Unavailable("USAGE_UNREADABLE", f"metering answered {len(answer.total_value_decimals)} of {len(wanted)} readings")
        complete_until = from_timestamp(answer.complete_until) if answer.HasField("complete_until") else None
        until_text = None if complete_until is None else complete_until.isoformat()
        out = []
        for (metric_id, subject, start, end), text in zip(wanted, answer.total_value_decimals, strict=True):
            try:
                quantity = Decimal(text or "0")
            except InvalidOperation:
                raise Unavailable("USAGE_UNREADABLE", f"metering answered {text!r} for {metric_id}") from None
            out.append(
                Reading(
                    quantity=quantity,
                    complete_until=complete_until,
                    query={
                        "meter": "metering.GetUsages",
                        "billableMetricId": metric_id,
                        "subject": subject,
                        "from": start.isoformat(),
                        "to": end.isoformat(),
                        "value": format(quantity, "f"),
                        "completeUntil": until_text,
                    },
                )
            )
        return out, complete_until


class SubscriptionClient:
    """RecordInvoicePaid of the subscription service (activation by Invoice 0)."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    async def invoice_paid(self, invoice: Invoice) -> None:
        if self._address is None:
            raise grpc_client.unconfigured("subscription", caller="invoicing")
        stub = subscription_service_pb2_grpc.SubscriptionServiceStub(grpc_client.shared_channel(self._address))
        request = subscription_svc.RecordInvoicePaidRequest(
            subscription_id=invoice.subscription_id,
            invoice_id=invoice.id,
            sequence_number=invoice.sequence_number,
            amount=format_major(invoice.paid_amount, currency_exponent(invoice.currency)),
        )
        # the request's token, without its Idempotency-Key: the key is this call's
        # caller's, for invoicing's own replay, and means nothing to the subscription service
        with acting_for(invoice.merchant_id):
            await stub.RecordInvoicePaid(request)


def _exact(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text or "0")
    except InvalidOperation:
        raise Unavailable("COVERAGE_UNREADABLE", f"the entitlement service answered {text!r} for {what}") from None
    if not value.is_finite():
        raise Unavailable("COVERAGE_UNREADABLE", f"the entitlement service answered {text!r} for {what}")
    return value


def coverage_of(answer: entitlement_svc.Coverage) -> Coverage | None:
    """A GetCoverages answer as the calculation's Coverage (None when not found)."""
    if not answer.found:
        return None
    return Coverage(
        entitlement_id=answer.entitlement_id,
        is_soft_limit=answer.is_soft_limit,
        usage=_exact(answer.usage_decimal, "usageDecimal"),
        covered=_exact(answer.covered_decimal, "coveredDecimal"),
        billable=_exact(answer.billable_decimal, "billableDecimal"),
        grants=tuple(GrantCovered(g.grant_id, _exact(g.covered_decimal, f"grant {g.grant_id}")) for g in answer.grants),
    )


class EntitlementClient:
    """GetCoverages (included quantities: the grants' part of a window's usage) and
    RecordPurchasePaid (a grant-purchase invoice paid) of the entitlement service."""

    def __init__(self, address: str) -> None:
        self._address = address

    def _stub(self) -> entitlement_service_pb2_grpc.EntitlementServiceStub:
        return entitlement_service_pb2_grpc.EntitlementServiceStub(grpc_client.shared_channel(self._address))

    async def coverages(self, queries: Sequence[CoverageQuery]) -> tuple[list[Coverage | None], datetime | None]:
        answer: entitlement_svc.GetCoveragesResponse = await self._stub().GetCoverages(
            entitlement_svc.GetCoveragesRequest(
                queries=[
                    entitlement_svc.CoverageQuery(
                        subscription_id=q.subscription_id,
                        billable_metric_id=q.metric_id,
                        from_time=to_timestamp(q.start),
                        to_time=to_timestamp(q.end),
                    )
                    for q in queries
                ]
            )
        )
        if len(answer.coverages) != len(queries):
            raise Unavailable(
                "COVERAGE_UNREADABLE", f"the entitlement service answered {len(answer.coverages)} of {len(queries)} coverages"
            )
        until = from_timestamp(answer.usage_counted_until) if answer.HasField("usage_counted_until") else None
        return [coverage_of(c) for c in answer.coverages], until

    async def purchase_paid(self, invoice: Invoice, paid_at: datetime | None) -> None:
        request = entitlement_svc.RecordPurchasePaidRequest(invoice_id=invoice.id)
        if paid_at is not None:
            request.paid_at.CopyFrom(to_timestamp(paid_at))
        # the merchant's token without the caller's Idempotency-Key (as invoice_paid)
        with acting_for(invoice.merchant_id):
            await self._stub().RecordPurchasePaid(request)


# a charge waits for the processor (its adapter's timeout, 5 s) and its recording
CHARGE_TIMEOUT_SECONDS = 20.0
# a batch of up to 1000 sessions
SESSIONS_TIMEOUT_SECONDS = 15.0
REFUND_TIMEOUT_SECONDS = 20.0


def _major(atomic: int, currency: str) -> str:
    return format_major(atomic, currency_exponent(currency))


def _opt(message: object, name: str) -> str | None:
    value = getattr(message, name)
    return value if message.HasField(name) and value else None  # type: ignore[attr-defined]


class PaymentClient:
    """OpenSessions, ChargeInvoice and RefundInvoice of the payment service, with the
    merchant's token and without the caller's Idempotency-Key (each call is idempotent on
    its own: by entity, by attempt key, by credit note id)."""

    def __init__(self, address: str) -> None:
        self._address = address

    def _stub(self) -> payment_service_pb2_grpc.PaymentServiceStub:
        return payment_service_pb2_grpc.PaymentServiceStub(grpc_client.shared_channel(self._address))

    async def open_sessions(self, merchant_id: str, requests: Sequence[SessionRequest]) -> list[Session]:
        items = []
        for r in requests:
            item = payment_svc.OpenSessionRequest(
                entity_type=r.entity_type,
                entity_id=r.entity_id,
                customer_id=r.customer_id,
                amount=_major(r.amount, r.currency),
                currency=r.currency,
                entity_label=r.label,
                lines=[
                    payment_svc.CheckoutLine(
                        description=line.description, amount=_major(line.amount, r.currency), quantity=mapping.decimal_text(line.quantity)
                    )
                    for line in r.lines
                ],
                expires_at=to_timestamp(r.expires_at),
                replace=r.replace,
                save_payment_method=r.save_payment_method,
            )
            if r.subscription_id:
                item.subscription_id = r.subscription_id
            if r.success_redirect_url:
                item.success_redirect_url = r.success_redirect_url
            if r.failure_redirect_url:
                item.failure_redirect_url = r.failure_redirect_url
            items.append(item)
        with acting_for(merchant_id):
            answer: payment_svc.OpenSessionsResponse = await self._stub().OpenSessions(
                payment_svc.OpenSessionsRequest(items=items), timeout=SESSIONS_TIMEOUT_SECONDS
            )
        return [Session(id=s.id, url=s.url) for s in answer.sessions]

    async def charge_invoice(self, merchant_id: str, request: ChargeRequest) -> ChargeResult:
        message = payment_svc.ChargeInvoiceRequest(
            invoice_id=request.invoice_id,
            customer_id=request.customer_id,
            amount=_major(request.amount, request.currency),
            currency=request.currency,
            attempt_key=request.attempt_key,
            trigger=request.trigger,
        )
        if request.subscription_id:
            message.subscription_id = request.subscription_id
        with acting_for(merchant_id):
            outcome: payment_svc.ChargeOutcome = await self._stub().ChargeInvoice(message, timeout=CHARGE_TIMEOUT_SECONDS)
        return ChargeResult(
            status=outcome.status,
            attempt_key=outcome.attempt_key or request.attempt_key,
            provider_payment_ref=_opt(outcome, "provider_payment_ref"),
            failure_code=_opt(outcome, "failure_code"),
            failure_message=_opt(outcome, "failure_message"),
            decline_code=_opt(outcome, "decline_code"),
            payment_session_id=_opt(outcome, "payment_session_id"),
        )

    async def refund_invoice(
        self, merchant_id: str, *, invoice_id: str, credit_note_id: str, amount: int, currency: str, reason: str | None
    ) -> RefundResult:
        message = payment_svc.RefundInvoiceRequest(
            invoice_id=invoice_id, credit_note_id=credit_note_id, amount=_major(amount, currency), currency=currency
        )
        if reason:
            message.reason = reason
        with acting_for(merchant_id):
            answer: payment_svc.RefundInvoiceResponse = await self._stub().RefundInvoice(message, timeout=REFUND_TIMEOUT_SECONDS)
        return RefundResult(refunded=answer.refunded, provider_refund_ref=_opt(answer, "provider_refund_ref"), status=answer.status)
