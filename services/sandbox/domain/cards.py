"""Cards, as the sandbox processor sees them: pure rules, no I/O.

A card number is read once, when the browser tokenizes it (``read_card``), and reduced
at once to what may be kept: the brand (from the number's first digits), the last four
digits, the expiry and the test card's behaviour. The number and the security code are
never returned, stored or logged; nothing in this module keeps them.

The test cards (README "Payments: the sandbox processor and its test cards"):

=====================  =================================================================
4242 4242 4242 4242    succeeds
4000 0000 0000 0002    declined: card_declined / generic_decline
4000 0000 0000 9995    declined: insufficient_funds / insufficient_funds
4000 0000 0000 0341    saves fine; every charge on it is declined (card_declined)
4000 0000 0000 6975    slow: the charge stays ``processing`` for the slow delay, then succeeds
any other valid number succeeds
=====================  =================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Behaviour(StrEnum):
    """What charging a card does (stored with the card instead of its number)."""

    SUCCEED = "succeed"
    DECLINE = "decline"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    DECLINE_AFTER_ATTACH = "decline_after_attach"
    SLOW = "slow"


TEST_CARDS: dict[str, Behaviour] = {
    "4242424242424242": Behaviour.SUCCEED,
    "4000000000000002": Behaviour.DECLINE,
    "4000000000009995": Behaviour.INSUFFICIENT_FUNDS,
    "4000000000000341": Behaviour.DECLINE_AFTER_ATTACH,
    "4000000000006975": Behaviour.SLOW,
}

# how far ahead an expiry may be (card networks issue for at most ~20 years)
MAX_YEARS_AHEAD = 50


class CardError(Exception):
    """A card the processor refuses to tokenize: ``code`` is the processor's error code
    (incorrect_number, invalid_expiry, invalid_cvc), ``param`` the request field. The
    message never contains what was sent."""

    def __init__(self, code: str, param: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class CardDetails:
    """What the sandbox keeps of a card."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    behaviour: Behaviour


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a charge on a card comes to."""

    succeeded: bool
    slow: bool = False
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def brand_of(digits: str) -> str:
    """The card network from the leading digits (the BIN ranges the networks publish)."""
    two, three, four, six = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return "visa"
    if 51 <= two <= 55 or 222100 <= six <= 272099:
        return "mastercard"
    if two in (34, 37):
        return "amex"
    if four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925:
        return "discover"
    if 3528 <= four <= 3589:
        return "jcb"
    if two in (36, 38, 39) or 300 <= three <= 305:
        return "diners"
    if two == 62:
        return "unionpay"
    return "unknown"


def _digits(value: Any, param: str, code: str, what: str) -> str:
    if not isinstance(value, str):
        raise CardError(code, param, f"{param} must be a string of digits ({what})")
    cleaned = value.replace(" ", "").replace("-", "")
    if not cleaned.isascii() or not cleaned.isdigit():
        raise CardError(code, param, f"{param} must contain only digits, spaces and dashes ({what})")
    return cleaned


def _integer(value: Any, param: str) -> int:
    if isinstance(value, bool):
        raise CardError("invalid_expiry", param, f"{param} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    raise CardError("invalid_expiry", param, f"{param} must be an integer")


def read_card(number: Any, exp_month: Any, exp_year: Any, cvc: Any, now: datetime) -> CardDetails:
    """Checks a card as entered and keeps only what may be kept; raises CardError."""
    digits = _digits(number, "number", "incorrect_number", "the card number")
    if not 12 <= len(digits) <= 19 or not luhn_valid(digits):
        raise CardError("incorrect_number", "number", "the card number is not a valid card number")
    month = _integer(exp_month, "expMonth")
    if not 1 <= month <= 12:
        raise CardError("invalid_expiry", "expMonth", "expMonth must be 1-12")
    year = _integer(exp_year, "expYear")
    if year < 100:
        year += 2000
    # valid through the last day of its month
    if (year, month) < (now.year, now.month):
        raise CardError("invalid_expiry", "expYear", "the card has expired")
    if year > now.year + MAX_YEARS_AHEAD:
        raise CardError("invalid_expiry", "expYear", f"expYear must be within {MAX_YEARS_AHEAD} years")
    brand = brand_of(digits)
    code = _digits(cvc, "cvc", "invalid_cvc", "the security code")
    if len(code) != (4 if brand == "amex" else 3):
        raise CardError("invalid_cvc", "cvc", f"the security code has {4 if brand == 'amex' else 3} digits")
    return CardDetails(brand=brand, last4=digits[-4:], exp_month=month, exp_year=year, behaviour=TEST_CARDS.get(digits, Behaviour.SUCCEED))


def outcome(behaviour: Behaviour | str) -> Outcome:
    """What charging a card of this behaviour comes to (saved or not: a 0341 card saves
    fine, and every charge on it fails)."""
    match Behaviour(behaviour):
        case Behaviour.DECLINE | Behaviour.DECLINE_AFTER_ATTACH:
            return Outcome(False, failure_code="card_declined", decline_code="generic_decline", failure_message="Your card was declined.")
        case Behaviour.INSUFFICIENT_FUNDS:
            return Outcome(
                False,
                failure_code="insufficient_funds",
                decline_code="insufficient_funds",
                failure_message="Your card has insufficient funds.",
            )
        case Behaviour.SLOW:
            return Outcome(True, slow=True)
        case _:
            return Outcome(True)
