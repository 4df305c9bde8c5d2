"""Exactly one charge per invoice, asserted against the sandbox processor's own records
(``GET /v1/_sandbox/charges``; a charge belongs to an invoice or a session by its
idempotency key): concurrent ``retryPayment`` calls, a double submit of the hosted page
(one render twice, and two renders at once), processor webhooks replayed twice and out
of order, a charge whose answer times out (the slow card), and a SIGKILL of the payment
service between sending a charge and recording its outcome.

The SIGKILL runs on a mesh of its own (libs/testing/meshes.own_mesh), so killing the
payment service cannot disturb the other tests. Helpers: libs/testing/payments.py.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paygentic_sdk import Paygentic

from libs.infra.runner import Mesh
from libs.testing.billing import at, invoice_0
from libs.testing.fixtures import MerchantClient
from libs.testing.meshes import own_mesh
from libs.testing.payments import (
    CARD_FAILS_LATER,
    CARD_SLOW,
    CARD_SUCCEEDS,
    Retried,
    Sandbox,
    auto_charged,
    checkout_of,
    concurrently,
    event_body,
    invoice_state,
    minor,
    open_page,
    pay,
    pending_subscription,
    post_webhook,
    rest,
    retry_payment,
    save_card,
    submit,
    subscription_status,
    tokenize,
)
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e

# the slow card answers after ACCRUE_SANDBOX_SLOW_SECONDS (10 s) and its webhooks follow
SETTLE_SECONDS = 60.0


@pytest.fixture(scope="module")
def sandbox(mesh: Mesh) -> Sandbox:
    return Sandbox.of(mesh)


def _succeeded(charges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [charge for charge in charges if charge["status"] == "succeeded"]


# --- retryPayment -------------------------------------------------------------------------


def test_concurrent_retry_payments_make_one_charge(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    s = auto_charged(merchant_a, "Concurrent retries", at("2027-02-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    # charged at issue on the saved card, which declines every later charge
    assert (bill.status, bill.raw.get("failureReason")) == ("PAYMENT_FAILED", "card_declined")
    assert sandbox.keys_of(bill.id) == [(f"{bill.id}:auto:0", "failed")]
    save_card(merchant_a, s.customer_id, CARD_SUCCEEDS)  # the newest saved method is the one charged

    def keep_retrying() -> list[Retried]:
        """Retry while refused as concurrent, so that calls keep arriving all through the
        first one's flight and at the instant it is decided."""
        answers: list[Retried] = []
        while len(answers) < 60:
            answers.append(retry_payment(merchant_a, bill.id, reason="Card updated"))
            if (answers[-1].status, answers[-1].code) != (409, "concurrent_attempt"):
                break
        return answers

    answers = [answer for batch in concurrently([keep_retrying] * 8) for answer in batch]

    shown = [(answer.status, answer.body) for answer in answers]
    charges = sandbox.charges_of(bill.id)
    paid = _succeeded(charges)
    assert len(paid) == 1, sandbox.keys_of(bill.id)
    charge = paid[0]
    # one charge of the retries at the processor (the declined one at issue aside), for the invoice's amount
    assert [c["idempotencyKey"] for c in charges if ":retry:" in c["idempotencyKey"]] == [charge["idempotencyKey"]], charges
    assert charge["idempotencyKey"].startswith(f"{bill.id}:retry:")
    assert (charge["amount"], str(charge["currency"]).upper()) == (minor("30.00"), "USD")
    assert any(answer.status == 200 for answer in answers), shown
    for answer in answers:
        # the others were refused while it was in flight, or found the invoice paid by it
        assert answer.status in (200, 409), shown
        assert answer.result is not None, shown
        if answer.status == 200:
            assert (answer.result.success, answer.result.payment_intent_id) == (True, charge["id"]), shown
        else:
            assert answer.result.success is False and answer.code == "concurrent_attempt", shown
    assert invoice_state(merchant_a, bill.id) == ("PAID", "30.00", "0.00")

    # later: the invoice is paid; a retry answers the charge that paid it and charges nothing
    again = retry_payment(merchant_a, bill.id)
    assert again.status == 200, again.body
    assert again.result is not None and again.result.payment_intent_id == charge["id"]
    assert sandbox.charges_of(bill.id) == charges
    assert invoice_state(merchant_a, bill.id) == ("PAID", "30.00", "0.00")


