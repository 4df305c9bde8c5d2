"""Entitlement scenarios through the official SDK, for end-to-end tests: features attached
to prices with their ``entitlementTemplate``, the entitlements a subscription is
provisioned, grants, and balances read the way a customer's application reads them.

Built on libs/testing/billing.py (a merchant, a catalog, a customer on a test clock at a
fixed instant, Invoice 0, clock advances, invoices). Every call goes through
``paygentic_sdk`` so each answer must parse in its models; Accrue's own fields the SDK
drops (``balanceDecimal``, ``usageCountedUntil``, ``evaluatedAt``, a grant's ``source``)
and the status codes the SDK hides (201 vs 200, 409) are read over plain REST with the
same key. Balances are compared as exact decimal strings, never as floats.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import grpc
import httpx
from accrue.entitlement.v1 import entitlement_service_pb2 as entitlement_pb
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from paygentic_sdk import models

from libs.testing.billing import Catalog, Metric
from libs.testing.fixtures import MerchantClient
from libs.testing.tokens import merchant_metadata
from libs.testing.waiting import eventually

# How long a balance may take to reflect an accepted event: the aggregator commits it,
# metering's hint invalidates the entitlement service's usage cache (5 s at worst).
SETTLE_SECONDS: Final = 15.0

Item = models.BooleanEntitlementListItem | models.StaticEntitlementListItem | models.MeteredEntitlementListItem


def feature(catalog: Catalog, type_: str, name: str) -> models.Feature:
    """A feature of ``type_`` (boolean, static, metered) under the catalog's product, with a key of its own."""
    key = f"{type_}-{uuid.uuid4().hex[:10]}"
    created: models.Feature = catalog.client.sdk.features.create(
        merchant_id=catalog.client.merchant_id, product_id=catalog.product_id, key=key, name=name, type_=type_
    )
    assert (created.key, created.type) == (key, type_)
    return created


def metered_price(catalog: Catalog, metric: Metric, unit_price: str, feature_id: str, template: dict[str, Any], *, name: str) -> str:
    """A standard in-arrears usage price of the metric, carrying the feature with this template."""
    created = catalog.client.sdk.prices.create(
        invoice_display_name=name, payment_term="in_arrears", model="standard", billable_metric_id=metric.id,
        properties=models.StandardPriceProperties(unit_price=unit_price),
        feature=models.PriceFeatureInput(feature_id=feature_id, entitlement_template=template),
    )  # fmt: skip
    return str(created.id)


def fee_price(
    catalog: Catalog,
    fee_id: str,
    unit_price: str,
    feature_id: str,
    template: dict[str, Any],
    *,
    name: str,
    payment_term: str = "in_advance",
) -> str:
    """A monthly fee price carrying the feature with this template."""
    created = catalog.client.sdk.prices.create(
        invoice_display_name=name, payment_term=payment_term, model="standard", fee_id=fee_id, billing_cadence="P1M", quantity=1,
        properties=models.StandardPriceProperties(unit_price=unit_price),
        feature=models.PriceFeatureInput(feature_id=feature_id, entitlement_template=template),
    )  # fmt: skip
    return str(created.id)


# ---------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------


def listed(client: MerchantClient, customer_id: str, *, at: datetime | None = None, **filters: Any) -> list[Item]:
    """The customer's entitlements through ``sdk.entitlements.list`` (every item must parse as
    one of the three feature types: an Unknown item fails here)."""
    request: dict[str, Any] = {"customer_id": customer_id, "limit": 100, **filters}
    if at is not None:
        request["at"] = at
    answer = client.sdk.entitlements.list(request=request)
    items: list[Item] = []
    for item in answer.data:
        assert isinstance(item, Item), item
        items.append(item)
    assert answer.pagination.total == len(items), answer.pagination
    return items


