"""The services the entitlement service calls, behind its domain ports (domain/ports.py):
the catalog (plan versions' price features, features, prices, plans), the subscription
service (customers, subscriptions, test-clock time), metering (usage: GetUsages, through
usage.py's cache) and invoicing (grant-purchase invoices).

Each call carries the merchant token of the request being served, or one this process
mints for the merchant outside any request (consumers.py, libs.infra.context.acting_for),
never the caller's Idempotency-Key: that belongs to the caller's mutation. Channels are
made lazily, inside the running event loop, one per address.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from accrue.catalog.v1 import catalog_resources_pb2 as catalog_res
from accrue.catalog.v1 import catalog_service_pb2 as catalog_svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as invoicing_svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as metering_svc
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as subscription_svc
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.core.errors import NotFound, Unavailable
from libs.infra import grpc_client
from libs.infra.context import acting_for, current_merchant_id
from libs.infra.proto_struct import dict_to_struct, struct_to_dict
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.entitlement.domain.commands import SubscriptionFacts
from services.entitlement.domain.model import FeatureFacts
from services.entitlement.domain.ports import AdHocInvoice, IssuedInvoice, PlanFeature, UsageKey

_PAGE = 100
# an external id names a customer for this long here (it may be moved to another one)
EXTERNAL_ID_CACHE_SECONDS = 5.0


def subscription_facts(subscription: subscription_svc.Subscription) -> SubscriptionFacts:
    """The subscription as provisioning needs it (from an event or GetSubscription)."""
    return SubscriptionFacts(
        id=subscription.id,
        merchant_id=subscription.merchant_id,
        customer_id=subscription.customer_id,
        plan_id=subscription.plan_id,
        plan_version_id=subscription.plan_version_id,
        version_number=subscription.version_number,
        status=subscription.status,
        started_at=from_timestamp(subscription.started_at),
        billing_anchor=from_timestamp(subscription.billing_anchor) if subscription.HasField("billing_anchor") else None,
        terminated_at=from_timestamp(subscription.terminated_at) if subscription.HasField("terminated_at") else None,
        test_clock_id=subscription.test_clock_id if subscription.HasField("test_clock_id") and subscription.test_clock_id else None,
    )


class CatalogClient:
    """domain/ports.Catalog over the catalog's gRPC API. Plan versions are immutable and a
    feature's product never changes, so both are kept."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._versions: dict[tuple[str, str], catalog_res.PlanVersion] = {}
        self._products: dict[tuple[str, str], str] = {}

    def _stub(self) -> catalog_service_pb2_grpc.CatalogServiceStub:
        if self._address is None:
            raise grpc_client.unconfigured("catalog", caller="the entitlement service")
        return catalog_service_pb2_grpc.CatalogServiceStub(grpc_client.shared_channel(self._address))

    async def _version(self, subscription: SubscriptionFacts) -> catalog_res.PlanVersion:
        merchant_id = current_merchant_id()
        key = (merchant_id, subscription.plan_version_id)
        if key not in self._versions:
            stub = self._stub()
            with acting_for(merchant_id):
                if subscription.version_number > 0:
                    version: catalog_res.PlanVersion = await stub.GetPlanVersion(
                        catalog_svc.GetPlanVersionRequest(id=subscription.plan_id, version_number=subscription.version_number)
                    )
                else:
                    version = await self._find_version(stub, subscription)
            self._versions[key] = version
        return self._versions[key]

    async def _find_version(
        self, stub: catalog_service_pb2_grpc.CatalogServiceStub, subscription: SubscriptionFacts
    ) -> catalog_res.PlanVersion:
        offset = 0
        while True:
            page: catalog_svc.ListPlanVersionsResponse = await stub.ListPlanVersions(
                catalog_svc.ListPlanVersionsRequest(id=subscription.plan_id, limit=_PAGE, offset=offset)
            )
            for version in page.data:
                if version.id == subscription.plan_version_id:
                    found: catalog_res.PlanVersion = version
                    return found
            offset += len(page.data)
            if not page.data or offset >= page.pagination.total:
                raise NotFound("plan_version", subscription.plan_version_id, field="planVersionId")

    async def _product_of(self, feature_id: str) -> str:
        merchant_id = current_merchant_id()
        key = (merchant_id, feature_id)
        if key not in self._products:
            self._products[key] = (await self._get_feature(feature_id)).product_id
        return self._products[key]

    async def _get_feature(self, feature_id: str) -> catalog_res.Feature:
        merchant_id = current_merchant_id()
        try:
            with acting_for(merchant_id):
                feature: catalog_res.Feature = await self._stub().GetFeature(catalog_svc.GetFeatureRequest(id=feature_id))
        except NotFound:
            raise NotFound("feature", feature_id, field="featureId") from None
        if feature.merchant_id and feature.merchant_id != merchant_id:
            raise NotFound("feature", feature_id, field="featureId")
        return feature

    async def plan_features(self, subscription: SubscriptionFacts) -> list[PlanFeature]:
        version = await self._version(subscription)
        out: list[PlanFeature] = []
        seen: set[str] = set()
        for slot in version.prices:
            metric_id = slot.billable_metric_id if slot.HasField("billable_metric_id") and slot.billable_metric_id else None
            for attached in slot.features:
                if attached.feature_id in seen:
                    continue  # the first price carrying a feature provisions it
                seen.add(attached.feature_id)
                summary = attached.feature
                feature = FeatureFacts(
                    id=attached.feature_id,
                    key=summary.key,
                    name=summary.name,
                    type=summary.type,
                    product_id=await self._product_of(attached.feature_id),
                )
                out.append(
                    PlanFeature(feature=feature, template=struct_to_dict(attached.entitlement_template), billable_metric_id=metric_id)
                )
        return out

    async def feature(self, feature_id: str) -> FeatureFacts:
        found = await self._get_feature(feature_id)
        self._products[(current_merchant_id(), feature_id)] = found.product_id
        return FeatureFacts(id=found.id, key=found.key, name=found.name, type=found.type, product_id=found.product_id)

    async def ensure_billable_metric(self, metric_id: str) -> None:
        merchant_id = current_merchant_id()
        try:
            with acting_for(merchant_id):
                request = catalog_svc.GetBillableMetricRequest(id=metric_id)
                metric: catalog_res.BillableMetric = await self._stub().GetBillableMetric(request)
        except NotFound:
            raise NotFound("billable_metric", metric_id, field="template.billableMetricId") from None
        if metric.merchant_id and metric.merchant_id != merchant_id:
            raise NotFound("billable_metric", metric_id, field="template.billableMetricId")

    async def feature_metrics(self, feature_id: str) -> list[str]:
        merchant_id = current_merchant_id()
        stub = self._stub()
        metrics: dict[str, None] = {}
        offset = 0
        with acting_for(merchant_id):
            while True:
                page: catalog_svc.ListPricesResponse = await stub.ListPrices(catalog_svc.ListPricesRequest(limit=_PAGE, offset=offset))
                for price in page.data:
                    if price.HasField("billable_metric_id") and any(f.feature_id == feature_id for f in price.features):
                        metrics[price.billable_metric_id] = None
                offset += len(page.data)
                if not page.data or offset >= page.pagination.total:
                    break
        return list(metrics)

    async def plan_currency(self, plan_id: str) -> str | None:
        merchant_id = current_merchant_id()
        try:
            with acting_for(merchant_id):
                plan: catalog_res.Plan = await self._stub().GetPlan(catalog_svc.GetPlanRequest(id=plan_id))
        except NotFound:
            return None
        return plan.currency or None


