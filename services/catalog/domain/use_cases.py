"""The catalog's use cases: load aggregates through the unit of work's repositories, let
them apply their rules, store them. Events are recorded by the aggregates and written by
the unit of work; nothing here emits one.

They live in domain/ (not beside server.py) because they are pure in the same sense as
the aggregates: they see storage only through domain/ports.py, so they run unchanged on
the in-memory fakes of tests/fakes.py, and the house shape (STYLE.md) puts use cases in
domain/. Each takes the unit of work, the acting merchant, the time and a command, and
returns the aggregate the caller renders.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from libs.core.errors import InvalidArgument
from services.catalog.domain import commands, rules
from services.catalog.domain.model import BillableMetric, Feature, Fee, Plan, PlanVersion, Price, Product
from services.catalog.domain.ports import CatalogUnitOfWork, Repository

U = TypeVar("U", Product, BillableMetric, Feature, Fee, Plan)


async def _update(
    repository: Repository[U],
    merchant_id: str,
    now: datetime,
    command: commands.Update,
    then: Callable[[U], Awaitable[None]] | None = None,
) -> U:
    """The aggregate, locked, applies the changes (then ``then`` runs, before the save);
    an empty mask changes nothing and announces nothing."""
    if not command.changes:
        return await repository.get(merchant_id, command.resource_id)
    aggregate = await repository.get(merchant_id, command.resource_id, lock=True)
    aggregate.update(command.changes, now)
    if then is not None:
        await then(aggregate)
    await repository.save(aggregate)
    return aggregate


P = TypeVar("P", BillableMetric, Fee)


async def _add_to_product(uow: CatalogUnitOfWork, repository: Repository[P], aggregate: P) -> P:
    """Store a new resource of a product, once the product is found (live, the merchant's)."""
    await uow.products.get(aggregate.merchant_id, aggregate.product_id, field="productId")
    await repository.add(aggregate)
    return aggregate


# --- products -------------------------------------------------------------------------


async def create_product(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateProduct) -> Product:
    product = Product.create(command, merchant_id=merchant_id, now=now)
    await uow.products.add(product)
    return product


async def update_product(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Product:
    return await _update(uow.products, merchant_id, now, command)


# --- billable metrics -----------------------------------------------------------------


async def create_billable_metric(
    uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateBillableMetric
) -> BillableMetric:
    return await _add_to_product(uow, uow.billable_metrics, BillableMetric.create(command, merchant_id=merchant_id, now=now))


async def update_billable_metric(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> BillableMetric:
    return await _update(uow.billable_metrics, merchant_id, now, command)


# --- features -------------------------------------------------------------------------


async def create_feature(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateFeature) -> Feature:
    feature = Feature.create(command, merchant_id=merchant_id, now=now)
    await uow.products.get(merchant_id, feature.product_id, field="productId")
    feature.ensure_key_free(await uow.features.claim_key(feature.product_id, feature.key))
    await uow.features.add(feature)
    return feature


async def update_feature(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Feature:
    async def check_key(feature: Feature) -> None:
        if "key" in command.changes:
            feature.ensure_key_free(await uow.features.claim_key(feature.product_id, feature.key))

    return await _update(uow.features, merchant_id, now, command, then=check_key)


async def delete_feature(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Delete) -> Feature:
    feature = await uow.features.get(merchant_id, command.resource_id, lock=True)
    feature.delete(now, used_by_price=await uow.prices.live_price_using_feature(feature.id))
    await uow.prices.release_feature_from_deleted(feature.id)
    await uow.features.save(feature)
    return feature


# --- fees -----------------------------------------------------------------------------


async def create_fee(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateFee) -> Fee:
    return await _add_to_product(uow, uow.fees, Fee.create(command, merchant_id=merchant_id, now=now))


async def update_fee(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Fee:
    return await _update(uow.fees, merchant_id, now, command)


async def delete_fee(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Delete) -> Fee:
    fee = await uow.fees.get(merchant_id, command.resource_id, lock=True)
    fee.delete(now, live_price=await uow.prices.live_price_of_fee(fee.id))
    await uow.fees.save(fee)
    return fee


# --- prices ---------------------------------------------------------------------------


async def _check_price_references(uow: CatalogUnitOfWork, merchant_id: str, draft: rules.PriceDraft) -> None:
    """The metric or fee, and the feature, exist for the merchant; the feature is of the same product."""
    owner: BillableMetric | Fee
    if draft.billable_metric_id is not None:
        owner = await uow.billable_metrics.get(merchant_id, draft.billable_metric_id, field="billableMetricId")
    else:
        owner = await uow.fees.get(merchant_id, draft.fee_id or "", field="feeId")
    if draft.feature_id is not None:
        feature = await uow.features.get(merchant_id, draft.feature_id, field="feature.featureId")
        if feature.product_id != owner.product_id:
            raise InvalidArgument(
                "feature.featureId",
                f"feature {feature.id} belongs to product {feature.product_id}, the price's "
                f"{'metric' if draft.billable_metric_id else 'fee'} to {owner.product_id}",
                reason="FEATURE_PRODUCT_MISMATCH",
            )
        if draft.entitlement_template is not None:
            rules.template_fits_feature(draft.entitlement_template, feature.type)


async def create_price(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreatePrice) -> Price:
    draft = command.draft()
    valid = rules.validate_price(draft)
    await _check_price_references(uow, merchant_id, draft)
    price = Price.create(merchant_id=merchant_id, draft=draft, valid=valid, now=now)
    await uow.prices.add(price)
    return price


async def update_price(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Price:
    if not command.changes:
        return await uow.prices.get(merchant_id, command.resource_id)
    price = await uow.prices.get(merchant_id, command.resource_id, lock=True)
    draft = price.changed_draft(command.changes)
    valid = rules.validate_price(draft)
    await _check_price_references(uow, merchant_id, draft)
    if draft.billable_metric_id != price.billable_metric_id and price.billable_metric_id is not None:
        # a price keeps its product: plans checked it against theirs when they listed it
        before = await uow.billable_metrics.get(merchant_id, price.billable_metric_id)
        after = await uow.billable_metrics.get(merchant_id, draft.billable_metric_id or "", field="billableMetricId")
        if after.product_id != before.product_id:
            raise InvalidArgument(
                "billableMetricId",
                f"billableMetricId {after.id} belongs to product {after.product_id}, but this price belongs to product {before.product_id}",
                reason="METRIC_PRODUCT_MISMATCH",
            )
    price.apply(draft, valid, now)
    await uow.prices.save(price)
    return price


async def delete_price(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Delete) -> Price:
    price = await uow.prices.get(merchant_id, command.resource_id, lock=True)
    price.delete(now, live_plan=await uow.prices.is_price_in_live_plan(price.id))
    await uow.prices.save(price)
    return price


# --- plans ----------------------------------------------------------------------------


async def _resolve_lines(
    uow: CatalogUnitOfWork, merchant_id: str, product_id: str, values: Iterable[Any], field: str = "prices"
) -> list[rules.PlanLine]:
    """Parse a plan's ``prices`` and check each is a live price of the plan's product."""
    lines = rules.plan_lines(list(values), field)
    for index, line in enumerate(lines):
        here = f"{field}[{index}]"
        price = await uow.prices.get(merchant_id, line.price_id, field=here)
        owner_product = await uow.prices.product_of(price)
        if owner_product != product_id:
            raise InvalidArgument(
                here, f"{here}: price {line.price_id} belongs to product {owner_product}, not {product_id}", reason="PRICE_PRODUCT_MISMATCH"
            )
    return lines


async def create_plan(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.CreatePlan) -> Plan:
    plan = Plan.create(command, merchant_id=merchant_id, now=now)
    await uow.products.get(merchant_id, plan.product_id, field="productId")
    lines = await _resolve_lines(uow, merchant_id, plan.product_id, command.prices)
    version = plan.first_version(lines, now)
    await uow.plans.add(plan)
    await uow.plan_versions.add(version)
    return plan


async def _mint(
    uow: CatalogUnitOfWork, merchant_id: str, now: datetime, plan: Plan, prices: list[Any], based_on: str | None
) -> PlanVersion:
    plan.check_based_on(based_on)  # before the prices: a stale caller hears of the conflict first
    lines = await _resolve_lines(uow, merchant_id, plan.product_id, prices)
    version = plan.mint_version(lines, based_on_version_id=based_on, last_number=await uow.plan_versions.last_number(plan.id), now=now)
    await uow.plan_versions.add(version)
    return version


async def update_plan(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Plan:
    async def mint_prices(plan: Plan) -> None:
        if "prices" in command.changes:
            await _mint(uow, merchant_id, now, plan, command.changes["prices"], None)

    return await _update(uow.plans, merchant_id, now, command, then=mint_prices)


async def mint_plan_version(uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.MintPlanVersion) -> PlanVersion:
    plan = await uow.plans.get(merchant_id, command.plan_id, lock=True)
    version = await _mint(uow, merchant_id, now, plan, command.prices, command.based_on_version_id)
    await uow.plans.save(plan)
    return version


async def transition_plan_version(
    uow: CatalogUnitOfWork, merchant_id: str, now: datetime, command: commands.TransitionPlanVersion
) -> PlanVersion:
    plan = await uow.plans.get(merchant_id, command.plan_id, lock=True)
    version = await uow.plan_versions.get_by_number(plan, command.version_number, lock=True)
    version.transition(plan, make_default=command.make_default, status=command.status, now=now)
    await uow.plan_versions.save(version)
    await uow.plans.save(plan)
    return version