def raw_list(client: MerchantClient, customer_id: str, **params: Any) -> dict[str, Any]:
    """``GET /v1/entitlements`` as JSON (Accrue's fields included)."""
    response = httpx.get(
        f"{client.base_url}/v1/entitlements", params={"customerId": customer_id, "limit": 100, **params}, headers=client.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def raw(client: MerchantClient, entitlement_id: str, *, at: datetime | None = None) -> dict[str, Any]:
    """``GET /v1/entitlements/{id}`` as JSON (Accrue's fields included)."""
    params = {} if at is None else {"at": at.isoformat()}
    response = httpx.get(f"{client.base_url}/v1/entitlements/{entitlement_id}", params=params, headers=client.headers, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def by_type(items: list[Item]) -> dict[str, Item]:
    """Items by featureType (one of each expected)."""
    out: dict[str, Item] = {item.feature_type: item for item in items}
    assert len(out) == len(items), [item.feature_type for item in items]
    return out


def the_metered(client: MerchantClient, customer_id: str) -> models.MeteredEntitlementListItem:
    """The customer's one metered entitlement."""
    items = [item for item in listed(client, customer_id) if isinstance(item, models.MeteredEntitlementListItem)]
    assert len(items) == 1, items
    return items[0]


@dataclass(frozen=True)
class Balance:
    """A metered entitlement's numbers, exactly (the ``*Decimal`` twins), and its access."""

    balance: str
    usage: str
    overage: str
    has_access: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Balance:
        # the JSON numbers and their exact twins agree
        for name in ("balance", "usageInPeriod", "overage"):
            assert Decimal(str(body[name])) == Decimal(body[f"{name}Decimal"]), (name, body)
        return cls(_plain(body["balanceDecimal"]), _plain(body["usageInPeriodDecimal"]), _plain(body["overageDecimal"]), body["hasAccess"])


def _plain(value: Any) -> str:
    number = Decimal(str(value)).normalize()
    return f"{number:f}"


def balance(client: MerchantClient, entitlement_id: str, *, at: datetime | None = None) -> Balance:
    return Balance.of(raw(client, entitlement_id, at=at))


def expect(balance_: str, usage: str, overage: str = "0", has_access: bool = True) -> Balance:
    return Balance(_plain(balance_), _plain(usage), _plain(overage), has_access)


def settled(client: MerchantClient, entitlement_id: str, expected: Balance, *, timeout: float = SETTLE_SECONDS) -> Balance:
    """The balance once it is ``expected`` (usage is counted asynchronously), or as it is after ``timeout``."""
    return eventually(lambda: balance(client, entitlement_id), expected, timeout)


# ---------------------------------------------------------------------------------------
# Grants
# ---------------------------------------------------------------------------------------


def grant(client: MerchantClient, entitlement_id: str, amount: float, **options: Any) -> models.Grant:
    """A grant through ``sdk.entitlements.grants.create`` with a key of its own."""
    options.setdefault("idempotency_key", f"grant-{uuid.uuid4().hex}")
    created: models.Grant = client.sdk.entitlements.grants.create(entitlement_id=entitlement_id, amount=amount, **options)
    assert created.entitlement_id == entitlement_id
    return created


def grants(client: MerchantClient, entitlement_id: str, *, include_voided: bool = False) -> list[models.Grant]:
    listed_ = client.sdk.entitlements.grants.list(entitlement_id=entitlement_id, limit=100, include_voided=include_voided)
    out: list[models.Grant] = list(listed_.data)
    return out


def post(client: MerchantClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{client.base_url}{path}", json=body, headers=client.headers, timeout=60)


def error(response: httpx.Response) -> tuple[int, str, str | None]:
    """(status, code, details.field) of an error answer."""
    body = response.json()
    return response.status_code, str(body.get("code")), (body.get("details") or {}).get("field")


# ---------------------------------------------------------------------------------------
# gRPC CheckEntitlement (the internal per-request path)
# ---------------------------------------------------------------------------------------


def timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


class Checker:
    """``CheckEntitlement`` on the entitlement service, acting for one merchant."""

    def __init__(self, address: str, merchant_id: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = entitlement_service_pb2_grpc.EntitlementServiceStub(self.channel)
        self.metadata = [merchant_metadata(merchant_id)]

    def check(self, customer_id: str, feature_key: str, product_id: str | None = None, at: datetime | None = None) -> Any:
        request = entitlement_pb.CheckEntitlementRequest(customer_id=customer_id, feature_key=feature_key, product_id=product_id)
        if at is not None:
            request.at.CopyFrom(timestamp(at))
        return self.stub.CheckEntitlement(request, metadata=self.metadata, timeout=10)

    def close(self) -> None:
        self.channel.close()


# ---------------------------------------------------------------------------------------
# One metered feature on a subscription of its own
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metered:
    """A plan of one usage price carrying a metered feature, a customer subscribed on a
    clock of its own (nothing in advance: Invoice 0 is zero, active at creation), and the
    entitlement it was provisioned."""

    catalog: Catalog
    metric: Metric
    feature: models.Feature
    price_id: str
    customer_id: str
    clock_id: str
    subscription: models.Subscription
    entitlement_id: str


def metered_subscription(client: MerchantClient, name: str, t0: datetime, template: dict[str, Any], *, unit_price: str = "0.25") -> Metered:
    from libs.testing.billing import clock, customer, subscribe

    catalog = Catalog.create(client, name)
    metric = catalog.metric()
    made = feature(catalog, "metered", f"{name} tokens")
    price_id = metered_price(catalog, metric, unit_price, made.id, template, name="Token usage")
    plan = catalog.plan([price_id])
    customer_id = customer(client, f"{name} Inc")
    test_clock = clock(client, t0, name.lower().replace(" ", "-"))
    sub = subscribe(client, plan.id, customer_id, test_clock)
    assert sub.status == "active", sub.status
    item = the_metered(client, customer_id)
    assert (item.subscription_id, item.feature_id, item.product_id) == (sub.id, made.id, catalog.product_id)
    return Metered(catalog, metric, made, price_id, customer_id, test_clock.id, sub, item.entitlement_id)


def line_provenance(client: MerchantClient, invoice_id: str, price_id: str) -> dict[str, Any]:
    """The provenance of the invoice's one line of ``price_id`` (``expand=lineProvenance``)."""
    response = httpx.get(
        f"{client.base_url}/v2/invoices/{invoice_id}", params={"expand": "lineItems,lineProvenance"}, headers=client.headers, timeout=30
    )
    assert response.status_code == 200, response.text
    lines = [line for line in response.json()["lineItems"]["lineItems"] if line.get("priceId") == price_id]
    assert len(lines) == 1, lines
    provenance: dict[str, Any] = lines[0]["provenance"]
    return provenance
