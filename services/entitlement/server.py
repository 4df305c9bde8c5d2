"""EntitlementService: proto -> command -> use case -> proto, and nothing else.

Rules live in domain/ (aggregates in model.py, use cases in use_cases.py, the balance
model in balance.py, templates in templates.py), queries in store.py, rendering in
views.py, the other services in clients.py, the usage cache in usage.py. The plumbing
(merchant, clock, transaction, Idempotency-Key replays, pages) is
libs/infra/service_layer.py.

A mutation answers the entitlement evaluated after its commit (balances need metering,
which is not called inside a transaction); a replayed call evaluates again. The internal
calls (ApplySubscriptionChange, GetCoverages, RecordPurchasePaid) are idempotent on
their own and do not go through the Idempotency-Key replay: their callers' keys belong
to the callers' own mutations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar

import grpc
from accrue.entitlement.v1 import entitlement_service_pb2 as svc
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as subscription_events

from libs.core.clock import Clock, as_utc
from libs.core.errors import InvalidArgument
from libs.core.money import parse_decimal
from libs.infra.context import current_merchant_id
from libs.infra.db import Database
from libs.infra.logging import get_logger
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.service_layer import ServiceLayer, answer_each, check_batch_size, check_merchant, opt, page_of, pagination
from services.entitlement import clients, store, views
from services.entitlement.domain import commands, use_cases
from services.entitlement.domain.model import Entitlement, Grant, text, units
from services.entitlement.domain.ports import Catalog, Customers, Invoicing, Usage
from services.entitlement.domain.use_cases import CustomerTime, Evaluated
from services.entitlement.store import SqlEntitlementUnitOfWork

log = get_logger(__name__)

R = TypeVar("R")
Uow: TypeAlias = SqlEntitlementUnitOfWork
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# BatchListEntitlements' bound (the gateway's coalesce max_batch in entitlement_service.proto)
MAX_BATCH_LIST = 100

GRANT_PAGE_SIZE = 20  # Paygentic's default page of grants (paygentic-api.md 2.10)

_CHANGE_KINDS = {
    subscription_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED: "activated",
    subscription_events.SUBSCRIPTION_CHANGE_KIND_TERMINATED: "terminated",
}


# instants a request may name: wide enough for any real schedule, narrow enough that the
# period arithmetic of an evaluation stays inside the calendar (and its readings few)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _time(message: Any, name: str, *, prefix: str = "") -> datetime | None:
    if not message.HasField(name):
        return None
    value = as_utc(from_timestamp(getattr(message, name)))
    if not EARLIEST <= value < LATEST:
        field = prefix + _camel(name)
        raise InvalidArgument(field, f"{field} must be between 1970-01-01 and 2200-01-01", reason="OUT_OF_RANGE")
    return value


def _units(value: float, field: str, *, positive: bool = True) -> Decimal:
    """A JSON number as the exact decimal it was written as (its shortest repr)."""
    return units(Decimal(repr(value)), field, positive=positive)


def _template(message: svc.EntitlementTemplate) -> dict[str, Any]:
    """The request's template as camelCase JSON values, only what was given."""
    out: dict[str, Any] = {}
    if message.HasField("type"):
        out["type"] = message.type
    if message.HasField("config"):
        out["config"] = struct_to_dict(message.config)
    if message.HasField("usage_period"):
        period: dict[str, Any] = {"interval": message.usage_period.interval}
        anchor = _time(message.usage_period, "anchor", prefix="template.usagePeriod.")
        if anchor is not None:
            period["anchor"] = anchor.isoformat()
        out["usagePeriod"] = period
    # numbers as the doubles they came as: templates.parse_template reads their shortest repr
    for name in (
        "is_soft_limit", "preserve_overage_at_reset", "issue_after_reset_priority", "billable_metric_id",
        "issue_after_reset", "reset_max_rollover", "reset_min_rollover",
    ):  # fmt: skip
        value = opt(message, name)
        if value is not None:
            out[_camel(name)] = value
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def change_of(change: subscription_events.SubscriptionChanged) -> commands.ApplySubscriptionChange:
    """A SubscriptionChanged (the RPC's, or the stream's) as the use case takes it."""
    return commands.ApplySubscriptionChange(
        kind=_CHANGE_KINDS.get(change.kind, "other"),
        subscription=clients.subscription_facts(change.subscription),
        effective_time=from_timestamp(change.effective_time)
        if change.HasField("effective_time")
        else from_timestamp(change.subscription.update_time),
    )


