"""The hosted checkout page's script in Debian's headless Chromium (Playwright), against
the gateway on uvicorn with a fake payment service (a real gRPC server) and a fake card
tokenizer on another origin (CORS, as a processor's is): what the page does with each
answer, the double click, the iframe messages, the CSP, and that the card number goes to
the tokenizer only. tests/e2e/test_checkout_browser.py drives the same page through the
whole mesh and the sandbox processor.

ACCRUE_CHECKOUT_SCREENSHOTS=<dir> saves a screenshot of each page state there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Browser, Page, Request, async_playwright

from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings
from services.gateway.tests.checkout_fakes import MERCHANT, FakeMerchants, FakePayment, checkout, dead_address, serve

CHROMIUM = "/usr/bin/chromium"
SESSION = "ps_browser000000001"
GOOD_CARD = "4242 4242 4242 4242"
TOKENS = {"4242424242424242": "tok_visacard", "4000000000000002": "tok_declined", "4000000000006975": "tok_slowcard"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Tokenizer:
    """The processor's side on its own origin: /v1/tokens (CORS open, as the sandbox's),
    the merchant's pages (/thanks, /sorry) and an embedding page (/embed?src=...)."""

    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        cors = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-headers", b"content-type"),
            (b"access-control-allow-methods", b"POST"),
        ]
        path, method = scope["path"], scope["method"]
        if path == "/v1/tokens" and method == "OPTIONS":
            await _send(send, 204, b"", cors)
            return
        if path == "/v1/tokens" and method == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            card = json.loads(body)
            self.bodies.append(card)
            token = TOKENS.get(card.get("number", ""))
            if token is None:
                refusal = {"error": {"code": "incorrect_number", "message": "Your card number is incorrect."}}
                await _send(send, 400, json.dumps(refusal).encode(), [*cors, (b"content-type", b"application/json")])
                return
            answer = {
                "id": token,
                "card": {"brand": "visa", "last4": card["number"][-4:], "expMonth": card["expMonth"], "expYear": card["expYear"]},
            }
            await _send(send, 200, json.dumps(answer).encode(), [*cors, (b"content-type", b"application/json")])
            return
        if path in ("/thanks", "/sorry"):
            await _send(send, 200, f"<!doctype html><h1>{path[1:]}</h1>".encode(), [(b"content-type", b"text/html")])
            return
        if path == "/embed":
            src = scope["query_string"].decode().removeprefix("src=")
            page = (
                "<!doctype html><script>window.messages=[];"
                "addEventListener('message',e=>window.messages.push(e.data));</script>"
                f'<iframe id="checkout" src="{src}" width="500" height="900"></iframe>'
            )
            await _send(send, 200, page.encode(), [(b"content-type", b"text/html")])
            return
        await _send(send, 404, b"", [])


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", loop="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "the server exited while starting"
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Stage:
    gateway_url: str
    tokenizer_url: str
    payment: FakePayment
    tokenizer: Tokenizer
    browser: Browser

    def add(self, **options: Any) -> str:
        options.setdefault("success_url", f"{self.tokenizer_url}/thanks")
        options.setdefault("failure_url", f"{self.tokenizer_url}/sorry")
        self.payment.add(checkout(SESSION, tokenize_url=f"{self.tokenizer_url}/v1/tokens", **options))
        return f"{self.gateway_url}/checkout/{MERCHANT}/{SESSION}"


class _NoKeys:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def merchant_for(self, authorization: str | None) -> str | None:
        return None


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    payment = FakePayment()  # type: ignore[abstract]  # only the three hosted-route RPCs are called
    grpc_server, address = await serve(payment)
    dead = dead_address()
    backends = {name: dead for name in ("catalog", "subscription", "metering", "invoicing", "entitlement")}
    settings = GatewaySettings(rpc_timeout_seconds=5, backend_addrs={**backends, "payment": address})
    gateway = Gateway(settings, None, keys=_NoKeys(), merchants=FakeMerchants({MERCHANT: "Acme Analytics"}))  # type: ignore[arg-type]
    tokenizer = Tokenizer()
    async with _served(gateway) as gateway_url, _served(tokenizer) as tokenizer_url, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield Stage(gateway_url, tokenizer_url, payment, tokenizer, browser)
        finally:
            await browser.close()
    await grpc_server.stop(0)


