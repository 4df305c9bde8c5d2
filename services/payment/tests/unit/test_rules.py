"""The payment service's input rules: one-off payment amounts and currencies, expiries,
redirect URLs, exact minor units, the dunning schedule's bounds; and the session and
payment lifecycles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.core.errors import InvalidArgument
from libs.core.grid import add, parse_duration
from services.payment.domain.model import (
    CollectionSettings,
    EntityType,
    Payment,
    PaymentSession,
    SessionChanged,
    SessionChangeKind,
    SessionMode,
    amount_text,
    check_payment_amount,
    check_payment_currency,
    check_retry_schedule,
    page_attempt_key,
    payment_expiry,
    redirect_url,
    setup_expiry,
    to_minor,
)

NOW = datetime(2026, 1, 31, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", ["1.00", "1", "49.99", "5000.00", "5000"])
def test_payment_amounts_from_1_to_5000(text: str) -> None:
    assert check_payment_amount(Decimal(text)) == Decimal(text)


@pytest.mark.parametrize("text", ["0.99", "0", "-1", "5000.01", "10000"])
def test_payment_amounts_outside_are_refused_naming_amount(text: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        check_payment_amount(Decimal(text))
    assert (bad.value.field, bad.value.reason) == ("amount", "AMOUNT_OUT_OF_RANGE")


def test_payment_currencies() -> None:
    for code in ("USD", "EUR", "GBP", "AUD"):
        assert check_payment_currency(code) == code
    for code in ("JPY", "usd", ""):
        with pytest.raises(InvalidArgument) as bad:
            check_payment_currency(code)
        assert bad.value.field == "currency"


def test_minor_units_are_exact_or_refused() -> None:
    assert to_minor(Decimal("49.00"), "USD") == 4900
    assert to_minor(Decimal("0.01"), "EUR") == 1
    assert to_minor(Decimal("1000"), "JPY") == 1000
    assert to_minor(Decimal("1.234"), "KWD") == 1234
    with pytest.raises(InvalidArgument) as bad:
        to_minor(Decimal("1.005"), "USD", "items[0].amount")
    assert (bad.value.field, bad.value.reason) == ("items[0].amount", "TOO_MANY_DECIMAL_PLACES")
    with pytest.raises(InvalidArgument):
        to_minor(Decimal("1.5"), "JPY")
    # never rounded by Python's 28-digit default context, never beyond what a processor takes
    for huge in ("123456789012345678901234567890.12", "1" + "0" * 63):
        with pytest.raises(InvalidArgument) as large:
            to_minor(Decimal(huge), "USD")
        assert large.value.reason == "AMOUNT_TOO_LARGE"


def test_amounts_show_the_currencys_places() -> None:
    assert [amount_text(Decimal(v), c) for v, c in (("49", "USD"), ("9.9", "EUR"), ("1000", "JPY"), ("1.5", "KWD"))] == [
        "49.00", "9.90", "1000", "1.500",
    ]  # fmt: skip


@pytest.mark.parametrize(("text", "days"), [(None, 30), ("P1D", 1), ("PT2H", None), ("P31D", 31), ("P4W", 28), ("P1M", 28)])
def test_payment_expiry_defaults_to_30_days_and_allows_31(text: str | None, days: int | None) -> None:
    now = datetime(2026, 2, 1, tzinfo=UTC)
    later = add(now, parse_duration(text, "expiresIn"), field="expiresIn") if text else None
    expires_at = payment_expiry(now, None, later=later)
    if days is not None:
        assert expires_at - now == timedelta(days=days)
    else:
        assert expires_at - now == timedelta(hours=2)


@pytest.mark.parametrize("text", ["P32D", "P2M", "P1Y", "P0D", "PT0S"])
def test_payment_expiry_beyond_31_days_or_none_is_refused(text: str) -> None:
    later = add(NOW, parse_duration(text, "expiresIn"), field="expiresIn")
    with pytest.raises(InvalidArgument) as bad:
        payment_expiry(NOW, None, later=later)
    assert bad.value.field == "expiresIn"


def test_a_month_from_january_31_is_one_day_too_long_only_in_31_day_months() -> None:
    # Jan 31 + P1M clamps to Feb 28: 28 days, allowed
    assert payment_expiry(NOW, None, later=add(NOW, "P1M")) == datetime(2026, 2, 28, 10, tzinfo=UTC)


def test_setup_expiry() -> None:
    assert setup_expiry(NOW, None) == NOW + timedelta(days=30)
    assert setup_expiry(NOW, NOW + timedelta(days=30)) == NOW + timedelta(days=30)
    for bad in (NOW, NOW - timedelta(seconds=1), NOW + timedelta(days=30, seconds=1)):
        with pytest.raises(InvalidArgument) as raised:
            setup_expiry(NOW, bad)
        assert raised.value.field == "expiresAt"


@pytest.mark.parametrize("url", ["https://shop.example/done?x=1", "http://localhost:3000/ok"])
def test_redirects_are_http_urls(url: str) -> None:
    assert redirect_url(url, "successRedirectUrl") == url
    assert redirect_url(None, "successRedirectUrl") is None
    assert redirect_url("", "successRedirectUrl") is None


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,hi", "ftp://x", "//shop.example", "https://a b", "shop.example"])
def test_other_redirects_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidArgument) as bad:
        redirect_url(url, "failureRedirectUrl")
    assert (bad.value.field, bad.value.reason) == ("failureRedirectUrl", "INVALID_URL")


def test_retry_schedules() -> None:
    assert check_retry_schedule([3, 5, 7]) == [3, 5, 7]
    assert check_retry_schedule([]) == []
    assert check_retry_schedule(list(range(1, 11))) == list(range(1, 11))
    for days, field, reason in (
        ([3, 3], "retryScheduleDays[1]", "NOT_INCREASING"),
        ([5, 3], "retryScheduleDays[1]", "NOT_INCREASING"),
        ([0], "retryScheduleDays[0]", "OUT_OF_RANGE"),
        ([1, 61], "retryScheduleDays[1]", "OUT_OF_RANGE"),
        (list(range(1, 12)), "retryScheduleDays", "TOO_MANY_RETRIES"),
    ):
        with pytest.raises(InvalidArgument) as bad:
            check_retry_schedule(days)
        assert (bad.value.field, bad.value.reason) == (field, reason)


def test_settings_update_validates_the_policy() -> None:
    settings = CollectionSettings(merchant_id="org_1")
    settings.update(retry_schedule_days=None, after_final_failure="terminate", now=NOW)
    assert (settings.retry_schedule_days, settings.after_final_failure, settings.update_time) == ([3, 5, 7], "terminate", NOW)
    with pytest.raises(InvalidArgument) as bad:
        settings.update(retry_schedule_days=None, after_final_failure="cancel", now=NOW)
    assert bad.value.field == "afterFinalFailure"


def session(expires_at: datetime = NOW + timedelta(days=1)) -> PaymentSession:
    return PaymentSession.open(
        merchant_id="org_1", mode=SessionMode.PAYMENT, entity_type=EntityType.INVOICE, entity_id="inv_1", customer_id="cus_1",
        subscription_id=None, amount=Decimal("49.00"), currency="USD", entity_label=None, lines=[], success_redirect_url=None,
        failure_redirect_url=None, metadata={}, save_payment_method=False, expires_at=expires_at, now=NOW,
    )  # fmt: skip


def kinds(found: PaymentSession) -> list[SessionChangeKind]:
    return [e.kind for e in found.events if isinstance(e, SessionChanged)]


def test_a_session_opens_pending_and_completes_once() -> None:
    found = session()
    assert (found.status, found.is_open, found.payable) == ("pending", True, ("invoice", "inv_1"))
    assert found.next_attempt_key() == page_attempt_key(found.id, 1) == f"{found.id}:1"
    found.begin(NOW, nonce="n")
    assert found.status == "processing" and not found.cancel(NOW)  # its charge is in flight
    found.declined("card_declined", "declined", NOW)
    assert (found.status, found.failure_code) == ("pending", "card_declined")
    assert found.next_attempt_key() == f"{found.id}:2"
    assert found.complete(NOW, provider_payment_ref="ch_1") and not found.complete(NOW)
    assert (found.status, found.failure_code, found.completed_at) == ("completed", None, NOW)
    assert not found.cancel(NOW) and not found.expire(NOW + timedelta(days=2))
    assert kinds(found) == [SessionChangeKind.OPENED, SessionChangeKind.COMPLETED]


def test_a_pending_session_expires_at_its_end_and_not_before() -> None:
    found = session()
    assert not found.expire(NOW + timedelta(hours=23))
    assert found.expire(NOW + timedelta(days=1))
    assert found.status == "expired" and kinds(found)[-1] == SessionChangeKind.EXPIRED
    with pytest.raises(InvalidArgument):
        session(expires_at=NOW)


def test_a_payment_needs_a_customer_to_keep_the_card_and_at_most_100_lines() -> None:
    values: dict[str, object] = {
        "merchant_id": "org_1", "amount": Decimal("10.00"), "currency": "USD", "customer_id": None, "idempotency_key": None,
        "request_hash": "h", "reference": None, "metadata": {}, "line_items": [], "success_redirect_url": None,
        "failure_redirect_url": None, "save_payment_method": False, "expires_at": NOW + timedelta(days=30), "now": NOW,
    }  # fmt: skip
    payment = Payment.create(**values)  # type: ignore[arg-type]
    assert payment.status == "pending" and payment.id.startswith("pay_")
    payment.processing(NOW)
    payment.declined(NOW)
    assert payment.status == "pending"
    assert payment.complete(NOW) and payment.status == "completed" and not payment.expire(NOW + timedelta(days=31))
    with pytest.raises(InvalidArgument) as bad:
        Payment.create(**{**values, "save_payment_method": True})  # type: ignore[arg-type]
    assert bad.value.field == "customerId"
    with pytest.raises(InvalidArgument) as many:
        Payment.create(**{**values, "line_items": [{"description": "x", "amount": "1", "quantity": 1}] * 101})  # type: ignore[arg-type]
    assert many.value.field == "lineItems"
