"""Payments through the real mesh, for end-to-end tests: the sandbox processor's own
records, the hosted page driven the way its script drives it, saved cards, and the
autoCharge subscriptions that dunning and exactly-once tests start from.

The page without a browser: a render gives a nonce, the processor's tokenize URL and the
merchant's publishable key; the card goes to the sandbox (``POST /v1/tokens``), never to
Accrue; the token and the nonce go to ``POST /checkout/{merchant}/{session}/submit`` on
the gateway. tests/e2e/test_checkout_browser.py drives the same page in Chromium.

What the processor did is read from the sandbox itself (``GET /v1/_sandbox/charges``,
``/refunds``, ``/webhooks``), never from Accrue: a charge is attributed to what it pays
by its idempotency key (``<invoice>:auto:<n>``, ``<invoice>:retry:<n>``,
``<session>:<n>``; a refund's key is its credit note id).

Money stays a decimal string in major units on Accrue's side and integer minor units at
the processor; nothing here is a float.
"""

from __future__ import annotations

import html as html_lib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from paygentic_sdk import errors, models
from paygentic_sdk.utils.unmarshal_json_response import unmarshal_json_response
from standardwebhooks.webhooks import Webhook

from libs.infra.runner import Mesh
from libs.testing.billing import Bill, Catalog, add_months, advance, clock, customer, invoices, subscribe
from libs.testing.fixtures import MerchantClient

# Stripe-style test cards (README "Payments: the sandbox processor and its test cards")
CARD_SUCCEEDS: Final = "4242424242424242"
CARD_DECLINED: Final = "4000000000000002"  # card_declined / generic_decline
CARD_INSUFFICIENT_FUNDS: Final = "4000000000009995"  # card_declined / insufficient_funds
CARD_FAILS_LATER: Final = "4000000000000341"  # saves, every later charge declined
CARD_SLOW: Final = "4000000000006975"  # answers after ACCRUE_SANDBOX_SLOW_SECONDS, then succeeds
TEST_CARDS: Final = (CARD_SUCCEEDS, CARD_DECLINED, CARD_INSUFFICIENT_FUNDS, CARD_FAILS_LATER, CARD_SLOW)

# a page submit waits for the processor (up to the adapter's timeout) and for invoicing
SUBMIT_TIMEOUT: Final = 60.0
HOUR: Final = timedelta(hours=1)


def spaced(number: str) -> str:
    """The number as a person types it: groups of four ("4242 4242 4242 4242")."""
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def minor(amount: str, exponent: int = 2) -> int:
    """A decimal string in major units as the processor's integer minor units ("49.00" -> 4900)."""
    value = Decimal(amount).scaleb(exponent)
    assert value == value.to_integral_value(), amount
    return int(value)


def problem(response: httpx.Response) -> tuple[int, str | None, str | None]:
    """(status, code, details.field) of an Accrue error answer."""
    body = response.json()
    details = body.get("details") or {}
    return response.status_code, body.get("code"), details.get("field") if isinstance(details, dict) else None


