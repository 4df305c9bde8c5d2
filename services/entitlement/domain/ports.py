"""What the entitlement service's use cases need from storage and from other services.

store.py implements the repositories over PostgreSQL. Every query is scoped to the
merchant: another merchant's entitlement or grant is NotFound. A repository registers
every aggregate it returns or adds with the unit of work, which collects their events at
commit.

The catalog (plan features, features, prices), the subscription service (customers,
subscriptions, test-clock time), metering (usage, through the usage cache) and invoicing
(grant-purchase invoices) are ports too (clients.py, usage.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from libs.core.paging import Page
from services.entitlement.domain.balance import Window
from services.entitlement.domain.commands import EntitlementFilters, GrantFilters, SubscriptionFacts
from services.entitlement.domain.model import Entitlement, FeatureFacts, Grant, GrantPurchase


class EntitlementRepository(Protocol):
    async def get(self, merchant_id: str, entitlement_id: str, *, field: str | None = None, lock: bool = False) -> Entitlement: ...

    async def add(self, entitlement: Entitlement) -> None: ...

    async def add_provisioned(self, entitlement: Entitlement) -> bool:
        """Insert a subscription's entitlement unless the subscription already has one of
        that feature (False: nothing written, nothing announced)."""
        ...

    async def save(self, entitlement: Entitlement) -> None: ...

    async def of_subscription(self, merchant_id: str, subscription_id: str, *, lock: bool = False) -> list[Entitlement]: ...

    async def of_customer_feature(self, merchant_id: str, customer_id: str, feature_id: str) -> list[Entitlement]:
        """The customer's entitlements of the feature; until this unit of work ends no other
        one can issue one of them."""
        ...

    async def metered_of_subscriptions(self, merchant_id: str, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Entitlement]:
        """(subscription id, billable metric id) -> the subscription's metered entitlement
        on that metric (canceled ones included)."""
        ...


class GrantRepository(Protocol):
    async def get(self, merchant_id: str, entitlement_id: str, grant_id: str, *, lock: bool = False) -> Grant: ...

    async def add(self, grant: Grant) -> None: ...

    async def save(self, grant: Grant) -> None: ...

    async def by_key(self, entitlement_id: str, key: str) -> Grant | None:
        """The grant made with this key, if any; until this unit of work ends no other one
        can be made with it."""
        ...

    async def of_entitlements(self, entitlement_ids: Sequence[str]) -> dict[str, list[Grant]]: ...

    async def list_page(self, merchant_id: str, entitlement_id: str, filters: GrantFilters, page: Page) -> tuple[list[Grant], int]: ...


class PurchaseRepository(Protocol):
    async def get(self, merchant_id: str, purchase_id: str, *, field: str | None = None, lock: bool = False) -> GrantPurchase: ...

    async def add(self, purchase: GrantPurchase) -> None: ...

    async def save(self, purchase: GrantPurchase) -> None: ...

    async def by_key(self, entitlement_id: str, key: str) -> GrantPurchase | None:
        """As GrantRepository.by_key, for purchases."""
        ...

    async def by_invoice(self, merchant_id: str, invoice_id: str, *, lock: bool = False) -> GrantPurchase | None: ...


class CheckReads(Protocol):
    async def for_check(
        self, merchant_id: str, customer_id: str, feature_key: str, product_id: str | None
    ) -> list[tuple[Entitlement, list[Grant]]]:
        """CheckEntitlement's one indexed query: the customer's entitlements of the key, with
        their grants (oldest first)."""
        ...

    async def of_customer(self, merchant_id: str, customer_id: str, filters: EntitlementFilters) -> list[tuple[Entitlement, list[Grant]]]:
        """The same query for a list: the customer's entitlements, newest first, with their grants."""
        ...


class EntitlementUnitOfWork(Protocol):
    @property
    def entitlements(self) -> EntitlementRepository: ...

    @property
    def grants(self) -> GrantRepository: ...

    @property
    def purchases(self) -> PurchaseRepository: ...


@dataclass(frozen=True)
class PlanFeature:
    """A feature attached to a price of a plan version, with its raw template."""

    feature: FeatureFacts
    template: Mapping[str, Any]
    billable_metric_id: str | None  # the price's metric (None: a fee price)


class Catalog(Protocol):
    async def plan_features(self, subscription: SubscriptionFacts) -> list[PlanFeature]:
        """The features of the subscription's pinned plan version's prices, first price per
        feature, in price order."""
        ...

    async def feature(self, feature_id: str) -> FeatureFacts:
        """NotFound naming ``featureId`` when it is not the merchant's."""
        ...

    async def feature_metrics(self, feature_id: str) -> list[str]:
        """The distinct billable metrics of the merchant's prices carrying the feature."""
        ...

    async def ensure_billable_metric(self, metric_id: str) -> None:
        """NotFound naming ``template.billableMetricId`` unless the merchant has this metric."""
        ...

    async def plan_currency(self, plan_id: str) -> str | None: ...


class Customers(Protocol):
    async def ensure_customer(self, customer_id: str) -> None:
        """NotFound naming ``customerId`` unless the merchant has this customer."""
        ...

    async def customer_by_external_id(self, external_id: str) -> str:
        """The id of the merchant's live customer with this external id; NotFound naming
        ``externalCustomerId`` otherwise."""
        ...

    async def subscription(self, subscription_id: str) -> SubscriptionFacts:
        """NotFound naming ``subscriptionId`` unless it is the merchant's."""
        ...

    async def customer_clock(self, customer_id: str) -> str | None:
        """The test clock the customer lives on, if any."""
        ...

    async def clock_time(self, test_clock_id: str) -> datetime: ...


@dataclass(frozen=True, order=True)
class UsageKey:
    """One cumulative reading: a subject's usage of a metric over a window."""

    subject: str
    billable_metric_id: str
    window: Window


@dataclass(frozen=True)
class UsageAnswer:
    values: Mapping[UsageKey, Decimal]
    # every meter event accepted before this instant is counted (the oldest reading's)
    complete_until: datetime | None
    # the readings served from the cache, and when each was fetched
    cached_at: Mapping[UsageKey, datetime] = field(default_factory=dict)

    def cached_since(self, keys: Sequence[UsageKey]) -> datetime | None:
        """The oldest fetch time among ``keys`` served from the cache (None: all fresh)."""
        times = [self.cached_at[key] for key in keys if key in self.cached_at]
        return min(times) if times else None


class Usage(Protocol):
    async def readings(self, merchant_id: str, wanted: Sequence[UsageKey], *, fresh: bool = False) -> UsageAnswer:
        """Every reading in ``wanted``, with at most one metering call; ``fresh`` reads
        them all from metering (invoices), else a recent cached reading serves."""
        ...


@dataclass(frozen=True)
class AdHocInvoice:
    customer_id: str
    currency: str
    description: str
    quantity: str
    amount: str  # major units, rounded to the currency
    purpose: str
    reference: str
    effective_time: datetime
    subscription_id: str | None = None
    success_url: str | None = None
    cancel_url: str | None = None
    payment_expires_at: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IssuedInvoice:
    id: str
    status: str
    payment_url: str | None
    payment_expires_at: datetime | None = None


class Invoicing(Protocol):
    async def issue_ad_hoc_invoice(self, invoice: AdHocInvoice) -> IssuedInvoice:
        """Idempotent by (purpose, reference): a repeat answers the same invoice."""
        ...
