"""Tenancy of the catalog: one merchant's key can neither see nor change another's resources.

Merchant A builds one of every catalog resource (product, billable metric, feature, fee,
a metric price with the feature attached, a fee price, a plan and so its version 1).
Merchant B then tries everything against them — reads, updates, deletes, plan-version
calls, using A's ids as references in its own writes, listing with A's merchantId — and
must get a 404 each time (naming the field when the id came in the body or query).
Last, A re-reads every resource and finds it exactly as it was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


@dataclass
class World:
    """Ids of one merchant's resources (and, for A, their JSON as first read)."""

    merchant: str
    product: str
    metric: str
    feature: str
    fee: str
    metric_price: str
    fee_price: str
    plan: str
    version_id: str
    snapshot: dict[str, Any]


def _ok(response: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def _build(client: MerchantClient, label: str) -> World:
    """One of each catalog resource, created over plain REST with the merchant's key."""
    suffix = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=30) as http:
        product = _ok(http.post("/v0/products", json={"merchantId": client.merchant_id, "name": f"{label} product", "description": "d"}))
        metric = _ok(
            http.post(
                "/v0/billableMetrics",
                json={
                    "merchantId": client.merchant_id, "productId": product["id"], "name": f"{label} tokens", "description": "t",
                    "unit": "tokens", "aggregation": "SUM", "eventType": f"{label}.tokens", "valueProperty": "$.tokens",
                },
            )
        )  # fmt: skip
        feature = _ok(
            http.post(
                "/v0/features",
                json={"merchantId": client.merchant_id, "productId": product["id"], "key": f"tok-{suffix}", "name": "Tokens",
                      "type": "metered"},
            )
        )  # fmt: skip
        fee = _ok(
            http.post(
                "/v0/fees",
                json={"merchantId": client.merchant_id, "productId": product["id"], "name": "Base", "description": "b"},
            )
        )
        metric_price = _ok(
            http.post(
                "/v0/prices",
                json={
                    "invoiceDisplayName": "Tokens", "paymentTerm": "in_arrears", "model": "standard",
                    "billableMetricId": metric["id"], "properties": {"unitPrice": "0.002"},
                    "feature": {"featureId": feature["id"], "entitlementTemplate": {"isSoftLimit": True}},
                },
            )
        )  # fmt: skip
        fee_price = _ok(
            http.post(
                "/v0/prices",
                json={"invoiceDisplayName": "Base", "paymentTerm": "in_advance", "feeId": fee["id"], "billingCadence": "P1M",
                      "properties": {"unitPrice": "10.00"}},
            )
        )  # fmt: skip
        plan = _ok(
            http.post(
                "/v0/plans",
                json={"merchantId": client.merchant_id, "productId": product["id"], "name": f"{label} plan", "currency": "USD",
                      "prices": [{"priceId": metric_price["id"], "key": "tokens"}, {"priceId": fee_price["id"], "key": "base"}]},
            )
        )  # fmt: skip
        assert metric_price["features"][0]["featureId"] == feature["id"]
        world = World(
            merchant=client.merchant_id, product=product["id"], metric=metric["id"], feature=feature["id"], fee=fee["id"],
            metric_price=metric_price["id"], fee_price=fee_price["id"], plan=plan["id"], version_id=plan["defaultVersionId"],
            snapshot={},
        )  # fmt: skip
        world.snapshot = _snapshot(http, world)
    return world


def _snapshot(http: httpx.Client, world: World) -> dict[str, Any]:
    """Everything readable about the world, keyed by path."""
    out: dict[str, Any] = {}
    for path in _read_paths(world):
        response = http.get(path)
        assert response.status_code == 200, f"{path}: {response.text}"
        out[path] = response.json()
    features = http.get("/v0/features", params={"productId": world.product, "limit": 100})
    assert features.status_code == 200, features.text
    out["features of product"] = features.json()
    return out


def _totals(http: httpx.Client) -> dict[str, int]:
    """How many of each listable resource the key's merchant has."""
    out = {}
    for path in ("/v0/products", "/v0/billableMetrics", "/v0/fees", "/v0/prices", "/v0/plans"):
        response = http.get(path, params={"limit": 1})
        assert response.status_code == 200, response.text
        out[path] = response.json()["pagination"]["total"]
    return out