# ---------------------------------------------------------------------------------------
# The sandbox processor
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    """The mesh's sandbox processor, read with its secret key."""

    url: str
    public_url: str
    secret_key: str
    publishable_key: str
    webhook_secret: str

    @classmethod
    def of(cls, mesh: Mesh) -> Sandbox:
        """The mesh's sandbox: where it listens and its keys, as the mesh handed them to
        every process (``Mesh.external_env``, what make run writes to run.env)."""
        env = mesh.external_env
        url = env["ACCRUE_SANDBOX_URL"].rstrip("/")
        return cls(
            url=url,
            public_url=env.get("ACCRUE_SANDBOX_PUBLIC_URL", url).rstrip("/"),
            secret_key=env["ACCRUE_SANDBOX_SECRET_KEY"],
            publishable_key=env["ACCRUE_SANDBOX_PUBLISHABLE_KEY"],
            webhook_secret=env["ACCRUE_SANDBOX_WEBHOOK_SECRET"],
        )

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, headers={"Authorization": f"Bearer {self.secret_key}"}, timeout=30)
        assert response.status_code == 200, f"sandbox GET {path}: {response.status_code} {response.text}"
        return response.json()

    @staticmethod
    def _data(body: Any) -> list[dict[str, Any]]:
        items = body["data"] if isinstance(body, dict) else body
        assert isinstance(items, list), body
        return items

    def charges(self, *, metadata: tuple[str, str] | None = None) -> list[dict[str, Any]]:
        """Every charge the sandbox made (or only those with this metadata key and value)."""
        params = {} if metadata is None else {"metadataKey": metadata[0], "metadataValue": metadata[1]}
        return self._data(self._get("/v1/_sandbox/charges", params))

    def charges_of(self, payable_id: str) -> list[dict[str, Any]]:
        """The charges of one invoice or session: those whose idempotency key it starts
        (``<invoice>:auto:0``, ``<session>:1``), ordered by key."""
        found = [charge for charge in self.charges() if str(charge.get("idempotencyKey", "")).startswith(f"{payable_id}:")]
        return sorted(found, key=lambda charge: str(charge["idempotencyKey"]))

    def keys_of(self, payable_id: str) -> list[tuple[str, str]]:
        """(idempotency key, status) of the charges of one invoice or session."""
        return [(str(charge["idempotencyKey"]), str(charge["status"])) for charge in self.charges_of(payable_id)]

    def charge_by_key(self, merchant_id: str, key: str) -> dict[str, Any] | None:
        """The merchant's charge of this idempotency key, as the adapter finds it."""
        response = httpx.get(
            f"{self.url}/v1/charges",
            params={"idempotencyKey": key},
            headers={"Authorization": f"Bearer {self.secret_key}", "Sandbox-Account": merchant_id},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        found = self._data(response.json())
        assert len(found) <= 1, found
        return found[0] if found else None

    def refunds(self) -> list[dict[str, Any]]:
        return self._data(self._get("/v1/_sandbox/refunds"))

    def refunds_of_charge(self, charge_id: str) -> list[dict[str, Any]]:
        return self._data(self._get("/v1/_sandbox/refunds", {"charge": charge_id}))

    def deliveries(self, object_id: str) -> list[dict[str, Any]]:
        """Every webhook delivery of the events of one charge or refund (``eventId``,
        ``type``, ``sequence``, ``kind`` first/duplicate/late/manual, ``status``
        pending/sending/delivered/failed, ``lastStatus`` the receiver's HTTP status)."""
        return self._data(self._get("/v1/_sandbox/webhooks", {"objectId": object_id}))

    def delivered(self, object_id: str) -> dict[str, int]:
        """Event type -> how many of its deliveries the receiver answered 2xx."""
        counts: dict[str, int] = {}
        for delivery in self.deliveries(object_id):
            if delivery["status"] == "delivered" and 200 <= int(delivery.get("lastStatus") or 0) < 300:
                counts[str(delivery["type"])] = counts.get(str(delivery["type"]), 0) + 1
        return counts

    def redeliver(self, event_id: str) -> dict[str, Any]:
        """One more delivery of an event, now, to the URL its charge named (signed afresh,
        the same event id and body: what a processor's retry looks like)."""
        response = httpx.post(
            f"{self.url}/v1/_sandbox/events/{event_id}/redeliver", headers={"Authorization": f"Bearer {self.secret_key}"}, timeout=30
        )
        assert response.status_code == 202, response.text
        delivery: dict[str, Any] = response.json()
        return delivery

    def delivery_settled(self, object_id: str, delivery_ids: set[int]) -> bool:
        """Whether every one of these deliveries has been answered (delivered or given up)."""
        states = {int(d["id"]): str(d["status"]) for d in self.deliveries(object_id) if int(d["id"]) in delivery_ids}
        return len(states) == len(delivery_ids) and all(state in ("delivered", "failed") for state in states.values())

    def sign(self, event_id: str, body: str) -> dict[str, str]:
        """Standard Webhooks headers for ``body`` signed with the sandbox's webhook secret,
        as the sandbox signs (a test playing the processor)."""
        now = datetime.now(UTC)
        return {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(self.webhook_secret).sign(event_id, now, body),
        }


def event_body(event_id: str, event_type: str, sequence: int, charge: Mapping[str, Any]) -> str:
    """A charge event in the sandbox's shape (services/sandbox/views.event_body)."""
    created = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created": created,
        "sequence": sequence,
        "data": {"object": dict(charge)},
    }
    return json.dumps(event, separators=(",", ":"))


