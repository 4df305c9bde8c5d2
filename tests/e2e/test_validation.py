"""Validation through the gateway: every bad request is a 400 naming the reason and the field,
and nothing is written.

The error body is Paygentic's ErrorData: {message, error, code, details}; for a 400 about a
field, details.field names it in the REST spelling (properties.tiers[1].upTo). Each case
counts the affected list before and after, so a write that slipped through is caught.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors, models

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e

_DROP = object()  # an override that removes the key from the base body


@dataclass
class Ctx:
    product: str
    other_product: str
    metric: str
    fee: str
    feature: str
    feature_key: str
    fee_price: str
    other_product_price: str
    plan: str


@pytest.fixture(scope="module")
def http(merchant_a: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as client:
        yield client


def _created(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def ctx(http: httpx.Client, merchant_a: MerchantClient) -> Ctx:
    m = merchant_a.merchant_id
    product = _created(http.post("/v0/products", json={"merchantId": m, "name": "Validation", "description": "v"}))
    other = _created(http.post("/v0/products", json={"merchantId": m, "name": "Validation other", "description": "v"}))
    metric = _created(
        http.post(
            "/v0/billableMetrics",
            json={"merchantId": m, "productId": product, "name": "Calls", "description": "c", "unit": "calls",
                  "aggregation": "COUNT", "eventType": "validation.call"},
        )
    )  # fmt: skip
    fee = _created(http.post("/v0/fees", json={"merchantId": m, "productId": product, "name": "Base", "description": "b"}))
    other_fee = _created(http.post("/v0/fees", json={"merchantId": m, "productId": other, "name": "Other", "description": "o"}))
    key = f"calls-{uuid.uuid4().hex[:8]}"
    feature = _created(
        http.post("/v0/features", json={"merchantId": m, "productId": product, "key": key, "name": "Calls", "type": "metered"})
    )

    def fee_price(fee_id: str) -> str:
        body = {"invoiceDisplayName": "Base", "paymentTerm": "in_advance", "feeId": fee_id, "billingCadence": "P1M",
                "properties": {"unitPrice": "10.00"}}  # fmt: skip
        return _created(http.post("/v0/prices", json=body))

    price = fee_price(fee)
    plan = _created(http.post("/v0/plans", json={"merchantId": m, "productId": product, "name": "V", "currency": "USD", "prices": [price]}))
    return Ctx(product, other, metric, fee, feature, key, price, fee_price(other_fee), plan)


def _fill(value: Any, ctx: Ctx) -> Any:
    if isinstance(value, str):
        for name, ident in vars(ctx).items():
            value = value.replace("{" + name + "}", ident)
        assert "{" not in value, value
        return value
    if isinstance(value, dict):
        return {k: _fill(v, ctx) for k, v in value.items() if v is not _DROP}
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    return value


def _total(http: httpx.Client, path: str, **params: Any) -> int:
    response = http.get(path, params={"limit": 1, **params})
    assert response.status_code == 200, response.text
    return int(response.json()["pagination"]["total"])


def _assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["message"], str) and body["message"], body
    assert body["code"] == code, body
    assert body["error"] == {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}[status]
    if field is not None:
        assert body["details"]["field"] == field, body
    return body


# --- prices ---------------------------------------------------------------------------------


def metered(**overrides: Any) -> dict[str, Any]:
    body = {
        "invoiceDisplayName": "Calls",
        "paymentTerm": "in_arrears",
        "model": "standard",
        "billableMetricId": "{metric}",
        "properties": {"unitPrice": "0.01"},
    }
    return body | overrides


def volume(*tiers: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return metered(model="volume", properties={"tiers": list(tiers)}, **overrides)


def fee_priced(**overrides: Any) -> dict[str, Any]:
    body = {
        "invoiceDisplayName": "Base",
        "paymentTerm": "in_advance",
        "feeId": "{fee}",
        "billingCadence": "P1M",
        "properties": {"unitPrice": "10.00"},
    }
    return body | overrides


def tier(up_to: str | None, unit_price: Any = "1") -> dict[str, Any]:
    return {"upTo": up_to, "unitPrice": unit_price}


BAD_PRICES = [
    # (case, body, code, field)
    ("unsorted volume ladder", volume(tier("100"), tier("50"), tier(None)), "TIERS_NOT_ASCENDING", "properties.tiers[1].upTo"),
    ("equal bounds", volume(tier("100"), tier("100"), tier(None)), "TIERS_NOT_ASCENDING", "properties.tiers[1].upTo"),
    ("two open-ended bands", volume(tier("100"), tier(None), tier(None)), "MULTIPLE_OPEN_ENDED_TIERS", "properties.tiers[2].upTo"),
    ("open-ended band not last", volume(tier(None), tier("100")), "OPEN_ENDED_TIER_NOT_LAST", "properties.tiers[0].upTo"),
    ("missing open-ended band", volume(tier("100"), tier("200")), "MISSING_OPEN_ENDED_TIER", "properties.tiers[1].upTo"),
    ("zero bound", volume(tier("0"), tier(None)), "TIER_BOUND_NOT_POSITIVE", "properties.tiers[0].upTo"),
    ("negative tier price", volume(tier("100", "-1"), tier(None)), "MUST_NOT_BE_NEGATIVE", "properties.tiers[0].unitPrice"),
    ("tier price with 7 decimals", volume(tier("100"), tier(None, "0.0000001")), "TOO_MANY_DECIMAL_PLACES",
     "properties.tiers[1].unitPrice"),
    ("tier bound with 7 decimals", volume(tier("1.0000001"), tier(None)), "TOO_MANY_DECIMAL_PLACES", "properties.tiers[0].upTo"),
    ("tier price as JSON number", volume(tier("100", 5), tier(None)), "INVALID_DECIMAL", "properties.tiers[0].unitPrice"),
    ("tier without upTo", volume({"unitPrice": "1"}), "REQUIRED", "properties.tiers[0].upTo"),
    ("unknown tier field", volume(tier("100") | {"price": "1"}, tier(None)), "UNKNOWN_PROPERTY", "properties.tiers[0].price"),
    ("volume without tiers", metered(model="volume", properties={}), "REQUIRED", "properties.tiers"),
    ("empty tiers", volume(), "REQUIRED", "properties.tiers"),
    ("unitPrice as JSON number", metered(properties={"unitPrice": 0.5}), "INVALID_DECIMAL", "properties.unitPrice"),
    ("unitPrice as whole JSON number", metered(properties={"unitPrice": 2}), "INVALID_DECIMAL", "properties.unitPrice"),
    ("unitPrice with exponent", metered(properties={"unitPrice": "1e3"}), "INVALID_DECIMAL", "properties.unitPrice"),
    ("unitPrice finer than 1e-9", metered(properties={"unitPrice": "0.0000000001"}), "TOO_MANY_DECIMAL_PLACES",
     "properties.unitPrice"),
    ("missing unitPrice", metered(properties={}), "REQUIRED", "properties.unitPrice"),
    ("unknown properties key", metered(properties={"unitPrice": "1", "flatFee": "2"}), "UNKNOWN_PROPERTY", "properties.flatFee"),
    ("metric price without model", metered(model=_DROP), "REQUIRED", "model"),
    ("unknown model", metered(model="tiered"), "INVALID_ENUM_VALUE", "model"),
    ("neither metric nor fee", metered(billableMetricId=_DROP), "METRIC_XOR_FEE", "billableMetricId"),
    ("both metric and fee", metered(feeId="{fee}"), "METRIC_XOR_FEE", "billableMetricId"),
    ("fee price without billingCadence", fee_priced(billingCadence=_DROP), "REQUIRED", "billingCadence"),
    ("fee price with model volume", fee_priced(model="volume", properties={"tiers": [tier(None)]}), "FEE_MODEL_NOT_STANDARD", "model"),
    ("metered price in_advance", metered(paymentTerm="in_advance"), "METERED_IN_ADVANCE", "paymentTerm"),
    ("unknown paymentTerm", metered(paymentTerm="monthly"), "INVALID_ENUM_VALUE", "paymentTerm"),
    ("isObligation on a metered price", metered(isObligation=True), "NOT_ALLOWED", "isObligation"),
    ("negative unitPrice on a fee price", fee_priced(properties={"unitPrice": "-5.00"}), "MUST_NOT_BE_NEGATIVE", "properties.unitPrice"),
    ("invalid billingCadence", fee_priced(billingCadence="1 month"), "INVALID_DURATION", "billingCadence"),
    ("billingCadence without amount", fee_priced(billingCadence="P"), "INVALID_DURATION", "billingCadence"),
    ("billingCadence with hours", fee_priced(billingCadence="PT1H"), "INVALID_DURATION", "billingCadence"),
    ("blank invoiceDisplayName", metered(invoiceDisplayName="  "), "REQUIRED", "invoiceDisplayName"),
    ("quantity on a metered price", metered(quantity=2), "NOT_ALLOWED", "quantity"),
    ("fee quantity 0", fee_priced(quantity=0), "OUT_OF_RANGE", "quantity"),
    ("grantDiscountEnabled on a fee", fee_priced(grantDiscountEnabled=True), "NOT_ALLOWED", "grantDiscountEnabled"),
    ("pricingUnitId", metered(pricingUnitId="pu_1"), "NOT_SUPPORTED", "pricingUnitId"),
    ("unknown rateType", metered(rateType="percent"), "INVALID_ENUM_VALUE", "rateType"),
    ("OUTSIDE_SCOPE without label", metered(tax={"supplyScope": "OUTSIDE_SCOPE"}), "REQUIRED", "tax.outsideScopeLabel"),
    ("CASHBACK with a positive price", metered(tax={"supplyScope": "OUTSIDE_SCOPE", "outsideScopeLabel": "CASHBACK"}), "NOT_ALLOWED",
     "tax.outsideScopeLabel"),
    ("unknown entitlement template key", metered(feature={"featureId": "feat_x", "entitlementTemplate": {"limit": 5}}),
     "UNKNOWN_PROPERTY", "feature.entitlementTemplate.limit"),
    ("rebate with a hard-limit feature",
     metered(properties={"unitPrice": "-0.01"}, feature={"featureId": "{feature}", "entitlementTemplate": {"isSoftLimit": False}}),
     "NOT_ALLOWED", "feature.entitlementTemplate.isSoftLimit"),
    ("rebate with grantDiscountEnabled", metered(properties={"unitPrice": "-0.01"}, grantDiscountEnabled=True), "NOT_ALLOWED",
     "grantDiscountEnabled"),
    ("feature without featureId", metered(feature={"entitlementTemplate": {"isSoftLimit": True}}), "REQUIRED", "feature.featureId"),
    ("template of another type than its feature", metered(feature={"featureId": "{feature}", "entitlementTemplate": {"type": "boolean"}}),
     "FEATURE_TYPE_MISMATCH", "feature.entitlementTemplate.type"),
    ("unknown field in body", metered(unitPrice="1"), "UNKNOWN_FIELD", "unitPrice"),
    ("quantity as text", fee_priced(quantity="two"), "INVALID_FIELD", "quantity"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "code", "field"), [c[1:] for c in BAD_PRICES], ids=[c[0] for c in BAD_PRICES])
def test_bad_price_is_400_naming_field(
    body: dict[str, Any], code: str, field: str, ctx: Ctx, http: httpx.Client, merchant_a: MerchantClient
) -> None:
    before = (_total(http, "/v0/prices"), _total(http, "/v0/prices", billableMetricId=ctx.metric))
    _assert_error(http.post("/v0/prices", json=_fill(body, ctx)), 400, code, field)
    assert (_total(http, "/v0/prices"), _total(http, "/v0/prices", billableMetricId=ctx.metric)) == before


def test_valid_bases_of_the_price_table_are_accepted(ctx: Ctx, http: httpx.Client) -> None:
    """The table's base bodies are valid, so each case fails only for the one thing it changes."""
    created = []
    for body in (metered(), fee_priced(), volume(tier("100"), tier(None, "0.000001"))):
        response = http.post("/v0/prices", json=_fill(body, ctx))
        assert response.status_code == 201, response.text
        created.append(response.json()["id"])
    for price_id in created:
        assert http.delete(f"/v0/prices/{price_id}").status_code == 204


