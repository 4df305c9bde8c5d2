"""Catalog aggregates -> protobuf resources. Pure functions of already-loaded aggregates
(prices with the features they show, plans and versions with their lines' prices)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from accrue.catalog.v1 import catalog_resources_pb2 as res
from google.protobuf import struct_pb2

from libs.infra.proto_struct import dict_to_struct, struct_to_dict, to_python
from libs.infra.proto_time import to_timestamp
from services.catalog.domain import rules
from services.catalog.domain.model import BillableMetric, Feature, Fee, Plan, PlanVersion, Price, Product


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    return dict_to_struct(value)


def from_struct(value: struct_pb2.Struct) -> dict[str, Any]:
    return struct_to_dict(value)


def from_value(value: struct_pb2.Value) -> Any:
    return to_python(value)


def product(row: Product) -> res.Product:
    return res.Product(
        id=row.id,
        object="product",
        merchant_id=row.merchant_id,
        name=row.name,
        description=row.description,
        metadata=row.metadata,
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )


def billable_metric(row: BillableMetric) -> res.BillableMetric:
    out = res.BillableMetric(
        id=row.id,
        object="billableMetric",
        merchant_id=row.merchant_id,
        product_id=row.product_id,
        name=row.name,
        description=row.description,
        unit=row.unit,
        aggregation=row.aggregation,
        event_type=row.event_type,
        group_by=row.group_by,
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )
    if row.value_property is not None:
        out.value_property = row.value_property
    if row.item_id is not None:
        out.item_id = row.item_id
    if row.event_from is not None:
        out.event_from_time.CopyFrom(to_timestamp(row.event_from))
    return out


def feature(row: Feature) -> res.Feature:
    return res.Feature(
        id=row.id,
        object="feature",
        merchant_id=row.merchant_id,
        product_id=row.product_id,
        key=row.key,
        name=row.name,
        type=row.type,
        metadata=row.metadata,
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )


def fee(row: Fee) -> res.Fee:
    out = res.Fee(
        id=row.id,
        object="fee",
        merchant_id=row.merchant_id,
        product_id=row.product_id,
        name=row.name,
        description=row.description,
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )
    if row.item_id is not None:
        out.item_id = row.item_id
    return out


def _price_features(row: Price, features: Mapping[str, Feature]) -> list[res.PriceFeature]:
    if row.feature_id is None:
        return []
    attached = res.PriceFeature(
        id=row.price_feature_id or "",
        feature_id=row.feature_id,
        entitlement_template=to_struct(row.entitlement_template or {}),
    )
    feat = features.get(row.feature_id)
    if feat is not None:
        attached.feature.CopyFrom(res.PriceFeatureSummary(key=feat.key, name=feat.name, type=feat.type))
    return [attached]


def _tax(row: Price) -> res.PriceTax:
    tax = res.PriceTax(supply_scope=row.supply_scope)
    if row.outside_scope_label is not None:
        tax.outside_scope_label = row.outside_scope_label
    return tax


def price(row: Price, features: Mapping[str, Feature]) -> res.Price:
    out = res.Price(
        id=row.id,
        object="price",
        merchant_id=row.merchant_id,
        invoice_display_name=row.invoice_display_name,
        payment_term=row.payment_term,
        model=row.model,
        properties=to_struct(rules.render_properties(row.model, row.properties)),
        features=_price_features(row, features),
        grant_discount_enabled=row.grant_discount_enabled,
        is_obligation=row.is_obligation,
        tax=_tax(row),
        quantity=row.quantity,
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )
    for name in ("billable_metric_id", "fee_id", "invoice_display_group", "billing_cadence", "rate_type"):
        value = getattr(row, name)
        if value is not None:
            setattr(out, name, value)
    return out


def plan_version_slot(key: str, row: Price, currency: str, features: Mapping[str, Feature]) -> res.PlanVersionPriceSlot:
    p = price(row, features)
    slot = res.PlanVersionPriceSlot(
        id=p.id,
        object="price",
        merchant_id=p.merchant_id,
        invoice_display_name=p.invoice_display_name,
        model=p.model,
        payment_term=p.payment_term,
        properties=p.properties,
        currency=currency,
        tax=p.tax,
        quantity=p.quantity,
        features=p.features,
        key=key,
        price_deleted=row.delete_time is not None,
        create_time=p.create_time,
        update_time=p.update_time,
    )
    for name in ("billable_metric_id", "fee_id", "billing_cadence"):
        if p.HasField(name):
            setattr(slot, name, getattr(p, name))
    return slot


def plan_version(
    row: PlanVersion, lines: list[tuple[str, Price]], *, currency: str, default_version_id: str | None, features: Mapping[str, Feature]
) -> res.PlanVersion:
    out = res.PlanVersion(
        id=row.id,
        object="plan_version",
        plan_id=row.plan_id,
        version_number=row.version_number,
        status=row.status,
        is_default=row.id == default_version_id,
        subscription_count=row.subscription_count,
        publish_time=to_timestamp(row.published_at),
        prices=[plan_version_slot(key, price_row, currency, features) for key, price_row in lines],
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )
    if row.based_on_version_id is not None:
        out.based_on_version_id = row.based_on_version_id
    return out


def plan(row: Plan, lines: list[tuple[str, Price]], features: Mapping[str, Feature]) -> res.Plan:
    out = res.Plan(
        id=row.id,
        object="plan",
        merchant_id=row.merchant_id,
        product_id=row.product_id,
        name=row.name,
        currency=row.currency,
        billing_cadence=row.billing_cadence,
        billing_interval=rules.CADENCE_TO_INTERVAL[row.billing_cadence],
        default_tax_code=row.default_tax_code,
        default_tax_rate=float(row.default_tax_rate),
        tax_behavior=row.tax_behavior,
        renewal_reminder_enabled=row.renewal_reminder_enabled,
        renewal_reminder_days=row.renewal_reminder_days,
        billing_version=row.billing_version,
        stable_price_ids=row.stable_price_ids,
        version_transition=res.VersionTransition(effective_date=row.version_effective_date, proration="none"),
        prices=[price(price_row, features) for _, price_row in lines if price_row.delete_time is None],
        create_time=to_timestamp(row.created_at),
        update_time=to_timestamp(row.updated_at),
    )
    for name in ("description", "invoice_display_name", "default_version_id"):
        value = getattr(row, name)
        if value is not None:
            setattr(out, name, value)
    if row.billing_anchor is not None:
        out.billing_anchor_time.CopyFrom(to_timestamp(row.billing_anchor))
    if row.delete_time is not None:
        out.delete_time.CopyFrom(to_timestamp(row.delete_time))
    return out