class EntitlementServicer(entitlement_service_pb2_grpc.EntitlementServiceServicer):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        catalog: Catalog,
        customers: Customers,
        usage: Usage,
        invoicing: Invoicing,
    ) -> None:
        def unit_of_work() -> SqlEntitlementUnitOfWork:
            return SqlEntitlementUnitOfWork(db, clock=clock, translate=views.outbox_message)

        self._unit_of_work = unit_of_work
        self._clock = clock
        self._catalog = catalog
        self._customers = customers
        self._usage = usage
        self._invoicing = invoicing
        self._check_reads = store.SqlCheckReads(db)
        self._service: ServiceLayer[Uow, Uow] = ServiceLayer(clock, unit_of_work, unit_of_work)

    async def _read(self, work: Callable[[Uow, str], Awaitable[R]]) -> R:
        """A read of plain values (the service layer's reads answer messages)."""
        merchant_id = current_merchant_id()
        async with self._unit_of_work() as uow:
            return await work(uow, merchant_id)

    def _times(self) -> CustomerTime:
        return CustomerTime(self._customers, self._clock.now())

    async def _evaluate(self, items: list[tuple[Entitlement, list[Grant]]], at: datetime | None) -> list[Evaluated]:
        return await use_cases.evaluate(items, at=at, times=self._times(), usage=self._usage, merchant_id=current_merchant_id())

    async def _answer(self, entitlement_id: str, at: datetime | None = None) -> svc.Entitlement:
        async def read(uow: Uow, merchant_id: str) -> tuple[Entitlement, list[Grant]]:
            found = await uow.entitlements.get(merchant_id, entitlement_id, field="entitlementId")
            grants = await uow.grants.of_entitlements([found.id]) if found.metered else {}
            return found, grants.get(found.id, [])

        item = await self._read(read)
        return views.entitlement((await self._evaluate([item], at))[0])

    # --- entitlements -----------------------------------------------------------------

    async def ListEntitlements(self, request: svc.ListEntitlementsRequest, context: Context) -> svc.ListEntitlementsResponse:
        return await self._list_entitlements(request)

    async def BatchListEntitlements(self, request: svc.BatchListEntitlementsRequest, context: Context) -> svc.BatchListEntitlementsResponse:
        """ListEntitlements for each request, concurrently, by position (the gateway's
        coalesced REST checks): its answer, or its error as a rejected receipt."""
        check_batch_size(request.requests, MAX_BATCH_LIST, "requests")
        receipts = await answer_each(
            request.requests, self._list_entitlements, svc.EntitlementsReceipt, "response", "listed", method="BatchListEntitlements"
        )
        return svc.BatchListEntitlementsResponse(receipts=receipts)

    async def _list_entitlements(self, request: svc.ListEntitlementsRequest) -> svc.ListEntitlementsResponse:
        merchant_id = current_merchant_id()
        check_merchant(request.merchant_id, merchant_id)
        page = page_of(request)
        query = commands.EntitlementQuery(
            customer_id=opt(request, "customer_id"),
            external_customer_id=opt(request, "external_customer_id"),
            feature_key=opt(request, "feature_key"),
            product_id=opt(request, "product_id"),
            subscription_id=opt(request, "subscription_id"),
            at=_time(request, "at"),
        )
        customer_id = await use_cases.resolve_customer(self._customers, query)
        items, total = await use_cases.list_entitlements(self._check_reads, merchant_id, customer_id, query, page)
        evaluated = await self._evaluate(items, query.at)
        response = svc.ListEntitlementsResponse(
            object="list", data=[views.entitlement(e) for e in evaluated], pagination=pagination(page, total)
        )
        cached = [e.cached_since for e in evaluated if e.cached_since is not None]
        if cached:
            response.stale.computed_at.CopyFrom(to_timestamp(min(cached)))
        return response

    async def IssueEntitlement(self, request: svc.IssueEntitlementRequest, context: Context) -> svc.Entitlement:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Entitlement:
            check_merchant(request.merchant_id, merchant_id)
            command = commands.IssueEntitlement(
                customer_id=request.customer_id,
                feature_id=request.feature_id,
                template=_template(request.template),
                active_from=_time(request, "active_from"),
                active_to=_time(request, "active_to"),
                subscription_id=opt(request, "subscription_id"),
                metadata=dict(request.metadata),
            )
            issued = await use_cases.issue_entitlement(uow, self._catalog, self._customers, merchant_id, now, command)
            return views.stored_entitlement(issued)

        issued: svc.Entitlement = await self._service.mutate("IssueEntitlement", request, svc.Entitlement, work)
        return await self._answer(issued.id)

    async def GetEntitlement(self, request: svc.GetEntitlementRequest, context: Context) -> svc.Entitlement:
        return await self._answer(request.entitlement_id, _time(request, "at"))

    # --- grants -----------------------------------------------------------------------

    async def ListGrants(self, request: svc.ListGrantsRequest, context: Context) -> svc.ListGrantsResponse:
        async def work(uow: Uow, merchant_id: str) -> svc.ListGrantsResponse:
            page = page_of(request, default=GRANT_PAGE_SIZE)
            entitlement = await uow.entitlements.get(merchant_id, request.entitlement_id, field="entitlementId")
            filters = commands.GrantFilters(include_voided=bool(opt(request, "include_voided")))
            found, total = await uow.grants.list_page(merchant_id, entitlement.id, filters, page)
            return svc.ListGrantsResponse(object="list", data=[views.grant(g) for g in found], pagination=pagination(page, total))

        return await self._service.read(work)

    async def CreateGrant(self, request: svc.CreateGrantRequest, context: Context) -> svc.Grant:
        def command() -> commands.CreateGrant:
            if request.HasField("amount_decimal"):
                amount = units(parse_decimal(request.amount_decimal, "amountDecimal", positive=True), "amountDecimal")
            else:
                amount = _units(request.amount, "amount")
            effective_at, expires_at = _time(request, "effective_at"), _time(request, "expires_at")
            maximum = (
                _units(request.reset_max_rollover, "resetMaxRollover", positive=False) if request.HasField("reset_max_rollover") else None
            )
            minimum = (
                _units(request.reset_min_rollover, "resetMinRollover", positive=False) if request.HasField("reset_min_rollover") else None
            )
            priority = opt(request, "priority")
            given: dict[str, Any] = {"amount": text(amount)}
            for key, value in (
                ("effectiveAt", effective_at), ("expiresAt", expires_at), ("resetMaxRollover", maximum),
                ("resetMinRollover", minimum), ("priority", priority),
            ):  # fmt: skip
                if value is not None:
                    given[key] = value.isoformat() if isinstance(value, datetime) else text(value) if isinstance(value, Decimal) else value
            return commands.CreateGrant(
                entitlement_id=request.entitlement_id,
                amount=amount,
                idempotency_key=request.idempotency_key,
                given=given,
                effective_at=effective_at,
                expires_at=expires_at,
                reset_max_rollover=maximum,
                reset_min_rollover=minimum,
                priority=priority,
            )

        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Grant:
            return views.grant(await use_cases.create_grant(uow, self._customers, merchant_id, now, command()))

        result: svc.Grant = await self._service.mutate("CreateGrant", request, svc.Grant, work)
        return result

    async def PurchaseGrant(self, request: svc.PurchaseGrantRequest, context: Context) -> svc.PurchaseGrantResponse:
        def command() -> commands.PurchaseGrant:
            amount = _units(request.amount, "amount")
            effective_at, expires_at = _time(request, "effective_at"), _time(request, "expires_at")
            maximum = (
                _units(request.reset_max_rollover, "resetMaxRollover", positive=False) if request.HasField("reset_max_rollover") else None
            )
            minimum = (
                _units(request.reset_min_rollover, "resetMinRollover", positive=False) if request.HasField("reset_min_rollover") else None
            )
            payment_expires_at = _time(request, "payment_expires_at")
            given: dict[str, Any] = {"amount": text(amount), "price": request.price}
            for key, value in (
                ("effectiveAt", effective_at), ("expiresAt", expires_at), ("resetMaxRollover", maximum),
                ("resetMinRollover", minimum), ("successUrl", opt(request, "success_url")),
                ("cancelUrl", opt(request, "cancel_url")), ("paymentExpiresAt", payment_expires_at),
            ):  # fmt: skip
                if value is not None:
                    given[key] = value.isoformat() if isinstance(value, datetime) else text(value) if isinstance(value, Decimal) else value
            return commands.PurchaseGrant(
                entitlement_id=request.entitlement_id,
                amount=amount,
                price=request.price,
                idempotency_key=request.idempotency_key,
                given=given,
                effective_at=effective_at,
                expires_at=expires_at,
                reset_max_rollover=maximum,
                reset_min_rollover=minimum,
                success_url=opt(request, "success_url"),
                cancel_url=opt(request, "cancel_url"),
                payment_expires_at=payment_expires_at,
            )

        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.PurchaseGrantResponse:
            purchase = await use_cases.claim_purchase(uow, self._catalog, self._customers, merchant_id, now, command())
            return svc.PurchaseGrantResponse(
                object="grant_purchase",
                entitlement_id=purchase.entitlement_id,
                grant_amount=float(purchase.amount),
                price=purchase.price,
                currency=purchase.currency,
            )

        claimed: svc.PurchaseGrantResponse = await self._service.mutate("PurchaseGrant", request, svc.PurchaseGrantResponse, work)

        async def find(uow: Uow, merchant_id: str) -> str:
            purchase = await uow.purchases.by_key(claimed.entitlement_id, request.idempotency_key)
            assert purchase is not None, "a claimed purchase is stored"
            return purchase.id

        purchase_id = await self._read(find)
        _, invoice, price = await use_cases.issue_purchase_invoice(
            self._unit_of_work, self._invoicing, self._customers, current_merchant_id(), self._clock.now(), purchase_id
        )
        response = svc.PurchaseGrantResponse()
        response.CopyFrom(claimed)
        response.invoice_id = invoice.id
        if invoice.payment_url is not None:
            session = response.payment_sessions.add(url=invoice.payment_url, amount=price.minor_units)
            if invoice.payment_expires_at is not None:
                session.expires_at.CopyFrom(to_timestamp(invoice.payment_expires_at))
        return response

    async def GetGrant(self, request: svc.GetGrantRequest, context: Context) -> svc.Grant:
        async def work(uow: Uow, merchant_id: str) -> svc.Grant:
            entitlement = await uow.entitlements.get(merchant_id, request.entitlement_id, field="entitlementId")
            return views.grant(await uow.grants.get(merchant_id, entitlement.id, request.grant_id))

        return await self._service.read(work)

    async def VoidGrant(self, request: svc.VoidGrantRequest, context: Context) -> svc.Grant:
        async def work(uow: Uow, merchant_id: str, now: datetime) -> svc.Grant:
            command = commands.VoidGrant(request.entitlement_id, request.grant_id)
            return views.grant(await use_cases.void_grant(uow, self._customers, merchant_id, now, command))

        result: svc.Grant = await self._service.mutate("VoidGrant", request, svc.Grant, work)
        return result

    # --- internal ---------------------------------------------------------------------

    async def CheckEntitlement(self, request: svc.CheckEntitlementRequest, context: Context) -> svc.CheckEntitlementResponse:
        query = commands.EntitlementQuery(
            customer_id=opt(request, "customer_id"),
            external_customer_id=opt(request, "external_customer_id"),
            feature_key=request.feature_key,
            product_id=opt(request, "product_id"),
            at=_time(request, "at"),
        )
        found = await use_cases.check_entitlement(
            self._check_reads, self._customers, self._usage, self._times(), current_merchant_id(), query
        )
        if found is None:
            return svc.CheckEntitlementResponse(has_access=False)
        response = svc.CheckEntitlementResponse(has_access=found.has_access, entitlement=views.entitlement(found))
        if found.evaluation is not None:
            response.balance_decimal = text(found.evaluation.balance)
        if found.usage_counted_until is not None:
            response.usage_counted_until.CopyFrom(to_timestamp(found.usage_counted_until))
        return response

    async def ApplySubscriptionChange(
        self, request: svc.ApplySubscriptionChangeRequest, context: Context
    ) -> svc.ApplySubscriptionChangeResponse:
        if not request.HasField("change") or not request.change.subscription.id:
            raise InvalidArgument("change.subscription.id", "change.subscription.id is required", reason="REQUIRED")
        provisioned = await use_cases.apply_subscription_change(
            self._unit_of_work,
            self._catalog,
            current_merchant_id(),
            self._clock.now(),
            change_of(request.change),
            customers=self._customers,
        )
        for feature_id, why in provisioned.skipped:
            log.warning("entitlement_template_skipped", subscription_id=request.change.subscription.id, feature_id=feature_id, error=why)
        return svc.ApplySubscriptionChangeResponse(entitlement_ids=provisioned.entitlement_ids)

    async def GetCoverages(self, request: svc.GetCoveragesRequest, context: Context) -> svc.GetCoveragesResponse:
        queries = []
        for index, q in enumerate(request.queries):
            start, end = _time(q, "from_time", prefix=f"queries[{index}]."), _time(q, "to_time", prefix=f"queries[{index}].")
            if start is None or end is None:
                raise InvalidArgument(f"queries[{index}].fromTime", "fromTime and toTime are required", reason="REQUIRED")
            queries.append(commands.CoverageQuery(q.subscription_id, q.billable_metric_id, start, end))
        results, complete_until = await use_cases.coverages(self._unit_of_work, self._usage, current_merchant_id(), queries)
        response = svc.GetCoveragesResponse(coverages=[views.coverage(r) for r in results])
        if complete_until is not None:
            response.usage_counted_until.CopyFrom(to_timestamp(complete_until))
        return response

    async def RecordPurchasePaid(self, request: svc.RecordPurchasePaidRequest, context: Context) -> svc.Grant:
        command = commands.RecordPurchasePaid(invoice_id=request.invoice_id, paid_at=_time(request, "paid_at"))
        merchant_id, now = current_merchant_id(), self._clock.now()
        async with self._unit_of_work() as uow:
            return views.grant(await use_cases.record_purchase_paid(uow, self._customers, merchant_id, now, command))
