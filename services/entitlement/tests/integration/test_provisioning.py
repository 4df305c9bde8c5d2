"""Provisioning through ApplySubscriptionChange and the subscription stream: one set of
entitlements per subscription however often the change arrives, and termination cancels
them from the subscription's end on."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.subscription.v1 import subscription_events_pb2 as sub_events
from accrue.subscription.v1 import subscription_service_pb2 as sub
from google.protobuf.timestamp_pb2 import Timestamp

from libs.infra.messaging import EVENT_TYPE_HEADER, MERCHANT_HEADER, MSG_ID_HEADER, ensure_stream
from libs.infra.proto_time import to_timestamp
from libs.testing.waiting import eventually_async
from services.entitlement.tests.integration.conftest import START, World, subscription_change
from services.subscription import events as subscription_stream

ACTIVATED = sub_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED
TERMINATED = sub_events.SUBSCRIPTION_CHANGE_KIND_TERMINATED


async def _listed(world: World, customer_id: str, at: Timestamp | None = None) -> ent.ListEntitlementsResponse:
    response: ent.ListEntitlementsResponse = await world.entitlements.ListEntitlements(
        ent.ListEntitlementsRequest(customer_id=customer_id, at=at), metadata=world.md()
    )
    return response


async def test_a_change_applied_twice_and_streamed_provisions_one_set(world: World) -> None:
    plan = await world.plan()
    customer_id = f"cus_{uuid.uuid4().hex[:12]}"
    change = subscription_change(ACTIVATED, plan, customer_id, world.merchant, started_at=START)
    first = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=change), metadata=world.md())
    again = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=change), metadata=world.md())
    assert len(first.entitlement_ids) == 2
    assert list(again.entitlement_ids) == list(first.entitlement_ids)

    # the same change from the subscription service's stream
    js = world.host.runtime.js  # type: ignore[union-attr]
    await ensure_stream(js, subscription_stream.STREAM, list(subscription_stream.STREAM_SUBJECTS))
    headers = {MSG_ID_HEADER: str(uuid.uuid4()), EVENT_TYPE_HEADER: change.DESCRIPTOR.full_name, MERCHANT_HEADER: world.merchant}
    await js.publish("accrue.subscription.v1.subscription.activated", change.SerializeToString(), headers=headers)

    async def inbox_has_it() -> bool:
        inbox = world.host.runtime.db.metadata.tables["inbox"]  # type: ignore[union-attr]
        async with world.host.runtime.db.engine.connect() as conn:  # type: ignore[union-attr]
            found = (await conn.execute(sa.select(inbox.c.event_id).where(inbox.c.event_id == headers[MSG_ID_HEADER]))).first()
        return found is not None

    assert await eventually_async(inbox_has_it, True, timeout=10) is True

    listed = await _listed(world, customer_id)
    assert listed.pagination.total == 2
    assert sorted(e.id for e in listed.data) == sorted(first.entitlement_ids)
    by_type = {e.feature_type: e for e in listed.data}
    metered, boolean = by_type["metered"], by_type["boolean"]
    assert (metered.feature_key, metered.product_id, metered.subscription_id) == (plan.metered_key, plan.product_id, change.subscription.id)
    assert metered.id == metered.entitlement_id and metered.object == "entitlement"
    assert metered.billable_metric_id == plan.metric_id
    assert (metered.status, metered.has_access, metered.is_soft_limit) == ("active", True, False)
    # the reset units: 100 a month, no usage yet
    assert (metered.balance_decimal, metered.usage_in_period_decimal, metered.overage_decimal) == ("100", "0", "0")
    assert metered.balance == 100.0
    assert metered.HasField("usage_counted_until") and metered.HasField("current_period_start")
    assert metered.template.usage_period.interval == "P1M" and metered.template.issue_after_reset == 100.0
    assert (boolean.has_access, boolean.HasField("balance"), boolean.HasField("config")) == (True, False, False)

    grants = await world.entitlements.ListGrants(ent.ListGrantsRequest(entitlement_id=metered.id), metadata=world.md())
    assert grants.pagination.total == 1
    reset = grants.data[0]
    assert (reset.source, reset.amount_decimal, reset.recurrence_period) == ("reset", "100", "P1M")
    assert reset.effective_at == to_timestamp(START) and not reset.HasField("idempotency_key")


async def test_termination_cancels_from_the_end_on_and_a_repeat_changes_nothing(world: World) -> None:
    plan = await world.plan()
    customer_id = f"cus_{uuid.uuid4().hex[:12]}"
    activated = subscription_change(ACTIVATED, plan, customer_id, world.merchant, started_at=START)
    await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=activated), metadata=world.md())
    ended_at = START + timedelta(days=10)
    terminated = subscription_change(
        TERMINATED, plan, customer_id, world.merchant, started_at=START, subscription_id=activated.subscription.id, terminated_at=ended_at
    )
    for _ in range(2):
        answer = await world.entitlements.ApplySubscriptionChange(
            ent.ApplySubscriptionChangeRequest(change=terminated), metadata=world.md()
        )
        assert len(answer.entitlement_ids) == 2

    after = await _listed(world, customer_id)
    for item in after.data:
        assert (item.status, item.has_access) == ("canceled", False)
        assert item.canceled_at == to_timestamp(ended_at) and item.active_to == to_timestamp(ended_at)
    # before the end it was active (an evaluation at an instant)
    before = await _listed(world, customer_id, at=to_timestamp(ended_at - timedelta(seconds=1)))
    assert {(i.status, i.has_access) for i in before.data} == {("active", True)}
    # a check after the end: no access
    check = await world.entitlements.CheckEntitlement(
        ent.CheckEntitlementRequest(customer_id=customer_id, feature_key=plan.boolean_key), metadata=world.md()
    )
    assert check.has_access is False and check.entitlement.status == "canceled"


async def test_an_entitlement_on_a_test_clock_is_evaluated_in_the_clock_s_time(world: World) -> None:
    clock_start = START + timedelta(days=3)
    clock = await world.subscriptions.CreateTestClock(
        sub.CreateTestClockRequest(current_time=to_timestamp(clock_start)), metadata=world.md()
    )
    plan = await world.plan()
    change = subscription_change(ACTIVATED, plan, f"cus_{uuid.uuid4().hex[:12]}", world.merchant, started_at=START)
    change.subscription.test_clock_id = clock.id
    applied = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=change), metadata=world.md())
    metered_id = next(
        e.id
        for e in (await _listed(world, change.subscription.customer_id)).data
        if e.feature_type == "metered" and e.id in applied.entitlement_ids
    )
    found = await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=metered_id), metadata=world.md())
    assert (found.test_clock_id, found.evaluated_at) == (clock.id, to_timestamp(clock_start))
    # a grant made now counts from the clock's now
    grant = await world.entitlements.CreateGrant(
        ent.CreateGrantRequest(entitlement_id=metered_id, amount=7, idempotency_key="clock"), metadata=world.md()
    )
    assert grant.effective_at == to_timestamp(clock_start)

    await world.subscriptions.AdvanceTestClock(sub.AdvanceTestClockRequest(id=clock.id, advance_by="P1M"), metadata=world.md())
    moved = await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=metered_id), metadata=world.md())
    assert moved.evaluated_at == to_timestamp(datetime(2026, 12, 4, tzinfo=UTC))  # START + 3 days + P1M
    # the next period began at the anchor's boundary: the reset units are back, the one-off grant rolled over whole
    assert moved.current_period_start == to_timestamp(datetime(2026, 12, 1, tzinfo=UTC))
    assert moved.balance_decimal == "107"
