"""What an outside fuzzer found (issue 6), against the real gateway process: headers gRPC
cannot carry, nulls for lists, HTTP-level errors, and error texts that named internals.

Raw sockets where an HTTP client would refuse to send the bytes a fuzzer sends.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def http(merchant_a: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as client:
        yield client


def _raw(base_url: str, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes, read one response (the gateway closes or sends content-length)."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, json.loads(rest) if rest else None


def _request(merchant: MerchantClient, method: str, path: str, extra: bytes = b"", body: bytes = b"") -> bytes:
    host = urlparse(merchant.base_url).netloc
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {merchant.api_key}\r\n".encode()
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
    return head + extra + b"Connection: close\r\n\r\n" + body


@pytest.mark.parametrize("value", [b"caf\xc3\xa9", b"a\tb", b"\xff"], ids=["utf8", "tab", "latin1"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", "/v0/products?limit=1", b""), ("POST", "/v0/products", b'{"name":"k"}'), ("PATCH", "/v0/products/prod_x", b'{"name":"k"}'),
     ("POST", "/v0/events", b'{"type":"t","subject":"s","source":"x"}')],
)  # fmt: skip
def test_idempotency_key_grpc_cannot_carry_is_an_immediate_400(
    merchant_a: MerchantClient, value: bytes, method: str, path: str, body: bytes
) -> None:
    started = time.monotonic()
    status, headers, error = _raw(merchant_a.base_url, _request(merchant_a, method, path, b"Idempotency-Key: " + value + b"\r\n", body))
    assert time.monotonic() - started < 5  # it used to hang for good
    assert status == 400 and headers["content-type"] == "application/json"
    assert error["code"] == "INVALID_IDEMPOTENCY_KEY" and error["details"]["field"] == "Idempotency-Key"


def test_a_control_character_in_a_header_is_the_json_error_body(merchant_a: MerchantClient) -> None:
    status, headers, error = _raw(merchant_a.base_url, _request(merchant_a, "GET", "/v0/products", b"X-Fuzz: a\x01b\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    assert error["code"] == "MALFORMED_HTTP" and error["error"] == "bad_request"


@pytest.fixture(scope="module")
def plan(http: httpx.Client, merchant_a: MerchantClient) -> dict[str, str]:
    product = http.post("/v0/products", json={"name": "Nulls", "description": "n"}).json()["id"]
    fee = http.post("/v0/fees", json={"productId": product, "name": "Base", "description": "b"}).json()["id"]
    price = http.post(
        "/v0/prices",
        json={
            "invoiceDisplayName": "Base",
            "paymentTerm": "in_advance",
            "feeId": fee,
            "billingCadence": "P1M",
            "properties": {"unitPrice": "1.00"},
        },
    ).json()["id"]
    created = http.post("/v0/plans", json={"productId": product, "name": "N", "currency": "USD", "prices": [price]})
    assert created.status_code == 201, created.text
    return {"product": product, "price": price, "plan": created.json()["id"]}


def test_null_for_a_list_is_absent_not_a_crash(http: httpx.Client, plan: dict[str, str]) -> None:
    created = http.post("/v0/plans", json={"productId": plan["product"], "name": "N2", "currency": "USD", "prices": None})
    assert created.status_code in (201, 400), created.text
    assert created.headers["content-type"] == "application/json"
    if created.status_code == 400:
        assert created.json()["details"]["field"] == "prices"
    before = http.get(f"/v0/plans/{plan['plan']}/versions/1").json()
    patched = http.patch(f"/v0/plans/{plan['plan']}", json={"name": "Renamed", "prices": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Renamed"
    after = http.get(f"/v0/plans/{plan['plan']}/versions/1").json()
    assert after["prices"] == before["prices"] and len(after["prices"]) == 1  # null was absent, not "clear"
    minted = http.post(f"/v0/plans/{plan['plan']}/versions", json={"prices": None})
    assert minted.status_code in (201, 400), minted.text
    assert minted.headers["content-type"] == "application/json"
    product = http.post("/v0/products", json={"name": "Null metadata", "description": "d", "metadata": None})
    assert product.status_code == 201 and product.json()["metadata"] == {}


def test_plans_available_answers_not_built_yet(http: httpx.Client) -> None:
    response = http.get("/v0/plans/available", params={"customerId": "cus_1"})
    assert response.status_code == 501, response.text
    assert response.json()["code"] == "UNIMPLEMENTED" and "/v0/plans/available" in response.json()["message"]


def test_405_carries_allow(http: httpx.Client) -> None:
    response = http.delete("/v0/products")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"


def test_413_and_415(http: httpx.Client) -> None:
    big = http.post("/v0/products", content=b'{"name":"' + b"a" * (1 << 20) + b'"}', headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["code"] == "BODY_TOO_LARGE"
    form = http.post("/v0/products", content=b"name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and form.json()["details"]["field"] == "Content-Type"
    assert http.get("/v0/products", params={"limit": 1}).json()["pagination"]["total"] >= 0


_INTERNAL = (
    "invalid literal",
    "does not match format",
    "Message type",
    "Available Fields",
    "Request.",
    "accrue.",
    "127.0.0.1",
    "Traceback",
)


@pytest.mark.parametrize(
    ("method", "path", "body", "params", "field"),
    [
        ("GET", "/v0/products", None, {"limit": "abc"}, "limit"),
        ("GET", "/v0/products", None, {"offset": "1.5"}, "offset"),
        ("POST", "/v0/billableMetrics", {"name": "m", "eventFrom": "yesterday"}, None, "eventFrom"),
        ("POST", "/v0/events", {"type": "t", "subject": "s", "source": "x", "data": "not an object"}, None, "data"),
        ("POST", "/v0/events", {"type": "t", "subject": "s", "source": "x", "timestamp": "noon"}, None, "timestamp"),
        ("PATCH", "/v0/plans/plan_x", {"bogus": 1}, None, "bogus"),
        ("PATCH", "/v0/plans/plan_x", {'a"b': 1}, None, 'a"b'),
        ("POST", "/v0/prices", {"isObligation": "yes"}, None, "isObligation"),
        ("POST", "/v0/products", {"name": {"nested": 1}}, None, "name"),
        ("POST", "/v0/products", {"name": "x", "metadata": {"a": 1}}, None, "metadata"),
    ],
)
def test_errors_name_the_rest_field_in_user_terms(http: httpx.Client, method: str, path: str, body: Any, params: Any, field: str) -> None:
    response = http.request(method, path, json=body, params=params)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["details"]["field"] == field
    for leak in _INTERNAL:
        assert leak not in error["message"], error