def _read_paths(world: World) -> list[str]:
    return [
        f"/v0/products/{world.product}",
        f"/v0/billableMetrics/{world.metric}",
        f"/v0/features/{world.feature}",
        f"/v0/fees/{world.fee}",
        f"/v0/prices/{world.metric_price}",
        f"/v0/prices/{world.fee_price}",
        f"/v0/plans/{world.plan}",
        f"/v0/plans/{world.plan}/versions",
        f"/v0/plans/{world.plan}/versions/1",
    ]


@pytest.fixture(scope="module")
def a_world(merchant_a: MerchantClient) -> World:
    return _build(merchant_a, "tenancy-a")


@pytest.fixture(scope="module")
def b_world(merchant_b: MerchantClient) -> World:
    return _build(merchant_b, "tenancy-b")


@pytest.fixture(scope="module")
def b_http(merchant_b: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_b.base_url, headers=merchant_b.headers, timeout=30) as client:
        yield client


def _fill(template: Any, a: World, b: World) -> Any:
    """Replace {a.xxx} / {b.xxx} placeholders inside a JSON-ish template."""
    if isinstance(template, str):
        values = {f"a.{k}": v for k, v in vars(a).items() if isinstance(v, str)}
        values |= {f"b.{k}": v for k, v in vars(b).items() if isinstance(v, str)}
        for name, value in values.items():
            template = template.replace("{" + name + "}", value)
        assert "{a." not in template and "{b." not in template, template  # every placeholder is known
        return template
    if isinstance(template, dict):
        return {k: _fill(v, a, b) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, a, b) for v in template]
    return template


def _assert_not_found(response: httpx.Response, field: str | None = None, code: str | None = None) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error"] == "not_found"
    assert body["message"]
    assert body["code"].endswith("_NOT_FOUND")
    if code is not None:
        assert body["code"] == code
    if field is not None:
        assert body.get("details", {}).get("field") == field, body


# --- direct access to A's resources ------------------------------------------------------

READS = [
    ("product", "/v0/products/{a.product}", "PRODUCT_NOT_FOUND"),
    ("billable metric", "/v0/billableMetrics/{a.metric}", "BILLABLE_METRIC_NOT_FOUND"),
    ("feature", "/v0/features/{a.feature}", "FEATURE_NOT_FOUND"),
    ("fee", "/v0/fees/{a.fee}", "FEE_NOT_FOUND"),
    ("metric price", "/v0/prices/{a.metric_price}", "PRICE_NOT_FOUND"),
    ("fee price", "/v0/prices/{a.fee_price}", "PRICE_NOT_FOUND"),
    ("plan", "/v0/plans/{a.plan}", "PLAN_NOT_FOUND"),
    ("plan versions list", "/v0/plans/{a.plan}/versions", "PLAN_NOT_FOUND"),
    ("plan version 1", "/v0/plans/{a.plan}/versions/1", "PLAN_NOT_FOUND"),
]


@pytest.mark.parametrize(("path", "code"), [r[1:] for r in READS], ids=[r[0] for r in READS])
def test_b_cannot_read_a(path: str, code: str, a_world: World, b_world: World, b_http: httpx.Client, merchant_a: MerchantClient) -> None:
    url = _fill(path, a_world, b_world)
    _assert_not_found(b_http.get(url), code=code)
    assert httpx.get(f"{merchant_a.base_url}{url}", headers=merchant_a.headers).status_code == 200  # the same path works for A