def test_rebates_are_allowed_on_metered_prices_only_without_a_hard_limit(ctx: Ctx, http: httpx.Client) -> None:
    """A negative metered unitPrice is a usage rebate; a soft-limit feature may ride along."""
    plain = http.post("/v0/prices", json=_fill(metered(properties={"unitPrice": "-0.01"}), ctx))
    assert plain.status_code == 201, plain.text
    assert plain.json()["properties"]["unitPrice"] == "-0.01"
    soft = metered(properties={"unitPrice": "-0.01"}, feature={"featureId": ctx.feature, "entitlementTemplate": {"isSoftLimit": True}})
    created = http.post("/v0/prices", json=_fill(soft, ctx))
    assert created.status_code == 201, created.text
    # turning the attached feature into a hard limit afterwards is refused the same way
    hard = {"featureId": ctx.feature, "entitlementTemplate": {"isSoftLimit": False}}
    before = http.get(f"/v0/prices/{created.json()['id']}").json()
    response = http.patch(f"/v0/prices/{created.json()['id']}", json={"feature": hard})
    _assert_error(response, 400, "NOT_ALLOWED", "feature.entitlementTemplate.isSoftLimit")
    assert http.get(f"/v0/prices/{created.json()['id']}").json() == before
    for price in (plain, created):
        assert http.delete(f"/v0/prices/{price.json()['id']}").status_code == 204


