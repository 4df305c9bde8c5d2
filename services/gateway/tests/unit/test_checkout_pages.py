"""The hosted checkout pages and processor webhooks of the gateway, driven as uvicorn
drives the ASGI app, against a fake payment service on a real gRPC server (tokens
verified, domain errors carried as in the mesh) and a fake merchants table."""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from libs.infra.metrics import ROUTE_SCOPE_KEY
from services.gateway.app import Gateway
from services.gateway.checkout.pages import format_money, origin_of, safe_url
from services.gateway.settings import GatewaySettings
from services.gateway.tests.checkout_fakes import (
    DECLINED_TOKEN,
    GOOD_SIGNATURE,
    MERCHANT,
    OTHER_MERCHANT,
    SLOW_TOKEN,
    FakeMerchants,
    FakePayment,
    checkout,
    dead_address,
    serve,
)

SESSION = "ps_0123456789abcdef"
PAGE = f"/checkout/{MERCHANT}/{SESSION}"
JSON_HEADERS = [("content-type", "application/json")]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    scope: dict[str, Any]

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Gateway, method: str, path: str, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None, query: bytes = b""
) -> Answer:
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []],
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    start, message = sent
    return Answer(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, message["body"], scope)


@dataclass
class Setup:
    app: Gateway
    payment: FakePayment
    merchants: FakeMerchants


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    payment = FakePayment()  # type: ignore[abstract]  # only the three hosted-route RPCs are called
    server, address = await serve(payment)
    dead = dead_address()
    backends = {name: dead for name in ("catalog", "subscription", "metering", "invoicing", "entitlement")}
    settings = GatewaySettings(rpc_timeout_seconds=2, backend_addrs={**backends, "payment": address})
    merchants = FakeMerchants({MERCHANT: "Merchant A", OTHER_MERCHANT: "Merchant B"})
    app = Gateway(settings, None, keys=_NoKeys(), merchants=merchants)  # type: ignore[arg-type]
    await app.start()
    yield Setup(app, payment, merchants)
    await app.close()
    await server.stop(0)


class _NoKeys:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def merchant_for(self, authorization: str | None) -> str | None:
        return None  # no route here may need an API key


def _csp(answer: Answer) -> dict[str, str]:
    return {
        part.split(" ", 1)[0]: part.split(" ", 1)[1] if " " in part else ""
        for part in answer.headers["content-security-policy"].split("; ")
    }