UPDATES = [
    ("product", "/v0/products/{a.product}", {"name": "stolen"}, "PRODUCT_NOT_FOUND"),
    ("billable metric", "/v0/billableMetrics/{a.metric}", {"name": "stolen", "unit": "x"}, "BILLABLE_METRIC_NOT_FOUND"),
    ("feature", "/v0/features/{a.feature}", {"name": "stolen"}, "FEATURE_NOT_FOUND"),
    ("feature key", "/v0/features/{a.feature}", {"key": "stolen"}, "FEATURE_NOT_FOUND"),
    ("fee", "/v0/fees/{a.fee}", {"name": "stolen"}, "FEE_NOT_FOUND"),
    ("metric price", "/v0/prices/{a.metric_price}", {"invoiceDisplayName": "stolen"}, "PRICE_NOT_FOUND"),
    ("metric price properties", "/v0/prices/{a.metric_price}", {"properties": {"unitPrice": "0"}}, "PRICE_NOT_FOUND"),
    ("metric price onto B's metric", "/v0/prices/{a.metric_price}", {"billableMetricId": "{b.metric}"}, "PRICE_NOT_FOUND"),
    ("fee price", "/v0/prices/{a.fee_price}", {"properties": {"unitPrice": "0.01"}}, "PRICE_NOT_FOUND"),
    ("plan", "/v0/plans/{a.plan}", {"name": "stolen"}, "PLAN_NOT_FOUND"),
    ("plan prices", "/v0/plans/{a.plan}", {"prices": ["{b.fee_price}"]}, "PLAN_NOT_FOUND"),
    ("plan version transition", "/v0/plans/{a.plan}/versions/1", {"default": True}, "PLAN_NOT_FOUND"),
    ("plan version archive", "/v0/plans/{a.plan}/versions/1", {"status": "archived"}, "PLAN_NOT_FOUND"),
]


@pytest.mark.parametrize(("path", "body", "code"), [u[1:] for u in UPDATES], ids=[u[0] for u in UPDATES])
def test_b_cannot_update_a(
    path: str, body: dict[str, Any], code: str, a_world: World, b_world: World, b_http: httpx.Client, merchant_a: MerchantClient
) -> None:
    response = b_http.patch(_fill(path, a_world, b_world), json=_fill(body, a_world, b_world))
    _assert_not_found(response, code=code)


DELETES = [
    ("feature", "/v0/features/{a.feature}", "FEATURE_NOT_FOUND"),
    ("fee", "/v0/fees/{a.fee}", "FEE_NOT_FOUND"),
    ("metric price", "/v0/prices/{a.metric_price}", "PRICE_NOT_FOUND"),
    ("fee price", "/v0/prices/{a.fee_price}", "PRICE_NOT_FOUND"),
]


@pytest.mark.parametrize(("path", "code"), [d[1:] for d in DELETES], ids=[d[0] for d in DELETES])
def test_b_cannot_delete_a(path: str, code: str, a_world: World, b_world: World, b_http: httpx.Client, merchant_a: MerchantClient) -> None:
    _assert_not_found(b_http.delete(_fill(path, a_world, b_world)), code=code)


@pytest.mark.parametrize(
    "prices",
    [["{b.fee_price}"], ["{a.fee_price}"], [{"priceId": "{a.metric_price}", "key": "tokens"}]],
    ids=["with B's price", "with A's price", "with A's price as line"],
)
def test_b_cannot_mint_a_version(
    prices: list[Any], a_world: World, b_world: World, b_http: httpx.Client, merchant_a: MerchantClient
) -> None:
    path = f"/v0/plans/{a_world.plan}/versions"
    _assert_not_found(b_http.post(path, json={"prices": _fill(prices, a_world, b_world)}), code="PLAN_NOT_FOUND")


# --- A's ids as references in B's own writes -------------------------------------------