def test_price_cannot_move_to_a_metric_of_another_product(ctx: Ctx, http: httpx.Client) -> None:
    """A plan checks its prices' product when it lists them; a price must not leave that product later."""
    price = http.post("/v0/prices", json=_fill(metered(), ctx))
    assert price.status_code == 201, price.text
    plan = http.post("/v0/plans", json={"productId": ctx.product, "name": "Moves", "currency": "USD", "prices": [price.json()["id"]]})
    assert plan.status_code == 201, plan.text
    elsewhere = _created(
        http.post(
            "/v0/billableMetrics",
            json={"productId": ctx.other_product, "name": "Elsewhere", "description": "e", "unit": "u", "aggregation": "COUNT",
                  "eventType": "validation.elsewhere"},
        )
    )  # fmt: skip
    before = http.get(f"/v0/prices/{price.json()['id']}").json()
    moved = http.patch(f"/v0/prices/{price.json()['id']}", json={"billableMetricId": elsewhere})
    _assert_error(moved, 400, "METRIC_PRODUCT_MISMATCH", "billableMetricId")
    assert http.get(f"/v0/prices/{price.json()['id']}").json() == before
    assert http.get(f"/v0/plans/{plan.json()['id']}").json()["prices"][0]["billableMetricId"] == ctx.metric
    # another metric of the same product is fine
    sibling = _created(
        http.post(
            "/v0/billableMetrics",
            json={"productId": ctx.product, "name": "Sibling", "description": "s", "unit": "u", "aggregation": "COUNT",
                  "eventType": "validation.sibling"},
        )
    )  # fmt: skip
    repointed = http.patch(f"/v0/prices/{price.json()['id']}", json={"billableMetricId": sibling})
    assert repointed.status_code == 200, repointed.text
    assert repointed.json()["billableMetricId"] == sibling