def _attribute(page: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', page)
    assert found is not None, name
    return html.unescape(found[1])


def assert_secure_headers(answer: Answer) -> None:
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-content-type-options"] == "nosniff"


# --- the page ---------------------------------------------------------------------------


async def test_a_pending_session_renders_what_is_paid_and_a_card_form(setup: Setup) -> None:
    setup.payment.add(
        checkout(
            SESSION,
            amount="1249.50",
            lines=[("Pro plan (monthly)", "1200.00", "1"), ("Setup fee", "24.75", "2")],
            tokenize_url="http://127.0.0.1:7001/v1/tokens",
        )
    )
    answer = await call(setup.app, "GET", PAGE)
    assert answer.status == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    assert_secure_headers(answer)
    page = answer.text
    assert "Merchant A" in page and "Invoice INV-2026-000001" in page
    assert "$1,249.50" in page and "Pro plan (monthly)" in page and "$1,200.00" in page and "&times; 2" in page
    assert "Pay $1,249.50" in page and "Test mode" in page
    # the card fields: none has a name (nothing can be submitted natively), each its autocomplete
    inputs = re.findall(r"<input [^>]*>", page)
    assert len(inputs) == 4 and all(" name=" not in tag for tag in inputs)
    assert {re.search(r'autocomplete="([^"]+)"', tag)[1] for tag in inputs} == {"cc-number", "cc-exp", "cc-csc", "cc-name"}  # type: ignore[index]
    assert "<form" in page and "action=" not in page and "method=" not in page
    assert _attribute(page, "data-tokenize-url") == "http://127.0.0.1:7001/v1/tokens"
    assert _attribute(page, "data-publishable-key") == "pk_test_sandbox"
    assert _attribute(page, "data-submit-url") == f"{PAGE}/submit"
    assert len(_attribute(page, "data-nonce")) >= 20
    # the CSP: scripts from here and the render's nonce, connections only here and to the tokenizer
    csp = _csp(answer)
    script_nonce = re.search(r'<script nonce="([^"]+)" src="(/checkout/assets/checkout\.js\?v=[0-9a-f]+)"', page)
    assert script_nonce is not None
    assert csp["script-src"] == f"'self' 'nonce-{script_nonce[1]}'"
    assert csp["connect-src"] == "'self' http://127.0.0.1:7001"
    assert csp["default-src"] == "'none'" and csp["form-action"] == "'none'" and csp["base-uri"] == "'none'"
    assert answer.scope[ROUTE_SCOPE_KEY] == "/checkout/{merchant_id}/{session_id}"
    # the gateway asked for the path's merchant, with that merchant's token
    assert setup.payment.gets == [(MERCHANT, SESSION)]


async def test_every_render_has_its_own_nonces(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    first, second = await call(setup.app, "GET", PAGE), await call(setup.app, "GET", PAGE)
    assert _attribute(first.text, "data-nonce") != _attribute(second.text, "data-nonce")
    assert _csp(first)["script-src"] != _csp(second)["script-src"]


async def test_merchant_supplied_text_is_escaped(setup: Setup) -> None:
    setup.merchants.names[MERCHANT] = "<b>Evil</b> & Co"
    setup.payment.add(
        checkout(
            SESSION,
            label='"><img src=x onerror=alert(1)>',
            lines=[("<script>alert('line')</script>", "49.00", "1")],
            success_url="javascript:alert(1)",
            failure_url="data:text/html,<script>alert(2)</script>",
        )
    )
    page = (await call(setup.app, "GET", PAGE)).text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>Evil</b>" not in page
    assert "&lt;script&gt;alert(&#39;line&#39;)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;b&gt;Evil&lt;/b&gt; &amp; Co" in page
    assert "javascript:" not in page and "data:text/html" not in page  # never a link nor a redirect
    assert 'data-success-url=""' in page
    # the only scripts are the page's own
    assert re.findall(r"<script[^>]*>", page) == [re.search(r"<script [^>]*>", page)[0]]  # type: ignore[index]


async def test_setup_mode_saves_a_card_and_charges_nothing(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION, mode="setup", label="", lines=[]))
    page = (await call(setup.app, "GET", PAGE)).text
    assert "Save a card" in page and "Save card" in page and "Nothing is charged now" in page
    assert "$" not in page and "Pay " not in page


@pytest.mark.parametrize(
    ("status", "mode", "expected"),
    [
        ("completed", "payment", ["Paid", "Payment received", "Continue to Merchant A", "https://merchant.example/thanks"]),
        ("completed", "setup", ["Card saved", "Visa ending in 4242"]),
        ("expired", "payment", ["This checkout has expired", "https://merchant.example/sorry"]),
        ("cancelled", "payment", ["This checkout was cancelled"]),
        ("failed", "payment", ["This checkout is closed", "Too many cards were declined"]),
        ("processing", "payment", ["Processing your payment", f'data-poll-url="{PAGE}/status"']),
    ],
)
async def test_a_decided_session_shows_its_status_and_no_form(setup: Setup, status: str, mode: str, expected: list[str]) -> None:
    found = setup.payment.add(checkout(SESSION, status=status, mode=mode))
    if mode == "setup":
        found.saved_method.brand, found.saved_method.last4 = "visa", "4242"
    answer = await call(setup.app, "GET", PAGE)
    assert answer.status == 200
    assert_secure_headers(answer)
    for text in expected:
        assert text in answer.text, text
    assert "<input" not in answer.text and "card-form" not in answer.text
    assert _csp(answer)["connect-src"] == "'self'"  # no card is taken here: no tokenizer either


async def test_a_declined_attempt_shows_its_message_on_the_form(setup: Setup) -> None:
    found = setup.payment.add(checkout(SESSION))
    found.failure_code, found.failure_message = "insufficient_funds", "Your card has insufficient funds."
    page = (await call(setup.app, "GET", PAGE)).text
    assert "Your card has insufficient funds." in page and 'id="card-error" class="alert" role="alert">' in page
    assert 'href="https://merchant.example/sorry"' in page and "<input" in page


@pytest.mark.parametrize(
    "path",
    [
        f"/checkout/{OTHER_MERCHANT}/{SESSION}",  # another merchant's path for this session
        f"/checkout/org_unknown0000000000/{SESSION}",  # a merchant this gateway does not know
        f"/checkout/{MERCHANT}/ps_doesnotexist000",  # no such session
        f"/checkout/{MERCHANT}/inv_0123456789abcdef",  # not a session id
        f"/checkout/{MERCHANT}",
        "/checkout/",
        f"{PAGE}/elsewhere",
    ],
)
async def test_what_is_no_session_of_the_merchant_is_the_404_page(setup: Setup, path: str) -> None:
    setup.payment.add(checkout(SESSION))
    answer = await call(setup.app, "GET", path)
    assert answer.status == 404 and answer.headers["content-type"] == "text/html; charset=utf-8"
    assert "Page not found" in answer.text and "Merchant A" not in answer.text and "49.00" not in answer.text
    assert_secure_headers(answer)


async def test_another_merchants_session_is_asked_for_with_the_paths_merchant_only(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION, merchant_id=OTHER_MERCHANT))
    assert (await call(setup.app, "GET", PAGE)).status == 404
    assert (await call(setup.app, "GET", f"/checkout/{OTHER_MERCHANT}/{SESSION}")).status == 200
    assert setup.payment.gets == [(MERCHANT, SESSION), (OTHER_MERCHANT, SESSION)]


