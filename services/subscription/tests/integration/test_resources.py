"""Customers, test clocks and subscriptions through the gateway against the real mesh
(PostgreSQL, NATS, every service as a process): the REST contract (statuses, fields the SDK
requires), validation naming the field, CRUD behaviour and tenancy (another merchant's
customer, subscription or clock is a 404 on every endpoint; a subscription cannot use
another merchant's plan, clock or customer)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually_async

pytestmark = pytest.mark.integration

ADDRESS = {"country": "DE", "zipCode": "10115", "city": "Berlin"}
SUBSCRIPTION_REQUIRED = (
    "id", "object", "merchantId", "createdAt", "updatedAt", "customerId", "name", "planId", "versionPolicy", "startedAt",
    "elapsedPeriodBilling", "billingStartsAt", "billingAnchor", "billingCadence", "status", "paymentTermDays",
    "planVersionId", "versionNumber",
)  # fmt: skip


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json() if response.content else {}
    return body


def _error(response: httpx.Response, status: int, code: str | None = None, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    if field is not None:
        assert body["details"]["field"] == field, body
    return body


def _sdk_reads(model: str, body: dict[str, Any]) -> None:
    """The official SDK's model of the response accepts it (its required fields are there)."""
    from paygentic_sdk import models

    getattr(models, model).model_validate(body)


def _email(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}@example.com"


async def _client(merchant: MerchantClient) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=merchant.base_url, headers=merchant.headers, timeout=60)


