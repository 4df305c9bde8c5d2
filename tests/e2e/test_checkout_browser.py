"""The hosted checkout pages in a real browser (Playwright driving Debian's headless
Chromium, ``make browser``; nothing is downloaded) through the whole mesh: the SDK makes
the merchant's catalog, customers and subscriptions, the page tokenizes the card at the
sandbox processor and submits the token to the gateway, and what was charged is read
from the sandbox's own records (``GET /v1/_sandbox/charges``), never from Accrue.

The success and failure redirects point at a small HTTP server of the test's own, so
landing on the merchant's page is observed where it happens.

ACCRUE_CHECKOUT_SCREENSHOTS=<dir> saves a screenshot of the pages there, to look at.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Response, sync_playwright

from libs.infra.runner import Mesh
from libs.testing.billing import Catalog, add_months, advance, at, clock, customer, invoices, new_merchant, subscribe
from libs.testing.fixtures import MerchantClient
from libs.testing.payments import (
    CARD_DECLINED,
    CARD_SLOW,
    CARD_SUCCEEDS,
    HOUR,
    Sandbox,
    checkout_of,
    invoice_state,
    minor,
    pending_subscription,
    setup_session,
    spaced,
    submit,
    subscription_status,
    tokenize,
)
from libs.testing.payments import Page as PageRender

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
T0 = at("2027-03-01T00:00:00Z")
MERCHANT_NAME = "Browser Checkout Co"
# the page's own waits: a submit waits for the processor and for invoicing
PAGE_TIMEOUT_MS = 60_000


# --- the merchant's site: where the redirects land ----------------------------------------


@dataclass
class Landing:
    """A tiny HTTP server standing for the merchant's site (success and failure pages)."""

    base: str
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


@pytest.fixture(scope="module")
def landing() -> Iterator[Landing]:
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = f"<!doctype html><title>merchant</title><h1 id='landed'>{self.path.split('?')[0]}</h1>".encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Landing(f"http://127.0.0.1:{server.server_address[1]}", hits)
    finally:
        server.shutdown()
        server.server_close()


# --- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 520, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield opened
    finally:
        context.close()


@dataclass
class Watch:
    """What the page asked for and what the console said while it was watched."""

    requests: list[tuple[str, str]] = field(default_factory=list)  # (url, body)
    console: list[str] = field(default_factory=list)


def watch(page: Page) -> Watch:
    seen = Watch()
    page.on("request", lambda request: seen.requests.append((request.url, request.post_data or "")))
    page.on("console", lambda message: seen.console.append(f"{message.type}: {message.text}"))
    return seen


