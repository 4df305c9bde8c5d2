"""Plan versions on the fakes: minting (with optimistic concurrency), transitions, and
the events each records, in order."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from libs.core.errors import Aborted, DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.catalog.domain import commands, use_cases
from services.catalog.domain.model import ChangeKind, PlanVersion, Resource, ResourceChanged
from services.catalog.tests.unit.world import LATER, MERCHANT, World, build_world


def _changes(recorded: Sequence[object]) -> list[tuple[Resource, ChangeKind]]:
    out = []
    for event in recorded:
        assert isinstance(event, ResourceChanged)
        out.append((event.resource, event.kind))
    return out


async def _mint(world: World, prices: list[object], based_on: str | None = None) -> PlanVersion:
    return await use_cases.mint_plan_version(world.uow, MERCHANT, LATER, commands.MintPlanVersion(world.plan_id, prices, based_on))


async def _transition(world: World, number: int, *, make_default: bool | None = None, status: str | None = None) -> PlanVersion:
    command = commands.TransitionPlanVersion(world.plan_id, number, make_default, status)
    return await use_cases.transition_plan_version(world.uow, MERCHANT, LATER, command)


async def test_create_plan_makes_version_1_the_default_and_announces_only_the_plan() -> None:
    world = await build_world()
    plan = await use_cases.create_plan(
        world.uow, MERCHANT, LATER, commands.CreatePlan(world.product_id, "Team", "USD", prices=[world.fee_price_id])
    )
    (version,) = [v for v in world.uow.plan_versions.rows.values() if v.plan_id == plan.id]
    assert (version.version_number, version.status, plan.default_version_id) == (1, "published", version.id)
    assert _changes(world.uow.commit()) == [(Resource.PLAN, ChangeKind.CREATED)]


async def test_mint_makes_the_new_version_default_based_on_the_old_one() -> None:
    world = await build_world()
    first = world.uow.plans.rows[world.plan_id].default_version_id
    version = await _mint(world, [world.fee_price_id, {"priceId": world.metric_price_id, "key": "tokens"}], based_on=first)
    plan = world.uow.plans.rows[world.plan_id]
    assert (version.version_number, version.based_on_version_id, plan.default_version_id) == (2, first, version.id)
    assert [line.key for line in version.lines] == [world.fee_price_id.lower(), "tokens"]
    # the version is announced before the plan that now points at it
    assert _changes(world.uow.commit()) == [(Resource.PLAN_VERSION, ChangeKind.CREATED), (Resource.PLAN, ChangeKind.UPDATED)]


async def test_mint_based_on_a_version_that_is_no_longer_default_conflicts_before_prices_are_checked() -> None:
    world = await build_world()
    first = world.uow.plans.rows[world.plan_id].default_version_id
    await _mint(world, [world.metric_price_id])
    world.uow.commit()
    with pytest.raises(Aborted) as conflict:
        await _mint(world, ["price_does_not_exist"], based_on=first)
    assert (conflict.value.reason, conflict.value.field) == ("PLAN_VERSION_CONFLICT", "basedOnVersionId")
    assert await world.uow.plan_versions.last_number(world.plan_id) == 2


@pytest.mark.parametrize(
    ("prices", "error", "reason", "field"),
    [
        ([], InvalidArgument, "REQUIRED", "prices"),
        (["price_missing"], NotFound, "PRICE_NOT_FOUND", "prices[0]"),
    ],
)
async def test_mint_needs_live_prices(prices: list[object], error: type[DomainError], reason: str, field: str) -> None:
    world = await build_world()
    with pytest.raises(error) as refused:
        await _mint(world, prices)
    assert (refused.value.reason, refused.value.field) == (reason, field)


async def test_a_price_of_another_product_cannot_join_the_plan() -> None:
    world = await build_world()
    other = await use_cases.create_product(world.uow, MERCHANT, LATER, commands.CreateProduct("Other", ""))
    fee = await use_cases.create_fee(world.uow, MERCHANT, LATER, commands.CreateFee(other.id, "Other fee", ""))
    price = await use_cases.create_price(
        world.uow, MERCHANT, LATER, commands.CreatePrice("Other", "in_advance", {"unitPrice": "1"}, fee_id=fee.id, billing_cadence="P1M")
    )
    with pytest.raises(InvalidArgument) as refused:
        await _mint(world, [world.fee_price_id, price.id])
    assert (refused.value.reason, refused.value.field) == ("PRICE_PRODUCT_MISMATCH", "prices[1]")


async def test_the_default_version_cannot_be_archived_and_an_archived_one_cannot_become_default() -> None:
    world = await build_world()
    with pytest.raises(FailedPrecondition) as archive_default:
        await _transition(world, 1, status="archived")
    assert archive_default.value.reason == "DEFAULT_VERSION_ARCHIVE"
    await _mint(world, [world.metric_price_id])
    archived = await _transition(world, 1, status="archived")
    assert archived.status == "archived"
    with pytest.raises(FailedPrecondition) as default_archived:
        await _transition(world, 1, make_default=True)
    assert default_archived.value.reason == "DEFAULT_VERSION_ARCHIVE"
    restored = await _transition(world, 1, make_default=True, status="published")
    assert restored.status == "published"
    assert world.uow.plans.rows[world.plan_id].default_version_id == restored.id


async def test_rolling_back_to_an_older_version_announces_the_plan_then_the_version() -> None:
    world = await build_world()
    await _mint(world, [world.metric_price_id])
    world.uow.commit()
    await _transition(world, 1, make_default=True)
    assert _changes(world.uow.commit()) == [(Resource.PLAN, ChangeKind.UPDATED), (Resource.PLAN_VERSION, ChangeKind.UPDATED)]


async def test_a_status_change_alone_does_not_touch_the_plan() -> None:
    world = await build_world()
    await _mint(world, [world.metric_price_id])
    world.uow.commit()
    await _transition(world, 1, status="archived")
    assert _changes(world.uow.commit()) == [(Resource.PLAN_VERSION, ChangeKind.UPDATED)]


@pytest.mark.parametrize(
    ("make_default", "status", "reason", "field"),
    [(None, None, "REQUIRED", "default"), (False, None, "NOT_ALLOWED", "default"), (None, "draft", "INVALID_ENUM_VALUE", "status")],
)
async def test_transitions_that_say_nothing_or_too_much_are_refused(
    make_default: bool | None, status: str | None, reason: str, field: str
) -> None:
    world = await build_world()
    with pytest.raises(InvalidArgument) as refused:
        await _transition(world, 1, make_default=make_default, status=status)
    assert (refused.value.reason, refused.value.field) == (reason, field)


async def test_update_plan_with_prices_mints_and_announces_the_plan_once() -> None:
    world = await build_world()
    plan = await use_cases.update_plan(
        world.uow, MERCHANT, LATER, commands.Update(world.plan_id, {"name": "Pro 2", "prices": [world.metric_price_id]})
    )
    assert plan.name == "Pro 2" and plan.updated_at == LATER
    assert _changes(world.uow.commit()) == [(Resource.PLAN_VERSION, ChangeKind.CREATED), (Resource.PLAN, ChangeKind.UPDATED)]


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"billing_anchor": LATER.replace(year=2030)}, "OUT_OF_RANGE", "billingAnchor"),
        ({"credit_allocation_count": 1}, "NOT_SUPPORTED", "creditAllocations"),
        ({"version_transition": ("tomorrow", "none")}, "INVALID_ENUM_VALUE", "versionTransition.effectiveDate"),
        ({"version_transition": ("immediate", "full")}, "INVALID_ENUM_VALUE", "versionTransition.proration"),
    ],
)
async def test_create_and_update_share_the_plan_rules(changes: dict[str, object], reason: str, field: str) -> None:
    world = await build_world()
    with pytest.raises(InvalidArgument) as on_update:
        await use_cases.update_plan(world.uow, MERCHANT, LATER, commands.Update(world.plan_id, changes))
    with pytest.raises(InvalidArgument) as on_create:
        await use_cases.create_plan(
            world.uow,
            MERCHANT,
            LATER,
            commands.CreatePlan(world.product_id, "Team", "USD", **changes),  # type: ignore[arg-type]
        )
    assert (on_update.value.reason, on_update.value.field) == (on_create.value.reason, on_create.value.field) == (reason, field)
