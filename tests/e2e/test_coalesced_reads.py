"""GET /v0/products/{id} and the REST entitlement check GET /v1/entitlements are coalesced
by the gateway (concurrent GETs of a merchant become one BatchGetProducts call of the
catalog, one BatchListEntitlements call of the entitlement service): every answer must be
exactly what the same GET answers alone, uncoalesced. A GET carrying an Idempotency-Key is never coalesced, so it is
the reference here; the coalesced answers come from many GETs in flight at once, mixing
this merchant's products, unknown ids, another merchant's product and an id far past the
status's text bound, so that one batch holds all of them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from libs.testing.billing import at
from libs.testing.entitlements import metered_subscription
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


def _create(client: MerchantClient, name: str) -> dict[str, Any]:
    response = httpx.post(f"{client.base_url}/v0/products", json={"name": name, "description": "d"}, headers=client.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _answer(response: httpx.Response) -> tuple[int, Any]:
    return response.status_code, response.json()


async def test_concurrent_gets_answer_what_each_get_answers_alone(merchant_a: MerchantClient, merchant_b: MerchantClient) -> None:
    mine = [_create(merchant_a, f"coalesced {n}") for n in range(3)]
    theirs = _create(merchant_b, "not A's")
    ids = [p["id"] for p in mine] + ["prod_nope", theirs["id"], "prod_" + "x" * 700, f"prod_{uuid.uuid4().hex}"]
    async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as http:
        alone = {i: _answer(await http.get(f"/v0/products/{i}", headers={"Idempotency-Key": uuid.uuid4().hex})) for i in ids}
        wanted = [ids[n % len(ids)] for n in range(12 * len(ids))]
        together = await asyncio.gather(*(http.get(f"/v0/products/{i}") for i in wanted))
    for product_id, response in zip(wanted, together, strict=True):
        assert _answer(response) == alone[product_id], product_id
    # and the reference itself is what the contract says
    for product in mine:
        assert alone[product["id"]] == (200, product)
    status, body = alone["prod_nope"]
    assert status == 404
    assert body == {
        "message": "product 'prod_nope' was not found",
        "error": body["error"],
        "code": "PRODUCT_NOT_FOUND",
        "details": {"resource": "product", "id": "prod_nope"},
    }
    assert alone[theirs["id"]][0] == 404  # another merchant's product is not found, not shown


async def test_a_lone_get_and_a_get_after_an_update_see_the_update(merchant_a: MerchantClient) -> None:
    product = _create(merchant_a, "v0")
    async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as http:
        for n in range(1, 6):
            updated = await http.patch(f"/v0/products/{product['id']}", json={"name": f"v{n}"})
            assert updated.status_code == 200, updated.text
            reads = await asyncio.gather(*(http.get(f"/v0/products/{product['id']}") for _ in range(8)))
            assert {r.json()["name"] for r in reads} == {f"v{n}"}


async def test_concurrent_entitlement_checks_answer_what_each_check_answers_alone(
    merchant_a: MerchantClient, merchant_b: MerchantClient
) -> None:
    """The check form (customerId, productId, featureKey) of two customers, beside a
    customer that does not exist, another merchant's customer, a limit out of its declared
    range (refused alone, as the single call refuses it) and an unknown feature key: each
    request answered on its own."""
    template = {"usagePeriod": {"interval": "P1M"}, "issueAfterReset": 100, "isSoftLimit": True}
    one = metered_subscription(merchant_a, f"Coalesced {uuid.uuid4().hex[:6]}", at("2027-02-01T00:00:00Z"), template)
    two = metered_subscription(merchant_a, f"Coalesced {uuid.uuid4().hex[:6]}", at("2027-03-01T00:00:00Z"), template)
    theirs = metered_subscription(merchant_b, f"Not A's {uuid.uuid4().hex[:6]}", at("2027-02-01T00:00:00Z"), template)

    def check(s: Any, **extra: Any) -> dict[str, Any]:
        return {"customerId": s.customer_id, "productId": s.catalog.product_id, "featureKey": s.feature.key, **extra}

    queries = [
        check(one),
        check(two),
        check(one, customerId="cus_nope"),
        check(theirs),
        check(one, limit=0),
        check(two, featureKey="no-such-feature"),
        {"customerId": one.customer_id},
    ]
    async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as http:
        alone = [_answer(await http.get("/v1/entitlements", params=q, headers={"Idempotency-Key": uuid.uuid4().hex})) for q in queries]
        wanted = [n % len(queries) for n in range(10 * len(queries))]
        together = await asyncio.gather(*(http.get("/v1/entitlements", params=queries[n]) for n in wanted))
    for n, response in zip(wanted, together, strict=True):
        assert _answer(response) == alone[n], queries[n]
    # the reference itself: the two customers see their own entitlement, the rest are refused
    assert [status for status, _ in alone[:2]] == [200, 200]
    assert [body["data"][0]["id"] for _, body in alone[:2]] == [one.entitlement_id, two.entitlement_id]
    # an unknown customer, another merchant's and an unknown feature key list nothing
    assert [alone[n] for n in (2, 3, 5)] == [(200, alone[n][1]) for n in (2, 3, 5)]
    assert [alone[n][1]["data"] for n in (2, 3, 5)] == [[], [], []]
    assert alone[4][0] == 400 and alone[4][1]["details"] == {"field": "limit"}
    assert alone[6][0] == 200 and [e["id"] for e in alone[6][1]["data"]] == [one.entitlement_id]
