"""The payment service against the real sandbox processor (services/sandbox, in-process on
its own database) through its adapter: test cards paid, declined and saved, a slow card
reconciled by key, its signed webhooks applied through HandleProcessorWebhook; and no
card number anywhere in the payment service's tables afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from accrue.payment.v1 import payment_service_pb2 as pay

from libs.testing.fixtures import StartHost
from libs.testing.waiting import eventually_async
from services.payment.processors.factory import register_processor
from services.payment.processors.sandbox import SandboxProcessor, SandboxProcessorSettings
from services.payment.tests.fakes import render_nonce
from services.payment.tests.integration.conftest import InvoicingServer, World, start_world
from services.sandbox.app import DEFINITION as SANDBOX

SECRET = "sk_test_payment_integration"
PUBLISHABLE = "pk_test_payment_integration"
WEBHOOK_SECRET = "whsec_cGF5bWVudC1pbnRlZ3JhdGlvbi13ZWJob29rLXNlY3JldA=="
CARDS = {
    "ok": "4242424242424242",
    "declined": "4000000000000002",
    "insufficient": "4000000000009995",
    "later": "4000000000000341",
    "slow": "4000000000006975",
}


class Forwarder:
    """The gateway's part in webhooks: POST /webhooks/processors/{processor}/{merchant}
    forwarded raw to HandleProcessorWebhook, 200 with its result (400 when it does not verify)."""

    def __init__(self) -> None:
        self.world: World | None = None
        self.results: list[str] = []
        self.url = ""

    async def app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        _, _, processor, merchant = scope["path"].strip("/").split("/")
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        assert self.world is not None
        try:
            answer = await self.world.payments.HandleProcessorWebhook(
                pay.HandleProcessorWebhookRequest(processor=processor, body=body, headers=headers), metadata=self.world.md(merchant)
            )
            status, result = 200, answer.result
        except Exception as exc:
            status, result = 400, repr(exc)
        self.results.append(result)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    found = Forwarder()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    found.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(found.app, log_config=None, access_log=False, lifespan="off", loop="none", interface="asgi3"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield found
    server.should_exit = True
    with contextlib.suppress(Exception):
        await task


class SandboxWorld:
    def __init__(self, world: World, url: str, forwarder: Forwarder) -> None:
        self.world = world
        self.forwarder = forwarder
        self.client = httpx.AsyncClient(base_url=url, timeout=10)

    async def token(self, card: str) -> str:
        response = await self.client.post(
            "/v1/tokens", json={"publishableKey": PUBLISHABLE, "number": CARDS[card], "expMonth": 12, "expYear": 2034, "cvc": "123"}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["id"]
        return token

    async def pay(self, session_id: str, card: str) -> pay.Checkout:
        request = pay.CompleteCheckoutRequest(session_id=session_id, card_token=await self.token(card), submit_nonce=render_nonce())
        checkout: pay.Checkout = await self.world.payments.CompleteCheckout(request, metadata=self.world.md())
        return checkout

    async def charges(self) -> list[dict[str, Any]]:
        response = await self.client.get("/v1/_sandbox/charges", headers={"authorization": f"Bearer {SECRET}"})
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = response.json()["data"]
        return found


@pytest.fixture
async def sandbox(forwarder: Forwarder, invoicing_server: InvoicingServer, start_host: StartHost) -> AsyncIterator[SandboxWorld]:
    host = await start_host(
        SANDBOX,
        sandbox_secret_key=SECRET,
        sandbox_publishable_key=PUBLISHABLE,
        sandbox_webhook_secret=WEBHOOK_SECRET,
        sandbox_slow_seconds=1.5,
        # every event twice, every processing event again after the final one
        sandbox_webhook_duplicate_rate=1.0,
        sandbox_webhook_reorder_rate=1.0,
        sandbox_webhook_min_delay_ms=5,
        sandbox_webhook_max_delay_ms=50,
    )
    url = f"http://127.0.0.1:{host.http_port}"
    adapter = SandboxProcessor(
        SandboxProcessorSettings(
            url=url, secret_key=SECRET, publishable_key=PUBLISHABLE, webhook_secret=WEBHOOK_SECRET, timeout_seconds=0.8
        )
    )
    register_processor("sandbox", lambda: adapter)
    try:
        world = await start_world(start_host, invoicing_server, adapter, public_url=forwarder.url)  # type: ignore[arg-type]
        forwarder.world = world
        made = SandboxWorld(world, url, forwarder)
        yield made
        await made.client.aclose()
    finally:
        from services.payment.processors.factory import _sandbox

        register_processor("sandbox", _sandbox)


async def test_test_cards_through_the_sandbox_and_no_card_number_is_kept(sandbox: SandboxWorld) -> None:
    world = sandbox.world
    customer = await world.customer()
    # a page paid with 4242, after a decline with 0002 on the same page
    invoice = world.invoice()
    session = await world.open_session(invoice, customer)
    declined = await sandbox.pay(session.id, "declined")
    assert (declined.session.status, declined.failure_code) == ("pending", "card_declined")
    paid = await sandbox.pay(session.id, "ok")
    assert paid.session.status == "completed"
    assert world.invoicing.reported(invoice) == [(f"{session.id}:2", "succeeded")]
    # a saved card that fails later (0341): saved fine, the off-session charge declined
    setup = await world.payments.CreateCustomerPaymentMethod(pay.CreateCustomerPaymentMethodRequest(id=customer), metadata=world.md())
    saved = await sandbox.pay(setup.id, "later")
    assert saved.session.status == "completed" and saved.saved_method.last4 == "0341"
    later = world.invoice()
    failed = await world.payments.ChargeInvoice(world.charge(later, customer, f"{later}:auto:0", trigger="automatic"), metadata=world.md())
    assert (failed.status, failed.failure_code) == ("failed", "card_declined")
    # the slow card: processing, then found by key (or told by a webhook) once it answers
    slow_invoice = world.invoice()
    slow_session = await world.open_session(slow_invoice, customer)
    slow = await sandbox.pay(slow_session.id, "slow")
    assert slow.session.status == "processing"

    async def slow_status() -> str:
        page = await world.payments.GetCheckout(pay.GetCheckoutRequest(session_id=slow_session.id), metadata=world.md())
        return str(page.session.status)

    assert await eventually_async(slow_status, "completed", timeout=15) == "completed"

    # exactly one successful charge per invoice, by the sandbox's own records
    charges = await sandbox.charges()
    by_invoice: dict[str, list[str]] = {}
    for charge in charges:
        by_invoice.setdefault(charge["metadata"].get("invoice_id", ""), []).append(charge["status"])
    assert sorted(by_invoice[invoice]) == ["failed", "succeeded"]
    assert by_invoice[later] == ["failed"]
    assert by_invoice[slow_invoice] == ["succeeded"]

    # every webhook came twice, processing again after the final state: nothing applied twice
    async def results() -> bool:
        return len(sandbox.forwarder.results) >= 10

    assert await eventually_async(results, True, timeout=15) is True
    await asyncio.sleep(1.0)  # the stragglers
    assert set(sandbox.forwarder.results) <= {"applied", "duplicate", "stale"}, sandbox.forwarder.results
    assert "duplicate" in sandbox.forwarder.results
    assert [r.status for r in await world.attempts(slow_invoice)] == ["succeeded"]
    assert world.invoicing.reported(slow_invoice) == [(f"{slow_session.id}:1", "succeeded")]

    # no card number (nor its first twelve digits) in any table of the payment service
    assert world.host.runtime is not None
    numbers = [number.encode() for number in CARDS.values()]
    async with world.host.runtime.db.engine.connect() as conn:
        for table in world.host.runtime.db.metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                for value in row:
                    data = value if isinstance(value, bytes) else str(value).encode()
                    for number in numbers:
                        assert number not in data and number[:12] not in data, f"a card number is in {table.name}"
