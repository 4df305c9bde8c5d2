"""Entitlements issued by hand, and the check path over metering's usage: the balance
burns with deduplicated usage, a cached evaluation says it is stale, and metering's
UsageStored hint makes the next check read again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.metering.v1 import metering_resources_pb2 as metering_resources
from accrue.metering.v1 import metering_service_pb2 as met
from accrue.subscription.v1 import subscription_service_pb2 as sub

from libs.core.errors import AlreadyExists, InvalidArgument, NotFound
from libs.infra.proto_time import to_timestamp
from libs.testing.waiting import eventually_async
from services.entitlement.consumers import USAGE_STORED_SUBJECT
from services.entitlement.tests.integration.conftest import Plan, World, struct


def _metered(**fields: object) -> ent.EntitlementTemplate:
    return ent.EntitlementTemplate(type="metered", **fields)  # type: ignore[arg-type]


async def _issue(world: World, plan: Plan, customer_id: str, **fields: object) -> ent.Entitlement:
    request = ent.IssueEntitlementRequest(customer_id=customer_id, feature_id=plan.metered_feature_id, **fields)  # type: ignore[arg-type]
    issued: ent.Entitlement = await world.entitlements.IssueEntitlement(request, metadata=world.md())
    return issued


async def _check(world: World, customer_id: str, key: str) -> ent.CheckEntitlementResponse:
    answer: ent.CheckEntitlementResponse = await world.entitlements.CheckEntitlement(
        ent.CheckEntitlementRequest(customer_id=customer_id, feature_key=key), metadata=world.md()
    )
    return answer


async def test_an_entitlement_issued_by_hand_takes_the_metric_of_the_price_carrying_its_feature(world: World) -> None:
    plan = await world.plan()
    customer_id = await world.customer()
    issued = await _issue(world, plan, customer_id, template=_metered(issue_after_reset=40, is_soft_limit=True), metadata={"tier": "gold"})
    assert issued.id.startswith("ent_") and not issued.HasField("subscription_id")
    assert (issued.billable_metric_id, issued.is_soft_limit, issued.balance_decimal) == (plan.metric_id, True, "40")
    assert dict(issued.metadata) == {"tier": "gold"} and not issued.HasField("current_period_end")  # one-time allowance

    with pytest.raises(AlreadyExists) as again:
        await _issue(world, plan, customer_id, template=_metered())
    assert again.value.reason == "ENTITLEMENT_EXISTS"


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ({"customer_id": "cus_missing"}, NotFound, "customerId"),
        ({"feature_id": "feat_missing"}, NotFound, "featureId"),
        ({"template": ent.EntitlementTemplate(type="boolean")}, InvalidArgument, "template.type"),
        ({"template": _metered(usage_period=ent.UsagePeriod(interval="monthly"))}, InvalidArgument, "template.usagePeriod.interval"),
        ({"template": _metered(reset_min_rollover=5)}, InvalidArgument, "template.resetMinRollover"),
        # a period of hours or seconds would make every balance walk thousands of periods
        ({"template": _metered(usage_period=ent.UsagePeriod(interval="PT1S"))}, InvalidArgument, "template.usagePeriod.interval"),
        # an unknown metric is refused before anything is written (a stored one broke the list)
        ({"template": _metered(billable_metric_id="bm_missing")}, NotFound, "template.billableMetricId"),
        ({"active_from": to_timestamp(datetime(9999, 1, 1, tzinfo=UTC))}, InvalidArgument, "activeFrom"),
        ({"active_to": to_timestamp(datetime(2020, 1, 1, tzinfo=UTC))}, InvalidArgument, "activeTo"),
    ],
)
async def test_bad_input_to_an_issue_names_the_field_and_issues_nothing(
    world: World, change: dict[str, object], error: type[Exception], field: str
) -> None:
    plan = await world.plan()
    customer_id = await world.customer()
    values: dict[str, object] = {"customer_id": customer_id, "feature_id": plan.metered_feature_id, "template": _metered(), **change}
    with pytest.raises(error) as refused:
        await world.entitlements.IssueEntitlement(ent.IssueEntitlementRequest(**values), metadata=world.md())  # type: ignore[arg-type]
    assert getattr(refused.value, "field", None) == field
    listed = await world.entitlements.ListEntitlements(ent.ListEntitlementsRequest(customer_id=customer_id), metadata=world.md())
    assert listed.pagination.total == 0


async def test_the_balance_burns_with_usage_and_a_cached_answer_says_it_is_stale(world: World) -> None:
    plan = await world.plan()
    external_id = f"ext-{uuid.uuid4().hex[:8]}"
    created = await world.subscriptions.CreateCustomer(
        sub.CreateCustomerRequest(
            consumer=sub.CreateCustomerConsumer(name="Bo", email=f"{uuid.uuid4().hex[:8]}@example.com", address=sub.Address(country="DE")),
            external_id=external_id,
        ),
        metadata=world.md(),
    )
    customer_id = created.customer_id
    start = datetime.now(UTC) - timedelta(hours=1)
    await _issue(
        world, plan, customer_id, active_from=to_timestamp(start),
        template=_metered(usage_period=ent.UsagePeriod(interval="P1M"), issue_after_reset=100),
    )  # fmt: skip
    first = await _check(world, customer_id, plan.metered_key)
    assert (first.has_access, first.balance_decimal) == (True, "100")
    assert first.HasField("usage_counted_until")

    for key in ("a", "b", "a"):  # "a" twice: a duplicate never burns twice
        await world.metering.IngestEvent(
            met.IngestEventRequest(type=plan.event_type, source="t", subject=customer_id, data=struct({"tokens": 30}), idempotency_key=key),
            metadata=world.md(),
        )

    async def balance() -> str:
        return (await _check(world, customer_id, plan.metered_key)).balance_decimal

    assert await eventually_async(balance, "40", timeout=15) == "40"
    by_external = await world.entitlements.CheckEntitlement(
        ent.CheckEntitlementRequest(external_customer_id=external_id, feature_key=plan.metered_key), metadata=world.md()
    )
    assert by_external.balance_decimal == "40"
    # served from the cache: it says so, and when the readings were taken
    cached = await _check(world, customer_id, plan.metered_key)
    assert cached.entitlement.HasField("stale")
    detail = await world.entitlements.GetEntitlement(ent.GetEntitlementRequest(entitlement_id=cached.entitlement.id), metadata=world.md())
    assert (detail.usage_in_period_decimal, detail.overage_decimal) == ("60", "0")

    # metering's hint: the next check reads again (not stale)
    hint = metering_resources.UsageStored(subjects=[metering_resources.StoredSubject(merchant_id=world.merchant, subject=customer_id)])
    nats = world.host.runtime.nats  # type: ignore[union-attr]
    await nats.publish(USAGE_STORED_SUBJECT, hint.SerializeToString())
    await nats.flush()

    async def fresh() -> bool:
        return not (await _check(world, customer_id, plan.metered_key)).entitlement.HasField("stale")

    assert await eventually_async(fresh, True, timeout=3) is True


async def test_a_hard_limit_blocks_at_zero(world: World) -> None:
    plan = await world.plan()
    customer_id = await world.customer()
    start = datetime.now(UTC) - timedelta(hours=1)
    await _issue(world, plan, customer_id, active_from=to_timestamp(start), template=_metered(issue_after_reset=20))
    await world.metering.IngestEvent(
        met.IngestEventRequest(type=plan.event_type, source="t", subject=customer_id, data=struct({"tokens": 25})), metadata=world.md()
    )

    async def access() -> bool:
        return (await _check(world, customer_id, plan.metered_key)).has_access

    assert await eventually_async(access, False, timeout=15) is False
    blocked = await _check(world, customer_id, plan.metered_key)
    assert (blocked.balance_decimal, blocked.entitlement.overage_decimal) == ("0", "5")
