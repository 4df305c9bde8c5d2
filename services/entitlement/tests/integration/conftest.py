"""The entitlement service in-process with the services it calls (catalog, metering, the
subscription service for customers), on real PostgreSQL and NATS, and a plan whose prices
carry features: a metered one (100 units a month, hard limit) on a metric price and a
boolean one on a fee price."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from accrue.catalog.v1 import catalog_resources_pb2 as catalog_res
from accrue.catalog.v1 import catalog_service_pb2 as cat
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as sub_events
from accrue.subscription.v1 import subscription_service_pb2 as sub
from accrue.subscription.v1 import subscription_service_pb2_grpc
from google.protobuf import struct_pb2

from libs.infra import grpc_client
from libs.infra.proto_time import to_timestamp
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.catalog import app as catalog_app
from services.entitlement import app as entitlement_app
from services.metering import app as metering_app
from services.subscription import app as subscription_app

METERED_TEMPLATE = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100}


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


@dataclass
class Plan:
    plan_id: str
    version_id: str
    product_id: str
    metric_id: str
    event_type: str
    metered_feature_id: str
    metered_key: str
    boolean_feature_id: str
    boolean_key: str


@dataclass
class World:
    catalog: catalog_service_pb2_grpc.CatalogServiceStub
    metering: metering_service_pb2_grpc.MeteringServiceStub
    subscriptions: subscription_service_pb2_grpc.SubscriptionServiceStub
    entitlements: entitlement_service_pb2_grpc.EntitlementServiceStub
    host: Host
    merchant: str

    def md(self, merchant: str | None = None, *, key: str | None = None) -> tuple[tuple[str, str], ...]:
        out: tuple[tuple[str, str], ...] = (merchant_metadata(merchant or self.merchant),)
        if key is not None:
            out = (*out, ("idempotency-key", key))
        return out

    async def plan(self, template: dict[str, Any] | None = None) -> Plan:
        md = self.md()
        product = await self.catalog.CreateProduct(cat.CreateProductRequest(name="API", description="d"), metadata=md)
        event_type = f"tokens.{uuid.uuid4().hex[:8]}"
        metric = await self.catalog.CreateBillableMetric(
            cat.CreateBillableMetricRequest(
                product_id=product.id, name="Tokens", description="t", unit="tokens", aggregation="SUM",
                event_type=event_type, value_property="$.tokens",
            ),
            metadata=md,
        )  # fmt: skip
        metered_key, boolean_key = f"tokens-{uuid.uuid4().hex[:6]}", f"sso-{uuid.uuid4().hex[:6]}"
        metered = await self.catalog.CreateFeature(
            cat.CreateFeatureRequest(product_id=product.id, key=metered_key, name="Token usage", type="metered"), metadata=md
        )
        boolean = await self.catalog.CreateFeature(
            cat.CreateFeatureRequest(product_id=product.id, key=boolean_key, name="SSO", type="boolean"), metadata=md
        )
        metered_price = await self.catalog.CreatePrice(
            cat.CreatePriceRequest(
                invoice_display_name="Tokens", payment_term="in_arrears", model="standard", billable_metric_id=metric.id,
                properties=struct({"unitPrice": "0.002"}),
                feature=catalog_res.PriceFeatureInput(feature_id=metered.id, entitlement_template=struct(template or METERED_TEMPLATE)),
            ),
            metadata=md,
        )  # fmt: skip
        fee = await self.catalog.CreateFee(cat.CreateFeeRequest(product_id=product.id, name="Base", description="b"), metadata=md)
        fee_price = await self.catalog.CreatePrice(
            cat.CreatePriceRequest(
                invoice_display_name="Base", payment_term="in_advance", fee_id=fee.id, billing_cadence="P1M",
                properties=struct({"unitPrice": "10.00"}), feature=catalog_res.PriceFeatureInput(feature_id=boolean.id, entitlement_template=struct({})),
            ),
            metadata=md,
        )  # fmt: skip
        lines = [{"priceId": metered_price.id, "key": "tokens"}, {"priceId": fee_price.id, "key": "base"}]
        plan = await self.catalog.CreatePlan(
            cat.CreatePlanRequest(
                product_id=product.id, name="Pro", currency="EUR", prices=[struct_pb2.Value(struct_value=struct(line)) for line in lines]
            ),
            metadata=md,
        )
        return Plan(plan.id, plan.default_version_id, product.id, metric.id, event_type, metered.id, metered_key, boolean.id, boolean_key)

    async def customer(self, merchant: str | None = None) -> str:
        created = await self.subscriptions.CreateCustomer(
            sub.CreateCustomerRequest(
                consumer=sub.CreateCustomerConsumer(
                    name="Ada", email=f"{uuid.uuid4().hex[:8]}@example.com", address=sub.Address(country="DE", zip_code="10115")
                )
            ),
            metadata=self.md(merchant),
        )
        return str(created.customer_id)


def subscription_change(
    kind: int, plan: Plan, customer_id: str, merchant: str, *, started_at: datetime, subscription_id: str | None = None,
    terminated_at: datetime | None = None,
) -> sub_events.SubscriptionChanged:  # fmt: skip
    """A SubscriptionChanged as the subscription service records it."""
    subscription = sub.Subscription(
        id=subscription_id or f"sub_{uuid.uuid4().hex[:16]}",
        merchant_id=merchant,
        customer_id=customer_id,
        plan_id=plan.plan_id,
        plan_version_id=plan.version_id,
        version_number=1,
        status="terminated" if terminated_at else "active",
        started_at=to_timestamp(started_at),
        billing_anchor=to_timestamp(started_at),
    )
    if terminated_at is not None:
        subscription.terminated_at.CopyFrom(to_timestamp(terminated_at))
    change = sub_events.SubscriptionChanged(kind=kind, merchant_id=merchant, subscription=subscription)  # type: ignore[arg-type]
    change.effective_time.CopyFrom(to_timestamp(terminated_at or started_at))
    return change


@pytest.fixture
async def world(start_host: StartHost) -> AsyncIterator[World]:
    catalog = await start_host(catalog_app.DEFINITION)
    catalog_addr = f"127.0.0.1:{catalog.grpc_port}"
    metering = await start_host(metering_app.DEFINITION, catalog_addr=catalog_addr)
    subscription = await start_host(subscription_app.DEFINITION, catalog_addr=catalog_addr)
    entitlement = await start_host(
        entitlement_app.DEFINITION,
        catalog_addr=catalog_addr,
        metering_addr=f"127.0.0.1:{metering.grpc_port}",
        subscription_addr=f"127.0.0.1:{subscription.grpc_port}",
    )
    channels = [
        grpc_client.channel(f"127.0.0.1:{port}")
        for port in (catalog.grpc_port, metering.grpc_port, subscription.grpc_port, entitlement.grpc_port)
    ]
    yield World(
        catalog_service_pb2_grpc.CatalogServiceStub(channels[0]),
        metering_service_pb2_grpc.MeteringServiceStub(channels[1]),
        subscription_service_pb2_grpc.SubscriptionServiceStub(channels[2]),
        entitlement_service_pb2_grpc.EntitlementServiceStub(channels[3]),
        entitlement,
        f"org_{uuid.uuid4().hex[:12]}",
    )
    for channel in channels:
        await channel.close()


START = datetime(2026, 11, 1, tzinfo=UTC)