def open_checkout(page: Page, url: str) -> Response:
    response = page.goto(url)
    assert response is not None
    return response


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("ACCRUE_CHECKOUT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"e2e-{name}.png"), full_page=True)


def fill_card(page: Page, number: str, expiry: str = "12 / 34", cvc: str = "123") -> None:
    page.fill("#card-number", spaced(number))
    page.fill("#card-expiry", expiry)
    page.fill("#card-cvc", cvc)
    page.fill("#card-name", "Jane Doe")


def tokenize_url(page: Page) -> str:
    """Where the page's script sends the card: the sandbox processor's public origin."""
    url = page.get_attribute("#card-form", "data-tokenize-url")
    assert url is not None
    return url


def assert_card_went_to_the_processor_only(seen: Watch, tokenizer: str, number: str) -> None:
    """The number left the browser once, to the processor's tokenize endpoint, and the
    page's Content-Security-Policy refused nothing the page needs."""
    carried = [url for url, body in seen.requests if number in body or number in url]
    assert carried == [tokenizer], carried
    assert not [line for line in seen.console if "Content Security Policy" in line or "Refused to" in line], seen.console


# --- the mesh ---------------------------------------------------------------------------


def merchant(mesh: Mesh, name: str) -> MerchantClient:
    """A merchant of its own, made on another thread: while Playwright's sync API is open
    its event loop counts as running on this one, and making a merchant runs a loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(new_merchant, mesh, name).result()


@pytest.fixture(scope="module")
def shop(mesh: Mesh) -> MerchantClient:
    """A merchant of this module's own (its name is what the page shows)."""
    return merchant(mesh, MERCHANT_NAME)


@pytest.fixture(scope="module")
def other_shop(mesh: Mesh) -> MerchantClient:
    return merchant(mesh, "Other Checkout Co")


@pytest.fixture(scope="module")
def sandbox(mesh: Mesh) -> Sandbox:
    return Sandbox.of(mesh)


def redirects(landing: Landing, tag: str) -> dict[str, str]:
    return {"on_success": landing.url(f"/paid/{tag}"), "on_failure": landing.url(f"/failed/{tag}")}


def statuses_of(sandbox: Sandbox, payable_id: str) -> list[str]:
    return [status for _, status in sandbox.keys_of(payable_id)]


# --- (a) pay Invoice 0 on the page ---------------------------------------------------------


def test_paying_invoice_0_on_the_page_lands_on_the_success_redirect_and_activates_the_subscription(
    shop: MerchantClient, sandbox: Sandbox, landing: Landing, page: Page
) -> None:
    tag = uuid.uuid4().hex[:8]
    sub = pending_subscription(shop, "Checkout pays", T0, amount="49.00", redirect_urls=redirects(landing, tag))
    payment = checkout_of(sub)
    assert payment.invoice_id is not None
    seen = watch(page)
    response = open_checkout(page, payment.checkout_url)
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store" and "connect-src" in response.headers["content-security-policy"]
    assert page.inner_text(".merchant-name") == MERCHANT_NAME
    assert page.inner_text("[data-testid=amount]") == "$49.00"
    assert "Platform fee" in page.inner_text(".lines")
    tokenizer = tokenize_url(page)
    assert tokenizer.startswith(sandbox.public_url), tokenizer
    screenshot(page, "invoice-0")
    fill_card(page, CARD_SUCCEEDS)
    with page.expect_navigation(url=landing.url(f"/paid/{tag}")):
        page.click("#pay-button")
    assert page.inner_text("#landed") == f"/paid/{tag}"
    # when the page has said "paid", the invoice reads PAID and the subscription is active
    assert invoice_state(shop, payment.invoice_id)[0] == "PAID"
    assert subscription_status(shop, sub.id) == "active"
    (charge,) = sandbox.charges_of(payment.payment_session_id)
    assert (charge["status"], charge["amount"], str(charge["currency"]).upper()) == ("succeeded", minor("49.00"), "USD")
    assert charge["card"]["last4"] == "4242"
    assert_card_went_to_the_processor_only(seen, tokenizer, CARD_SUCCEEDS)
    # the page of the paid session, opened again
    open_checkout(page, payment.checkout_url)
    assert page.get_attribute("[data-testid=status]", "data-status") == "completed"
    assert page.locator("h1").first.inner_text() == "Paid"
    screenshot(page, "paid")


# --- (b) a declined card --------------------------------------------------------------------


def test_a_declined_card_shows_the_decline_and_leaves_the_subscription_pending(
    shop: MerchantClient, sandbox: Sandbox, landing: Landing, page: Page
) -> None:
    tag = uuid.uuid4().hex[:8]
    sub = pending_subscription(shop, "Checkout declines", T0, amount="49.00", redirect_urls=redirects(landing, tag))
    payment = checkout_of(sub)
    assert payment.invoice_id is not None
    open_checkout(page, payment.checkout_url)
    fill_card(page, CARD_DECLINED)
    page.click("#pay-button")
    page.wait_for_selector("#card-error:not([hidden])")
    assert "declined" in page.inner_text("#card-error-text").lower()
    screenshot(page, "declined")
    assert page.get_attribute("#failure-link", "href") == landing.url(f"/failed/{tag}")
    assert page.is_enabled("#pay-button") and page.url == payment.checkout_url  # no redirect: another card may be tried
    assert subscription_status(shop, sub.id) == "pending_payment"
    assert invoice_state(shop, payment.invoice_id)[0] != "PAID"
    assert statuses_of(sandbox, payment.payment_session_id) == ["failed"]
    assert sandbox.charges_of(payment.payment_session_id)[0]["failureCode"] == "card_declined"
    assert not [hit for hit in landing.hits if tag in hit]
    # the same page, another card: paid, one successful charge beside the declined one
    fill_card(page, CARD_SUCCEEDS)
    with page.expect_navigation(url=landing.url(f"/paid/{tag}")):
        page.click("#pay-button")
    assert subscription_status(shop, sub.id) == "active"
    assert sorted(statuses_of(sandbox, payment.payment_session_id)) == ["failed", "succeeded"]


# --- (c) a saved card pays a period invoice with no page ---------------------------------------


def test_a_card_saved_through_a_setup_session_pays_an_auto_charge_period_invoice_with_no_page(
    shop: MerchantClient, sandbox: Sandbox, landing: Landing, page: Page
) -> None:
    tag = uuid.uuid4().hex[:8]
    customer_id = customer(shop, "Saved Card Inc")
    session = setup_session(shop, customer_id, success_redirect_url=landing.url(f"/saved/{tag}"))
    seen = watch(page)
    open_checkout(page, session.url)
    assert "Save a card" in page.inner_text("body") and page.inner_text("#pay-button") == "Save card"
    tokenizer = tokenize_url(page)
    fill_card(page, CARD_SUCCEEDS)
    with page.expect_navigation(url=landing.url(f"/saved/{tag}")):
        page.click("#pay-button")
    assert_card_went_to_the_processor_only(seen, tokenizer, CARD_SUCCEEDS)
    methods = shop.sdk.customers.list_customer_payment_methods(id=customer_id).data
    assert [(m.last4, m.exp_month, m.exp_year) for m in methods] == [("4242", 12, 2034)]
    assert sandbox.charges_of(session.id) == []  # saving charges nothing

    catalog = Catalog.create(shop, "Auto charged")
    price = catalog.fee_price(catalog.fee("Service"), "30.00", name="Service", payment_term="in_arrears")
    plan = catalog.plan([price], name="Auto charged plan")
    test_clock = clock(shop, T0, f"auto-{tag}")
    sub = subscribe(shop, plan.id, customer_id, test_clock, auto_charge=True)
    assert sub.status == "active"  # nothing in advance
    advance(shop, test_clock.id, add_months(T0, 1) + HOUR)  # past the first boundary and its grace
    (invoice_1,) = [bill for bill in invoices(shop, sub.id) if bill.sequence == 1]
    assert invoice_1.status == "PAID", invoice_1.raw
    (charge,) = sandbox.charges_of(invoice_1.id)
    assert (charge["idempotencyKey"], charge["status"], charge["amount"]) == (f"{invoice_1.id}:auto:0", "succeeded", minor("30.00"))


# --- (d) a double click is one charge -------------------------------------------------------------


@pytest.mark.parametrize("how", ["double click", "two submits past the button"])
def test_a_double_submit_on_the_page_makes_one_charge(
    shop: MerchantClient, sandbox: Sandbox, landing: Landing, page: Page, how: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    sub = pending_subscription(shop, "Checkout double", T0, amount="49.00", redirect_urls=redirects(landing, tag))
    payment = checkout_of(sub)
    open_checkout(page, payment.checkout_url)
    fill_card(page, CARD_SUCCEEDS)
    with page.expect_navigation(url=landing.url(f"/paid/{tag}")):
        if how == "double click":
            page.dblclick("#pay-button")
        else:
            page.evaluate("() => { const form = document.getElementById('card-form'); form.requestSubmit(); form.requestSubmit(); }")
    assert subscription_status(shop, sub.id) == "active"
    assert statuses_of(sandbox, payment.payment_session_id) == ["succeeded"]


def test_a_second_tab_of_a_paid_page_charges_nothing(shop: MerchantClient, sandbox: Sandbox, landing: Landing, browser: Browser) -> None:
    tag = uuid.uuid4().hex[:8]
    sub = pending_subscription(shop, "Checkout tabs", T0, amount="49.00", redirect_urls=redirects(landing, tag))
    payment = checkout_of(sub)
    context = browser.new_context()
    try:
        first, second = context.new_page(), context.new_page()
        for tab in (first, second):
            tab.set_default_timeout(PAGE_TIMEOUT_MS)
            open_checkout(tab, payment.checkout_url)  # both rendered while the session is pending
            fill_card(tab, CARD_SUCCEEDS)
        with first.expect_navigation(url=landing.url(f"/paid/{tag}")):
            first.click("#pay-button")
        # the second tab submits its own render: the session is paid, so it answers completed
        with second.expect_navigation(url=landing.url(f"/paid/{tag}")):
            second.click("#pay-button")
    finally:
        context.close()
    assert statuses_of(sandbox, payment.payment_session_id) == ["succeeded"]


def test_a_slow_charge_shows_processing_and_lands_on_success_once_decided(
    shop: MerchantClient, sandbox: Sandbox, landing: Landing, page: Page
) -> None:
    """The slow card answers after the adapter's timeout: the submit answers processing,
    the page says so and asks the status route until the charge is decided."""
    tag = uuid.uuid4().hex[:8]
    sub = pending_subscription(shop, "Checkout slow", T0, amount="49.00", redirect_urls=redirects(landing, tag))
    payment = checkout_of(sub)
    open_checkout(page, payment.checkout_url)
    fill_card(page, CARD_SLOW)
    page.click("#pay-button")
    page.wait_for_selector("#state-processing:not([hidden])")
    assert "Processing your payment" in page.inner_text("#state-processing")
    page.wait_for_url(landing.url(f"/paid/{tag}"), timeout=120_000)
    assert subscription_status(shop, sub.id) == "active"
    assert statuses_of(sandbox, payment.payment_session_id) == ["succeeded"]


# --- (e) merchant text is escaped ----------------------------------------------------------------


def test_merchant_supplied_text_is_shown_as_text(mesh: Mesh, browser: Browser) -> None:
    hostile = merchant(mesh, 'Evil <img src=x onerror="window.__pwned=1"> & Co')
    catalog = Catalog.create(hostile, "<script>window.__pwned=2</script>Product")
    line_name = "<script>window.__pwned=3</script>Setup"
    plan = catalog.plan([catalog.fee_price(catalog.fee("Fee"), "25.00", name=line_name)], name="<b>Plan</b>")
    sub = subscribe(hostile, plan.id, customer(hostile, "Escaped Inc"), clock(hostile, T0, f"escape-{uuid.uuid4().hex[:6]}"))
    payment = checkout_of(sub)
    context = browser.new_context()
    try:
        tab = context.new_page()
        open_checkout(tab, payment.checkout_url)
        assert tab.evaluate("() => window.__pwned === undefined")
        screenshot(tab, "escaped")
        assert tab.inner_text(".merchant-name") == 'Evil <img src=x onerror="window.__pwned=1"> & Co'
        assert line_name in tab.inner_text(".lines")
        assert tab.locator("script").count() == 1  # the page's own, nothing the merchant wrote
        assert tab.locator(".panel img, .merchant img").count() == 0
    finally:
        context.close()


# --- (f) another merchant's session ------------------------------------------------------------


def test_another_merchants_session_under_this_merchants_path_is_404(
    shop: MerchantClient, other_shop: MerchantClient, page: Page, mesh: Mesh
) -> None:
    theirs = checkout_of(pending_subscription(other_shop, "Theirs", T0, amount="49.00"))
    assert open_checkout(page, theirs.checkout_url).status == 200  # under its own merchant it opens
    borrowed = theirs.checkout_url.replace(f"/checkout/{other_shop.merchant_id}/", f"/checkout/{shop.merchant_id}/")
    assert borrowed != theirs.checkout_url
    response = open_checkout(page, borrowed)
    assert response.status == 404 and "Page not found" in page.inner_text("body")
    assert "49.00" not in page.content() and "Theirs" not in page.content()
    unknown = theirs.checkout_url.replace(f"/checkout/{other_shop.merchant_id}/", "/checkout/org_0000000000000000/")
    assert open_checkout(page, unknown).status == 404
    guessed = f"{mesh.gateway_url}/checkout/{shop.merchant_id}/ps_{uuid.uuid4().hex[:16]}"
    assert open_checkout(page, guessed).status == 404


# --- (g) an expired session -------------------------------------------------------------------


def test_an_expired_session_shows_expired_and_takes_no_card(shop: MerchantClient, page: Page) -> None:
    customer_id = customer(shop, "Expired Link Inc")
    session = setup_session(shop, customer_id, expires_at=datetime.now(UTC) + timedelta(seconds=3))
    assert open_checkout(page, session.url).status == 200 and page.locator("#card-form").count() == 1
    before = PageRender(session.url, 200, page.content())  # a render from before the end
    time.sleep(3.5)
    open_checkout(page, session.url)
    assert page.get_attribute("[data-testid=status]", "data-status") == "expired"
    screenshot(page, "expired")
    assert "expired" in page.locator("h1").first.inner_text().lower()
    assert page.locator("#card-form").count() == 0 and page.locator("input").count() == 0
    # the render from before the end, submitted now with a good card: nothing is saved
    late = submit(before, tokenize(before, CARD_SUCCEEDS))
    assert late.status_code == 200 and late.json()["status"] == "expired", late.text
    assert shop.sdk.customers.list_customer_payment_methods(id=customer_id).data == []