@pytest.fixture
async def http_a(merchant_a: MerchantClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(merchant_a) as http:
        yield http


@pytest.fixture
async def http_b(merchant_b: MerchantClient) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(merchant_b) as http:
        yield http


async def _plan(http: httpx.AsyncClient, merchant_id: str) -> dict[str, Any]:
    """A plan with one metered price (in arrears: nothing due on Invoice 0)."""
    product = _ok(await http.post("/v0/products", json={"merchantId": merchant_id, "name": "API", "description": "d"}), 201)
    metric = _ok(
        await http.post(
            "/v0/billableMetrics",
            json={
                "merchantId": merchant_id, "productId": product["id"], "name": "Tokens", "description": "t", "unit": "tokens",
                "aggregation": "SUM", "eventType": f"tokens.{uuid.uuid4().hex[:8]}", "valueProperty": "$.tokens",
            },
        ),
        201,
    )  # fmt: skip
    price = _ok(
        await http.post(
            "/v0/prices",
            json={"invoiceDisplayName": "Tokens", "paymentTerm": "in_arrears", "model": "standard", "billableMetricId": metric["id"],
                  "properties": {"unitPrice": "0.002"}},
        ),
        201,
    )  # fmt: skip
    body = {
        "merchantId": merchant_id,
        "productId": product["id"],
        "name": "Pro",
        "currency": "USD",
        "prices": [{"priceId": price["id"], "key": "tokens"}],
    }
    return _ok(await http.post("/v0/plans", json=body), 201)


async def _customer(http: httpx.AsyncClient, merchant_id: str, **extra: Any) -> str:
    body = {"merchantId": merchant_id, "consumer": {"name": "Ada Ltd", "email": _email("ada"), "address": ADDRESS}} | extra
    return str(_ok(await http.post("/v0/customers", json=body), 201)["customerId"])


# --- customers ------------------------------------------------------------------------


async def test_a_customer_is_created_once_per_consumer_email(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    email = _email("Grace")
    consumer: dict[str, Any] = {"name": "Grace", "email": email, "address": ADDRESS}
    body: dict[str, Any] = {"merchantId": merchant_a.merchant_id, "consumer": consumer, "taxRates": {"default": 19}}
    created = _ok(await http_a.post("/v0/customers", json=body), 201)
    assert created["validTaxAddress"] == {"valid": True, "message": None}
    again = _ok(await http_a.post("/v0/customers", json=body | {"consumer": consumer | {"email": email.upper()}}), 200)
    assert again["customerId"] == created["customerId"]
    _sdk_reads("CreateCustomerResponseBody2", created)
    _sdk_reads("CreateCustomerResponseBody1", again)
    customer = _ok(await http_a.get(f"/v0/customers/{created['customerId']}"))
    _sdk_reads("Customer", customer)
    for key in ("id", "consumerId", "createdAt", "merchantId", "updatedAt", "validTaxAddress"):
        assert customer[key] is not None, key
    assert customer["object"] == "customer" and customer["merchantId"] == merchant_a.merchant_id
    assert customer["organization"]["id"] == customer["consumerId"] and customer["organization"]["billingEmails"] == [email]
    assert customer["taxRates"] == {"default": 19}
    assert customer["notificationSettings"] == {"invoiceIssued": True, "invoicePaid": True, "renewalReminder": True}


async def test_customer_validation_names_the_field(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    m = merchant_a.merchant_id
    _error(await http_a.post("/v0/customers", json={"merchantId": m}), 400, field="consumer")
    bad_email = {"merchantId": m, "consumer": {"name": "X", "email": "not-an-email", "address": ADDRESS}}
    _error(await http_a.post("/v0/customers", json=bad_email), 400, field="consumer.email")
    bad_rate = {"merchantId": m, "consumer": {"name": "X", "email": _email("x"), "address": ADDRESS}, "taxRates": {"default": 120}}
    _error(await http_a.post("/v0/customers", json=bad_rate), 400, field="taxRates.default")
    _error(await http_a.get("/v0/customers", params={"organizationId": m, "name": "ab"}), 400, field="name")


async def test_customers_are_listed_filtered_updated_and_deleted(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    m = merchant_a.merchant_id
    tag = uuid.uuid4().hex[:8]
    external = f"acct-{tag}"
    first = await _customer(http_a, m, externalId=external, consumer={"name": f"Lovelace {tag}", "email": _email(tag), "address": ADDRESS})
    second = await _customer(http_a, m, consumer={"name": f"Hopper {tag}", "email": _email("other"), "address": ADDRESS})
    listed = _ok(await http_a.get("/v0/customers", params={"organizationId": m, "name": f"LACE {tag}"}))
    _sdk_reads("ListCustomersResponse", listed)
    assert [c["id"] for c in listed["data"]] == [first] and listed["pagination"]["total"] == 1 and listed["object"] == "list"
    by_email = _ok(await http_a.get("/v0/customers", params={"organizationId": m, "email": tag.upper()}))
    assert [c["id"] for c in by_email["data"]] == [first]
    by_external = _ok(await http_a.get("/v0/customers", params={"organizationId": m, "externalId": external}))
    assert [c["id"] for c in by_external["data"]] == [first]
    both = _ok(await http_a.get("/v0/customers", params={"organizationId": m, "name": tag, "limit": 1}))
    assert both["pagination"]["total"] == 2 and [c["id"] for c in both["data"]] == [second]  # newest first

    # another live customer cannot take the external id
    _error(await http_a.patch(f"/v0/customers/{second}", json={"externalId": external}), 409, "EXTERNAL_ID_TAKEN", "externalId")
    updated = _ok(
        await http_a.patch(f"/v0/customers/{first}", json={"taxRates": 7, "taxId": "DE1", "notificationSettings": {"invoicePaid": False}})
    )
    assert updated["taxRates"] == {"default": 7} and updated["taxId"] == "DE1"
    assert updated["notificationSettings"] == {"invoiceIssued": True, "invoicePaid": False, "renewalReminder": True}
    cleared = _ok(await http_a.patch(f"/v0/customers/{first}", json={"externalId": None}))
    assert cleared["externalId"] is None
    # freed: the other customer takes it now
    assert _ok(await http_a.patch(f"/v0/customers/{second}", json={"externalId": external}))["externalId"] == external

    _ok(await http_a.delete(f"/v0/customers/{first}"), 204)
    _error(await http_a.get(f"/v0/customers/{first}"), 404)
    _error(await http_a.delete(f"/v0/customers/{first}"), 404)


# --- test clocks ----------------------------------------------------------------------


async def test_a_clock_moves_forward_only(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    before = datetime.now(UTC)
    now_clock = _ok(await http_a.post("/v0/testClocks", json={"merchantId": merchant_a.merchant_id, "name": "now"}), 201)
    assert before - timedelta(seconds=5) <= datetime.fromisoformat(now_clock["currentTime"]) <= datetime.now(UTC) + timedelta(seconds=5)
    clock = _ok(await http_a.post("/v0/testClocks", json={"currentTime": "2024-01-31T00:00:00Z", "description": "leap"}), 201)
    assert clock["id"].startswith("tc_") and clock["deletedAt"] is None and clock["merchantId"] == merchant_a.merchant_id
    _sdk_reads("TestClock", clock)
    moved = _ok(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"advanceBy": "P1M"}))
    assert moved["currentTime"] == "2024-02-29T00:00:00Z"
    moved = _ok(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"currentTime": "2024-03-01T12:00:00Z"}))
    assert moved["currentTime"] == "2024-03-01T12:00:00Z"
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"currentTime": "2024-03-01T11:00:00Z"}), 400, field="currentTime")
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"advanceBy": "-P1D"}), 400, field="advanceBy")
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"advanceBy": "soon"}), 400, field="advanceBy")
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={}), 400)
    both = {"advanceBy": "P1D", "currentTime": "2025-01-01T00:00:00Z"}
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json=both), 400)
    assert _ok(await http_a.get(f"/v0/testClocks/{clock['id']}"))["currentTime"] == "2024-03-01T12:00:00Z"

    listed = _ok(await http_a.get("/v0/testClocks", params={"limit": 2}))
    _sdk_reads("ListTestClocksResponse", listed)
    assert [c["id"] for c in listed["data"]] == [clock["id"], now_clock["id"]]
    deleted = _ok(await http_a.delete(f"/v0/testClocks/{clock['id']}"))
    _sdk_reads("TestClock", deleted)
    assert deleted["id"] == clock["id"] and deleted["deletedAt"] is not None
    _error(await http_a.get(f"/v0/testClocks/{clock['id']}"), 404)
    _error(await http_a.patch(f"/v0/testClocks/{clock['id']}", json={"advanceBy": "P1D"}), 404)


