"""The sandbox's card rules: Luhn, brands from the BIN, expiry and security code checks,
what each test card does, and that nothing of the number but its last four digits is kept."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.sandbox.domain import cards
from services.sandbox.domain.cards import Behaviour, CardError, brand_of, luhn_valid, outcome, read_card

NOW = datetime(2026, 6, 15, tzinfo=UTC)


@pytest.mark.parametrize("number", [*cards.TEST_CARDS, "5555555555554444", "378282246310005", "6011111111111117", "3566002020360505"])
def test_the_test_cards_and_known_numbers_pass_luhn(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", ["4242424242424241", "4000000000000001", "1234567890123456", "79927398710"])
def test_a_wrong_check_digit_fails_luhn(number: str) -> None:
    assert not luhn_valid(number)


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        ("4242424242424242", "visa"),
        ("5555555555554444", "mastercard"),
        ("2223003122003222", "mastercard"),
        ("378282246310005", "amex"),
        ("6011111111111117", "discover"),
        ("3566002020360505", "jcb"),
        ("36227206271667", "diners"),
        ("6200000000000005", "unionpay"),
        ("9999999999999995", "unknown"),
    ],
)
def test_the_brand_comes_from_the_leading_digits(number: str, brand: str) -> None:
    assert brand_of(number) == brand


@pytest.mark.parametrize(
    ("number", "behaviour"),
    [
        ("4242 4242 4242 4242", Behaviour.SUCCEED),
        ("4000-0000-0000-0002", Behaviour.DECLINE),
        ("4000000000009995", Behaviour.INSUFFICIENT_FUNDS),
        ("4000000000000341", Behaviour.DECLINE_AFTER_ATTACH),
        ("4000000000006975", Behaviour.SLOW),
        ("5555555555554444", Behaviour.SUCCEED),  # any other valid number succeeds
    ],
)
def test_each_test_card_has_its_behaviour_and_only_its_last_four_are_kept(number: str, behaviour: Behaviour) -> None:
    details = read_card(number, 12, 2030, "123", NOW)
    assert details.behaviour is behaviour
    assert details.last4 == number.replace(" ", "").replace("-", "")[-4:]
    assert (details.exp_month, details.exp_year) == (12, 2030)
    kept = " ".join(str(value) for value in dataclasses.astuple(details))
    assert number.replace(" ", "").replace("-", "") not in kept and "123" not in kept  # no number, no CVC


def test_outcomes_of_the_test_cards() -> None:
    assert outcome(Behaviour.SUCCEED) == cards.Outcome(True)
    assert outcome(Behaviour.SLOW) == cards.Outcome(True, slow=True)
    declined = outcome(Behaviour.DECLINE)
    assert (declined.succeeded, declined.failure_code, declined.decline_code) == (False, "card_declined", "generic_decline")
    assert outcome(Behaviour.DECLINE_AFTER_ATTACH) == declined
    broke = outcome("insufficient_funds")
    assert (broke.succeeded, broke.failure_code, broke.decline_code) == (False, "insufficient_funds", "insufficient_funds")


@pytest.mark.parametrize(
    ("number", "month", "year", "cvc", "code", "param"),
    [
        ("4242424242424241", 12, 2030, "123", "incorrect_number", "number"),
        ("42424242", 12, 2030, "123", "incorrect_number", "number"),  # too short
        ("4242x42424242424", 12, 2030, "123", "incorrect_number", "number"),
        (4242424242424242, 12, 2030, "123", "incorrect_number", "number"),  # not a string
        (None, 12, 2030, "123", "incorrect_number", "number"),
        ("4242424242424242", 13, 2030, "123", "invalid_expiry", "expMonth"),
        ("4242424242424242", 0, 2030, "123", "invalid_expiry", "expMonth"),
        ("4242424242424242", True, 2030, "123", "invalid_expiry", "expMonth"),
        ("4242424242424242", 5, 2026, "123", "invalid_expiry", "expYear"),  # last month
        ("4242424242424242", 12, 2025, "123", "invalid_expiry", "expYear"),
        ("4242424242424242", 12, 2100, "123", "invalid_expiry", "expYear"),
        ("4242424242424242", 12, "soon", "123", "invalid_expiry", "expYear"),
        ("4242424242424242", 12, 2030, "12", "invalid_cvc", "cvc"),
        ("4242424242424242", 12, 2030, "1234", "invalid_cvc", "cvc"),
        ("4242424242424242", 12, 2030, None, "invalid_cvc", "cvc"),
        ("378282246310005", 12, 2030, "123", "invalid_cvc", "cvc"),  # amex: four digits
    ],
)
def test_a_bad_card_is_refused_naming_its_field_and_never_echoing_it(
    number: object, month: object, year: object, cvc: object, code: str, param: str
) -> None:
    with pytest.raises(CardError) as caught:
        read_card(number, month, year, cvc, NOW)
    assert (caught.value.code, caught.value.param) == (code, param)
    if isinstance(number, str):
        assert number not in caught.value.message


def test_the_expiry_month_itself_is_still_valid_and_two_digit_years_are_this_century() -> None:
    assert read_card("4242424242424242", 6, 2026, "123", NOW).exp_year == 2026
    assert read_card("4242424242424242", "07", "29", "123", NOW).exp_year == 2029
    assert read_card("378282246310005", 1, 2027, "1234", NOW).brand == "amex"
