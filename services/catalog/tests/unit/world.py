"""A small catalog on the fakes: one product with a metric, a feature, a fee, prices and a plan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.catalog.domain import commands, use_cases
from services.catalog.domain.commands import FeatureAttachment
from services.catalog.tests.fakes import FakeCatalogUnitOfWork

MERCHANT = "org_test"
NOW = datetime(2026, 3, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


@dataclass
class World:
    uow: FakeCatalogUnitOfWork
    product_id: str
    metric_id: str
    feature_id: str
    fee_id: str
    metric_price_id: str
    fee_price_id: str
    plan_id: str


async def build_world() -> World:
    """The catalog, with every event of building it already taken (committed)."""
    uow = FakeCatalogUnitOfWork()
    product = await use_cases.create_product(uow, MERCHANT, NOW, commands.CreateProduct("LLM API", "Tokens"))
    metric = await use_cases.create_billable_metric(
        uow,
        MERCHANT,
        NOW,
        commands.CreateBillableMetric(product.id, "Tokens", "", "token", "SUM", "llm.tokens", value_property="$.tokens"),
    )
    feature = await use_cases.create_feature(uow, MERCHANT, NOW, commands.CreateFeature(product.id, "api-access", "API access"))
    fee = await use_cases.create_fee(uow, MERCHANT, NOW, commands.CreateFee(product.id, "Platform", ""))
    metric_price = await use_cases.create_price(
        uow,
        MERCHANT,
        NOW,
        commands.CreatePrice(
            "Tokens",
            "in_arrears",
            {"unitPrice": "0.00002"},
            billable_metric_id=metric.id,
            model="standard",
            feature=FeatureAttachment(feature.id, {}),
        ),
    )
    fee_price = await use_cases.create_price(
        uow, MERCHANT, NOW, commands.CreatePrice("Platform", "in_advance", {"unitPrice": "49"}, fee_id=fee.id, billing_cadence="P1M")
    )
    plan = await use_cases.create_plan(uow, MERCHANT, NOW, commands.CreatePlan(product.id, "Pro", "USD", prices=[fee_price.id]))
    uow.commit()
    return World(uow, product.id, metric.id, feature.id, fee.id, metric_price.id, fee_price.id, plan.id)
