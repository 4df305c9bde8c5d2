"""The Idempotency-Key header on catalog writes (POST /v0/products).

A replay with the same key and body returns the first response (201, same id) and writes
nothing more; the same key with another body is a 409 IDEMPOTENCY_KEY_REUSED; keys are
per merchant; concurrent duplicates collapse into one write.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http_a(merchant_a: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def http_b(merchant_b: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_b.base_url, headers=merchant_b.headers, timeout=30) as client:
        yield client


def _key() -> str:
    return f"idem-{uuid.uuid4()}"


def _products_total(http: httpx.Client) -> int:
    response = http.get("/v0/products", params={"limit": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["pagination"]["total"])


def _product_ids(http: httpx.Client) -> set[str]:
    ids: set[str] = set()
    offset = 0
    while True:
        page = http.get("/v0/products", params={"limit": 100, "offset": offset}).json()
        ids |= {p["id"] for p in page["data"]}
        offset += 100
        if offset >= page["pagination"]["total"]:
            return ids


def _create(http: httpx.Client, key: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return http.post("/v0/products", json=body, headers=headers)


def test_replay_returns_the_first_response_and_creates_one_product(http_a: httpx.Client) -> None:
    key = _key()
    body = {"name": "Idempotent", "description": "created once"}
    before = _products_total(http_a)
    first = _create(http_a, key, body)
    assert first.status_code == 201, first.text
    second = _create(http_a, key, body)
    assert second.status_code == 201, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.json() == first.json()  # the stored response, timestamps included
    third = _create(http_a, key, body)
    assert third.json() == first.json()
    assert _products_total(http_a) == before + 1
    assert http_a.get(f"/v0/products/{first.json()['id']}").json() == first.json()


def test_without_a_key_each_post_creates(http_a: httpx.Client) -> None:
    body = {"name": "Not idempotent", "description": "twice"}
    before = _products_total(http_a)
    first, second = _create(http_a, None, body), _create(http_a, None, body)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert _products_total(http_a) == before + 2


@pytest.mark.parametrize(
    "other",
    [
        {"name": "Idempotent", "description": "a different description"},
        {"name": "Another name", "description": "created once"},
        {"name": "Idempotent", "description": "created once", "metadata": {"tier": "gold"}},
    ],
    ids=["description", "name", "metadata"],
)
def test_same_key_different_body_is_409(other: dict[str, Any], http_a: httpx.Client) -> None:
    key = _key()
    first = _create(http_a, key, {"name": "Idempotent", "description": "created once"})
    assert first.status_code == 201, first.text
    before = _products_total(http_a)
    reused = _create(http_a, key, other)
    assert reused.status_code == 409, reused.text
    body = reused.json()
    assert (body["error"], body["code"]) == ("conflict", "IDEMPOTENCY_KEY_REUSED")
    assert body["message"]
    assert body["details"]["field"] == "Idempotency-Key"
    assert _products_total(http_a) == before
    # the original body still replays fine after the refusal
    assert _create(http_a, key, {"name": "Idempotent", "description": "created once"}).json() == first.json()


def test_same_key_on_another_endpoint_is_409(http_a: httpx.Client) -> None:
    key = _key()
    product = _create(http_a, key, {"name": "Keyed", "description": "d"})
    assert product.status_code == 201, product.text
    fees_before = http_a.get("/v0/fees", params={"limit": 1, "productId": product.json()["id"]}).json()["pagination"]["total"]
    fee = http_a.post(
        "/v0/fees", json={"productId": product.json()["id"], "name": "f", "description": "d"}, headers={"Idempotency-Key": key}
    )
    assert fee.status_code == 409, fee.text
    assert fee.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    fees_after = http_a.get("/v0/fees", params={"limit": 1, "productId": product.json()["id"]}).json()["pagination"]["total"]
    assert fees_after == fees_before == 0


def test_same_key_for_another_merchant_is_independent(
    http_a: httpx.Client, http_b: httpx.Client, merchant_a: MerchantClient, merchant_b: MerchantClient
) -> None:
    key = _key()
    body = {"name": "Shared key", "description": "per merchant"}
    a_before, b_before = _products_total(http_a), _products_total(http_b)
    a = _create(http_a, key, body)
    b = _create(http_b, key, body)
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json()["id"] != b.json()["id"]
    assert (a.json()["merchantId"], b.json()["merchantId"]) == (merchant_a.merchant_id, merchant_b.merchant_id)
    # B's use of the key neither replays A's product nor blocks a different body for B
    b_other_key_reuse = _create(http_b, key, {"name": "changed", "description": "per merchant"})
    assert b_other_key_reuse.status_code == 409
    assert _create(http_a, key, body).json() == a.json()
    assert _create(http_b, key, body).json() == b.json()
    assert http_b.get(f"/v0/products/{a.json()['id']}").status_code == 404
    assert (_products_total(http_a), _products_total(http_b)) == (a_before + 1, b_before + 1)


def test_a_failed_request_does_not_burn_the_key(http_a: httpx.Client) -> None:
    key = _key()
    before = _products_total(http_a)
    bad = _create(http_a, key, {"name": " ", "description": "blank name"})
    assert bad.status_code == 400, bad.text
    assert bad.json()["code"] == "REQUIRED"
    good = _create(http_a, key, {"name": "After a 400", "description": "d"})
    assert good.status_code == 201, good.text
    assert _create(http_a, key, {"name": "After a 400", "description": "d"}).json()["id"] == good.json()["id"]
    assert _products_total(http_a) == before + 1


async def test_concurrent_requests_with_one_key_create_one_product(merchant_a: MerchantClient, http_a: httpx.Client) -> None:
    key = _key()
    body = {"name": "Concurrent", "description": f"raced {key}"}
    before_ids = _product_ids(http_a)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=60, limits=limits) as client:
        start = asyncio.Event()

        async def post() -> httpx.Response:
            await start.wait()
            return await client.post("/v0/products", json=body, headers={"Idempotency-Key": key})

        tasks = [asyncio.create_task(post()) for _ in range(20)]
        await asyncio.sleep(0.05)
        start.set()
        responses = await asyncio.gather(*tasks)
    assert [r.status_code for r in responses] == [201] * 20, [r.text for r in responses if r.status_code != 201]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    new_ids = _product_ids(http_a) - before_ids
    assert new_ids == ids
    assert all(r.json() == responses[0].json() for r in responses)


def test_sdk_passes_the_idempotency_key(merchant_a: MerchantClient, http_a: httpx.Client) -> None:
    sdk, key = merchant_a.sdk, _key()
    before = _products_total(http_a)
    first = sdk.products.create(
        merchant_id=merchant_a.merchant_id, name="SDK idempotent", description="d", http_headers={"Idempotency-Key": key}
    )
    second = sdk.products.create(
        merchant_id=merchant_a.merchant_id, name="SDK idempotent", description="d", http_headers={"Idempotency-Key": key}
    )
    assert second.id == first.id
    assert second == first
    assert _products_total(http_a) == before + 1
    # products.create declares no 409, so the SDK raises its default error with the raw body
    with pytest.raises(errors.PaygenticDefaultError) as reused:
        sdk.products.create(merchant_id=merchant_a.merchant_id, name="SDK changed", description="d", http_headers={"Idempotency-Key": key})
    assert reused.value.status_code == 409
    assert '"code":"IDEMPOTENCY_KEY_REUSED"' in reused.value.body
    assert _products_total(http_a) == before + 1
