"""Grants through the official SDK (and plain REST where the status code is the point):
idempotent creation, list with and without voided ones, get, tenancy, refused input
naming the field, hand-issued entitlements, and purchases (an ad-hoc invoice; the grant
exists once it is paid out of band).

Each test subscribes a customer of its own to a plan of one usage price carrying a
metered feature (100 units a month, soft limit), on a test clock at a fixed instant.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors, models

from libs.testing.billing import at, invoice, pay
from libs.testing.entitlements import (
    Metered,
    balance,
    error,
    expect,
    feature,
    grant,
    grants,
    metered_subscription,
    post,
    raw_list,
)
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e

T0 = at("2027-02-01T00:00:00Z")
TEMPLATE = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100, "isSoftLimit": True}


@pytest.fixture
def s(merchant_a: MerchantClient) -> Metered:
    return metered_subscription(merchant_a, f"Grants {uuid.uuid4().hex[:6]}", T0, TEMPLATE)


def _grants_path(s: Metered) -> str:
    return f"/v1/entitlements/{s.entitlement_id}/grants"


def _raw_grants(client: MerchantClient, s: Metered, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{client.base_url}{_grants_path(s)}", params={"limit": 100, **params}, headers=client.headers, timeout=30)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_create_is_idempotent_by_key_and_parameters(merchant_a: MerchantClient, s: Metered) -> None:
    key = f"promo-{uuid.uuid4().hex[:8]}"
    body = {"amount": 25, "idempotencyKey": key, "priority": 2}
    first = post(merchant_a, _grants_path(s), body)
    assert first.status_code == 201, first.text
    created = first.json()
    assert (created["object"], created["entitlementId"], created["amount"], created["idempotencyKey"]) == (
        "grant",
        s.entitlement_id,
        25,
        key,
    )
    assert (created["priority"], at(created["effectiveAt"]), created["recurrencePeriod"], created["source"]) == (2, T0, None, "manual")
    # the same key and parameters: the same grant, 201 again
    again = post(merchant_a, _grants_path(s), body)
    assert (again.status_code, again.json()["id"]) == (201, created["id"]), again.text
    # through the SDK too
    assert grant(merchant_a, s.entitlement_id, 25, idempotency_key=key, priority=2).id == created["id"]
    # the same key with another amount, or another priority: refused
    for changed in ({**body, "amount": 26}, {**body, "priority": 3}, {"amount": 25, "idempotencyKey": key}):
        assert error(post(merchant_a, _grants_path(s), changed))[:2] == (409, "IDEMPOTENCY_KEY_REUSED"), changed
    # granted once: 100 + 25
    assert balance(merchant_a, s.entitlement_id) == expect("125", "0")
    assert [g["id"] for g in _raw_grants(merchant_a, s) if g["source"] == "manual"] == [created["id"]]


def test_list_get_and_void_with_include_voided(merchant_a: MerchantClient, s: Metered) -> None:
    expires = T0 + timedelta(days=10)
    kept = grant(merchant_a, s.entitlement_id, 10, expires_at=expires, priority=-1)
    dropped = grant(merchant_a, s.entitlement_id, 5)
    # the template's units (recurring) and the two manual grants
    listed = grants(merchant_a, s.entitlement_id)
    (reset,) = [g for g in listed if g.recurrence_period == "P1M"]
    assert {g.id for g in listed} == {reset.id, kept.id, dropped.id}
    got = merchant_a.sdk.entitlements.grants.get(entitlement_id=s.entitlement_id, grant_id=kept.id)
    assert (got.id, got.amount, got.expires_at, got.priority, got.voided_at) == (kept.id, 10, expires, -1, None)
    assert (got.reset_max_rollover, got.reset_min_rollover, got.created_at) == (999999999999, 0, T0)
    # 100 + 10 + 5
    assert balance(merchant_a, s.entitlement_id) == expect("115", "0")

    voided = merchant_a.sdk.entitlements.grants.void(entitlement_id=s.entitlement_id, grant_id=dropped.id)
    assert voided.voided_at == T0
    response = httpx.delete(f"{merchant_a.base_url}{_grants_path(s)}/{dropped.id}", headers=merchant_a.headers, timeout=30)
    assert (response.status_code, at(response.json()["voidedAt"])) == (200, T0)
    assert {g.id for g in grants(merchant_a, s.entitlement_id)} == {reset.id, kept.id}
    assert {g.id for g in grants(merchant_a, s.entitlement_id, include_voided=True)} == {reset.id, kept.id, dropped.id}
    assert balance(merchant_a, s.entitlement_id) == expect("110", "0")  # 115 - the voided 5


def test_another_merchants_entitlements_and_grants_are_not_found(
    merchant_a: MerchantClient, merchant_b: MerchantClient, s: Metered
) -> None:
    mine = grant(merchant_a, s.entitlement_id, 10)
    base, headers = merchant_b.base_url, merchant_b.headers
    ent, path = s.entitlement_id, _grants_path(s)
    calls = [
        ("GET", f"/v1/entitlements/{ent}", None),
        ("GET", path, None),
        ("GET", f"{path}/{mine.id}", None),
        ("DELETE", f"{path}/{mine.id}", None),
        ("POST", path, {"amount": 10, "idempotencyKey": "stolen"}),
        ("POST", f"{path}/purchase", {"amount": 10, "price": "5.00", "idempotencyKey": "stolen"}),
    ]
    for method, url, body in calls:
        response = httpx.request(method, f"{base}{url}", json=body, headers=headers, timeout=30)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["code"].endswith("_NOT_FOUND"), (method, url, response.text)
    with pytest.raises(errors.PaygenticError) as sdk_get:
        merchant_b.sdk.entitlements.get(entitlement_id=ent)
    assert sdk_get.value.status_code == 404
    # listing A's customer as B shows nothing of A's
    listing = httpx.get(f"{base}/v1/entitlements", params={"customerId": s.customer_id}, headers=headers, timeout=30)
    assert listing.status_code == 404 or listing.json()["data"] == [], listing.text
    # and nothing changed for A
    assert merchant_a.sdk.entitlements.grants.get(entitlement_id=ent, grant_id=mine.id).voided_at is None
    assert balance(merchant_a, ent) == expect("110", "0")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": 0, "idempotencyKey": "k"}, "amount"),
        ({"amount": -5, "idempotencyKey": "k"}, "amount"),
        ({"amount": 5}, "idempotencyKey"),
        ({"amount": 5, "idempotencyKey": ""}, "idempotencyKey"),
        ({"amount": 5, "idempotencyKey": "   "}, "idempotencyKey"),
        ({"amount": True, "idempotencyKey": "k"}, "amount"),
        ({"amount": 5, "idempotencyKey": "k", "effectiveAt": "2027-02-05T00:00:00Z", "expiresAt": "2027-02-05T00:00:00Z"}, "expiresAt"),
        ({"amount": 5, "idempotencyKey": "k", "resetMinRollover": 10, "resetMaxRollover": 5}, "resetMinRollover"),
    ],
    ids=["zero amount", "negative amount", "no key", "empty key", "blank key", "true as amount", "expiry not after start", "min over max"],
)
def test_bad_grants_are_refused_naming_the_field(merchant_a: MerchantClient, s: Metered, body: dict[str, Any], field: str) -> None:
    status, _, named = error(post(merchant_a, _grants_path(s), body))
    assert (status, named) == (400, field)
    assert len(grants(merchant_a, s.entitlement_id)) == 1  # nothing written: the template's units only


def test_unknown_entitlement_and_non_metered_entitlements_refuse_grants(merchant_a: MerchantClient, s: Metered) -> None:
    assert error(post(merchant_a, "/v1/entitlements/ent_0000000000000000/grants", {"amount": 5, "idempotencyKey": "k"}))[:2] == (
        404, "ENTITLEMENT_NOT_FOUND",
    )  # fmt: skip
    # a boolean entitlement issued by hand: no subscription, access from now (the customer's clock time)
    flag = feature(s.catalog, "boolean", "Beta access")
    issued = merchant_a.sdk.entitlements.issue(customer_id=s.customer_id, feature_id=flag.id, template={"type": "boolean"})
    assert isinstance(issued, models.BooleanEntitlementDetail), issued
    assert (issued.subscription_id, issued.has_access, issued.status, issued.active_from) == (None, True, "active", T0)
    again = post(merchant_a, "/v1/entitlements", {"customerId": s.customer_id, "featureId": flag.id, "template": {"type": "boolean"}})
    assert error(again)[:2] == (409, "ENTITLEMENT_EXISTS")
    assert error(post(merchant_a, f"/v1/entitlements/{issued.id}/grants", {"amount": 5, "idempotencyKey": "k"}))[:2] == (
        409, "ENTITLEMENT_NOT_METERED",
    )  # fmt: skip
    # the template must match the feature's type
    other = feature(s.catalog, "boolean", "Other flag")
    wrong = post(
        merchant_a, "/v1/entitlements", {"customerId": s.customer_id, "featureId": other.id, "template": {"type": "static", "config": {}}}
    )
    assert error(wrong)[0::2] == (400, "template.type")
    assert {item["featureType"] for item in raw_list(merchant_a, s.customer_id)["data"]} == {"metered", "boolean"}


def test_a_purchase_is_an_invoice_and_paying_it_grants_the_units(merchant_a: MerchantClient, s: Metered) -> None:
    key = f"buy-{uuid.uuid4().hex[:8]}"
    bought = merchant_a.sdk.entitlements.grants.purchase(entitlement_id=s.entitlement_id, amount=500, price="5.00", idempotency_key=key)
    assert (bought.entitlement_id, bought.grant_amount, bought.price, bought.currency, bought.object) == (
        s.entitlement_id, 500, "5.00", "USD", "grant_purchase",
    )  # fmt: skip
    assert bought.invoice_id.startswith("inv_")
    (session,) = bought.payment_sessions
    assert session.url.startswith("http") and session.amount == 500  # 5.00 in cents
    # a replay answers the same invoice; the key with other parameters is refused
    replay = post(merchant_a, f"{_grants_path(s)}/purchase", {"amount": 500, "price": "5.00", "idempotencyKey": key})
    assert (replay.status_code, replay.json()["invoiceId"]) == (201, bought.invoice_id), replay.text
    changed = post(merchant_a, f"{_grants_path(s)}/purchase", {"amount": 500, "price": "6.00", "idempotencyKey": key})
    assert error(changed)[:2] == (409, "IDEMPOTENCY_KEY_REUSED")
    assert error(post(merchant_a, f"{_grants_path(s)}/purchase", {"amount": 500, "price": "0.49", "idempotencyKey": "cheap"}))[0::2] == (
        400, "price",
    )  # fmt: skip

    # until paid: no grant, the balance unchanged
    assert len(grants(merchant_a, s.entitlement_id)) == 1
    assert balance(merchant_a, s.entitlement_id) == expect("100", "0")
    bill = invoice(merchant_a, bought.invoice_id)
    assert (bill.status, bill.raw["grandTotal"], bill.raw["customerId"], bill.raw["purpose"]) == (
        "ISSUED",
        "5.00",
        s.customer_id,
        "grant_purchase",
    )
    assert [(line["quantityDecimal"], line["totalPrice"]) for line in bill.lines] == [("500", "5.00")]

    paid = pay(merchant_a, bought.invoice_id)
    assert paid.status == "PAID"
    # read your writes: the grant exists when the payment answers
    purchased = [g for g in _raw_grants(merchant_a, s) if g["source"] == "purchase"]
    assert len(purchased) == 1, purchased
    assert (purchased[0]["amount"], purchased[0]["invoiceId"], purchased[0]["idempotencyKey"]) == (500, bought.invoice_id, None)
    assert balance(merchant_a, s.entitlement_id) == expect("600", "0")  # 100 + 500
    with pytest.raises(errors.PaygenticError) as twice:
        pay(merchant_a, bought.invoice_id)
    assert twice.value.status_code == 409
    assert len([g for g in _raw_grants(merchant_a, s) if g["source"] == "purchase"]) == 1
    # effective from when it was paid, in the customer's time (the clock's: nothing moved it since T0)
    assert (at(purchased[0]["effectiveAt"]), at(purchased[0]["createdAt"])) == (T0, T0)