REFERENCES = [
    # (case, method, path, body, field, code)
    ("metric in A's product", "POST", "/v0/billableMetrics",
     {"productId": "{a.product}", "name": "m", "description": "d", "unit": "u", "aggregation": "COUNT", "eventType": "b.steal"},
     "productId", "PRODUCT_NOT_FOUND"),
    ("feature in A's product", "POST", "/v0/features", {"productId": "{a.product}", "key": "steal", "name": "s"},
     "productId", "PRODUCT_NOT_FOUND"),
    ("fee in A's product", "POST", "/v0/fees", {"productId": "{a.product}", "name": "s", "description": "d"},
     "productId", "PRODUCT_NOT_FOUND"),
    ("price on A's metric", "POST", "/v0/prices",
     {"invoiceDisplayName": "s", "paymentTerm": "in_arrears", "model": "standard", "billableMetricId": "{a.metric}",
      "properties": {"unitPrice": "1"}},
     "billableMetricId", "BILLABLE_METRIC_NOT_FOUND"),
    ("price on A's fee", "POST", "/v0/prices",
     {"invoiceDisplayName": "s", "paymentTerm": "in_advance", "feeId": "{a.fee}", "billingCadence": "P1M",
      "properties": {"unitPrice": "1"}},
     "feeId", "FEE_NOT_FOUND"),
    ("price with A's feature", "POST", "/v0/prices",
     {"invoiceDisplayName": "s", "paymentTerm": "in_arrears", "model": "standard", "billableMetricId": "{b.metric}",
      "properties": {"unitPrice": "1"}, "feature": {"featureId": "{a.feature}"}},
     "feature.featureId", "FEATURE_NOT_FOUND"),
    ("plan in A's product", "POST", "/v0/plans", {"productId": "{a.product}", "name": "s", "currency": "USD"},
     "productId", "PRODUCT_NOT_FOUND"),
    ("plan with A's price ids", "POST", "/v0/plans",
     {"productId": "{b.product}", "name": "s", "currency": "USD", "prices": ["{a.metric_price}", "{a.fee_price}"]},
     "prices[0]", "PRICE_NOT_FOUND"),
    ("plan with B's then A's price", "POST", "/v0/plans",
     {"productId": "{b.product}", "name": "s", "currency": "USD",
      "prices": ["{b.fee_price}", {"priceId": "{a.fee_price}", "key": "x"}]},
     "prices[1]", "PRICE_NOT_FOUND"),
    ("B's price moved onto A's metric", "PATCH", "/v0/prices/{b.metric_price}", {"billableMetricId": "{a.metric}"},
     "billableMetricId", "BILLABLE_METRIC_NOT_FOUND"),
    ("B's price given A's feature", "PATCH", "/v0/prices/{b.metric_price}", {"feature": {"featureId": "{a.feature}"}},
     "feature.featureId", "FEATURE_NOT_FOUND"),
    ("B's plan given A's prices", "PATCH", "/v0/plans/{b.plan}", {"prices": ["{a.fee_price}"]},
     "prices[0]", "PRICE_NOT_FOUND"),
    ("B's plan version minted with A's price", "POST", "/v0/plans/{b.plan}/versions",
     {"prices": [{"priceId": "{b.metric_price}", "key": "tokens"}, {"priceId": "{a.fee_price}", "key": "base"}]},
     "prices[1]", "PRICE_NOT_FOUND"),
    ("features of A's product", "GET", "/v0/features?productId={a.product}", None, "productId", "PRODUCT_NOT_FOUND"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "field", "code"), [r[1:] for r in REFERENCES], ids=[r[0] for r in REFERENCES])
def test_b_cannot_reference_a(
    method: str,
    path: str,
    body: dict[str, Any] | None,
    field: str,
    code: str,
    a_world: World,
    b_world: World,
    b_http: httpx.Client,
    merchant_a: MerchantClient,
) -> None:
    before = _snapshot(b_http, b_world), _totals(b_http)
    payload = None if body is None else _fill(body, a_world, b_world)
    response = b_http.request(method, _fill(path, a_world, b_world), json=payload)
    _assert_not_found(response, field=field, code=code)
    assert (_snapshot(b_http, b_world), _totals(b_http)) == before  # B's own resources did not change, nothing was added


# --- naming merchant A ----------------------------------------------------------------

MERCHANT_A_LISTS = ["/v0/products", "/v0/billableMetrics", "/v0/fees", "/v0/prices", "/v0/plans"]


@pytest.mark.parametrize("path", MERCHANT_A_LISTS)
def test_b_cannot_list_with_merchant_a(path: str, b_http: httpx.Client, merchant_a: MerchantClient) -> None:
    response = b_http.get(path, params={"merchantId": merchant_a.merchant_id})
    _assert_not_found(response, field="merchantId", code="MERCHANT_NOT_FOUND")


