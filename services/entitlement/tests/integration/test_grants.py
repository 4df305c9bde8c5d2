"""Grants of a metered entitlement: idempotent creation by key, idempotent voids, another
merchant sees nothing, and bad input names its field and changes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.subscription.v1 import subscription_events_pb2 as sub_events

from libs.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from libs.infra.proto_time import to_timestamp
from services.entitlement.tests.integration.conftest import START, World, subscription_change


async def _provisioned(world: World) -> tuple[ent.Entitlement, ent.Entitlement]:
    """A subscription's metered and boolean entitlements."""
    plan = await world.plan()
    change = subscription_change(
        sub_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED, plan, f"cus_{uuid.uuid4().hex[:12]}", world.merchant, started_at=START
    )
    applied = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=change), metadata=world.md())
    found = [
        await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=i), metadata=world.md())
        for i in applied.entitlement_ids
    ]
    by_type = {e.feature_type: e for e in found}
    return by_type["metered"], by_type["boolean"]


async def _grant_count(world: World, entitlement_id: str, *, include_voided: bool = True) -> int:
    listed = await world.entitlements.ListGrants(
        ent.ListGrantsRequest(entitlement_id=entitlement_id, include_voided=include_voided), metadata=world.md()
    )
    return int(listed.pagination.total)


async def test_the_same_key_and_parameters_answer_the_grant_and_other_parameters_are_refused(world: World) -> None:
    metered, _ = await _provisioned(world)
    effective = START + timedelta(days=2)
    request = ent.CreateGrantRequest(
        entitlement_id=metered.id, amount=250.5, idempotency_key="top-up-1", effective_at=to_timestamp(effective), priority=-1
    )
    first = await world.entitlements.CreateGrant(request, metadata=world.md())
    again = await world.entitlements.CreateGrant(request, metadata=world.md())
    assert again == first
    assert first.id.startswith("grant_")
    assert (first.amount_decimal, first.amount, first.priority, first.source, first.idempotency_key) == (
        "250.5",
        250.5,
        -1,
        "manual",
        "top-up-1",
    )
    assert first.effective_at == to_timestamp(effective) and not first.HasField("recurrence_period")
    # defaults: everything rolls over, nothing is kept at least
    assert (first.reset_max_rollover, first.reset_min_rollover) == (999999999999.0, 0.0)

    changed = ent.CreateGrantRequest(entitlement_id=metered.id, amount=300, idempotency_key="top-up-1")
    with pytest.raises(AlreadyExists) as refused:
        await world.entitlements.CreateGrant(changed, metadata=world.md())
    assert (refused.value.reason, refused.value.field) == ("IDEMPOTENCY_KEY_REUSED", "idempotencyKey")
    assert await _grant_count(world, metered.id) == 2  # the reset grant and the one top-up

    # the balance counts it: 100 (reset units) + 250.5, evaluated after its effective instant
    later = await world.entitlements.GetEntitlement(
        ent.GetEntitlementRequest(entitlement_id=metered.id, at=to_timestamp(effective + timedelta(hours=1))), metadata=world.md()
    )
    assert later.balance_decimal == "350.5"


async def test_a_void_is_idempotent_and_hides_the_grant_from_the_default_list(world: World) -> None:
    metered, _ = await _provisioned(world)
    grant = await world.entitlements.CreateGrant(
        ent.CreateGrantRequest(entitlement_id=metered.id, amount=10, idempotency_key="k"), metadata=world.md()
    )
    voided = await world.entitlements.VoidGrant(ent.VoidGrantRequest(entitlement_id=metered.id, grant_id=grant.id), metadata=world.md())
    again = await world.entitlements.VoidGrant(ent.VoidGrantRequest(entitlement_id=metered.id, grant_id=grant.id), metadata=world.md())
    assert voided.HasField("voided_at") and again == voided
    assert await _grant_count(world, metered.id, include_voided=False) == 1
    assert await _grant_count(world, metered.id, include_voided=True) == 2
    fetched = await world.entitlements.GetGrant(ent.GetGrantRequest(entitlement_id=metered.id, grant_id=grant.id), metadata=world.md())
    assert fetched.voided_at == voided.voided_at