@dataclass
class Watched:
    page: Page
    requests: list[Request]
    console: list[str]


async def _open(stage: Stage, url: str) -> Watched:
    page = await stage.browser.new_page(viewport={"width": 520, "height": 900})
    watched = Watched(page, [], [])
    page.on("request", lambda request: watched.requests.append(request))
    page.on("console", lambda message: watched.console.append(f"{message.type}: {message.text}"))
    await page.goto(url)
    return watched


async def _fill(page: Page, number: str, expiry: str = "12 / 34", cvc: str = "123") -> None:
    await page.fill("#card-number", number)
    await page.fill("#card-expiry", expiry)
    await page.fill("#card-cvc", cvc)
    await page.fill("#card-name", "Jane Doe")


async def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("ACCRUE_CHECKOUT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _assert_card_went_to_the_tokenizer_only(watched: Watched, stage: Stage, digits: str) -> None:
    for request in watched.requests:
        text = (request.url or "") + (request.post_data or "")
        if request.url.startswith(f"{stage.tokenizer_url}/v1/tokens"):
            continue
        assert digits not in text and digits[-8:] not in text, request.url
    assert not [line for line in watched.console if "Content Security Policy" in line or "Refused to" in line], watched.console


async def test_paying_tokenizes_at_the_processor_submits_the_token_and_follows_the_success_redirect(stage: Stage) -> None:
    url = stage.add(lines=[("Analytics Pro (monthly)", "49.00", "1"), ("Onboarding", "0.00", "1")])
    watched = await _open(stage, url)
    page = watched.page
    await _shot(page, "1-form")
    await _fill(page, GOOD_CARD)
    assert await page.input_value("#card-number") == GOOD_CARD  # grouped as typed
    async with page.expect_navigation(url=f"{stage.tokenizer_url}/thanks"):
        await page.click("#pay-button")
    assert stage.tokenizer.bodies == [
        {"publishableKey": "pk_test_sandbox", "number": "4242424242424242", "expMonth": 12, "expYear": 2034, "cvc": "123"}
    ]
    (completion,) = stage.payment.completions
    assert completion.card_token == "tok_visacard" and completion.merchant_id == MERCHANT
    _assert_card_went_to_the_tokenizer_only(watched, stage, "4242424242424242")
    await page.goto(url)  # the page of a paid session
    assert await page.locator("h1").first.inner_text() == "Paid"
    await _shot(page, "5-paid")


async def test_a_decline_is_shown_and_another_card_pays_as_a_new_attempt(stage: Stage) -> None:
    url = stage.add(success_url=None)
    watched = await _open(stage, url)
    page = watched.page
    rendered_nonce = await page.get_attribute("#card-form", "data-nonce")
    await _fill(page, "4000 0000 0000 0002")
    await page.click("#pay-button")
    await page.wait_for_selector("#card-error:not([hidden])")
    assert await page.inner_text("#card-error-text") == "Your card was declined."
    assert (
        await page.is_visible("#failure-link") is False
        or await page.get_attribute("#failure-link", "href") == f"{stage.tokenizer_url}/sorry"
    )
    assert await page.is_enabled("#pay-button") and await page.input_value("#card-cvc") == ""
    await _shot(page, "2-declined")
    await _fill(page, GOOD_CARD)
    await page.click("#pay-button")
    await page.wait_for_selector("#state-done:not([hidden])")
    assert "Payment received" in await page.inner_text("#state-done")
    await _shot(page, "4-received")
    first, second = stage.payment.completions
    assert (first.card_token, second.card_token) == ("tok_declined", "tok_visacard")
    assert first.submit_nonce == rendered_nonce and second.submit_nonce not in ("", rendered_nonce)


@pytest.mark.parametrize("how", ["double click", "two submits in one task"])
async def test_a_double_submit_submits_once(stage: Stage, how: str) -> None:
    stage.payment.complete_delay = 0.6  # the first is still in flight when the second comes
    url = stage.add()
    watched = await _open(stage, url)
    page = watched.page
    await _fill(page, GOOD_CARD)
    async with page.expect_navigation(url=f"{stage.tokenizer_url}/thanks"):
        if how == "double click":
            await page.dblclick("#pay-button")
        else:  # past the disabled button: the script's own guard
            await page.evaluate("() => { const form = document.getElementById('card-form'); form.requestSubmit(); form.requestSubmit(); }")
    assert len(stage.tokenizer.bodies) == 1 and len(stage.payment.completions) == 1


async def test_a_processing_charge_is_polled_until_decided(stage: Stage) -> None:
    url = stage.add()
    watched = await _open(stage, url)
    page = watched.page
    await _fill(page, "4000 0000 0000 6975")
    await page.click("#pay-button")
    await page.wait_for_selector("#state-processing:not([hidden])")
    await _shot(page, "3-processing")
    stage.payment.sessions[(MERCHANT, SESSION)].session.status = "completed"
    await page.wait_for_url(f"{stage.tokenizer_url}/thanks", timeout=10_000)
    assert len(stage.payment.completions) == 1


async def test_a_bad_card_number_is_refused_by_the_tokenizer_and_never_submitted(stage: Stage) -> None:
    url = stage.add()
    watched = await _open(stage, url)
    page = watched.page
    await _fill(page, "1234 5678 9012 3456")
    await page.click("#pay-button")
    await page.wait_for_selector("#card-error:not([hidden])")
    assert await page.inner_text("#card-error-text") == "Your card number is incorrect."
    assert await page.get_attribute("#card-number", "aria-invalid") == "true"
    assert stage.payment.completions == []


async def test_embedded_in_an_iframe_the_parent_hears_the_outcome(stage: Stage) -> None:
    url = stage.add()
    watched = await _open(stage, f"{stage.tokenizer_url}/embed?src={url}")
    frame = watched.page.frame_locator("#checkout")
    await frame.locator("#card-number").fill("4000 0000 0000 0002")
    await frame.locator("#card-expiry").fill("12 / 34")
    await frame.locator("#card-cvc").fill("123")
    await frame.locator("#pay-button").click()
    await frame.locator("#card-error:not([hidden])").wait_for()
    await frame.locator("#card-number").fill(GOOD_CARD)
    await frame.locator("#card-cvc").fill("123")
    await frame.locator("#pay-button").click()
    await frame.locator("#state-done:not([hidden])").wait_for()  # embedded: no redirect, the parent decides
    messages = await watched.page.evaluate("window.messages")
    assert messages == [{"type": "payment_error", "code": "card_declined"}, {"type": "payment_success"}]


async def test_setup_mode_and_status_pages_render(stage: Stage) -> None:
    url = stage.add(mode="setup", label="", lines=[])
    watched = await _open(stage, url)
    assert await watched.page.inner_text("#pay-button") == "Save card"
    await _shot(watched.page, "6-setup")
    for status in ("expired", "cancelled"):
        stage.payment.sessions[(MERCHANT, SESSION)].session.status = status
        await watched.page.goto(url)
        assert await watched.page.get_attribute("[data-testid=status]", "data-status") == status
        await _shot(watched.page, f"7-{status}")
    await watched.page.goto(f"{stage.gateway_url}/checkout/{MERCHANT}/ps_nothing000000000")
    await _shot(watched.page, "8-not-found")
    assert not [line for line in watched.console if "Refused to" in line], watched.console
