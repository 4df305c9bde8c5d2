"""Aggregates -> protos with what they show: a price's features, a plan's default
version and its prices. The RPCs answer through these, and the unit of work renders a
recorded event through them too, so an event carries exactly what a Get returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from accrue.catalog.v1 import catalog_resources_pb2 as res
from google.protobuf.message import Message

from libs.core.domain import DomainEvent
from libs.infra.db import OutboxMessage
from services.catalog import events, mapping
from services.catalog.domain.model import (
    BillableMetric,
    CatalogAggregate,
    Feature,
    Fee,
    Plan,
    PlanVersion,
    Price,
    Product,
    Resource,
    ResourceChanged,
)
from services.catalog.store import Repository, SqlCatalogUnitOfWork


async def prices(uow: SqlCatalogUnitOfWork, found: Sequence[Price]) -> list[res.Price]:
    features = await uow.reads.features_by_id([p.feature_id for p in found])
    return [mapping.price(p, features) for p in found]


async def plans(uow: SqlCatalogUnitOfWork, found: Sequence[Plan]) -> list[res.Plan]:
    lines = await uow.reads.version_prices([p.default_version_id for p in found if p.default_version_id])
    features = await uow.reads.features_by_id([p.feature_id for ls in lines.values() for _, p in ls])
    return [mapping.plan(p, lines.get(p.default_version_id or "", []), features) for p in found]


async def plan_versions(uow: SqlCatalogUnitOfWork, plan: Plan, found: Sequence[PlanVersion]) -> list[res.PlanVersion]:
    lines = await uow.reads.version_prices([v.id for v in found])
    features = await uow.reads.features_by_id([p.feature_id for ls in lines.values() for _, p in ls])
    return [
        mapping.plan_version(v, lines[v.id], currency=plan.currency, default_version_id=plan.default_version_id, features=features)
        for v in found
    ]


async def price(uow: SqlCatalogUnitOfWork, found: Price) -> res.Price:
    return (await prices(uow, [found]))[0]


async def plan(uow: SqlCatalogUnitOfWork, found: Plan) -> res.Plan:
    return (await plans(uow, [found]))[0]


async def plan_version(uow: SqlCatalogUnitOfWork, plan: Plan, found: PlanVersion) -> res.PlanVersion:
    return (await plan_versions(uow, plan, [found]))[0]


async def render(uow: SqlCatalogUnitOfWork, aggregate: CatalogAggregate) -> Message:
    """Any catalog aggregate as its proto (a plan version with its plan as it is now)."""
    if isinstance(aggregate, Product):
        return mapping.product(aggregate)
    if isinstance(aggregate, BillableMetric):
        return mapping.billable_metric(aggregate)
    if isinstance(aggregate, Feature):
        return mapping.feature(aggregate)
    if isinstance(aggregate, Fee):
        return mapping.fee(aggregate)
    if isinstance(aggregate, Price):
        return await price(uow, aggregate)
    if isinstance(aggregate, Plan):
        return await plan(uow, aggregate)
    if isinstance(aggregate, PlanVersion):
        return await plan_version(uow, await uow.plans.get(aggregate.merchant_id, aggregate.plan_id), aggregate)
    raise TypeError(f"no view of {type(aggregate).__name__}")


async def _current(uow: SqlCatalogUnitOfWork, event: ResourceChanged) -> CatalogAggregate:
    if event.resource is Resource.PLAN_VERSION:
        version = await uow.plan_versions.by_id(event.resource_id)
        assert version is not None, f"plan version {event.resource_id} recorded a change and is gone"
        return version
    repositories: dict[Resource, Repository[Any]] = {
        Resource.PRODUCT: uow.products,
        Resource.BILLABLE_METRIC: uow.billable_metrics,
        Resource.FEATURE: uow.features,
        Resource.FEE: uow.fees,
        Resource.PRICE: uow.prices,
        Resource.PLAN: uow.plans,
    }
    found: CatalogAggregate = await repositories[event.resource].get(event.merchant_id, event.resource_id)
    return found


async def outbox_message(uow: SqlCatalogUnitOfWork, event: DomainEvent) -> OutboxMessage:
    """The unit of work's translator: a recorded change, rendered as it is at commit (a
    delete as it was before), built into the catalog's event by events.py."""
    assert isinstance(event, ResourceChanged), f"the catalog records ResourceChanged, not {type(event).__name__}"
    aggregate = event.before if event.before is not None else await _current(uow, event)
    return events.resource_changed(event, await render(uow, aggregate))