async def test_another_merchant_finds_nothing(world: World) -> None:
    metered, _ = await _provisioned(world)
    other = world.md(f"org_{uuid.uuid4().hex[:12]}")
    with pytest.raises(NotFound):
        await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=metered.id), metadata=other)
    with pytest.raises(NotFound):
        await world.entitlements.ListGrants(ent.ListGrantsRequest(entitlement_id=metered.id), metadata=other)
    with pytest.raises(NotFound):
        await world.entitlements.CreateGrant(
            ent.CreateGrantRequest(entitlement_id=metered.id, amount=5, idempotency_key="x"), metadata=other
        )
    listed = await world.entitlements.ListEntitlements(ent.ListEntitlementsRequest(customer_id=metered.customer_id), metadata=other)
    assert listed.pagination.total == 0
    check = await world.entitlements.CheckEntitlement(
        ent.CheckEntitlementRequest(customer_id=metered.customer_id, feature_key=metered.feature_key), metadata=other
    )
    assert check.has_access is False and not check.HasField("entitlement")
    assert await _grant_count(world, metered.id) == 1


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"amount": -5}, "amount", "MUST_BE_POSITIVE"),
        ({"amount": 1.123456789}, "amount", "TOO_MANY_DECIMAL_PLACES"),
        ({"amount": 5, "amount_decimal": "abc"}, "amountDecimal", "INVALID_DECIMAL"),
        ({"amount": 5, "effective_at": to_timestamp(START), "expires_at": to_timestamp(START)}, "expiresAt", None),
        ({"amount": 5, "reset_min_rollover": 10, "reset_max_rollover": 5}, "resetMinRollover", None),
        ({"amount": 5, "idempotency_key": ""}, "idempotencyKey", "REQUIRED"),
    ],
)
async def test_bad_input_names_the_field_and_changes_nothing(
    world: World, fields: dict[str, object], field: str, reason: str | None
) -> None:
    metered, _ = await _provisioned(world)
    values: dict[str, object] = {"idempotency_key": "bad", **fields}
    with pytest.raises(InvalidArgument) as refused:
        await world.entitlements.CreateGrant(ent.CreateGrantRequest(entitlement_id=metered.id, **values), metadata=world.md())  # type: ignore[arg-type]
    assert refused.value.field == field
    if reason is not None:
        assert refused.value.reason == reason
    assert await _grant_count(world, metered.id) == 1


async def test_grants_are_for_metered_entitlements_that_are_not_canceled(world: World) -> None:
    plan = await world.plan()
    activated = subscription_change(
        sub_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED, plan, f"cus_{uuid.uuid4().hex[:12]}", world.merchant, started_at=START
    )
    applied = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=activated), metadata=world.md())
    found = [
        await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=i), metadata=world.md())
        for i in applied.entitlement_ids
    ]
    by_type = {e.feature_type: e for e in found}
    with pytest.raises(FailedPrecondition) as not_metered:
        await world.entitlements.CreateGrant(
            ent.CreateGrantRequest(entitlement_id=by_type["boolean"].id, amount=5, idempotency_key="b"), metadata=world.md()
        )
    assert not_metered.value.reason == "ENTITLEMENT_NOT_METERED"
    with pytest.raises(NotFound) as missing:
        await world.entitlements.CreateGrant(
            ent.CreateGrantRequest(entitlement_id="ent_nope", amount=5, idempotency_key="b"), metadata=world.md()
        )
    assert missing.value.field == "entitlementId"

    terminated = subscription_change(
        sub_events.SUBSCRIPTION_CHANGE_KIND_TERMINATED, plan, activated.subscription.customer_id, world.merchant, started_at=START,
        subscription_id=activated.subscription.id, terminated_at=START + timedelta(days=1),
    )  # fmt: skip
    await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=terminated), metadata=world.md())
    with pytest.raises(FailedPrecondition) as canceled:
        await world.entitlements.CreateGrant(
            ent.CreateGrantRequest(entitlement_id=by_type["metered"].id, amount=5, idempotency_key="c"), metadata=world.md()
        )
    assert canceled.value.reason == "ENTITLEMENT_CANCELED"
    assert await _grant_count(world, by_type["metered"].id) == 1
