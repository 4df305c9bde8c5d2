"""What a catalog mutation asks for, in plain values: server.py builds these from
requests (protos stay there), use_cases.py carries them out.

Updates are ``Update(resource_id, changes)``: the AIP-134 mask's fields (proto names)
and their new values, None where a clearable field is cleared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.core.errors import InvalidArgument
from services.catalog.domain import rules


@dataclass(frozen=True)
class PriceTax:
    supply_scope: str
    outside_scope_label: str | None


@dataclass(frozen=True)
class FeatureAttachment:
    """``feature`` of a price request: the feature and its entitlement template."""

    feature_id: str
    entitlement_template: dict[str, Any]

    def checked(self) -> FeatureAttachment:
        if not self.feature_id:
            raise InvalidArgument("feature.featureId", "feature.featureId is required", reason="REQUIRED")
        return self


@dataclass(frozen=True)
class CreateProduct:
    name: str
    description: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateBillableMetric:
    product_id: str
    name: str
    description: str
    unit: str
    aggregation: str
    event_type: str
    value_property: str | None = None
    group_by: Mapping[str, str] = field(default_factory=dict)
    item_id: str | None = None
    event_from: datetime | None = None


@dataclass(frozen=True)
class CreateFeature:
    product_id: str
    key: str
    name: str
    type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateFee:
    product_id: str
    name: str
    description: str
    item_id: str | None = None


@dataclass(frozen=True)
class CreatePrice:
    invoice_display_name: str
    payment_term: str
    properties: dict[str, Any]
    billable_metric_id: str | None = None
    fee_id: str | None = None
    model: str | None = None
    invoice_display_group: str | None = None
    billing_cadence: str | None = None
    grant_discount_enabled: bool = False
    is_obligation: bool = False
    rate_type: str | None = None
    tax: PriceTax | None = None  # absent: IN_SCOPE
    quantity: int | None = None
    pricing_unit_id: str | None = None
    feature: FeatureAttachment | None = None

    def draft(self) -> rules.PriceDraft:
        """The new price's draft, to validate as a whole."""
        feature = None if self.feature is None else self.feature.checked()
        return rules.PriceDraft(
            billable_metric_id=self.billable_metric_id,
            fee_id=self.fee_id,
            invoice_display_name=self.invoice_display_name,
            invoice_display_group=self.invoice_display_group,
            payment_term=self.payment_term,
            model=self.model,
            properties=self.properties,
            billing_cadence=self.billing_cadence,
            grant_discount_enabled=self.grant_discount_enabled,
            is_obligation=self.is_obligation,
            rate_type=self.rate_type,
            supply_scope=self.tax.supply_scope if self.tax is not None else "IN_SCOPE",
            outside_scope_label=self.tax.outside_scope_label if self.tax is not None else None,
            quantity=self.quantity,
            pricing_unit_id=self.pricing_unit_id,
            feature_id=None if feature is None else feature.feature_id,
            entitlement_template=None if feature is None else feature.entitlement_template,
        )


@dataclass(frozen=True)
class CreatePlan:
    product_id: str
    name: str
    currency: str
    prices: list[Any] = field(default_factory=list)  # price ids or {priceId, key}
    description: str | None = None
    billing_cadence: str | None = None
    billing_interval: str | None = None
    invoice_display_name: str | None = None
    default_tax_code: str | None = None
    default_tax_rate: float | None = None
    tax_behavior: str | None = None
    renewal_reminder_enabled: bool | None = None
    renewal_reminder_days: int | None = None
    billing_version: int | None = None
    billing_anchor: datetime | None = None
    credit_allocation_count: int = 0
    stable_price_ids: bool | None = None
    version_transition: tuple[str, str] | None = None  # (effectiveDate, proration)


@dataclass(frozen=True)
class Update:
    resource_id: str
    changes: Mapping[str, Any]


@dataclass(frozen=True)
class Delete:
    resource_id: str


@dataclass(frozen=True)
class MintPlanVersion:
    plan_id: str
    prices: list[Any]
    based_on_version_id: str | None = None


@dataclass(frozen=True)
class TransitionPlanVersion:
    plan_id: str
    version_number: int
    make_default: bool | None = None
    status: str | None = None