def test_bad_price_update_is_400_and_changes_nothing(ctx: Ctx, http: httpx.Client) -> None:
    before = http.get(f"/v0/prices/{ctx.fee_price}").json()
    cases = [
        ({"properties": {"unitPrice": "-1"}}, "MUST_NOT_BE_NEGATIVE", "properties.unitPrice"),
        ({"model": "volume"}, "FEE_MODEL_NOT_STANDARD", "model"),
        ({"billingCadence": "monthly"}, "INVALID_DURATION", "billingCadence"),
        ({"billableMetricId": ctx.metric}, "NOT_ALLOWED", "billableMetricId"),
        ({"properties": {"unitPrice": "1", "tiers": []}}, "UNKNOWN_PROPERTY", "properties.tiers"),
        ({"quantity": 0}, "OUT_OF_RANGE", "quantity"),
    ]
    for body, code, field in cases:
        _assert_error(http.patch(f"/v0/prices/{ctx.fee_price}", json=body), 400, code, field)
    assert http.get(f"/v0/prices/{ctx.fee_price}").json() == before


# --- billable metrics ----------------------------------------------------------------------


def _metric_body(**overrides: Any) -> dict[str, Any]:
    body = {"productId": "{product}", "name": "Tokens", "description": "t", "unit": "tokens", "aggregation": "SUM",
            "eventType": "validation.tokens", "valueProperty": "$.tokens"}  # fmt: skip
    return body | overrides


BAD_METRICS = [
    ("SUM without valueProperty", _metric_body(valueProperty=_DROP), "REQUIRED", "valueProperty"),
    ("MAX with empty valueProperty", _metric_body(aggregation="MAX", valueProperty=""), "REQUIRED", "valueProperty"),
    ("valueProperty without $.", _metric_body(valueProperty="tokens"), "INVALID_JSONPATH", "valueProperty"),
    ("valueProperty $ only", _metric_body(valueProperty="$"), "INVALID_JSONPATH", "valueProperty"),
    ("unknown aggregation", _metric_body(aggregation="MEDIAN"), "INVALID_ENUM_VALUE", "aggregation"),
    ("lowercase aggregation", _metric_body(aggregation="sum"), "INVALID_ENUM_VALUE", "aggregation"),
    ("groupBy path without $.", _metric_body(groupBy={"region": "region"}), "INVALID_JSONPATH", "groupBy.region"),
    ("missing productId", _metric_body(productId=_DROP), "REQUIRED", "productId"),
    ("blank name", _metric_body(name=""), "REQUIRED", "name"),
    ("blank eventType", _metric_body(eventType=" "), "REQUIRED", "eventType"),
    ("name too long", _metric_body(name="x" * 256), "TOO_LONG", "name"),
]


