"""Tenancy of the money loop: merchant B can neither see nor touch merchant A's customers,
subscriptions, test clocks and invoices, nor subscribe with A's plan, customer or clock.

Merchant A builds a customer on a test clock with a subscription whose Invoice 0 is
issued (a 10.00 fee in advance), so every kind of resource exists. B then tries every
endpoint on A's ids and must get a 404 with the resource's ``*_NOT_FOUND`` code (naming
the field when the id came in the body or the query); B's lists never show A's ids. Last,
A reads everything back exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors

from libs.testing.billing import Catalog, at, clock, customer, invoice_0, subscribe
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


@dataclass
class Ids:
    merchant: str
    plan: str
    customer: str
    clock: str
    subscription: str
    invoice: str


def _build(client: MerchantClient, label: str) -> Ids:
    catalog = Catalog.create(client, f"Tenancy {label}")
    plan = catalog.plan([catalog.fee_price(catalog.fee("Base"), "10.00", name="Base")])
    customer_id = customer(client, f"Tenant {label}")
    test_clock = clock(client, at("2027-06-01T00:00:00Z"), f"tenancy-{label}")
    sub = subscribe(client, plan.id, customer_id, test_clock)
    assert sub.status == "pending_payment"
    return Ids(client.merchant_id, plan.id, customer_id, test_clock.id, sub.id, invoice_0(client, sub).id)


@pytest.fixture(scope="module")
def a_ids(merchant_a: MerchantClient) -> Ids:
    return _build(merchant_a, "a")


@pytest.fixture(scope="module")
def b_ids(merchant_b: MerchantClient) -> Ids:
    return _build(merchant_b, "b")


def _read_paths(ids: Ids) -> list[str]:
    return [
        f"/v0/customers/{ids.customer}",
        f"/v0/subscriptions/{ids.subscription}",
        f"/v0/testClocks/{ids.clock}",
        f"/v2/invoices/{ids.invoice}",
        f"/v2/invoices/{ids.invoice}?expand=lineItems",
        f"/v2/invoices/{ids.invoice}/lineItems",
    ]


def _snapshot(client: MerchantClient, ids: Ids) -> dict[str, Any]:
    out = {}
    with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=30) as http:
        for path in _read_paths(ids):
            response = http.get(path)
            assert response.status_code == 200, f"{path}: {response.text}"
            out[path] = response.json()
    return out


@pytest.fixture(scope="module")
def a_snapshot(merchant_a: MerchantClient, a_ids: Ids) -> dict[str, Any]:
    return _snapshot(merchant_a, a_ids)


@pytest.fixture(scope="module")
def b_http(merchant_b: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_b.base_url, headers=merchant_b.headers, timeout=60) as client:
        yield client


def _fill(template: Any, a: Ids, b: Ids) -> Any:
    if isinstance(template, str):
        for name, value in vars(a).items():
            template = template.replace("{a." + name + "}", value)
        for name, value in vars(b).items():
            template = template.replace("{b." + name + "}", value)
        assert "{a." not in template and "{b." not in template, template
        return template
    if isinstance(template, dict):
        return {key: _fill(value, a, b) for key, value in template.items()}
    return template


def _assert_not_found(response: httpx.Response, code: str, field: str | None = None) -> None:
    assert response.status_code == 404, response.text
    body = response.json()
    assert (body["error"], body["code"]) == ("not_found", code), body
    assert body["message"]
    if field is not None:
        assert body.get("details", {}).get("field") == field, body


ENDPOINTS = [
    # (case, method, path, body, code)
    ("get customer", "GET", "/v0/customers/{a.customer}", None, "CUSTOMER_NOT_FOUND"),
    ("update customer", "PATCH", "/v0/customers/{a.customer}", {"externalId": "stolen"}, "CUSTOMER_NOT_FOUND"),
    ("update customer tax rates", "PATCH", "/v0/customers/{a.customer}", {"taxRates": {"default": 0}}, "CUSTOMER_NOT_FOUND"),
    ("delete customer", "DELETE", "/v0/customers/{a.customer}", None, "CUSTOMER_NOT_FOUND"),
    ("get subscription", "GET", "/v0/subscriptions/{a.subscription}", None, "SUBSCRIPTION_NOT_FOUND"),
    ("update subscription", "PATCH", "/v0/subscriptions/{a.subscription}", {"paymentTermDays": 7}, "SUBSCRIPTION_NOT_FOUND"),
    ("terminate by update", "PATCH", "/v0/subscriptions/{a.subscription}", {"status": "terminated"}, "SUBSCRIPTION_NOT_FOUND"),
    ("terminate", "POST", "/v0/subscriptions/{a.subscription}/termination", {"reason": "stolen"}, "SUBSCRIPTION_NOT_FOUND"),
    ("get clock", "GET", "/v0/testClocks/{a.clock}", None, "TEST_CLOCK_NOT_FOUND"),
    ("advance clock by", "PATCH", "/v0/testClocks/{a.clock}", {"advanceBy": "P1M"}, "TEST_CLOCK_NOT_FOUND"),
    ("advance clock to", "PATCH", "/v0/testClocks/{a.clock}", {"currentTime": "2027-09-01T00:00:00Z"}, "TEST_CLOCK_NOT_FOUND"),
    ("delete clock", "DELETE", "/v0/testClocks/{a.clock}", None, "TEST_CLOCK_NOT_FOUND"),
    ("get invoice", "GET", "/v2/invoices/{a.invoice}", None, "INVOICE_NOT_FOUND"),
    ("get invoice with lines", "GET", "/v2/invoices/{a.invoice}?expand=lineItems,lineProvenance", None, "INVOICE_NOT_FOUND"),
    ("invoice lines", "GET", "/v2/invoices/{a.invoice}/lineItems", None, "INVOICE_NOT_FOUND"),
    ("pay invoice", "POST", "/v2/invoices/{a.invoice}/payment", {"method": "out_of_band"}, "INVOICE_NOT_FOUND"),
]


@pytest.mark.parametrize(("method", "path", "body", "code"), [e[1:] for e in ENDPOINTS], ids=[e[0] for e in ENDPOINTS])
def test_b_gets_404_for_a_resource_on_every_endpoint(
    method: str, path: str, body: dict[str, Any] | None, code: str, a_ids: Ids, b_ids: Ids, a_snapshot: dict[str, Any], b_http: httpx.Client
) -> None:
    response = b_http.request(method, _fill(path, a_ids, b_ids), json=_fill(body, a_ids, b_ids))
    _assert_not_found(response, code)


def test_b_gets_404_through_the_sdk(a_ids: Ids, merchant_b: MerchantClient) -> None:
    sdk = merchant_b.sdk
    calls: list[Callable[[], object]] = [
        lambda: sdk.customers.get(id=a_ids.customer),
        lambda: sdk.subscriptions.get(id=a_ids.subscription),
        lambda: sdk.test_clocks.get(id=a_ids.clock),
        lambda: sdk.invoices_v2.get(id=a_ids.invoice, expand="lineItems"),
        lambda: sdk.invoices_v2.record_invoice_payment(id=a_ids.invoice, method="out_of_band"),
    ]
    for read in calls:
        with pytest.raises(errors.PaygenticError) as refused:
            read()
        assert refused.value.status_code == 404


REFERENCES = [
    # (case, body, field, code): B's own subscription naming one of A's resources
    ("A's plan", {"planId": "{a.plan}", "customerId": "{b.customer}", "testClockId": "{b.clock}"}, "planId", "PLAN_NOT_FOUND"),
    ("A's customer", {"planId": "{b.plan}", "customerId": "{a.customer}", "testClockId": "{b.clock}"}, "customerId", "CUSTOMER_NOT_FOUND"),
    ("A's clock", {"planId": "{b.plan}", "customerId": "{b.customer}", "testClockId": "{a.clock}"}, "testClockId", "TEST_CLOCK_NOT_FOUND"),
]


@pytest.mark.parametrize(("body", "field", "code"), [r[1:] for r in REFERENCES], ids=[r[0] for r in REFERENCES])
def test_b_cannot_subscribe_with_a_resource(
    body: dict[str, Any], field: str, code: str, a_ids: Ids, b_ids: Ids, a_snapshot: dict[str, Any], b_http: httpx.Client
) -> None:
    before = b_http.get("/v0/subscriptions", params={"limit": 100}).json()["pagination"]["total"]
    payload = _fill(body, a_ids, b_ids) | {"name": "stolen", "startedAt": "2027-06-01T00:00:00Z"}
    _assert_not_found(b_http.post("/v0/subscriptions", json=payload), code, field)
    assert b_http.get("/v0/subscriptions", params={"limit": 100}).json()["pagination"]["total"] == before


NAMING_A = [
    ("/v0/customers", "organizationId"),
    ("/v0/subscriptions", "merchantId"),
    ("/v0/testClocks", "merchantId"),
    ("/v2/invoices", "merchantId"),
]


@pytest.mark.parametrize(("path", "param"), NAMING_A)
def test_b_cannot_list_as_a(path: str, param: str, a_ids: Ids, b_http: httpx.Client) -> None:
    _assert_not_found(b_http.get(path, params={param: a_ids.merchant}), "MERCHANT_NOT_FOUND", param)


B_LISTS = [
    ("customers", "/v0/customers", {}),
    ("subscriptions", "/v0/subscriptions", {}),
    ("subscriptions of A's customer", "/v0/subscriptions", {"customerId": "{a.customer}"}),
    ("clocks", "/v0/testClocks", {}),
    ("invoices", "/v2/invoices", {}),
    ("invoices of A's subscription", "/v2/invoices", {"subscriptionId": "{a.subscription}"}),
    ("invoices of A's customer", "/v2/invoices", {"customerId": "{a.customer}"}),
    ("line items of A's subscription", "/v2/invoices/lineItems", {"subscriptionId": "{a.subscription}"}),
    ("line items of A's invoice", "/v2/invoices/lineItems", {"invoiceId": "{a.invoice}"}),
]


@pytest.mark.parametrize(("path", "params"), [c[1:] for c in B_LISTS], ids=[c[0] for c in B_LISTS])
def test_b_lists_never_show_a(
    path: str, params: dict[str, str], a_ids: Ids, b_ids: Ids, b_http: httpx.Client, merchant_b: MerchantClient
) -> None:
    query = {key: _fill(value, a_ids, b_ids) for key, value in params.items()}
    response = b_http.get(path, params={**query, "limit": 100})
    a_values = {value for name, value in vars(a_ids).items() if name != "merchant"}
    if query:
        # filtering by one of A's ids finds nothing: an empty page, or a 404 naming the filter
        if response.status_code == 404:
            _assert_not_found(response, response.json()["code"], next(iter(query)))
            assert response.json()["code"].endswith("_NOT_FOUND")
            return
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []
        return
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert not a_values & {item["id"] for item in data}
    assert all(item.get("merchantId", merchant_b.merchant_id) == merchant_b.merchant_id for item in data)
    b_values = {value for name, value in vars(b_ids).items() if name != "merchant"}
    assert b_values & {item["id"] for item in data}  # B's own resource is there


def test_a_resources_are_unchanged(merchant_a: MerchantClient, a_ids: Ids, a_snapshot: dict[str, Any]) -> None:
    """Runs after B's attempts (file order): A reads everything exactly as before."""
    assert _snapshot(merchant_a, a_ids) == a_snapshot
    assert merchant_a.sdk.subscriptions.get(id=a_ids.subscription).status == "pending_payment"
    assert merchant_a.sdk.test_clocks.get(id=a_ids.clock).current_time == at("2027-06-01T00:00:00Z")
