"""Every mutating CatalogService RPC (every method that is not Get*/BatchGet*/List*) records at
least one event through its use case: a new mutation without an event, or without a
scenario here, fails this test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from accrue.catalog.v1 import catalog_service_pb2

from services.catalog.domain import commands, use_cases
from services.catalog.domain.model import ChangeKind, Resource, ResourceChanged
from services.catalog.tests.unit.world import LATER, MERCHANT, World, build_world

Scenario = Callable[[World], Awaitable[object]]


def _mutating_rpcs() -> list[str]:
    service = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"]
    return sorted(m.name for m in service.methods if not m.name.startswith(("Get", "BatchGet", "List")))


async def _delete_price(w: World) -> object:
    return await use_cases.delete_price(w.uow, MERCHANT, LATER, commands.Delete(w.metric_price_id))


async def _delete_fee(w: World) -> object:
    await use_cases.update_plan(w.uow, MERCHANT, LATER, commands.Update(w.plan_id, {"prices": [w.metric_price_id]}))
    await use_cases.transition_plan_version(w.uow, MERCHANT, LATER, commands.TransitionPlanVersion(w.plan_id, 1, status="archived"))
    await use_cases.delete_price(w.uow, MERCHANT, LATER, commands.Delete(w.fee_price_id))
    w.uow.commit()
    return await use_cases.delete_fee(w.uow, MERCHANT, LATER, commands.Delete(w.fee_id))


async def _delete_feature(w: World) -> object:
    await use_cases.delete_price(w.uow, MERCHANT, LATER, commands.Delete(w.metric_price_id))
    w.uow.commit()
    return await use_cases.delete_feature(w.uow, MERCHANT, LATER, commands.Delete(w.feature_id))


def _update(use_case: Callable[..., Awaitable[object]], resource_id: Callable[[World], str], **changes: object) -> Scenario:
    async def run(w: World) -> object:
        return await use_case(w.uow, MERCHANT, LATER, commands.Update(resource_id(w), changes))

    return run


SCENARIOS: dict[str, Scenario] = {
    "CreateProduct": lambda w: use_cases.create_product(w.uow, MERCHANT, LATER, commands.CreateProduct("Other", "")),
    "UpdateProduct": _update(use_cases.update_product, lambda w: w.product_id, name="Renamed"),
    "CreateBillableMetric": lambda w: use_cases.create_billable_metric(
        w.uow, MERCHANT, LATER, commands.CreateBillableMetric(w.product_id, "Calls", "", "call", "COUNT", "api.call")
    ),
    "UpdateBillableMetric": _update(use_cases.update_billable_metric, lambda w: w.metric_id, unit="tokens"),
    "CreateFeature": lambda w: use_cases.create_feature(w.uow, MERCHANT, LATER, commands.CreateFeature(w.product_id, "sso", "SSO")),
    "UpdateFeature": _update(use_cases.update_feature, lambda w: w.feature_id, name="API"),
    "DeleteFeature": _delete_feature,
    "CreateFee": lambda w: use_cases.create_fee(w.uow, MERCHANT, LATER, commands.CreateFee(w.product_id, "Setup", "")),
    "UpdateFee": _update(use_cases.update_fee, lambda w: w.fee_id, item_id=None),
    "DeleteFee": _delete_fee,
    "CreatePrice": lambda w: use_cases.create_price(
        w.uow, MERCHANT, LATER, commands.CreatePrice("Setup", "in_advance", {"unitPrice": "5"}, fee_id=w.fee_id, billing_cadence="P0D")
    ),
    "UpdatePrice": _update(use_cases.update_price, lambda w: w.metric_price_id, invoice_display_name="LLM tokens"),
    "DeletePrice": _delete_price,
    "CreatePlan": lambda w: use_cases.create_plan(w.uow, MERCHANT, LATER, commands.CreatePlan(w.product_id, "Team", "EUR")),
    "UpdatePlan": _update(use_cases.update_plan, lambda w: w.plan_id, name="Pro 2"),
    "MintPlanVersion": lambda w: use_cases.mint_plan_version(
        w.uow, MERCHANT, LATER, commands.MintPlanVersion(w.plan_id, [w.fee_price_id, w.metric_price_id])
    ),
    "TransitionPlanVersion": lambda w: use_cases.transition_plan_version(
        w.uow, MERCHANT, LATER, commands.TransitionPlanVersion(w.plan_id, 1, make_default=True)
    ),
}


def test_every_mutating_rpc_has_a_scenario() -> None:
    assert sorted(SCENARIOS) == _mutating_rpcs()


@pytest.mark.parametrize("rpc", _mutating_rpcs())
async def test_the_use_case_of_every_mutating_rpc_records_an_event(rpc: str) -> None:
    world = await build_world()
    await SCENARIOS[rpc](world)
    recorded = world.uow.commit()
    assert recorded, f"{rpc} recorded no event"
    assert all(isinstance(e, ResourceChanged) and e.merchant_id == MERCHANT for e in recorded)


async def test_a_delete_records_the_deleted_kind_with_the_resource_as_it_was() -> None:
    world = await build_world()
    await _delete_price(world)
    (event,) = world.uow.commit()
    assert isinstance(event, ResourceChanged)
    assert (event.resource, event.kind, event.resource_id) == (Resource.PRICE, ChangeKind.DELETED, world.metric_price_id)
    assert event.before is not None and event.before.delete_time is None
    assert world.uow.prices.rows[world.metric_price_id].delete_time == LATER


async def test_an_empty_update_changes_and_records_nothing() -> None:
    world = await build_world()
    product = await use_cases.update_product(world.uow, MERCHANT, LATER, commands.Update(world.product_id, {}))
    assert product.name == "LLM API" and product.updated_at != LATER
    assert world.uow.commit() == []
