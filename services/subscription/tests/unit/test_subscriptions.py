"""Subscriptions on the fakes: creation (pinned version, backdated starts, clocks,
inline customers), termination in the subscription's time, PATCH, activation by
Invoice 0, and the SubscriptionChanged events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.subscription.domain import commands, use_cases
from services.subscription.domain.model import Subscription, SubscriptionChanged, SubscriptionChangeKind
from services.subscription.tests.fakes import PLAN
from services.subscription.tests.unit.world import ADDRESS, LATER, MERCHANT, NOW, OTHER, World

CLOCK_TIME = datetime(2025, 1, 31, tzinfo=UTC)


async def _create(w: World, command: commands.CreateSubscription, now: datetime = NOW) -> Subscription:
    return await use_cases.create_subscription(w.uow, MERCHANT, now, command, catalog=w.catalog, timeline=w.timeline)


async def _clock(w: World, merchant: str = MERCHANT) -> str:
    clock = await use_cases.create_test_clock(w.uow, merchant, NOW, commands.CreateTestClock(CLOCK_TIME))
    w.uow.commit()
    return clock.id


async def test_a_subscription_pins_the_plans_default_version_and_starts_pending_payment() -> None:
    w = World()
    customer = await w.customer()
    sub = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe(customer.id), catalog=w.catalog, timeline=w.timeline)
    assert (sub.plan_version_id, sub.version_number, sub.currency) == ("pv_pro_2", 2, "USD")
    assert (sub.status, sub.version_policy, sub.elapsed_period_billing, sub.payment_term_days) == ("pending_payment", "floating", "none", 0)
    assert (sub.billing_anchor, sub.billing_starts_at, sub.billing_cadence) == (NOW, NOW, "P1M")
    assert (sub.default_tax_rate, sub.tax_behavior) == ("13", "exclusive")
    assert w.timeline.calls == [("schedule_new", sub.id, NOW)]
    assert w.uow.commit() == [SubscriptionChanged(SubscriptionChangeKind.CREATED, sub.id, MERCHANT, NOW)]


async def test_the_plans_anchor_is_the_grid_origin() -> None:
    w = World()
    anchor = datetime(2026, 1, 31, tzinfo=UTC)
    w.catalog.plans[PLAN.plan_id] = replace(PLAN, billing_anchor=anchor)
    sub = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe((await w.customer()).id), catalog=w.catalog, timeline=None)
    assert (sub.billing_anchor, sub.started_at) == (anchor, NOW)


@pytest.mark.parametrize(
    ("started_ago", "elapsed", "billing_from"),
    [
        (timedelta(hours=23), None, "start"),  # not backdated: 24 h of slack
        (timedelta(days=10), None, "creation"),  # backdated, none (the default): bill from creation
        (timedelta(days=10), "none", "creation"),
        (timedelta(days=300), "per_period", "start"),
    ],
)
async def test_a_backdated_start_bills_from_creation_unless_per_period(
    started_ago: timedelta, elapsed: str | None, billing_from: str
) -> None:
    w = World()
    started = NOW - started_ago
    sub = await use_cases.create_subscription(
        w.uow,
        MERCHANT,
        NOW,
        w.subscribe((await w.customer()).id, started_at=started, elapsed_period_billing=elapsed),
        catalog=w.catalog,
        timeline=None,
    )
    assert sub.billing_starts_at == (started if billing_from == "start" else NOW)
    assert sub.started_at == started


async def test_per_period_refuses_starts_more_than_twelve_months_back() -> None:
    w = World()
    customer = await w.customer()
    twelve_months = datetime(2025, 3, 15, 12, tzinfo=UTC)
    ok = await use_cases.create_subscription(
        w.uow,
        MERCHANT,
        NOW,
        w.subscribe(customer.id, started_at=twelve_months, elapsed_period_billing="per_period"),
        catalog=w.catalog,
        timeline=None,
    )
    assert ok.billing_starts_at == twelve_months
    with pytest.raises(InvalidArgument) as err:
        await use_cases.create_subscription(
            w.uow,
            MERCHANT,
            NOW,
            w.subscribe(customer.id, started_at=twelve_months - timedelta(seconds=1), elapsed_period_billing="per_period"),
            catalog=w.catalog,
            timeline=None,
        )
    assert (err.value.field, err.value.reason) == ("startedAt", "STARTED_AT_TOO_OLD")


async def test_on_a_clock_now_is_the_clocks_time() -> None:
    w = World()
    clock_id = await _clock(w)
    started = CLOCK_TIME - timedelta(days=3)
    sub = await use_cases.create_subscription(
        w.uow,
        MERCHANT,
        NOW,
        w.subscribe((await w.customer()).id, started_at=started, test_clock_id=clock_id),
        catalog=w.catalog,
        timeline=w.timeline,
    )
    # backdated against the clock's time (3 days), not against the service's (a year later)
    assert sub.billing_starts_at == CLOCK_TIME
    assert w.timeline.calls == [("schedule_new", sub.id, CLOCK_TIME)]
    ran = await use_cases.after_create(sub, await w.uow.test_clocks.get(MERCHANT, clock_id), NOW, metering=w.metering, timeline=w.timeline)
    assert ran == []
    assert w.metering.told == [(clock_id, CLOCK_TIME, [sub.customer_id], False)]
    assert w.timeline.calls[-1] == ("run_subscription", sub.id, CLOCK_TIME)
    terminated = await use_cases.terminate_subscription(
        w.uow, MERCHANT, LATER, commands.TerminateSubscription(sub.id, "moving on"), timeline=w.timeline
    )
    assert (terminated.terminated_at, terminated.terminated_by, terminated.status) == (CLOCK_TIME, MERCHANT, "terminated")
    assert w.timeline.calls[-1] == ("schedule_termination", sub.id, CLOCK_TIME)


async def test_a_customer_lives_on_one_clock() -> None:
    w = World()
    first, second = await _clock(w), await _clock(w)
    customer = await w.customer()
    await _create(w, w.subscribe(customer.id, started_at=CLOCK_TIME, test_clock_id=first))
    await _create(w, w.subscribe(customer.id, started_at=CLOCK_TIME, test_clock_id=first))  # the same clock again is fine
    for clock_id in (second, None):
        with pytest.raises(FailedPrecondition) as err:
            await _create(w, w.subscribe(customer.id, test_clock_id=clock_id))
        assert err.value.reason == "CUSTOMER_ON_OTHER_CLOCK"


@pytest.mark.parametrize(
    ("changes", "field", "error"),
    [
        ({"customer_id": None}, "customerId", InvalidArgument),
        ({"plan_id": ""}, "planId", InvalidArgument),
        ({"plan_id": "plan_unknown"}, "planId", NotFound),
        ({"started_at": None}, "startedAt", InvalidArgument),
        ({"ending_at": NOW}, "endingAt", InvalidArgument),
        ({"test_clock_id": "tc_unknown"}, "testClockId", NotFound),
        ({"customer_id": "cus_unknown"}, "customerId", NotFound),
        ({"metadata": {"nested": {"no": 1}}}, "metadata.nested", InvalidArgument),
        # Invoice 0's checkout: whole minutes from 1 to 43200 (30 days)
        ({"session_expiry_minutes": 1e15}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": 1e300}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": 43201.0}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": 0.0}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": -5.0}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": 1.5}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": float("nan")}, "sessionExpiryMinutes", InvalidArgument),
        ({"session_expiry_minutes": float("inf")}, "sessionExpiryMinutes", InvalidArgument),
        # its redirects: absolute http(s) URLs only (the payment service refuses the rest)
        ({"redirect_urls": {"on_success": "javascript:alert(1)"}}, "redirectUrls.onSuccess", InvalidArgument),
        ({"redirect_urls": {"on_failure": "data:text/html,<b>x</b>"}}, "redirectUrls.onFailure", InvalidArgument),
        ({"redirect_urls": {"on_success": "/thanks"}}, "redirectUrls.onSuccess", InvalidArgument),
        ({"redirect_urls": {"on_success": "https://"}}, "redirectUrls.onSuccess", InvalidArgument),
        ({"redirect_urls": {"on_failure": "ftp://shop.example/x"}}, "redirectUrls.onFailure", InvalidArgument),
        ({"redirect_urls": {"on_success": "https://shop.example/ ok"}}, "redirectUrls.onSuccess", InvalidArgument),
    ],
)
async def test_bad_input_names_the_field_and_stores_nothing(changes: dict[str, object], field: str, error: type[Exception]) -> None:
    w = World()
    customer = await w.customer()
    values: dict[str, object] = {"customer_id": customer.id} | changes
    with pytest.raises(error) as err:
        await _create(w, w.subscribe(**values))  # type: ignore[arg-type]
    assert getattr(err.value, "field", None) == field
    assert w.uow.subscriptions.rows == {}
    assert w.timeline.calls == []


async def test_invoice_zeros_checkout_terms_are_kept_as_checked() -> None:
    w = World()
    customer = await w.customer()
    sub = await _create(
        w,
        w.subscribe(
            customer.id, session_expiry_minutes=43200.0, redirect_urls={"on_success": "https://shop.example/ok?x=1", "on_failure": ""}
        ),
    )
    # an empty redirect is none
    assert (sub.session_expiry_minutes, sub.redirect_urls) == (43200.0, {"on_success": "https://shop.example/ok?x=1"})
    assert (await _create(w, w.subscribe(customer.id, session_expiry_minutes=1.0))).session_expiry_minutes == 1.0
    assert (await _create(w, w.subscribe(customer.id))).session_expiry_minutes == 240.0  # the default


async def test_another_merchants_customer_plan_or_clock_cannot_be_used() -> None:
    w = World()
    theirs = await w.customer(merchant=OTHER)
    their_clock = await _clock(w, merchant=OTHER)
    with pytest.raises(NotFound):
        await _create(w, w.subscribe(theirs.id))
    with pytest.raises(NotFound):
        await _create(w, w.subscribe((await w.customer()).id, test_clock_id=their_clock))


async def test_an_inline_customer_is_created_or_reused_by_email() -> None:
    w = World()
    existing = await w.customer("ada@example.com")
    inline = commands.CreateCustomer(
        consumer=commands.ConsumerDetails("Ada", "ADA@example.com", ADDRESS), tax_rates={"default": 5}, consumer_field="customer"
    )
    sub = await _create(w, w.subscribe(None, customer=inline))
    assert sub.customer_id == existing.id
    fresh = commands.CreateCustomer(
        consumer=commands.ConsumerDetails("Bo", "bo@example.com", ADDRESS), tax_rates={"default": 5}, consumer_field="customer"
    )
    other = await _create(w, w.subscribe(None, customer=fresh))
    created = await w.uow.customers.get(MERCHANT, other.customer_id)
    assert created.tax_rates == {"default": "5"} and created.id != existing.id
    bad = commands.CreateCustomer(
        consumer=commands.ConsumerDetails("Cy", "cy@example.com", ADDRESS), tax_rates={"default": 101}, consumer_field="customer"
    )
    with pytest.raises(InvalidArgument) as err:
        await _create(w, w.subscribe(None, customer=bad))
    assert err.value.field == "customer.taxRates.default"


async def test_terminate_needs_a_reason_and_happens_once() -> None:
    w = World()
    sub = await use_cases.create_subscription(
        w.uow, MERCHANT, NOW, w.subscribe((await w.customer()).id, started_at=NOW - timedelta(days=1)), catalog=w.catalog, timeline=None
    )
    w.uow.commit()
    with pytest.raises(InvalidArgument) as err:
        await use_cases.terminate_subscription(w.uow, MERCHANT, LATER, commands.TerminateSubscription(sub.id, "  "), timeline=None)
    assert err.value.field == "reason"
    done = await use_cases.terminate_subscription(
        w.uow, MERCHANT, LATER, commands.TerminateSubscription(sub.id, "too expensive", "commercial"), timeline=None
    )
    assert (done.terminated_at, done.termination_reason, done.termination_change_reason) == (LATER, "too expensive", "commercial")
    assert w.uow.commit() == [SubscriptionChanged(SubscriptionChangeKind.TERMINATED, sub.id, MERCHANT, LATER)]
    with pytest.raises(FailedPrecondition) as again:
        await use_cases.terminate_subscription(w.uow, MERCHANT, LATER, commands.TerminateSubscription(sub.id, "again"), timeline=None)
    assert again.value.reason == "SUBSCRIPTION_TERMINATED"


async def test_patch_terminated_is_clamped_to_now_and_must_follow_the_start() -> None:
    w = World()
    started = NOW - timedelta(days=2)
    sub = await use_cases.create_subscription(
        w.uow,
        MERCHANT,
        NOW,
        w.subscribe((await w.customer()).id, started_at=started, elapsed_period_billing="per_period"),
        catalog=w.catalog,
        timeline=None,
    )
    with pytest.raises(InvalidArgument) as err:
        await use_cases.update_subscription(
            w.uow,
            MERCHANT,
            NOW,
            commands.Update(sub.id, {"status": "terminated", "terminated_at": started - timedelta(hours=1)}),
            timeline=w.timeline,
        )
    assert err.value.field == "terminatedAt"
    done = await use_cases.update_subscription(
        w.uow,
        MERCHANT,
        NOW,
        commands.Update(sub.id, {"status": "terminated", "terminated_at": NOW + timedelta(days=9)}),
        timeline=w.timeline,
    )
    assert (done.status, done.terminated_at, done.terminated_by) == ("terminated", NOW, MERCHANT)
    assert w.timeline.calls == [("schedule_termination", sub.id, NOW)]


async def test_patch_settings_and_ending_at_move_the_engines_end() -> None:
    w = World()
    sub = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe((await w.customer()).id), catalog=w.catalog, timeline=None)
    w.uow.commit()
    end = NOW + timedelta(days=40)
    changes = {"ending_at": end, "payment_term_days": 30, "auto_charge": True, "version_policy": "pinned"}
    updated = await use_cases.update_subscription(w.uow, MERCHANT, LATER, commands.Update(sub.id, changes), timeline=w.timeline)
    assert (updated.ending_at, updated.payment_term_days, updated.auto_charge, updated.version_policy) == (end, 30, True, "pinned")
    assert w.timeline.calls == [("schedule_end", sub.id, end)]
    assert w.uow.commit() == [SubscriptionChanged(SubscriptionChangeKind.UPDATED, sub.id, MERCHANT, LATER)]
    with pytest.raises(InvalidArgument) as err:
        await use_cases.update_subscription(
            w.uow, MERCHANT, LATER, commands.Update(sub.id, {"ending_at": NOW - timedelta(days=1)}), timeline=w.timeline
        )
    assert err.value.field == "endingAt"


async def test_paying_invoice_zero_activates_once() -> None:
    w = World()
    sub = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe((await w.customer()).id), catalog=w.catalog, timeline=None)
    sub.record_invoice_zero("inv_0", paid=False, amount="49.00", now=NOW, effective_now=NOW)
    w.uow.commit()
    paid = commands.RecordInvoicePaid(sub.id, "inv_0", 0, "49.00")
    active = await use_cases.record_invoice_paid(w.uow, MERCHANT, LATER, paid)
    assert (active.status, active.invoice_zero_status) == ("active", "paid")
    assert w.uow.commit() == [SubscriptionChanged(SubscriptionChangeKind.ACTIVATED, sub.id, MERCHANT, LATER)]
    await use_cases.record_invoice_paid(w.uow, MERCHANT, LATER, paid)
    assert w.uow.commit() == []
    # a later invoice's payment does not touch the subscription's state
    await use_cases.record_invoice_paid(w.uow, MERCHANT, LATER, commands.RecordInvoicePaid(sub.id, "inv_3", 3, "10.00"))
    assert active.invoice_zero_id == "inv_0" and w.uow.commit() == []


async def test_a_zero_invoice_zero_activates_at_creation() -> None:
    w = World()
    sub = await use_cases.create_subscription(w.uow, MERCHANT, NOW, w.subscribe((await w.customer()).id), catalog=w.catalog, timeline=None)
    w.uow.commit()
    sub.record_invoice_zero("inv_0", paid=True, amount="0.00", now=NOW, effective_now=NOW)
    assert sub.status == "active"
    assert sub.events == [SubscriptionChanged(SubscriptionChangeKind.ACTIVATED, sub.id, MERCHANT, NOW)]