class SubscriptionClient:
    """domain/ports.Customers over the subscription service's gRPC API."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._external: dict[tuple[str, str], tuple[float, str]] = {}

    def _stub(self) -> subscription_service_pb2_grpc.SubscriptionServiceStub:
        if self._address is None:
            raise grpc_client.unconfigured("subscription", caller="the entitlement service")
        return subscription_service_pb2_grpc.SubscriptionServiceStub(grpc_client.shared_channel(self._address))

    async def ensure_customer(self, customer_id: str) -> None:
        try:
            with acting_for(current_merchant_id()):
                await self._stub().GetCustomer(subscription_svc.GetCustomerRequest(id=customer_id))
        except NotFound:
            raise NotFound("customer", customer_id, field="customerId") from None

    async def customer_by_external_id(self, external_id: str) -> str:
        merchant_id = current_merchant_id()
        key = (merchant_id, external_id)
        cached = self._external.get(key)
        if cached is not None and time.monotonic() - cached[0] < EXTERNAL_ID_CACHE_SECONDS:
            return cached[1]
        with acting_for(merchant_id):
            page: subscription_svc.ListCustomersResponse = await self._stub().ListCustomers(
                subscription_svc.ListCustomersRequest(external_id=external_id, limit=1)
            )
        if not page.data:
            raise NotFound("customer", external_id, field="externalCustomerId")
        customer_id = str(page.data[0].id)
        self._external[key] = (time.monotonic(), customer_id)
        return customer_id

    async def subscription(self, subscription_id: str) -> SubscriptionFacts:
        try:
            with acting_for(current_merchant_id()):
                found = await self._stub().GetSubscription(subscription_svc.GetSubscriptionRequest(id=subscription_id))
        except NotFound:
            raise NotFound("subscription", subscription_id, field="subscriptionId") from None
        return subscription_facts(found)

    async def customer_clock(self, customer_id: str) -> str | None:
        with acting_for(current_merchant_id()):
            page: subscription_svc.ListSubscriptionsResponse = await self._stub().ListSubscriptions(
                subscription_svc.ListSubscriptionsRequest(customer_id=customer_id, limit=_PAGE)
            )
        for subscription in page.data:
            if subscription.HasField("test_clock_id") and subscription.test_clock_id:
                return str(subscription.test_clock_id)
        return None

    async def clock_time(self, test_clock_id: str) -> datetime:
        with acting_for(current_merchant_id()):
            clock = await self._stub().GetTestClock(subscription_svc.GetTestClockRequest(id=test_clock_id))
        return from_timestamp(clock.current_time)


class MeteringClient:
    """usage.MeterReads over metering's GetUsages (deduplicated totals, one watermark)."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    async def usages(self, wanted: Sequence[UsageKey]) -> tuple[list[Decimal], datetime | None]:
        if self._address is None:
            raise grpc_client.unconfigured("metering", caller="the entitlement service")
        stub = metering_service_pb2_grpc.MeteringServiceStub(grpc_client.shared_channel(self._address))
        request = metering_svc.GetUsagesRequest(
            readings=[
                metering_svc.UsageReading(
                    billable_metric_id=key.billable_metric_id,
                    subject=key.subject,
                    from_time=to_timestamp(key.window.start),
                    to_time=to_timestamp(key.window.end),
                )
                for key in wanted
            ]
        )
        with acting_for(current_merchant_id()):
            answer = await stub.GetUsages(request)
        if len(answer.total_value_decimals) != len(wanted):
            raise Unavailable("USAGE_UNREADABLE", f"metering answered {len(answer.total_value_decimals)} of {len(wanted)} readings")
        totals = []
        for text in answer.total_value_decimals:
            try:
                totals.append(Decimal(text or "0"))
            except InvalidOperation:
                raise Unavailable("USAGE_UNREADABLE", f"metering answered {text!r}") from None
        return totals, from_timestamp(answer.complete_until) if answer.HasField("complete_until") else None