@pytest.mark.parametrize(("body", "code", "field"), [c[1:] for c in BAD_METRICS], ids=[c[0] for c in BAD_METRICS])
def test_bad_billable_metric_is_400(body: dict[str, Any], code: str, field: str, ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/billableMetrics")
    _assert_error(http.post("/v0/billableMetrics", json=_fill(body, ctx)), 400, code, field)
    assert _total(http, "/v0/billableMetrics") == before


def test_metric_value_property_cannot_be_cleared_for_sum(ctx: Ctx, http: httpx.Client) -> None:
    metric = http.post("/v0/billableMetrics", json=_fill(_metric_body(eventType="validation.clear"), ctx))
    assert metric.status_code == 201, metric.text
    _assert_error(http.patch(f"/v0/billableMetrics/{metric.json()['id']}", json={"valueProperty": None}), 400, "REQUIRED", "valueProperty")
    assert http.get(f"/v0/billableMetrics/{metric.json()['id']}").json() == metric.json()


# --- features ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("Tokens", "INVALID_KEY"),
        ("api_calls", "INVALID_KEY"),
        ("-calls", "INVALID_KEY"),
        ("", "REQUIRED"),  # a missing required field is REQUIRED everywhere (declared in the proto)
        ("x" * 65, "INVALID_KEY"),
    ],
    ids=["uppercase", "underscore", "leading hyphen", "empty", "65 chars"],
)
def test_bad_feature_key_is_400(key: str, code: str, ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/features", productId=ctx.product)
    _assert_error(http.post("/v0/features", json={"productId": ctx.product, "key": key, "name": "n"}), 400, code, "key")
    assert _total(http, "/v0/features", productId=ctx.product) == before


def test_unknown_feature_type_is_400(ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/features", productId=ctx.product)
    body = {"productId": ctx.product, "key": "typed", "name": "n", "type": "counter"}
    _assert_error(http.post("/v0/features", json=body), 400, "INVALID_ENUM_VALUE", "type")
    assert _total(http, "/v0/features", productId=ctx.product) == before


def test_duplicate_feature_key_is_409(ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/features", productId=ctx.product)
    body = {"productId": ctx.product, "key": ctx.feature_key, "name": "Again"}
    _assert_error(http.post("/v0/features", json=body), 409, "DUPLICATE_RESOURCE", "key")
    assert _total(http, "/v0/features", productId=ctx.product) == before
    # the same key in another product is fine
    other = http.post("/v0/features", json=body | {"productId": ctx.other_product})
    assert other.status_code == 201, other.text


def test_renaming_feature_key_onto_a_taken_one_is_409(ctx: Ctx, http: httpx.Client) -> None:
    second = http.post("/v0/features", json={"productId": ctx.product, "key": f"second-{uuid.uuid4().hex[:6]}", "name": "2"})
    assert second.status_code == 201, second.text
    _assert_error(http.patch(f"/v0/features/{second.json()['id']}", json={"key": ctx.feature_key}), 409, "DUPLICATE_RESOURCE", "key")
    assert http.get(f"/v0/features/{second.json()['id']}").json() == second.json()


# --- plans -------------------------------------------------------------------------------


def _plan_body(**overrides: Any) -> dict[str, Any]:
    return {"productId": "{product}", "name": "Plan", "currency": "USD"} | overrides


BAD_PLANS = [
    ("unknown currency", _plan_body(currency="XYZ"), 400, "UNKNOWN_CURRENCY", "currency"),
    ("lowercase currency", _plan_body(currency="usd"), 400, "UNKNOWN_CURRENCY", "currency"),
    ("billingVersion 0", _plan_body(billingVersion=0), 400, "NOT_SUPPORTED", "billingVersion"),
    ("unknown price id", _plan_body(prices=["price_doesnotexist"]), 404, "PRICE_NOT_FOUND", "prices[0]"),
    ("price of another product", _plan_body(prices=["{fee_price}", "{other_product_price}"]), 400, "PRICE_PRODUCT_MISMATCH",
     "prices[1]"),
    ("duplicate line key", _plan_body(prices=[{"priceId": "{fee_price}", "key": "base"}, {"priceId": "{other_product_price}", "key": "base"}]),
     400, "DUPLICATE_KEY", "prices[1].key"),
    ("same price twice", _plan_body(prices=["{fee_price}", {"priceId": "{fee_price}", "key": "again"}]), 400, "DUPLICATE_PRICE",
     "prices[1]"),
    ("uppercase line key", _plan_body(prices=[{"priceId": "{fee_price}", "key": "Base"}]), 400, "INVALID_KEY", "prices[0].key"),
    ("unknown line field", _plan_body(prices=[{"priceId": "{fee_price}", "qty": 1}]), 400, "UNKNOWN_PROPERTY", "prices[0].qty"),
    ("line without priceId", _plan_body(prices=[{"key": "base"}]), 400, "REQUIRED", "prices[0].priceId"),
    ("line as number", _plan_body(prices=[5]), 400, "INVALID_TYPE", "prices[0]"),
    ("unknown billingCadence", _plan_body(billingCadence="P2M"), 400, "INVALID_ENUM_VALUE", "billingCadence"),
    ("unknown billingInterval", _plan_body(billingInterval="weekly"), 400, "INVALID_ENUM_VALUE", "billingInterval"),
    ("renewalReminderDays 31", _plan_body(renewalReminderDays=31), 400, "OUT_OF_RANGE", "renewalReminderDays"),
    ("defaultTaxRate 101", _plan_body(defaultTaxRate=101), 400, "OUT_OF_RANGE", "defaultTaxRate"),
    ("unknown taxBehavior", _plan_body(taxBehavior="included"), 400, "INVALID_ENUM_VALUE", "taxBehavior"),
    ("proration daily", _plan_body(versionTransition={"effectiveDate": "immediate", "proration": "daily"}), 400,
     "INVALID_ENUM_VALUE", "versionTransition.proration"),
    ("billingAnchor in the future", _plan_body(billingAnchor="2999-01-01T00:00:00Z"), 400, "OUT_OF_RANGE", "billingAnchor"),
    ("creditAllocations", _plan_body(creditAllocations=[{"pricingUnitId": "pu_1", "amount": 5}]), 400, "NOT_SUPPORTED",
     "creditAllocations"),
    ("missing productId", _plan_body(productId=_DROP), 400, "REQUIRED", "productId"),
    ("unknown productId", _plan_body(productId="prod_doesnotexist"), 404, "PRODUCT_NOT_FOUND", "productId"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code", "field"), [c[1:] for c in BAD_PLANS], ids=[c[0] for c in BAD_PLANS])
def test_bad_plan_is_rejected(body: dict[str, Any], status: int, code: str, field: str, ctx: Ctx, http: httpx.Client) -> None:
    before = _total(http, "/v0/plans")
    _assert_error(http.post("/v0/plans", json=_fill(body, ctx)), status, code, field)
    assert _total(http, "/v0/plans") == before


MINTS = [
    ("empty prices", {"prices": []}, 400, "REQUIRED", "prices"),
    ("no prices key", {}, 400, "REQUIRED", "prices"),
    ("unknown price", {"prices": ["price_doesnotexist"]}, 404, "PRICE_NOT_FOUND", "prices[0]"),
    ("price of another product", {"prices": ["{other_product_price}"]}, 400, "PRICE_PRODUCT_MISMATCH", "prices[0]"),
    ("duplicate key", {"prices": [{"priceId": "{fee_price}", "key": "a"}, {"priceId": "{other_product_price}", "key": "a"}]}, 400,
     "DUPLICATE_KEY", "prices[1].key"),
    ("stale basedOnVersionId", {"prices": ["{fee_price}"], "basedOnVersionId": "pv_stale"}, 409, "PLAN_VERSION_CONFLICT",
     "basedOnVersionId"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code", "field"), [c[1:] for c in MINTS], ids=[c[0] for c in MINTS])
def test_bad_mint_is_rejected(body: dict[str, Any], status: int, code: str, field: str, ctx: Ctx, http: httpx.Client) -> None:
    plan_before = http.get(f"/v0/plans/{ctx.plan}").json()
    versions_before = _total(http, f"/v0/plans/{ctx.plan}/versions")
    _assert_error(http.post(f"/v0/plans/{ctx.plan}/versions", json=_fill(body, ctx)), status, code, field)
    assert _total(http, f"/v0/plans/{ctx.plan}/versions") == versions_before == 1
    assert http.get(f"/v0/plans/{ctx.plan}").json() == plan_before


def test_plan_update_with_empty_prices_is_400(ctx: Ctx, http: httpx.Client) -> None:
    plan_before = http.get(f"/v0/plans/{ctx.plan}").json()
    _assert_error(http.patch(f"/v0/plans/{ctx.plan}", json={"prices": [], "name": "renamed"}), 400, "REQUIRED", "prices")
    assert http.get(f"/v0/plans/{ctx.plan}").json() == plan_before
    assert _total(http, f"/v0/plans/{ctx.plan}/versions") == 1


@pytest.mark.parametrize(
    ("version", "body", "status", "code", "field"),
    [
        (1, {}, 400, "REQUIRED", "default"),
        (1, {"default": False}, 400, "NOT_ALLOWED", "default"),
        (1, {"status": "retired"}, 400, "INVALID_ENUM_VALUE", "status"),
        (1, {"status": "archived"}, 409, "DEFAULT_VERSION_ARCHIVE", "status"),
        (7, {"default": True}, 404, "PLAN_VERSION_NOT_FOUND", "versionNumber"),
    ],
    ids=["nothing", "default false", "unknown status", "archive the default", "unknown version"],
)
def test_bad_transition_is_rejected(
    version: int, body: dict[str, Any], status: int, code: str, field: str, ctx: Ctx, http: httpx.Client
) -> None:
    before = http.get(f"/v0/plans/{ctx.plan}/versions/1").json()
    _assert_error(http.patch(f"/v0/plans/{ctx.plan}/versions/{version}", json=body), status, code, field)
    assert http.get(f"/v0/plans/{ctx.plan}/versions/1").json() == before


# --- paging, transport --------------------------------------------------------------------

LIST_PATHS = ["/v0/products", "/v0/billableMetrics", "/v0/fees", "/v0/prices", "/v0/plans"]


@pytest.mark.parametrize("path", LIST_PATHS)
@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"limit": 0}, "OUT_OF_RANGE", "limit"),
        ({"limit": 101}, "OUT_OF_RANGE", "limit"),
        ({"offset": -1}, "OUT_OF_RANGE", "offset"),
        ({"limit": "ten"}, "INVALID_FIELD", "limit"),
        ({"colour": "red"}, "UNKNOWN_FIELD", "colour"),
    ],
    ids=["limit=0", "limit=101", "offset=-1", "limit=ten", "unknown param"],
)
def test_bad_paging_is_400(path: str, params: dict[str, Any], code: str, field: str, http: httpx.Client) -> None:
    _assert_error(http.get(path, params=params), 400, code, field)


@pytest.mark.parametrize("limit", [1, 100])
def test_paging_bounds_are_accepted(limit: int, http: httpx.Client) -> None:
    response = http.get("/v0/products", params={"limit": limit})
    assert response.status_code == 200, response.text
    assert response.json()["pagination"]["limit"] == limit


def test_feature_list_limit_is_checked(ctx: Ctx, http: httpx.Client) -> None:
    _assert_error(http.get("/v0/features", params={"productId": ctx.product, "limit": 101}), 400, "OUT_OF_RANGE", "limit")
    _assert_error(http.get(f"/v0/plans/{ctx.plan}/versions", params={"limit": 0}), 400, "OUT_OF_RANGE", "limit")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v0/products", {"name": "p", "description": "d", "colour": "red"}, "colour"),
        ("/v0/fees", {"productId": "{product}", "name": "f", "description": "d", "amount": "5"}, "amount"),
        ("/v0/plans", {"productId": "{product}", "name": "p", "currency": "USD", "price_ids": []}, "price_ids"),
    ],
    ids=["product", "fee", "plan"],
)
def test_unknown_json_field_is_400(path: str, body: dict[str, Any], field: str, ctx: Ctx, http: httpx.Client) -> None:
    list_path = path
    params = {"productId": ctx.product} if path != "/v0/products" else {}
    before = _total(http, list_path, **params)
    _assert_error(http.post(path, json=_fill(body, ctx)), 400, "UNKNOWN_FIELD", field)
    assert _total(http, list_path, **params) == before


def test_unknown_field_in_update_is_400(ctx: Ctx, http: httpx.Client) -> None:
    before = http.get(f"/v0/products/{ctx.product}").json()
    _assert_error(http.patch(f"/v0/products/{ctx.product}", json={"name": "x", "colour": "red"}), 400, "UNKNOWN_FIELD", "colour")
    assert http.get(f"/v0/products/{ctx.product}").json() == before


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "p", "description": ', b"not json", b'["name", "p"]', b'"just a string"', b"\xff\xfe"],
    ids=["truncated", "text", "array", "string", "binary"],
)
def test_invalid_json_body_is_400(raw: bytes, http: httpx.Client) -> None:
    before = _total(http, "/v0/products")
    response = http.post("/v0/products", content=raw, headers={"Content-Type": "application/json"})
    _assert_error(response, 400, "INVALID_JSON", "body")
    assert _total(http, "/v0/products") == before