# --- subscriptions --------------------------------------------------------------------


async def test_a_subscription_shows_what_the_sdk_requires_and_is_listed_updated_and_terminated(
    http_a: httpx.AsyncClient, merchant_a: MerchantClient
) -> None:
    m = merchant_a.merchant_id
    plan = await _plan(http_a, m)
    customer = await _customer(http_a, m)
    started = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    body = {"name": "Pro", "planId": plan["id"], "customerId": customer, "startedAt": started.isoformat(), "metadata": {"seat": 3}}
    sub = _ok(await http_a.post("/v0/subscriptions", json=body), 201)
    _sdk_reads("Subscription", sub)
    for key in SUBSCRIPTION_REQUIRED:
        assert key in sub and sub[key] is not None, key
    assert sub["status"] in ("pending_payment", "active")
    assert (sub["planVersionId"], sub["versionNumber"]) == (plan["defaultVersionId"], 1)
    assert (sub["versionPolicy"], sub["elapsedPeriodBilling"], sub["billingCadence"], sub["paymentTermDays"]) == (
        "floating",
        "none",
        "P1M",
        0,
    )
    assert sub["billingAnchor"] == sub["startedAt"] == sub["billingStartsAt"]
    assert sub["metadata"] == {"seat": 3}
    assert _ok(await http_a.get(f"/v0/subscriptions/{sub['id']}"))["id"] == sub["id"]

    listed = _ok(await http_a.get("/v0/subscriptions", params={"customerId": customer, "include": "customer"}))
    _sdk_reads("ListSubscriptionsResponse", listed)
    assert [s["id"] for s in listed["data"]] == [sub["id"]]
    embedded = listed["data"][0]["customer"]
    assert embedded["id"] == customer and embedded["merchantId"] == m and embedded["merchant"]["id"] == m
    assert embedded["consumer"]["id"].startswith("org_") and "@example.com" in embedded["consumer"]["email"]
    none = _ok(await http_a.get("/v0/subscriptions", params={"customerId": customer, "status": "terminated"}))
    assert none["data"] == [] and none["pagination"]["total"] == 0
    early = _ok(
        await http_a.get(
            "/v0/subscriptions", params={"customerId": customer, "startedBefore": (started - timedelta(minutes=1)).isoformat()}
        )
    )
    assert early["data"] == []

    patched = _ok(await http_a.patch(f"/v0/subscriptions/{sub['id']}", json={"paymentTermDays": 30, "autoCharge": True}))
    assert (patched["paymentTermDays"], patched["autoCharge"]) == (30, True)
    _error(
        await http_a.patch(f"/v0/subscriptions/{sub['id']}", json={"endingAt": (started - timedelta(days=1)).isoformat()}),
        400,
        field="endingAt",
    )

    _error(await http_a.delete(f"/v0/customers/{customer}"), 409, "CUSTOMER_HAS_LIVE_SUBSCRIPTIONS")
    _error(await http_a.post(f"/v0/subscriptions/{sub['id']}/termination", json={}), 400, field="reason")
    done = _ok(await http_a.post(f"/v0/subscriptions/{sub['id']}/termination", json={"reason": "moving on", "changeReason": "commercial"}))
    _sdk_reads("Subscription", done)
    assert (done["status"], done["terminatedBy"], done["terminationReason"], done["terminationChangeReason"]) == (
        "terminated", m, "moving on", "commercial",
    )  # fmt: skip
    assert started < datetime.fromisoformat(done["terminatedAt"]) <= datetime.now(UTC) + timedelta(seconds=5)
    _error(await http_a.post(f"/v0/subscriptions/{sub['id']}/termination", json={"reason": "again"}), 409, "SUBSCRIPTION_TERMINATED")
    _ok(await http_a.delete(f"/v0/customers/{customer}"), 204)