def test_a_charge_whose_answer_times_out_is_found_by_its_key_and_paid_once(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    s = auto_charged(merchant_a, "Slow answer", at("2027-02-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    assert bill.status == "PAYMENT_FAILED"
    save_card(merchant_a, s.customer_id, CARD_SLOW)  # answers after 10 s, past the adapter's 5 s

    first = retry_payment(merchant_a, bill.id)

    # the processor did not answer in time: unknown, not failed
    assert first.status == 202, first.body
    assert first.result is not None and (first.result.success, first.code) == (False, "processing"), first.body
    retries = [c for c in sandbox.charges_of(bill.id) if ":retry:" in c["idempotencyKey"]]
    assert len(retries) == 1, retries
    key = retries[0]["idempotencyKey"]
    # while it is in flight, another retry is refused and sends nothing
    second = retry_payment(merchant_a, bill.id)
    assert (second.status, second.code) == (409, "concurrent_attempt"), second.body

    # the outcome arrives later (webhook, or the janitor asking by key): paid once
    assert eventually(lambda: invoice_state(merchant_a, bill.id), ("PAID", "30.00", "0.00"), SETTLE_SECONDS) == ("PAID", "30.00", "0.00")
    found = sandbox.charge_by_key(merchant_a.merchant_id, key)
    assert found is not None and found["status"] == "succeeded", found
    assert [c["idempotencyKey"] for c in sandbox.charges_of(bill.id)] == [f"{bill.id}:auto:0", key]
    assert _succeeded(sandbox.charges_of(bill.id)) == [found]
    assert invoice_state(merchant_a, bill.id) == ("PAID", "30.00", "0.00")


# --- the hosted page -------------------------------------------------------------------------


def test_a_double_submit_of_one_render_charges_once(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Double click", at("2027-03-01T00:00:00Z"))
    checkout = checkout_of(sub)
    bill = invoice_0(merchant_a, sub)
    page = open_page(checkout.checkout_url)
    assert page.status_code == 200, page.html[:500]
    assert page.session_id == checkout.payment_session_id
    token = tokenize(page, CARD_SUCCEEDS)

    # a double-click: the same render (nonce) and token, four times at once
    answers = concurrently([lambda: submit(page, token) for _ in range(4)])

    shown = [(answer.status_code, answer.text) for answer in answers]
    assert all(answer.status_code == 200 for answer in answers), shown
    statuses = [answer.json()["status"] for answer in answers]
    assert "completed" in statuses and set(statuses) <= {"completed", "processing"}, shown
    charges = sandbox.charges_of(page.session_id)
    assert [(c["status"], c["amount"]) for c in charges] == [("succeeded", minor("49.00"))], charges
    # when the page says paid, the invoice reads PAID and the subscription is active
    assert invoice_state(merchant_a, bill.id) == ("PAID", "49.00", "0.00")
    assert subscription_status(merchant_a, sub.id) == "active"

    # the same render submitted again later: the session as it is, nothing charged
    late = submit(page, token)
    assert (late.status_code, late.json()["status"]) == (200, "completed"), late.text
    assert sandbox.charges_of(page.session_id) == charges
    assert invoice_state(merchant_a, bill.id) == ("PAID", "49.00", "0.00")


def test_two_tabs_submitting_at_once_charge_once(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    payment = merchant_a.sdk.payments.create(amount="25.00", currency="USD", reference="two tabs")
    assert payment.payment_url is not None
    tabs = [open_page(payment.payment_url) for _ in range(2)]
    assert all(tab.status_code == 200 for tab in tabs)
    assert tabs[0].nonce != tabs[1].nonce  # two renders
    tokens = [tokenize(tab, CARD_SUCCEEDS) for tab in tabs]

    answers = concurrently([lambda tab=tab, token=token: submit(tab, token) for tab, token in zip(tabs, tokens, strict=True)])

    shown = [(answer.status_code, answer.text) for answer in answers]
    assert all(answer.status_code == 200 for answer in answers), shown
    assert "completed" in [answer.json()["status"] for answer in answers], shown
    charges = sandbox.charges_of(tabs[0].session_id)
    assert [(c["status"], c["amount"]) for c in charges] == [("succeeded", minor("25.00"))], charges
    assert merchant_a.sdk.payments.get(id=payment.id).status == "completed"
    assert sandbox.charges_of(tabs[0].session_id) == charges


# --- processor webhooks ------------------------------------------------------------------------


def _events_delivered(sandbox: Sandbox, charge_id: str, types: set[str]) -> dict[str, dict[str, Any]]:
    """Once every event type of the charge has been delivered (answered 2xx): type -> one
    delivery record of it (its ``eventId``, ``sequence``)."""
    assert eventually(lambda: set(sandbox.delivered(charge_id)) >= types, True, SETTLE_SECONDS), sandbox.deliveries(charge_id)
    return {str(d["type"]): d for d in sandbox.deliveries(charge_id)}


def _redeliver(sandbox: Sandbox, charge_id: str, event_ids: list[str]) -> None:
    """Each event delivered once more by the sandbox, in this order, each answered 2xx."""
    made = {int(sandbox.redeliver(event_id)["id"]) for event_id in event_ids}
    assert eventually(lambda: sandbox.delivery_settled(charge_id, made), True, SETTLE_SECONDS)
    answered = [(d["type"], d["status"], d["lastStatus"]) for d in sandbox.deliveries(charge_id) if int(d["id"]) in made]
    assert all(status == "delivered" and 200 <= int(code) < 300 for _, status, code in answered), answered


def _sessions(client: MerchantClient, subscription_id: str) -> list[tuple[str, str, Any, Any]]:
    listed = client.sdk.payment_sessions.list_payment_sessions(request={"subscription_id": subscription_id, "limit": 100}).data
    return [(s.id, s.status, s.provider_payment_ref, s.completed_at) for s in listed]


def test_duplicate_webhooks_pay_the_invoice_once(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Webhooks twice", at("2027-04-01T00:00:00Z"))
    checkout = checkout_of(sub)
    bill = invoice_0(merchant_a, sub)
    assert pay(checkout.checkout_url, CARD_SUCCEEDS)["status"] == "completed"
    assert invoice_state(merchant_a, bill.id) == ("PAID", "49.00", "0.00")
    [charge] = sandbox.charges_of(checkout.payment_session_id)
    succeeded = _events_delivered(sandbox, charge["id"], {"charge.succeeded"})["charge.succeeded"]
    before = _sessions(merchant_a, sub.id)
    assert before == [(checkout.payment_session_id, "completed", charge["id"], before[0][3])]

    # the sandbox delivers the event three more times (the same event id, signed afresh)
    _redeliver(sandbox, charge["id"], [succeeded["eventId"]] * 3)
    # and the same event sent by hand, concurrently: each answered as a duplicate
    body = event_body(succeeded["eventId"], "charge.succeeded", int(succeeded["sequence"]), charge)
    answers = concurrently(
        [lambda: post_webhook(merchant_a.base_url, merchant_a.merchant_id, body, sandbox.sign(succeeded["eventId"], body))] * 4
    )

    shown = [(answer.status_code, answer.text) for answer in answers]
    assert all(answer.status_code == 200 for answer in answers), shown
    assert [(a.json()["received"], a.json()["result"]) for a in answers] == [(True, "duplicate")] * 4, shown
    assert invoice_state(merchant_a, bill.id) == ("PAID", "49.00", "0.00")
    assert sandbox.charges_of(checkout.payment_session_id) == [charge]
    assert _sessions(merchant_a, sub.id) == before
    assert subscription_status(merchant_a, sub.id) == "active"


def test_an_older_webhook_after_a_newer_one_changes_nothing(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Webhooks out of order", at("2027-04-01T00:00:00Z"), amount="12.00")
    checkout = checkout_of(sub)
    bill = invoice_0(merchant_a, sub)
    # the slow card: charge.processing first, charge.succeeded ~10 s later
    answer = pay(checkout.checkout_url, CARD_SLOW)
    assert answer["status"] in ("processing", "completed"), answer
    assert eventually(lambda: invoice_state(merchant_a, bill.id), ("PAID", "12.00", "0.00"), SETTLE_SECONDS) == ("PAID", "12.00", "0.00")
    [charge] = sandbox.charges_of(checkout.payment_session_id)
    assert charge["status"] == "succeeded"
    events = _events_delivered(sandbox, charge["id"], {"charge.processing", "charge.succeeded"})
    processing, succeeded = events["charge.processing"], events["charge.succeeded"]
    assert int(processing["sequence"]) < int(succeeded["sequence"])
    before = _sessions(merchant_a, sub.id)

    # the older state again, after the newer one was applied: by the sandbox, twice...
    _redeliver(sandbox, charge["id"], [processing["eventId"]] * 2)
    # ...and as an older event never seen before (another id, the older sequence)
    stale = event_body(
        f"evt_late{uuid.uuid4().hex[:12]}", "charge.processing", int(processing["sequence"]), {**charge, "status": "processing"}
    )
    late = post_webhook(merchant_a.base_url, merchant_a.merchant_id, stale, sandbox.sign(json.loads(stale)["id"], stale))

    assert (late.status_code, late.json().get("result")) == (200, "stale"), late.text
    assert invoice_state(merchant_a, bill.id) == ("PAID", "12.00", "0.00")
    assert _sessions(merchant_a, sub.id) == before
    assert [s[:2] for s in before] == [(checkout.payment_session_id, "completed")]
    assert sandbox.charges_of(checkout.payment_session_id) == [charge]
    assert subscription_status(merchant_a, sub.id) == "active"


def test_a_webhook_whose_signature_does_not_verify_is_refused(merchant_a: MerchantClient, sandbox: Sandbox) -> None:
    sub = pending_subscription(merchant_a, "Forged webhook", at("2027-04-01T00:00:00Z"), amount="15.00")
    checkout = checkout_of(sub)
    bill = invoice_0(merchant_a, sub)
    page = open_page(checkout.checkout_url)
    declined = submit(page, tokenize(page, "4000000000000002"))
    assert declined.json()["status"] == "pending", declined.text
    [charge] = sandbox.charges_of(checkout.payment_session_id)
    assert charge["status"] == "failed"
    # a charge.succeeded for the declined charge, signed with another secret, unsigned, or changed after signing
    body = event_body(f"evt_forged{uuid.uuid4().hex[:10]}", "charge.succeeded", 99, {**charge, "status": "succeeded", "failureCode": None})
    event_id = json.loads(body)["id"]
    other = Sandbox(
        sandbox.url, sandbox.public_url, sandbox.secret_key, sandbox.publishable_key, "whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA=="
    )
    signed = sandbox.sign(event_id, body)
    attempts = [
        (body, other.sign(event_id, body)),
        (body, {"content-type": "application/json"}),
        (body.replace('"amount":1500', '"amount":1'), signed),
        (body, {**signed, "webhook-timestamp": str(int(signed["webhook-timestamp"]) - 3600)}),
    ]

    answers = [post_webhook(merchant_a.base_url, merchant_a.merchant_id, text, headers) for text, headers in attempts]

    assert [answer.status_code for answer in answers] == [400] * len(attempts), [a.text for a in answers]
    assert invoice_state(merchant_a, bill.id) == ("ISSUED", "0.00", "15.00")
    assert subscription_status(merchant_a, sub.id) == "pending_payment"


# --- SIGKILL between the charge and its record -------------------------------------------------


@pytest.fixture
def fault_mesh(infra_mesh: Mesh, tmp_path: Path) -> Iterator[Mesh]:
    mesh = own_mesh(infra_mesh, tmp_path, "paykill")
    mesh.log_level = "INFO"  # the payment service's log tells what happened around the kill
    try:
        mesh.start(merchant_name="Killed merchant")
        yield mesh
    finally:
        mesh.stop()


def test_a_payment_service_killed_after_sending_a_charge_records_it_once_after_restart(fault_mesh: Mesh) -> None:
    mesh = fault_mesh
    client = MerchantClient(
        mesh.merchant_id, mesh.api_key, Paygentic(bearer_auth=mesh.api_key, server_url=mesh.gateway_url), mesh.gateway_url
    )
    sandbox = Sandbox.of(mesh)
    sub = pending_subscription(client, "Killed", at("2027-05-01T00:00:00Z"))
    checkout = checkout_of(sub)
    bill = invoice_0(client, sub)
    page = open_page(checkout.checkout_url)
    token = tokenize(page, CARD_SUCCEEDS)

    # the payment service again, armed to SIGKILL itself once the processor has answered a charge
    mesh.kill("payment")
    mesh.processes["payment"].env["ACCRUE_PAYMENT_FAULT"] = "kill_after_charge_sent"
    mesh.respawn("payment")
    mesh.wait_healthy("payment", timeout=60)

    answer = submit(page, token)

    assert answer.status_code >= 500, answer.text  # its backend died mid-call
    assert mesh.processes["payment"].popen.wait(30) == -signal.SIGKILL
    # the processor charged; Accrue recorded nothing
    charges = sandbox.charges_of(page.session_id)
    assert [(c["status"], c["amount"]) for c in charges] == [("succeeded", minor("49.00"))], charges
    assert invoice_state(client, bill.id) == ("ISSUED", "0.00", "49.00")
    assert subscription_status(client, sub.id) == "pending_payment"

    # back without the fault: the attempt left `sending` is found by its key and recorded once
    del mesh.processes["payment"].env["ACCRUE_PAYMENT_FAULT"]
    mesh.respawn("payment")
    mesh.wait_healthy("payment", timeout=60)

    assert eventually(lambda: invoice_state(client, bill.id), ("PAID", "49.00", "0.00"), SETTLE_SECONDS) == ("PAID", "49.00", "0.00")
    assert subscription_status(client, sub.id) == "active"
    assert sandbox.charges_of(page.session_id) == charges
    # the gateway reconnects to the restarted service (its channel's reconnect backoff)
    reachable = lambda: rest(client, "GET", "/v0/paymentSessions", params={"subscriptionId": sub.id}).status_code  # noqa: E731
    assert eventually(reachable, 200, 30) == 200
    sessions = client.sdk.payment_sessions.list_payment_sessions(request={"subscription_id": sub.id}).data
    assert [(s.id, s.status, s.provider_payment_ref) for s in sessions] == [(page.session_id, "completed", charges[0]["id"])]
    # the page now shows it paid and takes no second card
    late = submit(page, tokenize(page, CARD_SUCCEEDS))
    assert (late.status_code, late.json()["status"]) == (200, "completed"), late.text
    assert sandbox.charges_of(page.session_id) == charges
    assert invoice_state(client, bill.id) == ("PAID", "49.00", "0.00")


def test_a_retry_payment_whose_service_is_killed_mid_charge_is_paid_once_after_restart(fault_mesh: Mesh) -> None:
    mesh = fault_mesh
    client = MerchantClient(
        mesh.merchant_id, mesh.api_key, Paygentic(bearer_auth=mesh.api_key, server_url=mesh.gateway_url), mesh.gateway_url
    )
    sandbox = Sandbox.of(mesh)
    s = auto_charged(client, "Killed retry", at("2027-05-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    assert bill.status == "PAYMENT_FAILED"
    save_card(client, s.customer_id, CARD_SUCCEEDS)
    mesh.kill("payment")
    mesh.processes["payment"].env["ACCRUE_PAYMENT_FAULT"] = "kill_after_charge_sent"
    mesh.respawn("payment")
    mesh.wait_healthy("payment", timeout=60)

    answer = retry_payment(client, bill.id)

    assert answer.status >= 500, answer.body  # the payment service died between the charge and its record
    assert mesh.processes["payment"].popen.wait(30) == -signal.SIGKILL
    retries = [c for c in sandbox.charges_of(bill.id) if ":retry:" in c["idempotencyKey"]]
    assert [(c["status"], c["amount"]) for c in retries] == [("succeeded", minor("30.00"))], retries
    assert invoice_state(client, bill.id) == ("PAYMENT_FAILED", "0.00", "30.00")

    del mesh.processes["payment"].env["ACCRUE_PAYMENT_FAULT"]
    mesh.respawn("payment")
    mesh.wait_healthy("payment", timeout=60)

    # the janitor finds the attempt left `sending` by its key and tells invoicing once
    assert eventually(lambda: invoice_state(client, bill.id), ("PAID", "30.00", "0.00"), SETTLE_SECONDS) == ("PAID", "30.00", "0.00")
    assert [c["idempotencyKey"] for c in sandbox.charges_of(bill.id)] == [f"{bill.id}:auto:0", retries[0]["idempotencyKey"]]
    assert _succeeded(sandbox.charges_of(bill.id)) == retries
    assert subscription_status(client, s.subscription.id) == "active"