def test_wrong_json_type_is_400(http: httpx.Client) -> None:
    before = _total(http, "/v0/products")
    _assert_error(http.post("/v0/products", json={"name": 5, "description": "d"}), 400, "INVALID_FIELD", "name")
    _assert_error(http.post("/v0/products", json={"name": "p", "description": "d", "metadata": "x"}), 400, "INVALID_FIELD", "metadata")
    assert _total(http, "/v0/products") == before


def test_wrong_bool_type_names_field(ctx: Ctx, http: httpx.Client) -> None:
    response = http.post("/v0/prices", json=_fill(metered(grantDiscountEnabled="yes"), ctx))
    _assert_error(response, 400, "INVALID_FIELD", "grantDiscountEnabled")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk_test_not_a_key"}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}],
    ids=["missing", "unknown key", "basic scheme", "empty bearer"],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/v0/products"), ("POST", "/v0/products")])
def test_missing_or_invalid_api_key_is_401(
    headers: dict[str, str], method: str, path: str, merchant_a: MerchantClient, http: httpx.Client
) -> None:
    before = _total(http, "/v0/products")
    body = {"name": "p", "description": "d"} if method == "POST" else None
    response = httpx.request(method, f"{merchant_a.base_url}{path}", json=body, headers=headers)
    error = _assert_error(response, 401, "UNAUTHENTICATED", None)
    assert "API key" in error["message"]
    assert _total(http, "/v0/products") == before


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v0/nothing"), ("GET", "/v0/products/prod_x/extra"), ("POST", "/v9/products"), ("GET", "/")],
)
def test_unknown_route_is_404(method: str, path: str, http: httpx.Client) -> None:
    _assert_error(http.request(method, path), 404, "ROUTE_NOT_FOUND", None)


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v0/products/prod_x"), ("PUT", "/v0/products"), ("DELETE", "/v0/plans/plan_x"), ("POST", "/v0/prices/price_x")],
)
def test_wrong_method_is_405(method: str, path: str, http: httpx.Client) -> None:
    _assert_error(http.request(method, path), 405, "METHOD_NOT_ALLOWED", None)


