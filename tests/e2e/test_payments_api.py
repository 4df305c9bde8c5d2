"""The payment endpoints through the official SDK (status codes and Accrue's own fields over
plain REST with the same key): one-off payments (``POST /v0/payments``: amount bounds,
currencies, ``expiresIn``, idempotency; get, list, paid through its page), payment
sessions (``GET /v0/paymentSessions`` and its filters), saved payment methods after a
setup session, ``hosted_link`` replacing an invoice's session, and tenancy on every
payment endpoint and on the hosted pages (another merchant's session under this
merchant's checkout path does not open).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors, models

from libs.infra.runner import Mesh
from libs.testing.billing import advance, at, customer, invoice_0, invoices
from libs.testing.fixtures import MerchantClient
from libs.testing.payments import (
    CARD_DECLINED,
    CARD_SUCCEEDS,
    HOUR,
    Sandbox,
    auto_charged,
    checkout_of,
    invoice_json,
    invoice_state,
    minor,
    open_page,
    pay,
    pending_subscription,
    problem,
    rest,
    retry_payment,
    save_card,
    setup_session,
    submit,
    tokenize,
)

pytestmark = pytest.mark.e2e

ID = re.compile(r"^ps_[0-9A-Za-z]{16}$")


@pytest.fixture(scope="module")
def sandbox(mesh: Mesh) -> Sandbox:
    return Sandbox.of(mesh)


def _create(client: MerchantClient, **body: Any) -> httpx.Response:
    return rest(client, "POST", "/v0/payments", json={"currency": "USD", **body})


def _lifetime(created: datetime, expires: datetime) -> timedelta:
    """expires - created to the second (the two may be read a few microseconds apart)."""
    return timedelta(seconds=round((expires - created).total_seconds()))


# --- POST /v0/payments ---------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["1.00", "5000.00", "10.5", "249.99"])
def test_amounts_in_bounds_make_a_pending_payment(amount: str, merchant_a: MerchantClient) -> None:
    payment = merchant_a.sdk.payments.create(amount=amount, currency="USD")
    assert payment.id.startswith("pay_")
    assert (payment.status, payment.currency, payment.object) == ("pending", "USD", "payment")
    # the amount as a decimal string of the currency's places
    assert payment.amount == f"{Decimal(amount).quantize(Decimal('0.01'))}"
    assert payment.payment_url is not None
    assert payment.payment_url.startswith(f"{merchant_a.base_url}/checkout/{merchant_a.merchant_id}/ps_")


@pytest.mark.parametrize("amount", ["0.99", "5000.01", "0", "0.00", "-5.00", "1.001", "ten", "", "1e3", "NaN"])
def test_amounts_out_of_bounds_are_refused_naming_amount(amount: str, merchant_a: MerchantClient) -> None:
    before = rest(merchant_a, "GET", "/v0/payments", params={"limit": 1}).json()["pagination"]["total"]
    refused = _create(merchant_a, amount=amount)
    status, _, field = problem(refused)
    assert (status, field) == (400, "amount"), refused.text
    assert rest(merchant_a, "GET", "/v0/payments", params={"limit": 1}).json()["pagination"]["total"] == before


def test_an_amount_as_a_json_number_is_refused(merchant_a: MerchantClient) -> None:
    refused = _create(merchant_a, amount=10.5)
    assert problem(refused)[0::2] == (400, "amount"), refused.text


@pytest.mark.parametrize("currency", ["USD", "EUR", "GBP", "AUD"])
def test_the_four_currencies(currency: str, merchant_a: MerchantClient) -> None:
    payment = merchant_a.sdk.payments.create(amount="12.00", currency=currency)
    assert (payment.currency, payment.amount) == (currency, "12.00")


@pytest.mark.parametrize("currency", ["JPY", "usd", "XXX", ""])
def test_other_currencies_are_refused(currency: str, merchant_a: MerchantClient) -> None:
    refused = _create(merchant_a, amount="12.00", currency=currency)
    assert problem(refused)[0::2] == (400, "currency"), refused.text


def test_expires_in_defaults_to_30_days_and_takes_at_most_31(merchant_a: MerchantClient) -> None:
    default = merchant_a.sdk.payments.create(amount="5.00", currency="EUR")
    assert default.expires_at is not None
    assert _lifetime(default.created_at, default.expires_at) == timedelta(days=30)
    hour = merchant_a.sdk.payments.create(amount="5.00", currency="EUR", expires_in="PT1H")
    assert hour.expires_at is not None and _lifetime(hour.created_at, hour.expires_at) == timedelta(hours=1)
    longest = merchant_a.sdk.payments.create(amount="5.00", currency="EUR", expires_in="P31D")
    assert longest.expires_at is not None and _lifetime(longest.created_at, longest.expires_at) == timedelta(days=31)
    for bad in ("P32D", "P2M", "PT0S", "-P1D", "soon", "P1Y"):
        refused = _create(merchant_a, amount="5.00", expiresIn=bad)
        assert problem(refused)[0::2] == (400, "expiresIn"), (bad, refused.text)


def test_the_same_idempotency_key_answers_the_same_payment(merchant_a: MerchantClient) -> None:
    key = f"order-{uuid.uuid4().hex}"
    first = _create(merchant_a, amount="42.00", idempotencyKey=key, reference="order 1", metadata={"order": "1"})
    assert first.status_code == 201, first.text
    again = _create(merchant_a, amount="42.00", idempotencyKey=key, reference="order 1", metadata={"order": "1"})
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["paymentUrl"] == first.json()["paymentUrl"]
    other = _create(merchant_a, amount="42.00", idempotencyKey=f"{key}-2")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"], other.text
    # the SDK reads both answers
    sdk_again = merchant_a.sdk.payments.create(
        amount="42.00", currency="USD", idempotency_key=key, reference="order 1", metadata={"order": "1"}
    )
    assert (sdk_again.id, sdk_again.idempotency_key, sdk_again.reference, sdk_again.metadata) == (
        first.json()["id"],
        key,
        "order 1",
        {"order": "1"},
    )
    # the Idempotency-Key header works the same way
    header = f"hdr-{uuid.uuid4().hex}"
    one = rest(merchant_a, "POST", "/v0/payments", json={"amount": "7.00", "currency": "USD"}, headers={"Idempotency-Key": header})
    two = rest(merchant_a, "POST", "/v0/payments", json={"amount": "7.00", "currency": "USD"}, headers={"Idempotency-Key": header})
    assert (one.status_code, two.status_code) == (201, 200), (one.text, two.text)
    assert one.json()["id"] == two.json()["id"]


def test_a_payment_with_its_details(merchant_a: MerchantClient) -> None:
    customer_id = customer(merchant_a, "Payer Inc")
    payment = merchant_a.sdk.payments.create(
        amount="30.00", currency="GBP", customer_id=customer_id, reference="onboarding", metadata={"plan": "pro"},
        line_items=[{"description": "Setup", "amount": "20.00"}, {"description": "Seat", "amount": "5.00", "quantity": 2}],
        success_redirect_url="https://merchant.test/paid", failure_redirect_url="https://merchant.test/failed",
    )  # fmt: skip
    got = merchant_a.sdk.payments.get(id=payment.id)
    assert (got.id, got.amount, got.currency, got.customer_id, got.reference, got.metadata) == (
        payment.id, "30.00", "GBP", customer_id, "onboarding", {"plan": "pro"},
    )  # fmt: skip
    assert got.line_items is not None
    assert [(line.description, line.amount, line.quantity) for line in got.line_items] == [("Setup", "20.00", 1), ("Seat", "5.00", 2)]
    raw = rest(merchant_a, "GET", f"/v0/payments/{payment.id}").json()
    assert raw["merchantId"] == merchant_a.merchant_id
    assert ID.match(raw["paymentSessionId"]), raw
    assert raw["paymentUrl"].endswith(f"/checkout/{merchant_a.merchant_id}/{raw['paymentSessionId']}")


def test_create_refusals_name_the_field(merchant_a: MerchantClient, merchant_b: MerchantClient) -> None:
    b_customer = customer(merchant_b, "Not yours Inc")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"amount": "5.00", "customerId": b_customer}, 404, "customerId"),
        ({"amount": "5.00", "customerId": "cus_doesnotexist00000"}, 404, "customerId"),
        ({"amount": "5.00", "savePaymentMethod": True}, 400, "customerId"),  # saving needs a customer
        ({"amount": "5.00", "successRedirectUrl": "javascript:alert(1)"}, 400, "successRedirectUrl"),
        ({"amount": "5.00", "lineItems": [{"description": "x", "amount": "1.00"}] * 101}, 400, "lineItems"),
        ({"amount": "5.00", "merchantId": merchant_b.merchant_id}, 404, "merchantId"),
    ]
    for body, status, field in cases:
        refused = _create(merchant_a, **body)
        assert problem(refused)[0::2] == (status, field), (body, refused.text)


def test_list_payments_with_filters(merchant_a: MerchantClient) -> None:
    customer_id = customer(merchant_a, "Lister Inc")
    made = [merchant_a.sdk.payments.create(amount=f"{n}.00", currency="USD", customer_id=customer_id) for n in (2, 3, 4)]
    listed = merchant_a.sdk.payments.list(request={"customer_id": customer_id, "limit": 100})
    assert [p.id for p in listed.data] == [p.id for p in reversed(made)]  # newest first
    assert listed.pagination.total == 3
    page = merchant_a.sdk.payments.list(request={"customer_id": customer_id, "limit": 2, "offset": 1})
    assert [p.id for p in page.data] == [made[1].id, made[0].id]
    assert pay(made[0].payment_url or "", CARD_SUCCEEDS)["status"] == "completed"
    completed = merchant_a.sdk.payments.list(request={"customer_id": customer_id, "status": "completed"})
    assert [p.id for p in completed.data] == [made[0].id]
    pending = merchant_a.sdk.payments.list(request={"customer_id": customer_id, "status": "pending"})
    assert [p.id for p in pending.data] == [made[2].id, made[1].id]
    everything = merchant_a.sdk.payments.list(request={"limit": 100}).data
    assert {p.id for p in made} <= {p.id for p in everything}
    refused = rest(merchant_a, "GET", "/v0/payments", params={"status": "paid"})
    assert problem(refused)[0::2] == (400, "status"), refused.text


def test_a_payment_paid_on_its_page_is_completed(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    payment = merchant_a.sdk.payments.create(
        amount="64.50", currency="EUR", reference="page", success_redirect_url="https://merchant.test/thanks?order=7"
    )
    assert payment.payment_url is not None
    page = open_page(payment.payment_url)
    assert page.status_code == 200
    assert "64.50" in page.html and "Merchant A" in page.html

    declined = submit(page, tokenize(page, CARD_DECLINED))
    # a decline on the page: shown, the payment stays payable, nothing reported as paid
    assert declined.status_code == 200, declined.text
    assert (declined.json()["status"], declined.json().get("failureCode")) == ("pending", "card_declined"), declined.text
    assert merchant_a.sdk.payments.get(id=payment.id).status == "pending"

    again = open_page(payment.payment_url)
    answer = submit(again, tokenize(again, CARD_SUCCEEDS))

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "completed"
    assert answer.json().get("redirectUrl", "").startswith("https://merchant.test/thanks?order=7")
    got = merchant_a.sdk.payments.get(id=payment.id)
    assert got.status == "completed"
    raw = rest(merchant_a, "GET", f"/v0/payments/{payment.id}").json()
    assert raw.get("completedAt")
    charges = sandbox.charges_of(page.session_id)
    assert [(c["status"], c["amount"], str(c["currency"]).upper()) for c in charges] == [
        ("failed", minor("64.50"), "EUR"), ("succeeded", minor("64.50"), "EUR"),
    ]  # fmt: skip
    [session] = [s for s in merchant_a.sdk.payment_sessions.list_payment_sessions(request={"entity_type": "payment", "limit": 100}).data
                 if s.id == page.session_id]  # fmt: skip
    assert (session.entity_id, session.status, session.amount, session.currency) == (payment.id, "completed", "64.50", "EUR")
    assert session.provider_payment_ref == charges[1]["id"]
    assert session.completed_at is not None


# --- GET /v0/paymentSessions -----------------------------------------------------------------------


@dataclass
class Sessions:
    customer_id: str
    subscription_id: str
    subscription_session: str  # Invoice 0's (entity subscription)
    invoice_session: str  # invoice 1's (entity invoice)
    payment_session: str  # a one-off payment of the customer (entity payment)
    other_payment_session: str  # a one-off payment of nobody


@pytest.fixture(scope="module")
def sessions(merchant_a: MerchantClient) -> Sessions:
    sub = pending_subscription(merchant_a, "Session lists", at("2027-08-01T00:00:00Z"))
    checkout = checkout_of(sub)
    assert pay(checkout.checkout_url, CARD_SUCCEEDS)["status"] == "completed"
    advance(merchant_a, sub.test_clock_id or "", at("2027-09-01T00:00:00Z") + HOUR)  # invoice 1 issued: its own session
    [bill] = [bill for bill in invoices(merchant_a, sub.id) if bill.sequence == 1]
    assert bill.status == "ISSUED"
    invoice_session = str(bill.raw["paymentSessionId"])
    one_off = merchant_a.sdk.payments.create(amount="9.00", currency="USD", customer_id=sub.customer_id)
    nobody = merchant_a.sdk.payments.create(amount="8.00", currency="USD")
    raw = rest(merchant_a, "GET", f"/v0/payments/{one_off.id}").json()
    other = rest(merchant_a, "GET", f"/v0/payments/{nobody.id}").json()
    return Sessions(
        sub.customer_id, sub.id, checkout.payment_session_id, invoice_session, raw["paymentSessionId"], other["paymentSessionId"]
    )


def _session_ids(client: MerchantClient, **filters: Any) -> list[str]:
    listed = client.sdk.payment_sessions.list_payment_sessions(request={"limit": 100, **filters})
    assert listed.pagination.total >= len(listed.data)
    return [s.id for s in listed.data]


def test_sessions_of_a_subscription(merchant_a: MerchantClient, sessions: Sessions) -> None:
    # Invoice 0's activation session and the subscription's invoice sessions, newest first
    assert _session_ids(merchant_a, subscription_id=sessions.subscription_id) == [sessions.invoice_session, sessions.subscription_session]
    listed = merchant_a.sdk.payment_sessions.list_payment_sessions(request={"subscription_id": sessions.subscription_id})
    by_id = {s.id: s for s in listed.data}
    first = by_id[sessions.subscription_session]
    assert (first.object, first.entity_type, first.status, first.amount, first.currency) == (
        "payment_session",
        "subscription",
        "completed",
        "49.00",
        "USD",
    )
    second = by_id[sessions.invoice_session]
    assert (second.entity_type, second.status, second.amount) == ("invoice", "pending", "49.00")
    assert _session_ids(merchant_a, subscription_id=sessions.subscription_id, entity_type="invoice") == [sessions.invoice_session]
    assert _session_ids(merchant_a, subscription_id=sessions.subscription_id, status="completed") == [sessions.subscription_session]
    assert _session_ids(merchant_a, subscription_id=sessions.subscription_id, status="failed") == []


def test_sessions_of_a_customer(merchant_a: MerchantClient, sessions: Sessions) -> None:
    # the customer's one-off payments and its subscriptions' sessions
    found = _session_ids(merchant_a, customer_id=sessions.customer_id)
    assert set(found) == {sessions.payment_session, sessions.invoice_session, sessions.subscription_session}, found
    assert found[0] == sessions.payment_session  # newest first
    assert _session_ids(merchant_a, customer_id=sessions.customer_id, entity_type="payment") == [sessions.payment_session]
    assert _session_ids(merchant_a, customer_id=sessions.customer_id, entity_type="subscription") == [sessions.subscription_session]
    assert _session_ids(merchant_a, customer_id=sessions.customer_id, status="pending", entity_type="payment") == [sessions.payment_session]
    assert sessions.other_payment_session not in found
    assert sessions.other_payment_session in _session_ids(merchant_a, entity_type="payment", status="pending")


def test_session_list_paging_and_bad_filters(merchant_a: MerchantClient, sessions: Sessions) -> None:
    whole = _session_ids(merchant_a, customer_id=sessions.customer_id)
    first = merchant_a.sdk.payment_sessions.list_payment_sessions(request={"customer_id": sessions.customer_id, "limit": 1})
    assert [s.id for s in first.data] == whole[:1] and first.pagination.total == len(whole)
    rest_of = merchant_a.sdk.payment_sessions.list_payment_sessions(request={"customer_id": sessions.customer_id, "limit": 10, "offset": 1})
    assert [s.id for s in rest_of.data] == whole[1:]
    for params, field in (({"status": "paid"}, "status"), ({"entityType": "order"}, "entityType"), ({"limit": 0}, "limit")):
        refused = rest(merchant_a, "GET", "/v0/paymentSessions", params=params)
        assert problem(refused)[0::2] == (400, field), refused.text


# --- payment methods -------------------------------------------------------------------------------


def test_a_setup_session_saves_a_card_and_lists_it_without_its_number(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    customer_id = customer(merchant_a, "Card saver Inc")
    assert merchant_a.sdk.customers.list_customer_payment_methods(id=customer_id).data == []
    session = setup_session(
        merchant_a, customer_id, success_redirect_url="https://merchant.test/saved", failure_redirect_url="https://merchant.test/oops",
        metadata={"source": "settings page"},
    )  # fmt: skip
    assert ID.match(session.id) and session.url.endswith(f"/checkout/{merchant_a.merchant_id}/{session.id}")
    assert (session.success_redirect_url, session.metadata) == ("https://merchant.test/saved", {"source": "settings page"})
    assert _lifetime(session.created_at, session.expires_at) == timedelta(days=30)

    answer = pay(session.url, CARD_SUCCEEDS, exp_month=7, exp_year=2031)

    assert answer["status"] == "completed" and answer.get("redirectUrl", "").startswith("https://merchant.test/saved"), answer
    methods = merchant_a.sdk.customers.list_customer_payment_methods(id=customer_id)
    [method] = methods.data
    assert method.id.startswith("pm_")
    assert (method.object, method.type, method.brand, method.last4, method.exp_month, method.exp_year) == (
        "paymentMethod", "card", "visa", "4242", 7, 2031,
    )  # fmt: skip
    raw = rest(merchant_a, "GET", f"/v0/customers/{customer_id}/paymentMethods")
    assert CARD_SUCCEEDS not in raw.text and "number" not in raw.text.lower(), raw.text
    # saving charges nothing
    assert sandbox.charges_of(session.id) == []
    # a second card is the newest
    second = save_card(merchant_a, customer_id, "5555555555554444", exp_month=1, exp_year=2033)
    assert (second.brand, second.last4) == ("mastercard", "4444")
    assert [m.last4 for m in merchant_a.sdk.customers.list_customer_payment_methods(id=customer_id).data] == ["4444", "4242"]


def test_setup_session_refusals(merchant_a: MerchantClient) -> None:
    customer_id = customer(merchant_a, "Setup refusals Inc")
    far = (datetime.now().astimezone() + timedelta(days=31)).isoformat()
    refused = rest(merchant_a, "POST", f"/v0/customers/{customer_id}/paymentMethods", json={"expiresAt": far})
    assert problem(refused)[0::2] == (400, "expiresAt"), refused.text
    missing = rest(merchant_a, "POST", "/v0/customers/cus_doesnotexist00000/paymentMethods", json={})
    assert missing.status_code == 404, missing.text
    assert rest(merchant_a, "GET", "/v0/customers/cus_doesnotexist00000/paymentMethods").status_code == 404


def test_a_declined_card_is_not_saved(merchant_a: MerchantClient) -> None:
    customer_id = customer(merchant_a, "Declined saver Inc")
    session = setup_session(merchant_a, customer_id)
    page = open_page(session.url)
    answer = submit(page, tokenize(page, CARD_DECLINED))
    # as a processor declines a card it verifies when saving it (0341 is the one that saves and declines later)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json().get("failureCode")) == ("pending", "card_declined"), answer.text
    assert merchant_a.sdk.customers.list_customer_payment_methods(id=customer_id).data == []


# --- hosted_link ----------------------------------------------------------------------------------


def test_hosted_link_makes_a_fresh_session_and_the_old_page_no_longer_pays(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Hosted link", at("2027-09-01T00:00:00Z"), amount="21.00")
    old = checkout_of(sub)
    bill = invoice_0(merchant_a, sub)
    assert bill.raw["paymentSessionId"] == old.payment_session_id
    old_page = open_page(old.checkout_url)
    old_token = tokenize(old_page, CARD_SUCCEEDS)

    linked = merchant_a.sdk.invoices_v2.record_invoice_payment(id=bill.id, method="hosted_link")

    assert isinstance(linked, models.HostedLinkPaymentResult), linked
    assert linked.payment_session_id != old.payment_session_id and ID.match(linked.payment_session_id)
    assert linked.payment_url.endswith(f"/checkout/{merchant_a.merchant_id}/{linked.payment_session_id}")
    assert linked.provider == "sandbox"
    assert (linked.invoice.id, linked.invoice.status, linked.invoice.payment_url) == (bill.id, "ISSUED", linked.payment_url)
    assert invoice_json(merchant_a, bill.id)["paymentSessionId"] == linked.payment_session_id
    sessions = {s.id: s.status for s in merchant_a.sdk.payment_sessions.list_payment_sessions(request={"subscription_id": sub.id}).data}
    assert sessions == {old.payment_session_id: "cancelled", linked.payment_session_id: "pending"}
    # the old page takes no payment any more
    stale = submit(old_page, old_token)
    assert stale.json().get("status") != "completed", stale.text
    assert open_page(old.checkout_url).status_code in (200, 404, 410)
    assert 'id="card-form"' not in open_page(old.checkout_url).html  # no card form on a replaced session
    assert sandbox.charges_of(old.payment_session_id) == []
    assert invoice_state(merchant_a, bill.id) == ("ISSUED", "0.00", "21.00")

    # the new one does
    assert pay(linked.payment_url, CARD_SUCCEEDS)["status"] == "completed"
    assert invoice_state(merchant_a, bill.id) == ("PAID", "21.00", "0.00")
    assert merchant_a.sdk.subscriptions.get(id=sub.id).status == "active"
    assert [c["status"] for c in sandbox.charges_of(linked.payment_session_id)] == ["succeeded"]
    # a paid invoice takes no link
    refused = rest(merchant_a, "POST", f"/v2/invoices/{bill.id}/payment", json={"method": "hosted_link"})
    assert refused.status_code == 409, refused.text


def test_retry_payment_without_a_saved_method_is_422(merchant_a: MerchantClient) -> None:
    sub = pending_subscription(merchant_a, "Retry no method", at("2027-09-01T00:00:00Z"), amount="6.00", auto_charge=True)
    bill = invoice_0(merchant_a, sub)
    answer = retry_payment(merchant_a, bill.id)
    assert (answer.status, answer.code) == (422, "no_payment_method"), answer.body
    # the SDK reads it as the retry_payment_result it documents for 422
    with pytest.raises(errors.RetryPaymentResponseError) as refused:
        merchant_a.sdk.invoices_v2.retry_invoice_payment(id=bill.id)
    assert refused.value.raw_response.status_code == 422
    assert refused.value.data.error is not None and refused.value.data.error.code == "no_payment_method"
    assert invoice_state(merchant_a, bill.id)[0] == "ISSUED"


def test_retry_payment_declined_is_402_with_the_decline(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    s = auto_charged(merchant_a, "Retry declined", at("2027-09-01T00:00:00Z"), "4000000000000341")
    bill = s.issue_invoice_1()
    assert bill.status == "PAYMENT_FAILED"
    save_card(merchant_a, s.customer_id, "4000000000000341")  # again a card that saves and then declines
    answer = retry_payment(merchant_a, bill.id, reason="customer called")
    assert (answer.status, answer.code) == (402, "card_declined"), answer.body
    assert answer.result is not None and answer.result.error is not None and answer.result.error.decline_code, answer.body
    assert answer.result.payment_intent_id == sandbox.charges_of(bill.id)[-1]["id"]
    # again through the SDK: it raises the retry_payment_result it documents for 402
    with pytest.raises(errors.RetryPaymentResponseError) as declined:
        merchant_a.sdk.invoices_v2.retry_invoice_payment(id=bill.id, reason="customer called again")
    assert declined.value.raw_response.status_code == 402
    assert declined.value.data.success is False
    assert declined.value.data.error is not None and declined.value.data.error.code == "card_declined"
    assert [status for _, status in sandbox.keys_of(bill.id)] == ["failed", "failed", "failed"]
    assert invoice_json(merchant_a, bill.id)["failureReason"] == "card_declined"


# --- tenancy ---------------------------------------------------------------------------------------


@dataclass
class Tenant:
    merchant: str
    customer: str
    subscription: str
    invoice: str  # Invoice 0, ISSUED, with its session
    session: str  # Invoice 0's session
    checkout_url: str
    payment: str
    payment_session: str
    paid_invoice: str  # paid through the processor
    refund: str  # a credit note of paid_invoice


def _tenant(client: MerchantClient, label: str) -> Tenant:
    sub = pending_subscription(client, f"Payments tenancy {label}", at("2027-10-01T00:00:00Z"), amount="13.00")
    checkout = checkout_of(sub)
    paid = pending_subscription(client, f"Payments tenancy {label} paid", at("2027-10-01T00:00:00Z"), amount="14.00")
    assert pay(checkout_of(paid).checkout_url, CARD_SUCCEEDS)["status"] == "completed"
    paid_invoice = invoice_0(client, paid).id
    refund = rest(client, "POST", f"/v2/invoices/{paid_invoice}/refunds", json={})
    assert refund.status_code == 201, refund.text
    save_card(client, sub.customer_id, CARD_SUCCEEDS)
    payment = client.sdk.payments.create(amount="15.00", currency="USD", customer_id=sub.customer_id)
    payment_session = rest(client, "GET", f"/v0/payments/{payment.id}").json()["paymentSessionId"]
    return Tenant(
        client.merchant_id, sub.customer_id, sub.id, invoice_0(client, sub).id, checkout.payment_session_id, checkout.checkout_url,
        payment.id, payment_session, paid_invoice, refund.json()["id"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def tenants(merchant_a: MerchantClient, merchant_b: MerchantClient) -> tuple[Tenant, Tenant]:
    return _tenant(merchant_a, "A"), _tenant(merchant_b, "B")


@pytest.fixture(scope="module")
def b_http(merchant_b: MerchantClient) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=merchant_b.base_url, headers=merchant_b.headers, timeout=60) as client:
        yield client


ENDPOINTS = [
    # (case, method, path, body)
    ("get payment", "GET", "/v0/payments/{a.payment}", None),
    ("customer payment methods", "GET", "/v0/customers/{a.customer}/paymentMethods", None),
    ("setup session", "POST", "/v0/customers/{a.customer}/paymentMethods", {}),
    ("payment for A's customer", "POST", "/v0/payments", {"amount": "5.00", "currency": "USD", "customerId": "{a.customer}"}),
    ("get settings", "GET", "/v0/merchants/{a.merchant}/paymentSettings", None),
    ("change settings", "PATCH", "/v0/merchants/{a.merchant}/paymentSettings", {"afterFinalFailure": "terminate"}),
    ("hosted link", "POST", "/v2/invoices/{a.invoice}/payment", {"method": "hosted_link"}),
    ("retry payment", "POST", "/v2/invoices/{a.invoice}/retryPayment", {}),
    ("refund", "POST", "/v2/invoices/{a.paid_invoice}/refunds", {}),
    ("list refunds", "GET", "/v2/invoices/{a.paid_invoice}/refunds", None),
    ("void refund", "POST", "/v2/invoices/{a.paid_invoice}/refunds/{a.refund}/void", {}),
    ("void A's refund under B's invoice", "POST", "/v2/invoices/{b.paid_invoice}/refunds/{a.refund}/void", {}),
]


def _fill(template: Any, a: Tenant, b: Tenant) -> Any:
    if isinstance(template, str):
        for name, value in vars(a).items():
            template = template.replace("{a." + name + "}", value)
        for name, value in vars(b).items():
            template = template.replace("{b." + name + "}", value)
        return template
    if isinstance(template, dict):
        return {key: _fill(value, a, b) for key, value in template.items()}
    return template


def _a_snapshot(client: MerchantClient, a: Tenant) -> dict[str, Any]:
    reads = [
        f"/v0/payments/{a.payment}",
        f"/v0/customers/{a.customer}/paymentMethods",
        f"/v0/merchants/{a.merchant}/paymentSettings",
        f"/v2/invoices/{a.invoice}",
        f"/v2/invoices/{a.paid_invoice}",
        f"/v2/invoices/{a.paid_invoice}/refunds",
    ]
    out = {}
    for path in reads:
        response = rest(client, "GET", path)
        assert response.status_code == 200, f"{path}: {response.text}"
        out[path] = response.json()
    out["sessions"] = _session_ids(client, customer_id=a.customer)
    return out


@pytest.fixture(scope="module")
def a_snapshot(merchant_a: MerchantClient, tenants: tuple[Tenant, Tenant]) -> dict[str, Any]:
    return _a_snapshot(merchant_a, tenants[0])


@pytest.mark.parametrize(("method", "path", "body"), [e[1:] for e in ENDPOINTS], ids=[e[0] for e in ENDPOINTS])
def test_b_gets_404_for_a_payment_resource(
    method: str, path: str, body: dict[str, Any] | None, tenants: tuple[Tenant, Tenant], a_snapshot: dict[str, Any], b_http: httpx.Client
) -> None:
    a, b = tenants
    response = b_http.request(method, _fill(path, a, b), json=_fill(body, a, b))
    assert response.status_code == 404, response.text
    payload = response.json()
    assert payload["error"] == "not_found" and str(payload["code"]).endswith("_NOT_FOUND"), payload


B_LISTS = [
    ("payments of A's customer", "/v0/payments", {"customerId": "{a.customer}"}),
    ("sessions of A's customer", "/v0/paymentSessions", {"customerId": "{a.customer}"}),
    ("sessions of A's subscription", "/v0/paymentSessions", {"subscriptionId": "{a.subscription}"}),
    ("payments as A", "/v0/payments", {"merchantId": "{a.merchant}"}),
    ("sessions as A", "/v0/paymentSessions", {"merchantId": "{a.merchant}"}),
]


@pytest.mark.parametrize(("path", "params"), [c[1:] for c in B_LISTS], ids=[c[0] for c in B_LISTS])
def test_b_lists_never_show_a(path: str, params: dict[str, str], tenants: tuple[Tenant, Tenant], b_http: httpx.Client) -> None:
    a, b = tenants
    response = b_http.get(path, params={**_fill(params, a, b), "limit": 100})
    if response.status_code == 404:  # a filter naming another merchant's resource may be refused, naming it
        assert (response.json().get("details") or {}).get("field") in params, response.text
        return
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [], response.text


def test_b_lists_show_only_b(tenants: tuple[Tenant, Tenant], merchant_b: MerchantClient) -> None:
    a, b = tenants
    payments = [p.id for p in merchant_b.sdk.payments.list(request={"limit": 100}).data]
    assert b.payment in payments and a.payment not in payments
    sessions = _session_ids(merchant_b, limit=100)
    assert b.session in sessions or b.payment_session in sessions
    assert not {a.session, a.payment_session} & set(sessions)


def test_another_merchants_session_does_not_open_under_this_merchants_path(
    tenants: tuple[Tenant, Tenant], mesh: Mesh, sandbox: Sandbox
) -> None:
    a, b = tenants
    base = mesh.gateway_url
    for merchant, session in (
        (a.merchant, b.session),
        (b.merchant, a.session),
        (a.merchant, b.payment_session),
        (b.merchant, a.payment_session),
    ):
        page = open_page(f"{base}/checkout/{merchant}/{session}")
        assert page.status_code == 404, (merchant, session, page.status_code)
        assert session not in page.html
    own = open_page(a.checkout_url)
    assert own.status_code == 200
    token = tokenize(own, CARD_SUCCEEDS)
    crossed = httpx.post(f"{base}/checkout/{b.merchant}/{a.session}/submit", json={"token": token, "nonce": own.nonce}, timeout=60)
    assert crossed.status_code == 404, crossed.text
    assert sandbox.charges_of(a.session) == []
    # an unknown merchant or a guessed session id: 404 as well
    assert open_page(f"{base}/checkout/org_doesnotexist0000/{a.session}").status_code == 404
    assert open_page(f"{base}/checkout/{a.merchant}/ps_{'0' * 16}").status_code == 404


def test_a_is_unchanged(merchant_a: MerchantClient, tenants: tuple[Tenant, Tenant], a_snapshot: dict[str, Any]) -> None:
    """Runs after B's attempts (file order): A reads everything as before."""
    assert _a_snapshot(merchant_a, tenants[0]) == a_snapshot