async def test_an_unknown_merchant_costs_no_payment_call(setup: Setup) -> None:
    assert (await call(setup.app, "GET", f"/checkout/org_nobody000000000/{SESSION}")).status == 404
    assert (
        await call(
            setup.app,
            "POST",
            f"/checkout/org_nobody000000000/{SESSION}/submit",
            body=b'{"token":"tok_00000001","nonce":"nonce-abc1"}',
            headers=JSON_HEADERS,
        )
    ).status == 404
    assert setup.payment.gets == [] and setup.payment.completions == []


async def test_the_payment_service_down_is_a_503_page(setup: Setup) -> None:
    dead = dead_address()
    settings = GatewaySettings(
        rpc_timeout_seconds=1,
        backend_addrs={n: dead for n in ("catalog", "subscription", "metering", "invoicing", "payment", "entitlement")},
    )
    app = Gateway(settings, None, keys=_NoKeys(), merchants=setup.merchants)  # type: ignore[arg-type]
    await app.start()
    try:
        answer = await call(app, "GET", PAGE)
        assert answer.status == 503 and "Checkout unavailable" in answer.text and "127.0.0.1" not in answer.text
        submitted = await call(app, "POST", f"{PAGE}/submit", body=b'{"token":"tok_00000001","nonce":"nonce-abc1"}', headers=JSON_HEADERS)
        assert submitted.status == 503 and submitted.json()["code"] == "UNAVAILABLE"
        assert "127.0.0.1" not in submitted.text
    finally:
        await app.close()


class _Broken:
    async def get_checkout(self, merchant_id: str, session_id: str) -> Any:
        raise RuntimeError("a bug in the gateway")

    async def complete_checkout(self, merchant_id: str, session_id: str, card_token: str, submit_nonce: str) -> Any:
        raise RuntimeError("a bug in the gateway")

    async def handle_webhook(self, merchant_id: str, processor: str, body: bytes, headers: dict[str, str]) -> str:
        raise RuntimeError("a bug in the gateway")


