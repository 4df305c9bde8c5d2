"""What an entitlement-service call asks for, in plain values: server.py builds these from
requests (protos stay there), use_cases.py carries them out. ``None`` is "not given"."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class SubscriptionFacts:
    """The subscription of a SubscriptionChanged, as provisioning needs it."""

    id: str
    merchant_id: str
    customer_id: str
    plan_id: str
    plan_version_id: str
    version_number: int
    status: str
    started_at: datetime
    billing_anchor: datetime | None
    terminated_at: datetime | None
    test_clock_id: str | None


@dataclass(frozen=True)
class ApplySubscriptionChange:
    kind: str  # activated | terminated (anything else changes nothing)
    subscription: SubscriptionFacts
    effective_time: datetime


@dataclass(frozen=True)
class IssueEntitlement:
    customer_id: str
    feature_id: str
    # the template as camelCase JSON values (templates.parse_template's input)
    template: Mapping[str, Any]
    active_from: datetime | None = None
    active_to: datetime | None = None
    subscription_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EntitlementQuery:
    """Which entitlements a list or a check is about, evaluated at ``at`` (None: now)."""

    customer_id: str | None = None
    external_customer_id: str | None = None
    feature_key: str | None = None
    product_id: str | None = None
    subscription_id: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class CreateGrant:
    entitlement_id: str
    amount: Decimal
    idempotency_key: str
    # the request's given parameters (JSON spelling), what a replay must repeat
    given: Mapping[str, Any]
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    reset_max_rollover: Decimal | None = None
    reset_min_rollover: Decimal | None = None
    priority: int | None = None


@dataclass(frozen=True)
class PurchaseGrant:
    entitlement_id: str
    amount: Decimal
    price: str
    idempotency_key: str
    given: Mapping[str, Any]
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    reset_max_rollover: Decimal | None = None
    reset_min_rollover: Decimal | None = None
    success_url: str | None = None
    cancel_url: str | None = None
    payment_expires_at: datetime | None = None


@dataclass(frozen=True)
class VoidGrant:
    entitlement_id: str
    grant_id: str


@dataclass(frozen=True)
class RecordPurchasePaid:
    invoice_id: str
    paid_at: datetime | None = None
    # the purchase, when the caller knows it (the invoice's metadata): found by invoice otherwise
    purchase_id: str | None = None


@dataclass(frozen=True)
class CoverageQuery:
    subscription_id: str
    billable_metric_id: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class GrantFilters:
    include_voided: bool = False


@dataclass(frozen=True)
class EntitlementFilters:
    customer_id: str
    feature_key: str | None = None
    product_id: str | None = None
    subscription_id: str | None = None


__all__ = [
    "ApplySubscriptionChange",
    "CoverageQuery",
    "CreateGrant",
    "EntitlementFilters",
    "EntitlementQuery",
    "GrantFilters",
    "IssueEntitlement",
    "PurchaseGrant",
    "RecordPurchasePaid",
    "SubscriptionFacts",
    "VoidGrant",
]