MERCHANT_A_CREATES = [
    ("product", "/v0/products", {"name": "s", "description": "d"}),
    ("billable metric", "/v0/billableMetrics",
     {"productId": "{b.product}", "name": "m", "description": "d", "unit": "u", "aggregation": "COUNT", "eventType": "b.x"}),
    ("feature", "/v0/features", {"productId": "{b.product}", "key": "as-a", "name": "s"}),
    ("fee", "/v0/fees", {"productId": "{b.product}", "name": "s", "description": "d"}),
    ("plan", "/v0/plans", {"productId": "{b.product}", "name": "s", "currency": "USD"}),
    ("price", "/v0/prices",
     {"invoiceDisplayName": "s", "paymentTerm": "in_arrears", "model": "standard", "billableMetricId": "{b.metric}",
      "properties": {"unitPrice": "1"}}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body"), [c[1:] for c in MERCHANT_A_CREATES], ids=[c[0] for c in MERCHANT_A_CREATES])
def test_b_cannot_create_as_merchant_a(
    path: str, body: dict[str, Any], a_world: World, b_world: World, b_http: httpx.Client, merchant_a: MerchantClient
) -> None:
    payload = _fill(body, a_world, b_world) | {"merchantId": merchant_a.merchant_id}
    before = _snapshot(b_http, b_world), _totals(b_http)
    _assert_not_found(b_http.post(path, json=payload), field="merchantId", code="MERCHANT_NOT_FOUND")
    assert (_snapshot(b_http, b_world), _totals(b_http)) == before


# --- B's own lists ----------------------------------------------------------------------

B_LISTS = [
    ("products", "/v0/products", {}),
    ("products by merchant", "/v0/products", {"merchantId": "{b.merchant}"}),
    ("billable metrics", "/v0/billableMetrics", {}),
    ("billable metrics of A's product", "/v0/billableMetrics", {"productId": "{a.product}"}),
    ("fees", "/v0/fees", {}),
    ("fees of A's product", "/v0/fees", {"productId": "{a.product}"}),
    ("prices", "/v0/prices", {}),
    ("prices of A's metric", "/v0/prices", {"billableMetricId": "{a.metric}"}),
    ("plans", "/v0/plans", {}),
    ("plans of A's product", "/v0/plans", {"productId": "{a.product}"}),
    ("features of B's product", "/v0/features", {"productId": "{b.product}"}),
]


@pytest.mark.parametrize(("path", "params"), [c[1:] for c in B_LISTS], ids=[c[0] for c in B_LISTS])
def test_b_lists_never_contain_a(
    path: str,
    params: dict[str, str],
    a_world: World,
    b_world: World,
    b_http: httpx.Client,
    merchant_a: MerchantClient,
    merchant_b: MerchantClient,
) -> None:
    query = {k: _fill(v, a_world, b_world) for k, v in params.items()}
    response = b_http.get(path, params={**query, "limit": 100})
    assert response.status_code == 200, response.text
    body = response.json()
    ids = [item["id"] for item in body["data"]]
    a_ids = {v for k, v in vars(a_world).items() if isinstance(v, str) and k != "merchant"}
    assert not a_ids & set(ids)
    assert all(item["merchantId"] == merchant_b.merchant_id for item in body["data"] if "merchantId" in item)
    if any("{a." in v for v in params.values()):
        # filtering by one of A's resources finds nothing for B
        assert ids == []
        assert body["pagination"]["total"] == 0
    else:
        assert body["pagination"]["total"] >= 1  # B's own resources are there
        assert set(ids) & {v for k, v in vars(b_world).items() if isinstance(v, str) and k != "merchant"}


def test_a_still_sees_its_world_and_not_b(a_world: World, b_world: World, merchant_a: MerchantClient) -> None:
    """The other direction, once: A reads B's product as 404 and its own as 200."""
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as http:
        _assert_not_found(http.get(f"/v0/products/{b_world.product}"), code="PRODUCT_NOT_FOUND")
        _assert_not_found(http.get(f"/v0/plans/{b_world.plan}/versions/1"), code="PLAN_NOT_FOUND")
        assert http.get(f"/v0/products/{a_world.product}").status_code == 200


# --- last: nothing of A's changed -------------------------------------------------------


def test_zz_a_resources_unchanged(a_world: World, merchant_a: MerchantClient) -> None:
    """Runs last in this module: after every attempt above, A's world reads back identical."""
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as http:
        after = _snapshot(http, a_world)
    assert after.keys() == a_world.snapshot.keys()
    for key, before in a_world.snapshot.items():
        assert after[key] == before, key
    versions = after[f"/v0/plans/{a_world.plan}/versions"]
    assert [v["versionNumber"] for v in versions["data"]] == [1]
    plan = after[f"/v0/plans/{a_world.plan}"]
    assert plan["defaultVersionId"] == a_world.version_id
    assert sorted(p["id"] for p in plan["prices"]) == sorted([a_world.metric_price, a_world.fee_price])