class InvoicingClient:
    """domain/ports.Invoicing over invoicing's IssueAdHocInvoice."""

    def __init__(self, address: str | None) -> None:
        self._address = address

    async def issue_ad_hoc_invoice(self, invoice: AdHocInvoice) -> IssuedInvoice:
        if self._address is None:
            raise grpc_client.unconfigured("invoicing", caller="the entitlement service")
        stub = invoicing_service_pb2_grpc.InvoicingServiceStub(grpc_client.shared_channel(self._address))
        request = invoicing_svc.IssueAdHocInvoiceRequest(
            customer_id=invoice.customer_id,
            currency=invoice.currency,
            lines=[
                invoicing_svc.AdHocLine(description=invoice.description, quantity_decimal=invoice.quantity, amount_decimal=invoice.amount)
            ],
            purpose=invoice.purpose,
            reference=invoice.reference,
            effective_time=to_timestamp(invoice.effective_time),
            metadata=dict_to_struct(dict[str, Any](invoice.metadata)),
        )
        if invoice.subscription_id is not None:
            request.subscription_id = invoice.subscription_id
        if invoice.success_url is not None:
            request.success_url = invoice.success_url
        if invoice.cancel_url is not None:
            request.cancel_url = invoice.cancel_url
        if invoice.payment_expires_at is not None:
            request.payment_expires_at.CopyFrom(to_timestamp(invoice.payment_expires_at))
        with acting_for(current_merchant_id()):
            issued = await stub.IssueAdHocInvoice(request)
        return IssuedInvoice(
            id=issued.id,
            status=issued.status,
            payment_url=issued.payment_url if issued.HasField("payment_url") and issued.payment_url else None,
            payment_expires_at=invoice.payment_expires_at,
        )