async def test_subscription_validation_names_the_field(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    m = merchant_a.merchant_id
    plan = await _plan(http_a, m)
    customer = await _customer(http_a, m)
    start = datetime.now(UTC).isoformat()
    base = {"name": "Pro", "planId": plan["id"], "customerId": customer, "startedAt": start}
    _error(await http_a.post("/v0/subscriptions", json={k: v for k, v in base.items() if k != "startedAt"}), 400, field="startedAt")
    _error(await http_a.post("/v0/subscriptions", json={k: v for k, v in base.items() if k != "customerId"}), 400, field="customerId")
    _error(await http_a.post("/v0/subscriptions", json=base | {"planId": "plan_missing"}), 404, field="planId")
    _error(await http_a.post("/v0/subscriptions", json=base | {"customerId": "cus_missing"}), 404, field="customerId")
    _error(await http_a.post("/v0/subscriptions", json=base | {"testClockId": "tc_missing"}), 404, field="testClockId")
    _error(await http_a.post("/v0/subscriptions", json=base | {"endingAt": start}), 400, field="endingAt")
    _error(await http_a.post("/v0/subscriptions", json=base | {"elapsedPeriodBilling": "all"}), 400, field="elapsedPeriodBilling")
    old = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    _error(
        await http_a.post("/v0/subscriptions", json=base | {"startedAt": old, "elapsedPeriodBilling": "per_period"}), 400, field="startedAt"
    )
    # Invoice 0's checkout lifetime: whole minutes from 1 to 43200 (1e15 once answered 500
    # after writing the subscription)
    for minutes in (1e15, 1e300, 43201, 0, -5, 1.5):
        _error(await http_a.post("/v0/subscriptions", json=base | {"sessionExpiryMinutes": minutes}), 400, field="sessionExpiryMinutes")
    # its redirects: absolute http(s) URLs (a javascript: one once left the subscription without a checkout)
    for field, url in (("onSuccess", "javascript:alert(1)"), ("onFailure", "data:text/html,x"), ("onSuccess", "/thanks")):
        _error(await http_a.post("/v0/subscriptions", json=base | {"redirectUrls": {field: url}}), 400, field=f"redirectUrls.{field}")
    assert _ok(await http_a.get("/v0/subscriptions", params={"customerId": customer}))["data"] == []


async def test_a_backdated_inline_customer_subscription_on_a_clock(http_a: httpx.AsyncClient, merchant_a: MerchantClient) -> None:
    m = merchant_a.merchant_id
    plan = await _plan(http_a, m)
    clock = _ok(await http_a.post("/v0/testClocks", json={"currentTime": "2025-01-31T00:00:00Z"}), 201)
    email = _email("inline")
    inline = {"name": "Inline Ltd", "email": email, "address": {"country": "FR", "zipCode": "75001"}, "taxRates": {"default": 20}}
    body = {"name": "Pro", "planId": plan["id"], "customer": inline, "startedAt": "2025-01-20T00:00:00Z", "testClockId": clock["id"]}
    sub = _ok(await http_a.post("/v0/subscriptions", json=body), 201)
    assert sub["testClockId"] == clock["id"]
    # backdated by 11 days against the clock: billing starts at the clock's now
    assert (sub["startedAt"], sub["billingStartsAt"]) == ("2025-01-20T00:00:00Z", "2025-01-31T00:00:00Z")
    customer = _ok(await http_a.get(f"/v0/customers/{sub['customerId']}"))
    assert customer["organization"]["billingEmails"] == [email] and customer["taxRates"] == {"default": 20}
    # the same email again reuses the customer, and a clock in use cannot be deleted
    again = _ok(await http_a.post("/v0/subscriptions", json=body | {"startedAt": "2025-01-31T00:00:00Z"}), 201)
    assert again["customerId"] == sub["customerId"]
    _error(await http_a.delete(f"/v0/testClocks/{clock['id']}"), 409, "TEST_CLOCK_IN_USE")
    # a customer lives on one clock
    other = _ok(await http_a.post("/v0/testClocks", json={"currentTime": "2025-01-31T00:00:00Z"}), 201)
    _error(await http_a.post("/v0/subscriptions", json=body | {"testClockId": other["id"]}), 409, "CUSTOMER_ON_OTHER_CLOCK")
    for s in (sub, again):
        _ok(await http_a.post(f"/v0/subscriptions/{s['id']}/termination", json={"reason": "end of test"}))
    _ok(await http_a.delete(f"/v0/testClocks/{clock['id']}"))


# --- tenancy --------------------------------------------------------------------------


async def test_another_merchants_customers_subscriptions_and_clocks_are_not_found(
    http_a: httpx.AsyncClient, http_b: httpx.AsyncClient, merchant_a: MerchantClient, merchant_b: MerchantClient
) -> None:
    a, b = merchant_a.merchant_id, merchant_b.merchant_id
    plan = await _plan(http_a, a)
    customer = await _customer(http_a, a, externalId=f"acct-{uuid.uuid4().hex[:8]}")
    clock = _ok(await http_a.post("/v0/testClocks", json={}), 201)
    sub = _ok(
        await http_a.post(
            "/v0/subscriptions",
            json={"name": "Pro", "planId": plan["id"], "customerId": customer, "startedAt": datetime.now(UTC).isoformat()},
        ),
        201,
    )
    snapshot = {
        path: _ok(await http_a.get(path))
        for path in (f"/v0/customers/{customer}", f"/v0/subscriptions/{sub['id']}", f"/v0/testClocks/{clock['id']}")
    }

    attempts = [
        http_b.get(f"/v0/customers/{customer}"),
        http_b.patch(f"/v0/customers/{customer}", json={"taxId": "X"}),
        http_b.delete(f"/v0/customers/{customer}"),
        http_b.get(f"/v0/subscriptions/{sub['id']}"),
        http_b.patch(f"/v0/subscriptions/{sub['id']}", json={"autoCharge": True}),
        http_b.post(f"/v0/subscriptions/{sub['id']}/termination", json={"reason": "theirs"}),
        http_b.get(f"/v0/testClocks/{clock['id']}"),
        http_b.patch(f"/v0/testClocks/{clock['id']}", json={"advanceBy": "P1D"}),
        http_b.delete(f"/v0/testClocks/{clock['id']}"),
        http_b.get("/v0/customers", params={"organizationId": a}),
        http_b.get("/v0/subscriptions", params={"merchantId": a}),
        http_b.get("/v0/testClocks", params={"merchantId": a}),
        http_b.post("/v0/customers", json={"merchantId": a, "consumer": {"name": "X", "email": _email("x"), "address": ADDRESS}}),
    ]
    for attempt in attempts:
        _error(await attempt, 404)
    # nor can A's ids be used in B's writes
    b_customer = await _customer(http_b, b)
    b_plan = await _plan(http_b, b)
    start = datetime.now(UTC).isoformat()
    _error(
        await http_b.post("/v0/subscriptions", json={"name": "x", "planId": plan["id"], "customerId": b_customer, "startedAt": start}),
        404,
        field="planId",
    )
    _error(
        await http_b.post(
            "/v0/subscriptions",
            json={"name": "x", "planId": b_plan["id"], "customerId": b_customer, "startedAt": start, "testClockId": clock["id"]},
        ),
        404,
        field="testClockId",
    )
    _error(
        await http_b.post("/v0/subscriptions", json={"name": "x", "planId": b_plan["id"], "customerId": customer, "startedAt": start}),
        404,
        field="customerId",
    )
    # B's lists do not show A's resources
    listed = _ok(await http_b.get("/v0/subscriptions", params={"customerId": customer}))
    assert listed["data"] == []
    # and A's resources are exactly as they were
    for path, before in snapshot.items():
        assert _ok(await http_a.get(path)) == before, path


# --- CustomerChanged feeds metering ---------------------------------------------------


async def test_events_sent_for_an_external_id_before_the_customer_existed_become_its_usage(
    http_a: httpx.AsyncClient, merchant_a: MerchantClient
) -> None:
    """The real producer: CreateCustomer publishes CustomerChanged (with its sequence) and
    metering attributes the stored events; moving the external id away stops attributing
    new events under the old key to the customer."""
    m = merchant_a.merchant_id
    product = _ok(await http_a.post("/v0/products", json={"merchantId": m, "name": "API", "description": "d"}), 201)
    metric = _ok(
        await http_a.post(
            "/v0/billableMetrics",
            json={
                "merchantId": m, "productId": product["id"], "name": "Tokens", "description": "t", "unit": "tokens",
                "aggregation": "SUM", "eventType": f"tokens.{uuid.uuid4().hex[:8]}", "valueProperty": "$.tokens",
            },
        ),
        201,
    )  # fmt: skip
    external = f"acct-{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}

    async def ingest(key: str, tokens: int, subject: str) -> None:
        body = {
            "type": metric["eventType"],
            "source": "tests",
            "externalSubject": subject,
            "data": {"tokens": tokens},
            "idempotencyKey": key,
        }
        _ok(await http_a.post("/v0/events", json=body), 202)

    async def usage(customer_id: str) -> str:
        meter = _ok(await http_a.get(f"/v0/billableMetrics/{metric['id']}/meter", params=window | {"subject": customer_id}))
        return str(meter["totalValueDecimal"])

    await ingest(f"early-{external}", 1500, external)
    customer = await _customer(http_a, m, externalId=external)
    assert await eventually_async(lambda: usage(customer), "1500", timeout=20.0) == "1500"
    await ingest(f"late-{external}", 25, external)
    assert await eventually_async(lambda: usage(customer), "1525", timeout=20.0) == "1525"

    _ok(await http_a.patch(f"/v0/customers/{customer}", json={"externalId": f"{external}-new"}))
    await ingest(f"moved-new-{external}", 100, f"{external}-new")
    assert await eventually_async(lambda: usage(customer), "1625", timeout=20.0) == "1625"
    await ingest(f"moved-old-{external}", 7, external)  # the old key names nobody now

    async def stored_under_old_key() -> int:
        listed = _ok(await http_a.get(f"/v0/billableMetrics/{metric['id']}/events", params=window | {"externalSubject": external}))
        return int(listed["pagination"]["total"])

    assert await eventually_async(stored_under_old_key, 3, timeout=20.0) == 3  # stored (and attributed at insert, or not)
    assert await usage(customer) == "1625"