def test_unknown_ids_are_404_naming_resource(http: httpx.Client) -> None:
    for path, code in [
        ("/v0/products/prod_nope", "PRODUCT_NOT_FOUND"),
        ("/v0/prices/price_nope", "PRICE_NOT_FOUND"),
        ("/v0/plans/plan_nope/versions/1", "PLAN_NOT_FOUND"),
    ]:
        _assert_error(http.get(path), 404, code, None)


# --- through the official SDK -----------------------------------------------------------


def _bad_request(excinfo: pytest.ExceptionInfo[errors.BadRequest], code: str, field: str) -> None:
    err = excinfo.value
    assert err.status_code == 400
    assert isinstance(err.data, errors.ErrorData)
    assert err.data.code == code
    assert err.data.details is not None and err.data.details["field"] == field
    assert err.data.message and err.data.message in err.message


def test_sdk_unsorted_ladder_raises_bad_request(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    before = _total(http, "/v0/prices", billableMetricId=ctx.metric)
    with pytest.raises(errors.BadRequest) as excinfo:
        merchant_a.sdk.prices.create(
            invoice_display_name="Calls",
            payment_term="in_arrears",
            model="volume",
            billable_metric_id=ctx.metric,
            properties=models.VolumePriceProperties(
                tiers=[
                    models.VolumeTier(up_to="100", unit_price="5"),
                    models.VolumeTier(up_to="50", unit_price="4"),
                    models.VolumeTier(up_to=None, unit_price="3"),
                ]
            ),
        )
    _bad_request(excinfo, "TIERS_NOT_ASCENDING", "properties.tiers[1].upTo")
    assert "ascending" in excinfo.value.data.message
    assert _total(http, "/v0/prices", billableMetricId=ctx.metric) == before


def test_sdk_unknown_currency_raises_bad_request(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    before = _total(http, "/v0/plans")
    with pytest.raises(errors.BadRequest) as excinfo:
        merchant_a.sdk.plans.create(merchant_id=merchant_a.merchant_id, product_id=ctx.product, name="X", currency="XYZ")
    _bad_request(excinfo, "UNKNOWN_CURRENCY", "currency")
    assert "XYZ" in excinfo.value.data.message
    assert _total(http, "/v0/plans") == before


def test_sdk_metric_without_value_property_raises_bad_request(ctx: Ctx, merchant_a: MerchantClient, http: httpx.Client) -> None:
    before = _total(http, "/v0/billableMetrics")
    with pytest.raises(errors.BadRequest) as excinfo:
        merchant_a.sdk.billable_metrics.create(
            merchant_id=merchant_a.merchant_id, product_id=ctx.product, name="T", description="t", unit="t",
            aggregation="SUM", event_type="validation.sdk",
        )  # fmt: skip
    _bad_request(excinfo, "REQUIRED", "valueProperty")
    assert _total(http, "/v0/billableMetrics") == before


def test_sdk_list_limit_raises_bad_request(merchant_a: MerchantClient) -> None:
    with pytest.raises(errors.BadRequest) as excinfo:
        merchant_a.sdk.products.list(request={"merchant_id": merchant_a.merchant_id, "limit": 101})
    _bad_request(excinfo, "OUT_OF_RANGE", "limit")


def test_sdk_duplicate_feature_raises_error_409(ctx: Ctx, merchant_a: MerchantClient) -> None:
    with pytest.raises(errors.Error) as excinfo:
        merchant_a.sdk.features.create(merchant_id=merchant_a.merchant_id, product_id=ctx.product, key=ctx.feature_key, name="Dup")
    assert excinfo.value.status_code == 409
    assert excinfo.value.data.code == "DUPLICATE_RESOURCE"
    assert excinfo.value.message == excinfo.value.data.message
    assert ctx.feature_key in excinfo.value.message


def test_sdk_unknown_plan_price_raises_error_404(ctx: Ctx, merchant_a: MerchantClient) -> None:
    with pytest.raises(errors.Error) as excinfo:
        merchant_a.sdk.plans.create(
            merchant_id=merchant_a.merchant_id, product_id=ctx.product, name="X", currency="USD", prices=["price_doesnotexist"]
        )
    assert excinfo.value.status_code == 404
    assert (excinfo.value.data.code, excinfo.value.data.details) == (
        "PRICE_NOT_FOUND",
        {"resource": "price", "id": "price_doesnotexist", "field": "prices[0]"},
    )


def test_sdk_bad_key_raises_error_401(merchant_a: MerchantClient) -> None:
    from paygentic_sdk import Paygentic

    sdk = Paygentic(bearer_auth="sk_test_wrong", server_url=merchant_a.base_url)
    with pytest.raises(errors.Error) as excinfo:
        sdk.products.list(request={"merchant_id": merchant_a.merchant_id})
    assert excinfo.value.status_code == 401
    assert excinfo.value.data.code == "UNAUTHENTICATED"
    assert "API key" in excinfo.value.message


def test_empty_patch_changes_nothing_and_emits_nothing(http: httpx.Client) -> None:
    product = http.post("/v0/products", json={"name": "Unchanged", "description": "d"}).json()
    patched = http.patch(f"/v0/products/{product['id']}", json={})
    assert patched.status_code == 200
    assert patched.json() == product  # updatedAt included: nothing was written


def test_a_price_cannot_attach_a_feature_of_another_product(http: httpx.Client) -> None:
    first = http.post("/v0/products", json={"name": "A", "description": "d"}).json()
    second = http.post("/v0/products", json={"name": "B", "description": "d"}).json()
    feature = http.post("/v0/features", json={"productId": second["id"], "key": "sso-x", "name": "SSO"}).json()
    fee = http.post("/v0/fees", json={"productId": first["id"], "name": "Base", "description": "d"}).json()
    body = {
        "feeId": fee["id"], "invoiceDisplayName": "Base", "paymentTerm": "in_advance", "billingCadence": "P1M",
        "properties": {"unitPrice": "10.00"}, "feature": {"featureId": feature["id"]},
    }  # fmt: skip
    response = http.post("/v0/prices", json=body)
    assert response.status_code == 400, response.text
    assert (response.json()["code"], response.json()["details"]["field"]) == ("FEATURE_PRODUCT_MISMATCH", "feature.featureId")
