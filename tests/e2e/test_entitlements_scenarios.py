"""Entitlement scenarios through the official SDK against the real mesh, each on its own
test clock set at a fixed instant, every number asserted with its arithmetic by hand:
provisioning and cancellation with the subscription, the burn order of grants, resets
with rollover clamped, carried overage, one-time allowances, voids, `at` in the past,
hard and soft limits and what the invoice then bills.

The model is the one services/entitlement/domain/balance.py states (README
"Entitlements"): a period's usage burns the live grants in order priority ascending,
then earliest expiry, then creation; at a reset the template's units refill to
``issueAfterReset`` + clamp(leftover, resetMinRollover, resetMaxRollover), other grants
keep clamp(leftover, their min, their max). Usage is stamped in clock time, so the clock
is moved to (or past) an event's timestamp before the event is sent; a balance counts it
once metering stored it (``settled`` waits for that).

Grants, idempotency, tenancy and purchases: test_entitlements_grants.py; exactness under
duplicates and a restart: test_entitlements_exactness.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from paygentic_sdk import models

from libs.infra.runner import Mesh
from libs.testing.billing import (
    Catalog,
    Line,
    advance,
    assert_lines,
    assert_totals,
    at,
    clock,
    customer,
    invoice_0,
    invoices,
    pay,
    subscribe,
    usage,
)
from libs.testing.entitlements import (
    Checker,
    balance,
    by_type,
    expect,
    feature,
    fee_price,
    grant,
    grants,
    line_provenance,
    listed,
    metered_price,
    metered_subscription,
    raw,
    raw_list,
    settled,
)
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e

HOUR = timedelta(hours=1)


def _checker(mesh: Mesh, client: MerchantClient) -> Checker:
    return Checker(f"127.0.0.1:{mesh.processes['entitlement'].port}", client.merchant_id)


# --- Provisioning --------------------------------------------------------------------------


def test_a_paid_invoice_0_provisions_one_entitlement_per_feature_and_termination_cancels_them(
    merchant_a: MerchantClient, mesh: Mesh
) -> None:
    t0, jan5, ended, feb1 = at("2027-01-01T00:00:00Z"), at("2027-01-05T00:00:00Z"), at("2027-01-11T00:00:00Z"), at("2027-02-01T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Provisioning")
    tokens = catalog.metric()
    sso, seats, api = feature(catalog, "boolean", "SSO"), feature(catalog, "static", "Seats"), feature(catalog, "metered", "API tokens")
    # {}: the type defaults to the feature's (boolean)
    platform = fee_price(catalog, catalog.fee("Platform"), "49.00", sso.id, {}, name="Platform fee")
    seat_price = fee_price(catalog, catalog.fee("Seats"), "10.00", seats.id, {"type": "static", "config": {"limit": 25}}, name="Seats")
    api_price = metered_price(
        catalog, tokens, "0.001", api.id, {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 1000, "isSoftLimit": True}, name="API"
    )
    plan = catalog.plan([platform, seat_price, api_price])
    external_id = f"crm-{uuid.uuid4().hex[:10]}"
    customer_id = customer(merchant_a, "Provisioned Co", external_id=external_id)
    test_clock = clock(merchant_a, t0, "provisioning")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)

    # Invoice 0 (49.00 + 10.00 = 59.00 in advance) gates activation: nothing is provisioned yet
    assert sub.status == "pending_payment"
    assert listed(merchant_a, customer_id) == []
    assert raw_list(merchant_a, customer_id, subscriptionId=sub.id)["data"] == []

    pay(merchant_a, invoice_0(merchant_a, sub).id)
    # read your writes: when the payment answers, the entitlements are there
    items = by_type(listed(merchant_a, customer_id))
    assert sorted(items) == ["boolean", "metered", "static"]
    for item, made in ((items["boolean"], sso), (items["static"], seats), (items["metered"], api)):
        assert item.entitlement_id.startswith("ent_")
        assert (item.customer_id, item.feature_id, item.feature_key, item.product_id) == (
            customer_id,
            made.id,
            made.key,
            catalog.product_id,
        )
        assert (item.subscription_id, item.status, item.has_access) == (sub.id, "active", True)
        assert (item.active_from, item.active_to, item.metadata) == (t0, None, {})
    boolean, static, metered = items["boolean"], items["static"], items["metered"]
    assert isinstance(boolean, models.BooleanEntitlementListItem) and boolean.config is None
    assert isinstance(static, models.StaticEntitlementListItem) and static.config == {"limit": 25}
    assert isinstance(metered, models.MeteredEntitlementListItem) and metered.config is None
    # the template's 1000 units, nothing used, in the period [Jan 1, Feb 1) of the billing anchor
    assert (metered.is_soft_limit, metered.balance, metered.usage_in_period, metered.overage) == (True, 1000, 0, 0)
    assert (metered.current_period_start, metered.current_period_end, metered.pricing_unit_id) == (t0, feb1, None)

    # get by id: the same entitlement, with `id` and `object`
    detail = merchant_a.sdk.entitlements.get(entitlement_id=metered.entitlement_id)
    assert isinstance(detail, models.MeteredEntitlementDetail), detail
    assert (detail.id, detail.object, detail.balance, detail.feature_key) == (metered.entitlement_id, "entitlement", 1000, api.key)
    flag = merchant_a.sdk.entitlements.get(entitlement_id=boolean.entitlement_id)
    assert isinstance(flag, models.BooleanEntitlementDetail) and (flag.id, flag.has_access) == (boolean.entitlement_id, True)
    static_detail = merchant_a.sdk.entitlements.get(entitlement_id=static.entitlement_id)
    assert isinstance(static_detail, models.StaticEntitlementDetail) and static_detail.config == {"limit": 25}
    body = raw(merchant_a, metered.entitlement_id)
    assert (body["balanceDecimal"], body["testClockId"], body["billableMetricId"]) == ("1000", test_clock.id, tokens.id)
    assert at(body["evaluatedAt"]) == t0  # "now" is the clock's time
    assert body["usageCountedUntil"]
    # one grant: the template's units, recurring every period
    (reset,) = grants(merchant_a, metered.entitlement_id)
    assert (reset.amount, reset.recurrence_period, reset.idempotency_key, reset.effective_at, reset.priority) == (1000, "P1M", None, t0, 0)
    # by the merchant's own id of the customer
    by_external = merchant_a.sdk.entitlements.list(request={"external_customer_id": external_id, "merchant_id": merchant_a.merchant_id})
    assert sorted(item.entitlement_id for item in by_external.data) == sorted(item.entitlement_id for item in items.values())
    # a single-feature check: productId + featureKey
    only = listed(merchant_a, customer_id, product_id=catalog.product_id, feature_key=seats.key)
    assert [item.entitlement_id for item in only] == [static.entitlement_id]
    # the internal check says the same
    checker = _checker(mesh, merchant_a)
    try:
        answer = checker.check(customer_id, api.key, catalog.product_id)
        assert (answer.has_access, answer.balance_decimal, answer.entitlement.id) == (True, "1000", metered.entitlement_id)
        assert checker.check(customer_id, sso.key, catalog.product_id).has_access is True
        assert checker.check(customer_id, "no-such-feature", catalog.product_id).has_access is False
    finally:
        checker.close()

    # termination on Jan 11 cancels every entitlement from that instant
    advance(merchant_a, test_clock.id, ended)
    terminated = merchant_a.sdk.subscriptions.terminate(id=sub.id, reason="Done", timeout_ms=120_000)
    assert terminated.terminated_at == ended
    after = listed(merchant_a, customer_id)
    assert len(after) == 3
    assert {(item.status, item.has_access, item.active_to) for item in after} == {("canceled", False, ended)}
    assert {at(raw(merchant_a, item.entitlement_id)["canceledAt"]) for item in after} == {ended}
    # and on Jan 5 they were active
    before = listed(merchant_a, customer_id, at=jan5)
    assert {(item.status, item.has_access) for item in before} == {("active", True)}
    # an ended subscription takes no new entitlement by hand
    late = httpx.post(
        f"{merchant_a.base_url}/v1/entitlements",
        json={"customerId": customer_id, "featureId": sso.id, "template": {"type": "boolean"}, "subscriptionId": sub.id},
        headers=merchant_a.headers,
    )
    assert (late.status_code, late.json()["code"]) == (409, "SUBSCRIPTION_TERMINATED"), late.text
    assert len(listed(merchant_a, customer_id)) == 3


# --- Burn order ----------------------------------------------------------------------------


def test_usage_burns_grants_by_priority_then_earliest_expiry(merchant_a: MerchantClient) -> None:
    t0, mar21 = at("2027-03-01T00:00:00Z"), at("2027-03-21T00:00:00Z")
    # no units from the template: only the three grants count
    s = metered_subscription(merchant_a, "Burn order", t0, {"usagePeriod": {"interval": "P1M"}, "isSoftLimit": True})
    assert grants(merchant_a, s.entitlement_id) == []
    a = grant(merchant_a, s.entitlement_id, 100, priority=1)
    b = grant(merchant_a, s.entitlement_id, 50, priority=1, expires_at=mar21)
    c = grant(merchant_a, s.entitlement_id, 30, priority=0)
    assert (a.effective_at, b.expires_at, c.priority, a.recurrence_period) == (t0, mar21, 0, None)
    assert {g.id for g in grants(merchant_a, s.entitlement_id)} == {a.id, b.id, c.id}
    # 100 + 50 + 30 = 180
    assert settled(merchant_a, s.entitlement_id, expect("180", "0")) == expect("180", "0")

    advance(merchant_a, s.clock_id, at("2027-03-02T00:00:00Z"))
    usage(merchant_a, s.metric, 60, at("2027-03-01T12:00:00Z"), subject=s.customer_id)
    # 60 burns C (priority 0) 30 -> 0, then B (priority 1, expires first) 30 -> 20; A keeps 100: 180 - 60 = 120
    assert settled(merchant_a, s.entitlement_id, expect("120", "60")) == expect("120", "60")
    # before the event: all 180
    assert balance(merchant_a, s.entitlement_id, at=at("2027-03-01T06:00:00Z")) == expect("180", "0")

    # at B's expiry its 20 left stop counting: A's 100 remain (had A burned first: 40 + 30 = 70; B before C: 20 + 100 = 120)
    advance(merchant_a, s.clock_id, mar21)
    assert balance(merchant_a, s.entitlement_id) == expect("100", "60")
    assert balance(merchant_a, s.entitlement_id, at=mar21 - timedelta(seconds=1)) == expect("120", "60")

    advance(merchant_a, s.clock_id, at("2027-03-22T00:00:00Z"))
    usage(merchant_a, s.metric, 110, at("2027-03-21T12:00:00Z"), subject=s.customer_id)
    # 110 burns A's 100, 10 beyond: balance 0, overage 10, usage 60 + 110 = 170; a soft limit keeps access
    assert settled(merchant_a, s.entitlement_id, expect("0", "170", "10")) == expect("0", "170", "10", has_access=True)


# --- Resets --------------------------------------------------------------------------------


def test_a_reset_refills_the_template_units_with_rollover_clamped_by_min_and_max(merchant_a: MerchantClient) -> None:
    apr1, may1, jun1 = at("2027-04-01T00:00:00Z"), at("2027-05-01T00:00:00Z"), at("2027-06-01T00:00:00Z")
    template = {
        "usagePeriod": {"interval": "P1M"},
        "issueAfterReset": 100,
        "isSoftLimit": True,
        "resetMaxRollover": 30,
        "resetMinRollover": 10,
    }
    s = metered_subscription(merchant_a, "Rollover", apr1, template)
    (reset,) = grants(merchant_a, s.entitlement_id)
    assert (reset.amount, reset.recurrence_period, reset.reset_max_rollover, reset.reset_min_rollover) == (100, "P1M", 30, 10)
    # a manual grant burns after the template's units (priority 5 > 0) and keeps all it has at a reset (max 999999999999)
    manual = grant(merchant_a, s.entitlement_id, 40, priority=5)
    assert (manual.reset_max_rollover, manual.reset_min_rollover) == (999999999999, 0)

    advance(merchant_a, s.clock_id, at("2027-04-11T00:00:00Z"))
    usage(merchant_a, s.metric, 50, at("2027-04-10T00:00:00Z"), subject=s.customer_id)
    # period [Apr 1, May 1): the template's 100 -> 50 left, the manual 40: 90
    assert settled(merchant_a, s.entitlement_id, expect("90", "50")) == expect("90", "50")

    advance(merchant_a, s.clock_id, may1 + timedelta(days=1))
    # reset at May 1: template units 100 + clamp(50, 10, 30) = 130; manual 40: 170, nothing used yet
    body = raw(merchant_a, s.entitlement_id)
    assert (at(body["currentPeriodStart"]), at(body["currentPeriodEnd"])) == (may1, jun1)
    assert balance(merchant_a, s.entitlement_id) == expect("170", "0")

    advance(merchant_a, s.clock_id, at("2027-05-11T00:00:00Z"))
    usage(merchant_a, s.metric, 125, at("2027-05-10T00:00:00Z"), subject=s.customer_id)
    # 125 of the template's 130 -> 5 left; manual 40: 45
    assert settled(merchant_a, s.entitlement_id, expect("45", "125")) == expect("45", "125")

    advance(merchant_a, s.clock_id, jun1 + timedelta(days=1))
    # reset at Jun 1: 100 + clamp(5, 10, 30) = 110 (the floor lifts 5 to 10); manual 40: 150
    assert balance(merchant_a, s.entitlement_id) == expect("150", "0")
    # the past is as it was: May 15 (after May's usage) and Apr 20 (after April's)
    assert balance(merchant_a, s.entitlement_id, at=at("2027-05-15T00:00:00Z")) == expect("45", "125")
    past = raw(merchant_a, s.entitlement_id, at=at("2027-04-20T00:00:00Z"))
    assert (past["balanceDecimal"], at(past["currentPeriodStart"]), at(past["currentPeriodEnd"])) == ("90", apr1, may1)


def test_preserve_overage_at_reset_carries_the_debt_and_bills_it_once(merchant_a: MerchantClient) -> None:
    may1, jun1, jul1 = at("2027-05-01T00:00:00Z"), at("2027-06-01T00:00:00Z"), at("2027-07-01T00:00:00Z")
    template = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100, "isSoftLimit": True, "preserveOverageAtReset": True}
    s = metered_subscription(merchant_a, "Preserve overage", may1, template, unit_price="0.25")

    advance(merchant_a, s.clock_id, at("2027-05-06T00:00:00Z"))
    usage(merchant_a, s.metric, 130, at("2027-05-05T00:00:00Z"), subject=s.customer_id)
    # 130 - 100 = 30 beyond the grant: balance 0, overage 30, access kept (soft)
    assert settled(merchant_a, s.entitlement_id, expect("0", "130", "30")) == expect("0", "130", "30", True)

    advance(merchant_a, s.clock_id, jun1 + HOUR)
    # reset at Jun 1: the 30 owed burns the new 100 -> 70; June's own usage 0, no overage
    assert balance(merchant_a, s.entitlement_id) == expect("70", "0")
    # invoice 1 bills May's overage: 30 x 0.25 = 7.50
    first = invoices(merchant_a, s.subscription.id)[1]
    assert first.status == "ISSUED"
    assert_lines(first, [Line("Token usage", "7.50", start=may1, end=jun1, quantity="30", unit_price="0.25", price_id=s.price_id)])
    assert_totals(first, "7.50")

    advance(merchant_a, s.clock_id, at("2027-06-06T00:00:00Z"))
    usage(merchant_a, s.metric, 20, at("2027-06-05T00:00:00Z"), subject=s.customer_id)
    assert settled(merchant_a, s.entitlement_id, expect("50", "20")) == expect("50", "20")  # 70 - 20
    advance(merchant_a, s.clock_id, jul1 + HOUR)
    # invoice 2: June's 20 are covered; the carried 30 were billed on invoice 1 and are not again
    second = invoices(merchant_a, s.subscription.id)[2]
    assert_lines(second, [Line("Token usage", "0.00", start=jun1, end=jul1, quantity="0", price_id=s.price_id)])
    assert_totals(second, "0.00")


def test_a_one_time_allowance_never_refills(merchant_a: MerchantClient) -> None:
    jun1 = at("2027-06-01T00:00:00Z")
    # no usagePeriod: one allowance of 500 for the entitlement's life
    s = metered_subscription(merchant_a, "One time", jun1, {"issueAfterReset": 500})
    body = raw(merchant_a, s.entitlement_id)
    assert (at(body["currentPeriodStart"]), body.get("currentPeriodEnd"), body["isSoftLimit"]) == (jun1, None, False)
    (allowance,) = grants(merchant_a, s.entitlement_id)
    assert (allowance.amount, allowance.recurrence_period) == (500, None)

    advance(merchant_a, s.clock_id, at("2027-06-11T00:00:00Z"))
    usage(merchant_a, s.metric, 200, at("2027-06-10T00:00:00Z"), subject=s.customer_id)
    assert settled(merchant_a, s.entitlement_id, expect("300", "200")) == expect("300", "200")  # 500 - 200

    advance(merchant_a, s.clock_id, at("2027-07-05T00:00:00Z"))
    # past the subscription's first month: nothing refills
    assert balance(merchant_a, s.entitlement_id) == expect("300", "200")
    usage(merchant_a, s.metric, 100, at("2027-07-04T00:00:00Z"), subject=s.customer_id)
    # one period since Jun 1: 500 - 200 - 100 = 200, usage 300
    assert settled(merchant_a, s.entitlement_id, expect("200", "300")) == expect("200", "300")
    advance(merchant_a, s.clock_id, at("2027-09-01T00:00:00Z"))
    assert balance(merchant_a, s.entitlement_id) == expect("200", "300")


def test_a_voided_grant_stops_counting_with_its_leftover_and_the_past_is_unchanged(merchant_a: MerchantClient) -> None:
    jul1, jul10 = at("2027-07-01T00:00:00Z"), at("2027-07-10T00:00:00Z")
    s = metered_subscription(merchant_a, "Void", jul1, {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100})  # hard limit
    (reset,) = grants(merchant_a, s.entitlement_id)
    extra = grant(merchant_a, s.entitlement_id, 50, priority=1)

    advance(merchant_a, s.clock_id, at("2027-07-06T00:00:00Z"))
    usage(merchant_a, s.metric, 120, at("2027-07-05T00:00:00Z"), subject=s.customer_id)
    # the template's 100 first (priority 0), then 20 of the extra 50: 30 left
    assert settled(merchant_a, s.entitlement_id, expect("30", "120")) == expect("30", "120", "0", True)

    advance(merchant_a, s.clock_id, jul10)
    voided = merchant_a.sdk.entitlements.grants.void(entitlement_id=s.entitlement_id, grant_id=extra.id)
    assert (voided.id, voided.voided_at) == (extra.id, jul10)
    # its 30 stop counting: 0 left, the usage was covered when it happened (no overage); a hard limit: no access
    assert balance(merchant_a, s.entitlement_id) == expect("0", "120", "0", False)
    # void again: the same voided grant (idempotent, 200)
    again = merchant_a.sdk.entitlements.grants.void(entitlement_id=s.entitlement_id, grant_id=extra.id)
    assert (again.id, again.voided_at) == (extra.id, jul10)
    assert merchant_a.sdk.entitlements.grants.get(entitlement_id=s.entitlement_id, grant_id=extra.id).voided_at == jul10
    assert [g.id for g in grants(merchant_a, s.entitlement_id)] == [reset.id]
    assert {g.id for g in grants(merchant_a, s.entitlement_id, include_voided=True)} == {reset.id, extra.id}
    # the day before the void it still counted
    assert balance(merchant_a, s.entitlement_id, at=at("2027-07-09T00:00:00Z")) == expect("30", "120", "0", True)


# --- Limits and invoices -------------------------------------------------------------------


def test_a_hard_limit_blocks_exactly_at_zero_and_bills_no_usage(merchant_a: MerchantClient, mesh: Mesh) -> None:
    aug1, sep1, oct1 = at("2027-08-01T00:00:00Z"), at("2027-09-01T00:00:00Z"), at("2027-10-01T00:00:00Z")
    template = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100, "isSoftLimit": False}
    s = metered_subscription(merchant_a, "Hard limit", aug1, template, unit_price="0.10")
    advance(merchant_a, s.clock_id, at("2027-08-03T00:00:00Z"))

    usage(merchant_a, s.metric, 60, at("2027-08-02T00:00:00Z"), subject=s.customer_id)
    assert settled(merchant_a, s.entitlement_id, expect("40", "60")) == expect("40", "60", "0", True)
    usage(merchant_a, s.metric, 39, at("2027-08-02T01:00:00Z"), subject=s.customer_id)
    assert settled(merchant_a, s.entitlement_id, expect("1", "99")) == expect("1", "99", "0", True)  # one unit left: access
    usage(merchant_a, s.metric, 1, at("2027-08-02T02:00:00Z"), subject=s.customer_id)
    # 60 + 39 + 1 = 100 = the grant: none left, no access from that event on
    assert settled(merchant_a, s.entitlement_id, expect("0", "100", "0", False)) == expect("0", "100", "0", False)
    usage(merchant_a, s.metric, 25, at("2027-08-02T03:00:00Z"), subject=s.customer_id)
    # usage that got through anyway (the application did not check): 25 beyond, still no access
    assert settled(merchant_a, s.entitlement_id, expect("0", "125", "25", False)) == expect("0", "125", "25", False)
    assert balance(merchant_a, s.entitlement_id, at=at("2027-08-02T01:30:00Z")) == expect("1", "99", "0", True)
    checker = _checker(mesh, merchant_a)
    try:
        answer = checker.check(s.customer_id, s.feature.key, s.catalog.product_id)
        assert (answer.has_access, answer.balance_decimal, answer.entitlement.id) == (False, "0", s.entitlement_id)
    finally:
        checker.close()

    advance(merchant_a, s.clock_id, sep1 + HOUR)
    # invoice 1: 125 used, 100 covered, a hard limit bills nothing beyond (125 x 0.10 = 12.50 without the entitlement)
    first = invoices(merchant_a, s.subscription.id)[1]
    assert first.status == "PAID"  # nothing owed
    assert_lines(first, [Line("Token usage", "0.00", start=aug1, end=sep1, quantity="0", unit_price="0.10", price_id=s.price_id)])
    assert_totals(first, "0.00")
    coverage = line_provenance(merchant_a, first.id, s.price_id)["recorded"]["coverage"]
    assert {k: coverage[k] for k in ("entitlementId", "usage", "covered", "billable", "isSoftLimit")} == {
        "entitlementId": s.entitlement_id, "usage": "125", "covered": "100", "billable": "0", "isSoftLimit": False,
    }  # fmt: skip
    # September: the template's 100 again (resetMaxRollover 0: nothing carried), access back
    body = raw(merchant_a, s.entitlement_id)
    assert (at(body["currentPeriodStart"]), at(body["currentPeriodEnd"])) == (sep1, oct1)
    assert balance(merchant_a, s.entitlement_id) == expect("100", "0", "0", True)


def test_a_soft_limit_bills_exactly_the_overage_and_names_the_grants(merchant_a: MerchantClient) -> None:
    sep1, oct1 = at("2027-09-01T00:00:00Z"), at("2027-10-01T00:00:00Z")
    template = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100, "isSoftLimit": True}
    s = metered_subscription(merchant_a, "Soft limit", sep1, template, unit_price="0.25")
    (reset,) = grants(merchant_a, s.entitlement_id)
    top_up = grant(merchant_a, s.entitlement_id, 20, priority=1)

    advance(merchant_a, s.clock_id, at("2027-09-16T00:00:00Z"))
    usage(merchant_a, s.metric, 80, at("2027-09-15T00:00:00Z"), subject=s.customer_id)
    usage(merchant_a, s.metric, 50, at("2027-09-15T12:00:00Z"), subject=s.customer_id)
    # 130 used: the template's 100, the top-up's 20, 10 beyond; access kept
    assert settled(merchant_a, s.entitlement_id, expect("0", "130", "10", True)) == expect("0", "130", "10", True)

    advance(merchant_a, s.clock_id, oct1)
    assert invoices(merchant_a, s.subscription.id)[1].status == "CLOSING"
    advance(merchant_a, s.clock_id, oct1 + HOUR)
    first = invoices(merchant_a, s.subscription.id)[1]
    assert first.status == "ISSUED"
    # the line bills the entitlement's overage: 10 x 0.25 = 2.50 (130 x 0.25 = 32.50 without it)
    overage = raw(merchant_a, s.entitlement_id, at=oct1 - timedelta(seconds=1))["overageDecimal"]
    assert Decimal(overage) == 10
    assert_lines(first, [Line("Token usage", "2.50", start=sep1, end=oct1, quantity=overage, unit_price="0.25", price_id=s.price_id)])
    assert_totals(first, "2.50")
    provenance = line_provenance(merchant_a, first.id, s.price_id)
    coverage = provenance["recorded"]["coverage"]
    assert {k: coverage[k] for k in ("entitlementId", "usage", "covered", "billable", "isSoftLimit")} == {
        "entitlementId": s.entitlement_id, "usage": "130", "covered": "120", "billable": "10", "isSoftLimit": True,
    }  # fmt: skip
    assert coverage["grants"] == [{"grantId": reset.id, "covered": "100"}, {"grantId": top_up.id, "covered": "20"}]
    # the SDK-shaped document says it too: the entitlement as a source, an "allow" step 130 -> 10 before pricing
    assert provenance["sources"]["entitlement"]["ref"] == {"entitlementId": s.entitlement_id}
    assert provenance["sources"]["entitlement"]["asUsed"] == {"usage": "130", "covered": "120", "billable": "10"}
    allow = provenance["steps"][0]
    assert (allow["op"], allow["source"], allow["in"], allow["out"]) == ("allow", "entitlement", "130", "10")
    assert provenance["result"]["quantity"] == "10"
    # October: the template's 100 again, the overage forgotten (preserveOverageAtReset false), the top-up spent
    assert balance(merchant_a, s.entitlement_id) == expect("100", "0")
