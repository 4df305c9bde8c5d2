"""Size limits through the gateway (services/catalog/domain/rules.py LIMITS).

At the limit a request is accepted; one past it is a 400 naming the reason and the field in
its REST spelling, and nothing is written: each refusal counts the affected list (or reads
the resource) before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e

MAX_TIERS = 100
MAX_METADATA_KEYS = 50
MAX_KEY = 40
MAX_VALUE = 500
MAX_NAME = 255
MAX_DESCRIPTION = 5000
MAX_PLAN_PRICES = 100
MAX_GROUP_BY = 20


@dataclass
class Ctx:
    product: str
    metric: str
    fee: str
    feature: str
    fee_price: str
    volume_price: str
    plan: str


@pytest.fixture(scope="module")
def http(merchant_a: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=60) as client:
        yield client


def _created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _ladder(count: int) -> list[dict[str, Any]]:
    return [{"upTo": str(i + 1) if i < count - 1 else None, "unitPrice": "0.01"} for i in range(count)]


def _tiered(ctx: Ctx, model: str, count: int) -> dict[str, Any]:
    return {"invoiceDisplayName": "Calls", "paymentTerm": "in_arrears", "model": model, "billableMetricId": ctx.metric,
            "properties": {"tiers": _ladder(count)}}  # fmt: skip


def _fee_price(fee: str) -> dict[str, Any]:
    return {"invoiceDisplayName": "Base", "paymentTerm": "in_advance", "feeId": fee, "billingCadence": "P1M",
            "properties": {"unitPrice": "10.00"}}  # fmt: skip


@pytest.fixture(scope="module")
def ctx(http: httpx.Client, merchant_a: MerchantClient) -> Ctx:
    m = merchant_a.merchant_id
    product = _created(http.post("/v0/products", json={"merchantId": m, "name": "Limits", "description": "l"}))["id"]
    metric = _created(
        http.post(
            "/v0/billableMetrics",
            json={"merchantId": m, "productId": product, "name": "Calls", "description": "c", "unit": "calls",
                  "aggregation": "COUNT", "eventType": f"limits.{uuid.uuid4().hex[:8]}"},
        )
    )["id"]  # fmt: skip
    fee = _created(http.post("/v0/fees", json={"merchantId": m, "productId": product, "name": "Base", "description": "b"}))["id"]
    feature = _created(
        http.post("/v0/features", json={"merchantId": m, "productId": product, "key": f"seats-{uuid.uuid4().hex[:8]}", "name": "Seats"})
    )["id"]
    fee_price = _created(http.post("/v0/prices", json=_fee_price(fee)))["id"]
    plan = _created(
        http.post("/v0/plans", json={"merchantId": m, "productId": product, "name": "L", "currency": "USD", "prices": [fee_price]})
    )["id"]
    ctx = Ctx(product, metric, fee, feature, fee_price, "", plan)
    ctx.volume_price = _created(http.post("/v0/prices", json=_tiered(ctx, "volume", 3)))["id"]
    return ctx


def _total(http: httpx.Client, path: str, **params: Any) -> int:
    response = http.get(path, params={"limit": 1, **params})
    assert response.status_code == 200, response.text
    return int(response.json()["pagination"]["total"])


def _refused(response: httpx.Response, code: str, field: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "bad_request", body
    assert body["code"] == code, body
    assert body["details"]["field"] == field, body
    assert len(body["message"]) < 300, "a refusal does not echo the oversized input back"


# --- tiers --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["volume", "graduated"])
@pytest.mark.parametrize("count", [MAX_TIERS + 1, 10_000])
def test_a_price_with_too_many_tiers_is_400_and_nothing_is_created(model: str, count: int, ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/prices", billableMetricId=ctx.metric)
    _refused(http.post("/v0/prices", json=_tiered(ctx, model, count)), "TOO_MANY_TIERS", "properties.tiers")
    assert _total(http, "/v0/prices", billableMetricId=ctx.metric) == before


@pytest.mark.parametrize("model", ["volume", "graduated"])
def test_a_price_with_100_tiers_is_created(model: str, ctx: Ctx, http: httpx.Client) -> None:
    price = _created(http.post("/v0/prices", json=_tiered(ctx, model, MAX_TIERS)))
    assert len(price["properties"]["tiers"]) == MAX_TIERS
    assert len(http.get(f"/v0/prices/{price['id']}").json()["properties"]["tiers"]) == MAX_TIERS


def test_updating_a_price_to_too_many_tiers_is_400_and_changes_nothing(ctx: Ctx, http: httpx.Client) -> None:
    before = http.get(f"/v0/prices/{ctx.volume_price}").json()
    body = {"properties": {"tiers": _ladder(MAX_TIERS + 1)}}
    _refused(http.patch(f"/v0/prices/{ctx.volume_price}", json=body), "TOO_MANY_TIERS", "properties.tiers")
    assert http.get(f"/v0/prices/{ctx.volume_price}").json() == before
    # the limit itself is fine on update too
    updated = http.patch(f"/v0/prices/{ctx.volume_price}", json={"properties": {"tiers": _ladder(MAX_TIERS)}})
    assert updated.status_code == 200, updated.text
    assert len(updated.json()["properties"]["tiers"]) == MAX_TIERS


# --- metadata (products: create; features: create and update) ----------------------------


def _full_metadata() -> dict[str, str]:
    return {f"k{i:02d}".ljust(MAX_KEY, "x"): "v" * MAX_VALUE for i in range(MAX_METADATA_KEYS)}


BAD_METADATA = [
    ({f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}, "TOO_MANY_METADATA_KEYS", "metadata"),
    ({f"k{i}": "v" for i in range(10_000)}, "TOO_MANY_METADATA_KEYS", "metadata"),
    ({"k" * (MAX_KEY + 1): "v"}, "KEY_TOO_LONG", "metadata"),
    ({"tier": "v" * (MAX_VALUE + 1)}, "TOO_LONG", "metadata.tier"),
]
BAD_METADATA_IDS = ["51 keys", "10000 keys", "41-character key", "501-character value"]


@pytest.mark.parametrize(("metadata", "code", "field"), BAD_METADATA, ids=BAD_METADATA_IDS)
def test_product_with_bad_metadata_is_400_and_nothing_is_created(
    metadata: dict[str, str], code: str, field: str, merchant_a: MerchantClient, http: httpx.Client
) -> None:
    before = _total(http, "/v0/products")
    body = {"merchantId": merchant_a.merchant_id, "name": "Too much", "description": "d", "metadata": metadata}
    _refused(http.post("/v0/products", json=body), code, field)
    assert _total(http, "/v0/products") == before


def test_product_metadata_at_the_limits_is_kept(merchant_a: MerchantClient, http: httpx.Client) -> None:
    body = {"merchantId": merchant_a.merchant_id, "name": "Full", "description": "d", "metadata": _full_metadata()}
    product = _created(http.post("/v0/products", json=body))
    assert http.get(f"/v0/products/{product['id']}").json()["metadata"] == _full_metadata()


def test_product_metadata_is_not_updatable(ctx: Ctx, http: httpx.Client) -> None:
    # Paygentic's UpdateProductRequestBody has name and description only
    before = http.get(f"/v0/products/{ctx.product}").json()
    response = http.patch(f"/v0/products/{ctx.product}", json={"metadata": {f"k{i}": "v" for i in range(10_000)}})
    assert response.status_code == 400, response.text
    assert response.json()["details"]["field"] == "metadata"
    assert http.get(f"/v0/products/{ctx.product}").json() == before


@pytest.mark.parametrize(("metadata", "code", "field"), BAD_METADATA, ids=BAD_METADATA_IDS)
def test_feature_with_bad_metadata_is_400_and_nothing_is_created(
    metadata: dict[str, str], code: str, field: str, ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client
) -> None:
    before = _total(http, "/v0/features", productId=ctx.product)
    body = {"merchantId": merchant_a.merchant_id, "productId": ctx.product, "key": f"f-{uuid.uuid4().hex[:8]}", "name": "F",
            "metadata": metadata}  # fmt: skip
    _refused(http.post("/v0/features", json=body), code, field)
    assert _total(http, "/v0/features", productId=ctx.product) == before


@pytest.mark.parametrize(("metadata", "code", "field"), BAD_METADATA, ids=BAD_METADATA_IDS)
def test_feature_update_with_bad_metadata_is_400_and_changes_nothing(
    metadata: dict[str, str], code: str, field: str, ctx: Ctx, http: httpx.Client
) -> None:
    before = http.get(f"/v0/features/{ctx.feature}").json()
    _refused(http.patch(f"/v0/features/{ctx.feature}", json={"metadata": metadata}), code, field)
    assert http.get(f"/v0/features/{ctx.feature}").json() == before


def test_feature_metadata_at_the_limits_is_kept_on_create_and_update(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    body = {"merchantId": merchant_a.merchant_id, "productId": ctx.product, "key": f"f-{uuid.uuid4().hex[:8]}", "name": "F",
            "metadata": _full_metadata()}  # fmt: skip
    feature = _created(http.post("/v0/features", json=body))
    assert feature["metadata"] == _full_metadata()
    replaced = {f"r{i:02d}": "w" * MAX_VALUE for i in range(MAX_METADATA_KEYS)}
    updated = http.patch(f"/v0/features/{feature['id']}", json={"metadata": replaced})
    assert updated.status_code == 200, updated.text
    assert http.get(f"/v0/features/{feature['id']}").json()["metadata"] == replaced


# --- free text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v0/products", {"name": "n" * (MAX_NAME + 1), "description": "d"}, "name"),
        ("/v0/products", {"name": "n", "description": "d" * (MAX_DESCRIPTION + 1)}, "description"),
        ("/v0/fees", {"productId": "{product}", "name": "f", "description": "d", "itemId": "i" * (MAX_NAME + 1)}, "itemId"),
        ("/v0/billableMetrics", {"productId": "{product}", "name": "m", "description": "d", "unit": "u", "aggregation": "COUNT",
                                 "eventType": "e", "itemId": "i" * (MAX_NAME + 1)}, "itemId"),
        ("/v0/plans", {"productId": "{product}", "name": "p", "currency": "USD", "prices": ["{fee_price}"],
                       "description": "d" * (MAX_DESCRIPTION + 1)}, "description"),
        ("/v0/plans", {"productId": "{product}", "name": "p", "currency": "USD", "prices": ["{fee_price}"],
                       "invoiceDisplayName": "i" * (MAX_NAME + 1)}, "invoiceDisplayName"),
        ("/v0/prices", {**_fee_price("{fee}"), "invoiceDisplayGroup": "g" * (MAX_NAME + 1)}, "invoiceDisplayGroup"),
    ],
    ids=["product name", "product description", "fee itemId", "metric itemId", "plan description", "plan invoiceDisplayName",
         "price invoiceDisplayGroup"],
)  # fmt: skip
def test_too_long_text_on_create_is_400_and_nothing_is_created(
    path: str, body: dict[str, Any], field: str, ctx: Ctx, http: httpx.Client
) -> None:
    filled = {k: _fill(v, ctx) for k, v in body.items()}
    params = {"productId": ctx.product} if path in ("/v0/fees", "/v0/billableMetrics", "/v0/plans") else {}
    before = _total(http, path, **params)
    _refused(http.post(path, json=filled), "TOO_LONG", field)
    assert _total(http, path, **params) == before


def _fill(value: Any, ctx: Ctx) -> Any:
    if isinstance(value, str):
        return value.replace("{product}", ctx.product).replace("{fee_price}", ctx.fee_price).replace("{fee}", ctx.fee)
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    return value


@pytest.mark.parametrize(
    ("resource", "body", "field"),
    [
        ("products", {"description": "d" * (MAX_DESCRIPTION + 1)}, "description"),
        ("fees", {"itemId": "i" * (MAX_NAME + 1)}, "itemId"),
        ("billableMetrics", {"itemId": "i" * (MAX_NAME + 1)}, "itemId"),
        ("plans", {"description": "d" * (MAX_DESCRIPTION + 1)}, "description"),
        ("plans", {"invoiceDisplayName": "i" * (MAX_NAME + 1)}, "invoiceDisplayName"),
        ("prices", {"invoiceDisplayGroup": "g" * (MAX_NAME + 1)}, "invoiceDisplayGroup"),
    ],
    ids=["product description", "fee itemId", "metric itemId", "plan description", "plan invoiceDisplayName",
         "price invoiceDisplayGroup"],
)  # fmt: skip
def test_too_long_text_on_update_is_400_and_changes_nothing(
    resource: str, body: dict[str, Any], field: str, ctx: Ctx, http: httpx.Client
) -> None:
    ident = {"products": ctx.product, "fees": ctx.fee, "billableMetrics": ctx.metric, "plans": ctx.plan, "prices": ctx.fee_price}[resource]
    before = http.get(f"/v0/{resource}/{ident}").json()
    _refused(http.patch(f"/v0/{resource}/{ident}", json=body), "TOO_LONG", field)
    assert http.get(f"/v0/{resource}/{ident}").json() == before


def test_text_at_the_limits_is_accepted(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    body = {"merchantId": merchant_a.merchant_id, "productId": ctx.product, "name": "n" * MAX_NAME,
            "description": "d" * MAX_DESCRIPTION, "itemId": "i" * MAX_NAME}  # fmt: skip
    fee = _created(http.post("/v0/fees", json=body))
    assert (len(fee["name"]), len(fee["description"]), len(fee["itemId"])) == (MAX_NAME, MAX_DESCRIPTION, MAX_NAME)


# --- group-by dimensions, plan prices -------------------------------------------------------


def test_too_many_group_by_dimensions_is_400_on_create_and_update(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    dimensions = {f"d{i}": f"$.d{i}" for i in range(MAX_GROUP_BY + 1)}
    body = {"merchantId": merchant_a.merchant_id, "productId": ctx.product, "name": "m", "description": "d", "unit": "u",
            "aggregation": "COUNT", "eventType": "e", "groupBy": dimensions}  # fmt: skip
    before = _total(http, "/v0/billableMetrics", productId=ctx.product)
    _refused(http.post("/v0/billableMetrics", json=body), "TOO_MANY_DIMENSIONS", "groupBy")
    assert _total(http, "/v0/billableMetrics", productId=ctx.product) == before
    metric = http.get(f"/v0/billableMetrics/{ctx.metric}").json()
    _refused(http.patch(f"/v0/billableMetrics/{ctx.metric}", json={"groupBy": dimensions}), "TOO_MANY_DIMENSIONS", "groupBy")
    assert http.get(f"/v0/billableMetrics/{ctx.metric}").json() == metric
    at_limit = {f"d{i}": f"$.d{i}" for i in range(MAX_GROUP_BY)}
    updated = http.patch(f"/v0/billableMetrics/{ctx.metric}", json={"groupBy": at_limit})
    assert updated.status_code == 200, updated.text
    assert updated.json()["groupBy"] == at_limit


def test_a_plan_with_too_many_prices_is_400_on_create_update_and_mint(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    # refused on the count, before any of the ids is looked up
    prices = [f"price_{i}" for i in range(MAX_PLAN_PRICES + 1)]
    before = _total(http, "/v0/plans", productId=ctx.product)
    body = {"merchantId": merchant_a.merchant_id, "productId": ctx.product, "name": "P", "currency": "USD", "prices": prices}
    _refused(http.post("/v0/plans", json=body), "TOO_MANY_PRICES", "prices")
    assert _total(http, "/v0/plans", productId=ctx.product) == before
    versions = _total(http, f"/v0/plans/{ctx.plan}/versions")
    _refused(http.patch(f"/v0/plans/{ctx.plan}", json={"prices": prices}), "TOO_MANY_PRICES", "prices")
    _refused(http.post(f"/v0/plans/{ctx.plan}/versions", json={"prices": prices}), "TOO_MANY_PRICES", "prices")
    assert _total(http, f"/v0/plans/{ctx.plan}/versions") == versions


# --- paging on every list endpoint ----------------------------------------------------------


def _list_endpoints(ctx: Ctx) -> list[tuple[str, dict[str, Any]]]:
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    return [
        ("/v0/products", {}),
        ("/v0/billableMetrics", {}),
        ("/v0/features", {"productId": ctx.product}),
        ("/v0/fees", {}),
        ("/v0/prices", {}),
        ("/v0/plans", {}),
        (f"/v0/plans/{ctx.plan}/versions", {}),
        (f"/v0/billableMetrics/{ctx.metric}/events", window),
    ]


@pytest.mark.parametrize(
    ("paging", "field"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": -5}, "limit"), ({"offset": -1}, "offset")],
    ids=["limit=0", "limit=101", "limit=-5", "offset=-1"],
)
def test_every_list_refuses_paging_out_of_range(paging: dict[str, int], field: str, ctx: Ctx, http: httpx.Client) -> None:
    for path, params in _list_endpoints(ctx):
        _refused(http.get(path, params={**params, **paging}), "OUT_OF_RANGE", field)


def test_every_list_accepts_the_paging_bounds(ctx: Ctx, http: httpx.Client) -> None:
    for path, params in _list_endpoints(ctx):
        for limit in (1, 100):
            response = http.get(path, params={**params, "limit": limit, "offset": 0})
            assert response.status_code == 200, (path, response.text)
            assert response.json()["pagination"]["limit"] == limit, path