async def test_a_failure_inside_the_gateway_is_a_page_for_the_page_and_json_for_the_script(setup: Setup) -> None:
    settings = GatewaySettings(
        rpc_timeout_seconds=1,
        backend_addrs=dict.fromkeys(("catalog", "subscription", "metering", "invoicing", "payment", "entitlement"), dead_address()),
    )
    app = Gateway(settings, None, keys=_NoKeys(), merchants=setup.merchants, payment=_Broken())  # type: ignore[arg-type]
    await app.start()
    try:
        page = await call(app, "GET", PAGE)
        assert page.status == 500 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert "Checkout unavailable" in page.text and "bug" not in page.text
        assert_secure_headers(page)
        submitted = await call(app, "POST", f"{PAGE}/submit", body=b'{"token":"tok_00000001","nonce":"nonce-abc1"}', headers=JSON_HEADERS)
        assert submitted.status == 500 and submitted.json()["code"] == "INTERNAL"
        hook = await call(app, "POST", f"/webhooks/processors/sandbox/{MERCHANT}", body=b"{}")
        assert hook.status == 500 and hook.json()["code"] == "INTERNAL"  # the processor delivers it again later
    finally:
        await app.close()


async def test_assets_are_served_versioned(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    page = (await call(setup.app, "GET", PAGE)).text
    for name, content_type in (("checkout.js", "text/javascript; charset=utf-8"), ("checkout.css", "text/css; charset=utf-8")):
        link = re.search(rf"/checkout/assets/{re.escape(name)}\?v=([0-9a-f]+)", page)
        assert link is not None, name
        answer = await call(setup.app, "GET", f"/checkout/assets/{name}", query=f"v={link[1]}".encode())
        assert answer.status == 200 and answer.headers["content-type"] == content_type
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert answer.scope[ROUTE_SCOPE_KEY] == "/checkout/assets/{name}"
        stale = await call(setup.app, "GET", f"/checkout/assets/{name}", query=b"v=old")
        assert stale.status == 200 and stale.headers["cache-control"] == "no-cache"
    assert (await call(setup.app, "GET", "/checkout/assets/nothing.js")).status == 404
    script = (await call(setup.app, "GET", "/checkout/assets/checkout.js")).text
    assert "innerHTML" not in script and "postMessage" in script and "payment_success" in script and "payment_error" in script


# --- submit and status ------------------------------------------------------------------


async def _submit(setup: Setup, token: str, nonce: str, path: str = PAGE) -> Answer:
    return await call(setup.app, "POST", f"{path}/submit", body=json.dumps({"token": token, "nonce": nonce}).encode(), headers=JSON_HEADERS)


async def test_submit_completes_with_the_token_and_the_renders_nonce(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    nonce = _attribute((await call(setup.app, "GET", PAGE)).text, "data-nonce")
    answer = await _submit(setup, "tok_visa4242", nonce)
    assert answer.status == 200 and answer.headers["content-type"] == "application/json"
    assert_secure_headers(answer)
    assert answer.json() == {"status": "completed", "mode": "payment", "redirectUrl": "https://merchant.example/thanks"}
    (completion,) = setup.payment.completions
    assert (completion.merchant_id, completion.session_id, completion.card_token, completion.submit_nonce) == (
        MERCHANT,
        SESSION,
        "tok_visa4242",
        nonce,
    )
    assert answer.scope[ROUTE_SCOPE_KEY] == "/checkout/{merchant_id}/{session_id}/submit"


async def test_a_decline_answers_the_failure_and_a_fresh_nonce_for_another_card(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    answer = await _submit(setup, DECLINED_TOKEN, "render-nonce")
    body = answer.json()
    assert answer.status == 200 and body["status"] == "pending"
    assert (body["failureCode"], body["failureMessage"]) == ("card_declined", "Your card was declined.")
    assert body["redirectUrl"] == "https://merchant.example/sorry"
    assert body["nonce"] != "render-nonce" and len(body["nonce"]) >= 20
    again = await _submit(setup, "tok_visa4242", body["nonce"])
    assert again.json()["status"] == "completed" and "nonce" not in again.json()


async def test_processing_is_answered_and_the_status_route_tells_when_it_is_decided(setup: Setup) -> None:
    found = setup.payment.add(checkout(SESSION))
    assert (await _submit(setup, SLOW_TOKEN, "nonce-n1")).json() == {"status": "processing", "mode": "payment"}
    status = await call(setup.app, "GET", f"{PAGE}/status")
    assert status.status == 200 and status.json()["status"] == "processing"
    assert_secure_headers(status)
    assert status.scope[ROUTE_SCOPE_KEY] == "/checkout/{merchant_id}/{session_id}/status"
    found.session.status = "completed"
    assert (await call(setup.app, "GET", f"{PAGE}/status")).json()["status"] == "completed"
    missing = await call(setup.app, "GET", f"/checkout/{MERCHANT}/ps_missing0000000/status")
    assert missing.status == 404 and missing.json()["code"] == "PAYMENT_SESSION_NOT_FOUND"


async def test_submit_takes_only_a_small_json_token_and_nonce(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    submit = f"{PAGE}/submit"
    form = await call(
        setup.app, "POST", submit, body=b"token=tok_00000001&nonce=n", headers=[("content-type", "application/x-www-form-urlencoded")]
    )
    assert form.status == 415
    bare = await call(setup.app, "POST", submit, body=b'{"token":"tok_00000001","nonce":"nonce-abc1"}')
    assert bare.status == 415  # no Content-Type: no cross-site "simple" request gets through
    for body, field in (
        (b'{"nonce":"nonce-abc1"}', "token"),
        (b'{"token":"tok 1","nonce":"nonce-abc1"}', "token"),
        # a card number where the token or the nonce goes is refused and never sent on
        (b'{"token":"4242424242424242","nonce":"nonce-abc1"}', "token"),
        (b'{"token":"tok_4242424242424242","nonce":"nonce-abc1"}', "token"),
        (b'{"token":"tok_00000001","nonce":"4242424242424242"}', "nonce"),
        (b'{"token":"tok_00000001","nonce":"n"}', "nonce"),
        (b'{"token":"tok_00000001"}', "nonce"),
        (b"[1]", "body"),
    ):
        refused = await call(setup.app, "POST", submit, body=body, headers=JSON_HEADERS)
        assert refused.status == 400 and refused.json()["details"]["field"] == field, body
    large = await call(setup.app, "POST", submit, body=b'{"token":"' + b"t" * 5000 + b'"}', headers=JSON_HEADERS)
    assert large.status == 413
    wrong = await call(setup.app, "GET", submit)
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    assert (await call(setup.app, "POST", PAGE)).status == 405
    assert setup.payment.completions == []


async def test_a_card_number_never_reaches_the_gateway_as_a_field(setup: Setup) -> None:
    """What the page's form could send natively is nothing: no field has a name, and the
    CSP forbids form submission; the submit route refuses anything but a token."""
    setup.payment.add(checkout(SESSION))
    answer = await call(setup.app, "GET", PAGE)
    assert _csp(answer)["form-action"] == "'none'"
    refused = await call(
        setup.app, "POST", f"{PAGE}/submit", body=b'{"token":"4242424242424242 ","nonce":"nonce-abc1"}', headers=JSON_HEADERS
    )
    assert refused.status == 400 and setup.payment.completions == []


# --- processor webhooks -----------------------------------------------------------------


async def test_a_webhook_is_forwarded_raw_with_lower_cased_headers(setup: Setup) -> None:
    raw = b'{"type":"charge.succeeded",  "data":{"id":"ch_1"}}\n'  # byte for byte: the signature covers it
    headers = [
        ("Content-Type", "application/json"),
        ("Webhook-Id", "msg_1"),
        ("Webhook-Signature", GOOD_SIGNATURE),
        ("X-Extra", "a"),
        ("x-extra", "b"),
    ]
    answer = await call(setup.app, "POST", f"/webhooks/processors/sandbox/{MERCHANT}", body=raw, headers=headers)
    assert answer.status == 200 and answer.json() == {"received": True, "result": "applied"}
    assert answer.scope[ROUTE_SCOPE_KEY] == "/webhooks/processors/{processor}/{merchant_id}"
    (hook,) = setup.payment.webhooks
    assert (hook.merchant_id, hook.processor, hook.body) == (MERCHANT, "sandbox", raw)
    assert hook.headers["webhook-id"] == "msg_1" and hook.headers["content-type"] == "application/json"
    assert hook.headers["x-extra"] == "a, b"
    assert all(name == name.lower() for name in hook.headers)


async def test_a_webhook_with_a_bad_signature_is_a_400(setup: Setup) -> None:
    answer = await call(
        setup.app, "POST", f"/webhooks/processors/sandbox/{MERCHANT}", body=b"{}", headers=[("webhook-signature", "v1,forged")]
    )
    assert answer.status == 400 and answer.headers["content-type"] == "application/json"
    assert answer.json()["code"] == "INVALID_WEBHOOK_SIGNATURE" and answer.json()["error"] == "bad_request"
    assert setup.payment.webhooks == []


async def test_a_webhook_for_an_unknown_merchant_or_the_wrong_method_or_size(setup: Setup) -> None:
    unknown = await call(
        setup.app, "POST", "/webhooks/processors/sandbox/org_nobody000000000", body=b"{}", headers=[("webhook-signature", GOOD_SIGNATURE)]
    )
    assert unknown.status == 404 and unknown.json()["code"] == "MERCHANT_NOT_FOUND"
    wrong = await call(setup.app, "GET", f"/webhooks/processors/sandbox/{MERCHANT}")
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    large = await call(
        setup.app,
        "POST",
        f"/webhooks/processors/sandbox/{MERCHANT}",
        body=b"x" * ((1 << 20) + 1),
        headers=[("webhook-signature", GOOD_SIGNATURE)],
    )
    assert large.status == 413 and large.json()["code"] == "BODY_TOO_LARGE"
    for path in ("/webhooks/processors/sandbox", "/webhooks/processors/Bad Name/org_x", f"/webhooks/processors/sandbox/{MERCHANT}/extra"):
        assert (await call(setup.app, "POST", path, body=b"{}")).status == 404, path
    assert setup.payment.webhooks == []


async def test_hosted_routes_have_the_gateways_header_limits(setup: Setup) -> None:
    setup.payment.add(checkout(SESSION))
    many = [(f"x-h{i}", "v") for i in range(101)]
    for method, path in (("GET", PAGE), ("POST", f"{PAGE}/submit"), ("POST", f"/webhooks/processors/sandbox/{MERCHANT}")):
        answer = await call(setup.app, method, path, headers=many)
        assert answer.status == 431 and answer.json()["code"] == "HEADERS_TOO_LARGE", path
    assert setup.payment.gets == [] and setup.payment.completions == [] and setup.payment.webhooks == []


async def test_hosted_routes_are_not_in_the_rest_api_document(setup: Setup) -> None:
    document = json.loads((await call(setup.app, "GET", "/openapi.json")).body)
    assert not [path for path in document["paths"] if path.startswith(("/checkout", "/webhooks"))]


# --- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("49.00", "USD", "$49.00"),
        ("1234567.5", "EUR", "€1,234,567.50"),
        ("12.3456", "GBP", "£12.3456"),  # more places than the currency's: shown, never rounded away
        ("100", "JPY", "¥100"),
        ("5.125", "KWD", "5.125 KWD"),
        ("-3.00", "AUD", "-A$3.00"),
        ("abc", "USD", "abc USD"),
        ("1.00", "usd", "1.00 usd"),
        # more digits than the default decimal precision: shown, not a 500
        ("999999999999999999999999999", "USD", "$999,999,999,999,999,999,999,999,999.00"),
    ],
)
def test_money_is_shown_exactly(amount: str, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown


def test_only_http_urls_become_links_and_csp_origins() -> None:
    assert safe_url("https://a.example/x?y=1") == "https://a.example/x?y=1"
    for bad in ("javascript:alert(1)", "JAVASCRIPT:alert(1)", "data:text/html,x", "//evil.example", "/relative", "", None, "http://"):
        assert safe_url(bad) is None, bad
    assert origin_of("http://127.0.0.1:7001/v1/tokens") == "http://127.0.0.1:7001"
    assert origin_of("https://user:pw@tok.example/v1") is None
    assert origin_of("https://tok.example; script-src *") is None
