"""Delete guards, the one deletion convention (delete_time; gone from get and list), and
feature key uniqueness, on the fakes."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from libs.core.errors import AlreadyExists, FailedPrecondition, NotFound
from libs.core.paging import Page
from services.catalog.domain import commands, use_cases
from services.catalog.tests.unit.world import LATER, MERCHANT, build_world


async def _refused(deletion: Awaitable[object]) -> FailedPrecondition:
    """The delete's refusal, which names the resource's ``id``."""
    with pytest.raises(FailedPrecondition) as refused:
        await deletion
    assert refused.value.field == "id"
    return refused.value


async def test_a_feature_attached_to_a_live_price_cannot_be_deleted() -> None:
    world = await build_world()
    refused = await _refused(use_cases.delete_feature(world.uow, MERCHANT, LATER, commands.Delete(world.feature_id)))
    assert refused.reason == "FEATURE_IN_USE" and world.metric_price_id in refused.message


async def test_a_deleted_feature_is_gone_its_key_is_free_and_deleted_prices_let_go_of_it() -> None:
    world = await build_world()
    await use_cases.delete_price(world.uow, MERCHANT, LATER, commands.Delete(world.metric_price_id))
    await use_cases.delete_feature(world.uow, MERCHANT, LATER, commands.Delete(world.feature_id))
    assert world.uow.features.rows[world.feature_id].delete_time == LATER
    assert world.uow.prices.rows[world.metric_price_id].feature_id is None
    with pytest.raises(NotFound):
        await world.uow.features.get(MERCHANT, world.feature_id)
    assert await world.uow.features.list_page(MERCHANT, {"product_id": world.product_id}, Page(10, 0)) == ([], 0)
    again = await use_cases.create_feature(world.uow, MERCHANT, LATER, commands.CreateFeature(world.product_id, "api-access", "Again"))
    assert again.id != world.feature_id


async def test_a_feature_key_is_unique_in_its_product_on_create_and_on_rename() -> None:
    world = await build_world()
    with pytest.raises(AlreadyExists) as duplicate:
        await use_cases.create_feature(world.uow, MERCHANT, LATER, commands.CreateFeature(world.product_id, "api-access", "Twice"))
    assert (duplicate.value.reason, duplicate.value.field) == ("DUPLICATE_RESOURCE", "key")
    other = await use_cases.create_feature(world.uow, MERCHANT, LATER, commands.CreateFeature(world.product_id, "sso", "SSO"))
    with pytest.raises(AlreadyExists):
        await use_cases.update_feature(world.uow, MERCHANT, LATER, commands.Update(other.id, {"key": "api-access"}))
    # keeping one's own key is not a conflict
    kept = await use_cases.update_feature(world.uow, MERCHANT, LATER, commands.Update(other.id, {"key": "sso", "name": "Single sign-on"}))
    assert (kept.key, kept.name) == ("sso", "Single sign-on")


async def test_a_fee_with_live_prices_cannot_be_deleted() -> None:
    world = await build_world()
    refused = await _refused(use_cases.delete_fee(world.uow, MERCHANT, LATER, commands.Delete(world.fee_id)))
    assert refused.reason == "FEE_HAS_PRICES"


async def test_a_price_in_a_published_version_of_a_live_plan_cannot_be_deleted_until_that_version_is_archived() -> None:
    world = await build_world()
    refused = await _refused(use_cases.delete_price(world.uow, MERCHANT, LATER, commands.Delete(world.fee_price_id)))
    assert refused.reason == "PRICE_IN_USE" and world.plan_id in refused.message
    await use_cases.mint_plan_version(world.uow, MERCHANT, LATER, commands.MintPlanVersion(world.plan_id, [world.metric_price_id]))
    await use_cases.transition_plan_version(world.uow, MERCHANT, LATER, commands.TransitionPlanVersion(world.plan_id, 1, status="archived"))
    deleted = await use_cases.delete_price(world.uow, MERCHANT, LATER, commands.Delete(world.fee_price_id))
    assert (deleted.delete_time, deleted.updated_at) == (LATER, LATER)
    await use_cases.delete_fee(world.uow, MERCHANT, LATER, commands.Delete(world.fee_id))
    with pytest.raises(NotFound) as gone:
        await use_cases.delete_fee(world.uow, MERCHANT, LATER, commands.Delete(world.fee_id))
    assert gone.value.reason == "FEE_NOT_FOUND"


async def test_another_merchants_resources_are_not_found() -> None:
    world = await build_world()
    with pytest.raises(NotFound):
        await use_cases.update_product(world.uow, "org_other", LATER, commands.Update(world.product_id, {"name": "Mine"}))
    with pytest.raises(NotFound) as product:
        await use_cases.create_fee(world.uow, "org_other", LATER, commands.CreateFee(world.product_id, "Fee", ""))
    assert product.value.field == "productId"