def webhook_url(gateway_url: str, merchant_id: str, processor: str = "sandbox") -> str:
    return f"{gateway_url}/webhooks/processors/{processor}/{merchant_id}"


def post_webhook(gateway_url: str, merchant_id: str, body: str, headers: Mapping[str, str]) -> httpx.Response:
    return httpx.post(webhook_url(gateway_url, merchant_id), content=body.encode(), headers=dict(headers), timeout=30)


# ---------------------------------------------------------------------------------------
# The hosted page, without a browser
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One render of a hosted page, and what its script reads from it."""

    url: str
    status_code: int
    html: str

    @property
    def merchant_id(self) -> str:
        return self._path()[1]

    @property
    def session_id(self) -> str:
        return self._path()[2]

    def _path(self) -> list[str]:
        parts = urlsplit(self.url).path.strip("/").split("/")
        assert len(parts) == 3 and parts[0] == "checkout", self.url
        return parts

    @property
    def submit_url(self) -> str:
        return f"{self.url.rstrip('/')}/submit"

    def setting(self, name: str) -> str:
        """A value the page hands its script (``nonce``, ``tokenizeUrl``, ``publishableKey``):
        only a page that takes a card has them."""
        value = _page_setting(self.html, name)
        assert value, f"the page at {self.url} carries no {name} (status {self.status_code}):\n{self.html[:3000]}"
        return value

    @property
    def nonce(self) -> str:
        return self.setting("nonce")

    @property
    def tokenize_url(self) -> str:
        return self.setting("tokenizeUrl")

    @property
    def publishable_key(self) -> str:
        return self.setting("publishableKey")


def _page_setting(page_html: str, name: str) -> str | None:
    """``name`` as the page hands it to its script: a ``data-`` attribute of the card form
    (``data-tokenize-url``, ``data-publishable-key``, ``data-nonce``)."""
    kebab = re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name)
    match = re.search(rf'<form[^>]*id="card-form"[^>]*\bdata-{kebab}="([^"]*)"', page_html, flags=re.S)
    return html_lib.unescape(match.group(1)) if match else None


def open_page(url: str) -> Page:
    """GET a hosted page (no API key: the customer's browser has none)."""
    response = httpx.get(url, timeout=30, follow_redirects=False)
    return Page(url, response.status_code, response.text)


def tokenize_at(
    tokenize_url: str, publishable_key: str, number: str, *, exp_month: int = 12, exp_year: int = 2034, cvc: str = "123"
) -> httpx.Response:
    """The card to the processor, as the page's script sends it (CORS, the publishable key)."""
    body = {"publishableKey": publishable_key, "number": number, "expMonth": exp_month, "expYear": exp_year, "cvc": cvc}
    return httpx.post(tokenize_url, json=body, headers={"Origin": "http://checkout.test"}, timeout=30)


def tokenize(page: Page, number: str, *, exp_month: int = 12, exp_year: int = 2034, cvc: str = "123") -> str:
    """A one-time token for the card, from the processor the page names."""
    response = tokenize_at(page.tokenize_url, page.publishable_key, number, exp_month=exp_month, exp_year=exp_year, cvc=cvc)
    assert response.status_code in (200, 201), f"tokenize: {response.status_code} {response.text}"
    token = str(response.json()["id"])
    assert token.startswith("tok_"), token
    return token


def submit(page: Page, token: str, nonce: str | None = None) -> httpx.Response:
    """The page's submit: the token and the render's nonce to the gateway."""
    body = {"token": token, "nonce": page.nonce if nonce is None else nonce}
    return httpx.post(page.submit_url, json=body, timeout=SUBMIT_TIMEOUT)


def pay(url: str, number: str, *, exp_month: int = 12, exp_year: int = 2034) -> dict[str, Any]:
    """Open the page, tokenize the card, submit: the page's JSON answer."""
    page = open_page(url)
    assert page.status_code == 200, f"{url}: {page.status_code} {page.html[:500]}"
    response = submit(page, tokenize(page, number, exp_month=exp_month, exp_year=exp_year))
    assert response.status_code == 200, f"submit {url}: {response.status_code} {response.text}"
    answer: dict[str, Any] = response.json()
    return answer


def concurrently(calls: Iterable[Any], threads: int = 8) -> list[Any]:
    """Run the zero-argument callables at once; their results in order."""
    work = list(calls)
    with ThreadPoolExecutor(max_workers=min(threads, len(work))) as pool:
        futures = [pool.submit(call) for call in work]
        return [future.result() for future in futures]


# ---------------------------------------------------------------------------------------
# Saved cards, payment methods
# ---------------------------------------------------------------------------------------


def setup_session(client: MerchantClient, customer_id: str, **options: Any) -> models.CustomerPaymentSession:
    session: models.CustomerPaymentSession = client.sdk.customers.create_customer_payment_method(id=customer_id, **options)
    assert (session.mode, session.status) == ("setup", "pending"), session
    assert session.id.startswith("ps_"), session.id
    return session


def save_card(client: MerchantClient, customer_id: str, number: str, *, exp_month: int = 12, exp_year: int = 2034) -> models.PaymentMethod:
    """A card saved through a setup session's page: the customer's newest method."""
    session = setup_session(client, customer_id)
    answer = pay(session.url, number, exp_month=exp_month, exp_year=exp_year)
    assert answer["status"] == "completed", answer
    methods = client.sdk.customers.list_customer_payment_methods(id=customer_id).data
    assert methods, f"no saved method after the setup session {session.id}"
    newest: models.PaymentMethod = methods[0]
    assert (newest.last4, newest.exp_month, newest.exp_year) == (number[-4:], exp_month, exp_year), newest
    return newest


@dataclass(frozen=True)
class Retried:
    """A ``retryPayment`` answer: its status code (200 paid, 202 processing, 402 declined,
    409 concurrent attempt, 422 no payment method, 502 provider unavailable), its JSON, and
    the ``retry_payment_result`` the SDK parses from it (None for an error envelope)."""

    status: int
    body: dict[str, Any]
    result: models.RetryPaymentResponse | errors.RetryPaymentResponseErrorData | None

    @property
    def code(self) -> str | None:
        if self.result is None or self.result.error is None:
            return None
        return self.result.error.code


def retry_payment(client: MerchantClient, invoice_id: str, reason: str | None = None) -> Retried:
    """``POST /v2/invoices/{id}/retryPayment`` over plain REST (the SDK folds 200 and 202
    into one return and hides the status of the others), its body parsed by the SDK's own
    unmarshalling into the model the SDK expects for that status."""
    body = {} if reason is None else {"reason": reason}
    response = httpx.post(f"{client.base_url}/v2/invoices/{invoice_id}/retryPayment", json=body, headers=client.headers, timeout=60)
    result: models.RetryPaymentResponse | errors.RetryPaymentResponseErrorData | None = None
    if response.status_code in (200, 202):
        result = unmarshal_json_response(models.RetryPaymentResponse, response)
        assert result.success is (response.status_code == 200), response.text
    elif response.status_code in (402, 409, 422, 502) and response.json().get("object") == "retry_payment_result":
        result = unmarshal_json_response(errors.RetryPaymentResponseErrorData, response)
        assert result.success is False, response.text
    return Retried(response.status_code, response.json(), result)


def rest(client: MerchantClient, method: str, path: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 60)
    return httpx.request(method, f"{client.base_url}{path}", headers={**client.headers, **kwargs.pop("headers", {})}, **kwargs)


def invoice_json(client: MerchantClient, invoice_id: str) -> dict[str, Any]:
    response = rest(client, "GET", f"/v2/invoices/{invoice_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def invoice_state(client: MerchantClient, invoice_id: str) -> tuple[str, str, str]:
    """(status, paidAmount, unpaidAmount) of an invoice."""
    body = invoice_json(client, invoice_id)
    return str(body["status"]), str(body["paidAmount"]), str(body["unpaidAmount"])


def subscription_status(client: MerchantClient, subscription_id: str) -> str:
    return str(client.sdk.subscriptions.get(id=subscription_id).status)


# ---------------------------------------------------------------------------------------
# An autoCharge subscription on a clock of its own
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoCharged:
    """A customer with a saved card, on a test clock at ``t0``, subscribed with autoCharge
    to one monthly in-arrears fee of ``amount``: Invoice 0 is zero (active at creation),
    invoice 1 bills the fee at the first boundary and is charged at its issue."""

    client: MerchantClient
    catalog: Catalog
    customer_id: str
    clock_id: str
    subscription: models.Subscription
    t0: datetime
    amount: str

    @property
    def issue_1(self) -> datetime:
        """When invoice 1 is issued (and charged): the first boundary plus the grace hour."""
        return add_months(self.t0, 1) + HOUR

    def invoice(self, sequence: int) -> Bill:
        found = [bill for bill in invoices(self.client, self.subscription.id) if bill.sequence == sequence]
        assert len(found) == 1, [(bill.sequence, bill.status) for bill in invoices(self.client, self.subscription.id)]
        return found[0]

    def issue_invoice_1(self) -> Bill:
        advance(self.client, self.clock_id, self.issue_1)
        return self.invoice(1)


def auto_charged(client: MerchantClient, name: str, t0: datetime, card: str, *, amount: str = "30.00") -> AutoCharged:
    catalog = Catalog.create(client, name)
    price = catalog.fee_price(catalog.fee("Service"), amount, name="Service", payment_term="in_arrears")
    plan = catalog.plan([price], name=f"{name} plan")
    customer_id = customer(client, f"{name} Inc")
    test_clock = clock(client, t0, f"{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:6]}")
    save_card(client, customer_id, card)
    sub = subscribe(client, plan.id, customer_id, test_clock, auto_charge=True)
    assert sub.status == "active", sub.status  # nothing in advance: Invoice 0 is zero
    return AutoCharged(client, catalog, customer_id, test_clock.id, sub, t0, amount)


def pending_subscription(client: MerchantClient, name: str, t0: datetime, *, amount: str = "49.00", **options: Any) -> models.Subscription:
    """A subscription whose Invoice 0 (``amount`` in advance) waits on its checkout page."""
    catalog = Catalog.create(client, name)
    plan = catalog.plan([catalog.fee_price(catalog.fee("Platform"), amount, name="Platform fee")], name=f"{name} plan")
    test_clock = clock(client, t0, f"{name.lower().replace(' ', '-')}-{uuid.uuid4().hex[:6]}")
    sub = subscribe(client, plan.id, customer(client, f"{name} Inc"), test_clock, **options)
    assert sub.status == "pending_payment", sub.status
    payment = sub.payment
    assert isinstance(payment, models.PaymentPending), payment
    return sub


def checkout_of(sub: models.Subscription) -> models.PaymentPending:
    payment = sub.payment
    assert isinstance(payment, models.PaymentPending), payment
    return payment
