"""Dunning under a test clock: an autoCharge subscription whose saved card saves fine and
declines every later charge (4000 0000 0000 0341). Invoice 1 is charged at its issue
and fails (``PAYMENT_FAILED``); the retries come at +3, +5 and +7 days from that first
attempt, each one a charge at the processor with its own key (``<invoice>:auto:1..3``),
laid by the billing timeline and run by the clock's advance, so the processor's records
appear exactly at those instants (none a second before). After the last one the
merchant's policy applies: ``keep_active`` (the default) or ``terminate``
(``PATCH /v0/merchants/{id}/paymentSettings``). A retry on a card changed in between
pays the invoice and ends the schedule.

Each scenario has its own customer and clock; the settings ones their own merchant.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from libs.infra.runner import Mesh
from libs.testing.billing import advance, at, new_merchant
from libs.testing.fixtures import MerchantClient
from libs.testing.payments import (
    CARD_FAILS_LATER,
    CARD_SUCCEEDS,
    AutoCharged,
    Sandbox,
    auto_charged,
    invoice_state,
    minor,
    rest,
    save_card,
    subscription_status,
)

pytestmark = pytest.mark.e2e

SECOND = timedelta(seconds=1)
DEFAULT_SCHEDULE = (3, 5, 7)


@pytest.fixture(scope="module")
def sandbox(mesh: Mesh) -> Sandbox:
    return Sandbox.of(mesh)


@pytest.fixture(scope="module")
def dunning_merchant(mesh: Mesh) -> MerchantClient:
    """A merchant whose payment settings are the defaults (no test changes them)."""
    return new_merchant(mesh, "Dunning defaults")


def _failed(invoice_id: str, attempts: int) -> list[tuple[str, str]]:
    return [(f"{invoice_id}:auto:{n}", "failed") for n in range(attempts)]


def _walk_to(s: AutoCharged, sandbox: Sandbox, invoice_id: str, when: datetime, expected_before: list[tuple[str, str]]) -> None:
    """Advance to a second before ``when``: the processor has exactly ``expected_before``."""
    advance(s.client, s.clock_id, when - SECOND)
    assert sandbox.keys_of(invoice_id) == expected_before, f"before {when.isoformat()}"


def test_default_settings(dunning_merchant: MerchantClient) -> None:
    response = rest(dunning_merchant, "GET", f"/v0/merchants/{dunning_merchant.merchant_id}/paymentSettings")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["merchantId"]) == ("payment_settings", dunning_merchant.merchant_id)
    assert (body["retryScheduleDays"], body["afterFinalFailure"]) == (list(DEFAULT_SCHEDULE), "keep_active")
    assert body.get("updatedAt") is None  # never changed


def test_three_retries_at_their_days_then_the_subscription_stays_active(dunning_merchant: MerchantClient, sandbox: Sandbox) -> None:
    s = auto_charged(dunning_merchant, "Dunning keep", at("2027-03-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    first = s.issue_1  # Apr 1 01:00: the first automatic attempt, at issue

    assert (bill.status, bill.raw.get("failureReason")) == ("PAYMENT_FAILED", "card_declined")
    assert bill.time("issuedAt") == first
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 1)
    assert [c["amount"] for c in sandbox.charges_of(bill.id)] == [minor("30.00")]

    for n, days in enumerate(DEFAULT_SCHEDULE, start=1):
        due = first + timedelta(days=days)
        _walk_to(s, sandbox, bill.id, due, _failed(bill.id, n))
        advance(dunning_merchant, s.clock_id, due)
        # retry n at exactly first + days, declined again
        assert sandbox.keys_of(bill.id) == _failed(bill.id, n + 1), f"retry {n} at +{days} days"
        assert invoice_state(dunning_merchant, bill.id) == ("PAYMENT_FAILED", "0.00", "30.00")
        assert subscription_status(dunning_merchant, s.subscription.id) == "active"

    # the schedule is exhausted: keep_active leaves the subscription active, the invoice unpaid, no more charges
    advance(dunning_merchant, s.clock_id, first + timedelta(days=12))
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 4)
    assert [c["amount"] for c in sandbox.charges_of(bill.id)] == [minor("30.00")] * 4
    assert invoice_state(dunning_merchant, bill.id) == ("PAYMENT_FAILED", "0.00", "30.00")
    assert s.invoice(1).raw.get("failureReason") == "card_declined"
    assert subscription_status(dunning_merchant, s.subscription.id) == "active"


def test_a_retry_on_a_changed_card_pays_and_stops_the_schedule(dunning_merchant: MerchantClient, sandbox: Sandbox) -> None:
    s = auto_charged(dunning_merchant, "Dunning recovered", at("2027-03-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    first = s.issue_1
    assert bill.status == "PAYMENT_FAILED"
    advance(dunning_merchant, s.clock_id, first + timedelta(days=3))
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 2)

    # on day 4 the customer saves a good card through a setup session: the newest method
    advance(dunning_merchant, s.clock_id, first + timedelta(days=4))
    save_card(dunning_merchant, s.customer_id, CARD_SUCCEEDS)
    assert invoice_state(dunning_merchant, bill.id) == ("PAYMENT_FAILED", "0.00", "30.00")  # no page, no charge yet
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 2)

    _walk_to(s, sandbox, bill.id, first + timedelta(days=5), _failed(bill.id, 2))
    advance(dunning_merchant, s.clock_id, first + timedelta(days=5))

    # retry 2 at +5 days, on the new card: paid
    assert sandbox.keys_of(bill.id) == [*_failed(bill.id, 2), (f"{bill.id}:auto:2", "succeeded")]
    paid = s.invoice(1)
    assert (paid.status, paid.raw["paidAmount"], paid.raw["unpaidAmount"]) == ("PAID", "30.00", "0.00")
    assert paid.time("paidAt") == first + timedelta(days=5)
    # the schedule ends with it: no retry 3 at +7 days
    advance(dunning_merchant, s.clock_id, first + timedelta(days=9))
    assert sandbox.keys_of(bill.id) == [*_failed(bill.id, 2), (f"{bill.id}:auto:2", "succeeded")]
    assert invoice_state(dunning_merchant, bill.id) == ("PAID", "30.00", "0.00")
    assert subscription_status(dunning_merchant, s.subscription.id) == "active"


def test_terminate_after_the_final_failure(mesh: Mesh, sandbox: Sandbox) -> None:
    client = new_merchant(mesh, "Dunning terminate")
    changed = rest(client, "PATCH", f"/v0/merchants/{client.merchant_id}/paymentSettings", json={"afterFinalFailure": "terminate"})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    # only the policy changed; the schedule is still the default
    assert (body["retryScheduleDays"], body["afterFinalFailure"]) == (list(DEFAULT_SCHEDULE), "terminate")
    assert body["updatedAt"]
    assert rest(client, "GET", f"/v0/merchants/{client.merchant_id}/paymentSettings").json() == body

    s = auto_charged(client, "Dunning terminate", at("2027-03-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    first = s.issue_1
    assert bill.status == "PAYMENT_FAILED"
    advance(client, s.clock_id, first + timedelta(days=5))
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 3)
    assert subscription_status(client, s.subscription.id) == "active"  # retries are left
    _walk_to(s, sandbox, bill.id, first + timedelta(days=7), _failed(bill.id, 3))
    assert subscription_status(client, s.subscription.id) == "active"

    advance(client, s.clock_id, first + timedelta(days=7))

    # the last retry fails: the subscription ends then
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 4)
    ended = client.sdk.subscriptions.get(id=s.subscription.id)
    assert ended.status == "terminated"
    assert ended.terminated_at == first + timedelta(days=7)
    assert invoice_state(client, bill.id)[0] == "PAYMENT_FAILED"
    advance(client, s.clock_id, first + timedelta(days=12))
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 4)


def test_a_merchant_schedule_of_its_own(mesh: Mesh, sandbox: Sandbox) -> None:
    client = new_merchant(mesh, "Dunning custom")
    changed = rest(client, "PATCH", f"/v0/merchants/{client.merchant_id}/paymentSettings", json={"retryScheduleDays": [1, 4]})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["retryScheduleDays"], changed.json()["afterFinalFailure"]) == ([1, 4], "keep_active")

    s = auto_charged(client, "Dunning custom", at("2027-06-01T00:00:00Z"), CARD_FAILS_LATER)
    bill = s.issue_invoice_1()
    first = s.issue_1
    for n, days in enumerate((1, 4), start=1):
        due = first + timedelta(days=days)
        _walk_to(s, sandbox, bill.id, due, _failed(bill.id, n))
        advance(client, s.clock_id, due)
        assert sandbox.keys_of(bill.id) == _failed(bill.id, n + 1)
    advance(client, s.clock_id, first + timedelta(days=9))  # past the default +7: nothing more
    assert sandbox.keys_of(bill.id) == _failed(bill.id, 3)
    assert subscription_status(client, s.subscription.id) == "active"


BAD_SETTINGS = [
    # (case, body, field)
    ("not increasing", {"retryScheduleDays": [5, 3]}, "retryScheduleDays[1]"),
    ("repeated day", {"retryScheduleDays": [3, 3]}, "retryScheduleDays[1]"),
    ("day zero", {"retryScheduleDays": [0, 2]}, "retryScheduleDays[0]"),
    ("past 60 days", {"retryScheduleDays": [3, 61]}, "retryScheduleDays[1]"),
    ("unknown policy", {"afterFinalFailure": "suspend"}, "afterFinalFailure"),
]


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in BAD_SETTINGS], ids=[case[0] for case in BAD_SETTINGS])
def test_bad_settings_are_refused_naming_the_field(body: dict[str, object], field: str, dunning_merchant: MerchantClient) -> None:
    path = f"/v0/merchants/{dunning_merchant.merchant_id}/paymentSettings"
    response = rest(dunning_merchant, "PATCH", path, json=body)
    assert response.status_code == 400, response.text
    assert (response.json().get("details") or {}).get("field") == field, response.text
    # nothing written
    after = rest(dunning_merchant, "GET", path).json()
    assert (after["retryScheduleDays"], after["afterFinalFailure"]) == (list(DEFAULT_SCHEDULE), "keep_active")
