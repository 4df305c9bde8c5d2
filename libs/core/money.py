"""Money as integer atomic units, and strict decimal strings at the REST edge.

Every amount Accrue stores is an integer count of atomic units of 10^-9 of the
currency's major unit (USD 1.00 = 1_000_000_000). Nine places hold every unit price
Paygentic accepts (tiers use at most 6 dp, grant purchase prices at most 9) with no
loss, and integers add without drift. Floats never appear: a binary float cannot hold
0.1, and a billing system that is off by a nanodollar per event is off by real money
at a billion events.

Rounding to what a customer can actually pay (the ISO 4217 minor unit) happens once per
invoice line, half up (a half goes away from zero: 0.045 -> 0.05, -0.045 -> -0.05),
through :func:`round_to_minor` (also :func:`round_half_up`). Half up is what every
peer, every spreadsheet and every customer checking an invoice by hand does; the bias
half-to-even avoids does not accumulate here, because the rounding carry (DESIGN.md
sections 3 and 7) keeps each customer's billed cumulative total equal to the rounded
exact cumulative total, so the drift stays below half a minor unit however many lines
pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import (
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from types import MappingProxyType
from typing import Final, TypeGuard

from libs.core.errors import InvalidArgument

ATOMIC_PLACES: Final = 9
ATOMIC_PER_MAJOR: Final = 10**ATOMIC_PLACES

# Paygentic's bound on every decimal it accepts: |x| < 1e65.
MAX_ABS_DECIMAL: Final = Decimal("1e65")

# Far more digits than any legal operation needs (65 integer digits of quantity times
# 74 digits of atomic price, plus fractional places), so that arithmetic under this
# context is exact. Inexact is trapped: should a value ever need more, the operation
# fails loudly instead of rounding money silently.
EXACT_PRECISION: Final = 400


def exact_context() -> Context:
    """A fresh context for money arithmetic that must not round.

    A new object each call, so a caller that tweaks it (or a thread using it) never
    affects another; the process-wide default context (28 digits, no traps) is never
    trusted with money.
    """
    return Context(
        prec=EXACT_PRECISION,
        rounding=ROUND_HALF_UP,  # never used: Inexact is trapped
        Emax=999_999,
        Emin=-999_999,
        traps=[Inexact, InvalidOperation, DivisionByZero, Overflow],
    )


# ---------------------------------------------------------------------------------------
# ISO 4217
# ---------------------------------------------------------------------------------------

# Active ISO 4217 (List One) currency codes and their minor-unit exponents, as in force in
# late 2026. Withdrawn codes are left out on purpose so nobody can price in them anew:
# HRK (euro, 2023), SLL (replaced by SLE), ZWL (replaced by ZWG, 2024), ANG (replaced by
# XCG, 2025) and BGN (euro, 2026). Codes whose minor unit ISO gives as "N.A." (precious
# metals XAU/XAG/XPT/XPD, the bond-market units XBA-XBD, XDR, XSU, XUA and the XTS/XXX
# placeholders) are not money one can invoice in, so they are not here either.
# Exponent 2 is the common case; the exceptions are 0 (BIF CLP DJF GNF ISK JPY KMF KRW
# PYG RWF UGX UYI VND VUV XAF XOF XPF), 3 (BHD IQD JOD KWD LYD OMR TND) and
# 4 (CLF UYW). ISO's exponent is authoritative even where cash practice differs
# (MGA and MRU are non-decimal in the hand, 2 in ISO; ISK has no coins below 1, 0 in ISO).
_ISO_4217_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "AOA": 2, "ARS": 2, "AUD": 2, "AWG": 2,
        "AZN": 2, "BAM": 2, "BBD": 2, "BDT": 2, "BHD": 3, "BIF": 0, "BMD": 2, "BND": 2,
        "BOB": 2, "BOV": 2, "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2,
        "CAD": 2, "CDF": 2, "CHE": 2, "CHF": 2, "CHW": 2, "CLF": 4, "CLP": 0, "CNY": 2,
        "COP": 2, "COU": 2, "CRC": 2, "CUC": 2, "CUP": 2, "CVE": 2, "CZK": 2, "DJF": 0,
        "DKK": 2, "DOP": 2, "DZD": 2, "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2, "FJD": 2,
        "FKP": 2, "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0, "GTQ": 2,
        "GYD": 2, "HKD": 2, "HNL": 2, "HTG": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2,
        "IQD": 3, "IRR": 2, "ISK": 0, "JMD": 2, "JOD": 3, "JPY": 0, "KES": 2, "KGS": 2,
        "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0, "KWD": 3, "KYD": 2, "KZT": 2, "LAK": 2,
        "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3, "MAD": 2, "MDL": 2, "MGA": 2,
        "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2, "MWK": 2,
        "MXN": 2, "MXV": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2, "NOK": 2,
        "NPR": 2, "NZD": 2, "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2, "PKR": 2,
        "PLN": 2, "PYG": 0, "QAR": 2, "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0, "SAR": 2,
        "SBD": 2, "SCR": 2, "SDG": 2, "SEK": 2, "SGD": 2, "SHP": 2, "SLE": 2, "SOS": 2,
        "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2, "THB": 2, "TJS": 2,
        "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2, "TWD": 2, "TZS": 2, "UAH": 2,
        "UGX": 0, "USD": 2, "USN": 2, "UYI": 0, "UYU": 2, "UYW": 4, "UZS": 2, "VED": 2,
        "VES": 2, "VND": 0, "VUV": 0, "WST": 2, "XAF": 0, "XCD": 2, "XCG": 2, "XOF": 0,
        "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2, "ZWG": 2,
    }
)  # fmt: skip

_CURRENCY_CODE = re.compile(r"[A-Z]{3}")


def _is_code_shaped(code: object) -> TypeGuard[str]:
    return isinstance(code, str) and _CURRENCY_CODE.fullmatch(code) is not None


def is_known_currency(code: object) -> bool:
    """True only for an exact upper-case active code: ``"usd"`` is not accepted.

    Case is not folded because the code is stored and compared as sent; accepting
    ``"usd"`` here would let two spellings of one currency into the database.
    """
    return _is_code_shaped(code) and code in _ISO_4217_EXPONENTS


def currency_exponent(code: object) -> int:
    """The ISO 4217 minor-unit exponent (USD 2, JPY 0, KWD 3, CLF 4)."""
    if not _is_code_shaped(code):
        raise InvalidArgument(
            "currency",
            f"currency must be an ISO 4217 code of exactly 3 upper-case letters, got {code!r}",
            reason="INVALID_CURRENCY",
        )
    exponent = _ISO_4217_EXPONENTS.get(code)
    if exponent is None:
        raise InvalidArgument(
            "currency",
            f"currency {code!r} is not an active ISO 4217 currency",
            reason="UNKNOWN_CURRENCY",
        )
    return exponent


def minor_unit_atomic(currency: str) -> int:
    """Atomic units in one minor unit (USD: 10**7, JPY: 10**9, KWD: 10**6)."""
    # int() because typeshed types int ** int as Any (a negative power would be a float);
    # the exponent here is never above 9, so the power is always a whole number.
    return int(10 ** (ATOMIC_PLACES - currency_exponent(currency)))


# ---------------------------------------------------------------------------------------
# REST decimal strings
# ---------------------------------------------------------------------------------------

# ASCII digits only: Python's Decimal() also accepts Arabic-Indic and other Unicode
# digits, and "\d" in a regex matches them too; a money API must not.
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.([0-9]+))?")

# Long enough for 65 integer digits plus generous fractional places; rejecting longer
# text first keeps a hostile megabyte string from reaching the parser at all.
_MAX_DECIMAL_TEXT = 200


def _invalid(field: str, message: str, reason: str = "INVALID_DECIMAL") -> InvalidArgument:
    return InvalidArgument(field, f"{field} {message}", reason=reason)


def parse_decimal(
    text: object,
    field: str,
    *,
    max_places: int | None = None,
    allow_negative: bool = True,
    positive: bool = False,
) -> Decimal:
    """Parse a REST decimal string ("49.00", "0.00002", "-1.5") exactly, or say why not.

    Only strings are accepted: a JSON number has already passed through a binary float
    in most clients, so ``0.1`` may arrive as 0.1000000000000000055..., and silently
    billing that is worse than asking the client to quote it. Forms that parse in Python
    but are ambiguous or surprising on a billing wire (exponents, "+", spaces, NaN,
    Infinity, ".5", "5.") are refused rather than guessed at.

    ``max_places`` counts significant decimal places, so "1.500000000" passes a 6-place
    limit: trailing zeros carry no value, and rejecting them would only punish clients
    that format with a fixed width. Negative zero is returned as plain zero.
    """
    if isinstance(text, bool) or text is None:
        raise _invalid(field, f'must be a decimal string such as "49.00", got {text!r}')
    if isinstance(text, (int, float)):
        raise _invalid(
            field,
            f'must be a decimal string such as "49.00", not a JSON number ({text!r}); '
            "quote the value so no float rounding happens on the way",
        )
    if not isinstance(text, str):
        raise _invalid(field, f"must be a decimal string, got {type(text).__name__}")
    if text == "":
        raise _invalid(field, "must not be empty")
    if len(text) > _MAX_DECIMAL_TEXT:
        raise _invalid(field, f"is longer than {_MAX_DECIMAL_TEXT} characters")

    match = _DECIMAL_TEXT.fullmatch(text)
    if match is None:
        raise _invalid(field, _describe_bad_decimal(text))

    fraction = match.group(1) or ""
    places = len(fraction.rstrip("0"))
    if max_places is not None and places > max_places:
        raise _invalid(
            field,
            f"has {places} decimal places; at most {max_places} are allowed",
            "TOO_MANY_DECIMAL_PLACES",
        )

    value = Decimal(text)  # exact: construction from a string never rounds
    if value.is_zero():
        value = value.copy_abs()
    if value.copy_abs() >= MAX_ABS_DECIMAL:
        raise _invalid(field, "must be less than 1e65 in absolute value", "DECIMAL_OUT_OF_RANGE")
    if positive and value <= 0:
        raise _invalid(field, f"must be greater than 0, got {text}", "MUST_BE_POSITIVE")
    if not allow_negative and value < 0:
        raise _invalid(field, f"must not be negative, got {text}", "MUST_NOT_BE_NEGATIVE")
    return value


def _describe_bad_decimal(text: str) -> str:
    """Name the specific mistake, since "invalid" alone sends people guessing."""
    lowered = text.lower()
    if any(ch.isspace() for ch in text):
        return "must not contain whitespace"
    if lowered.lstrip("+-") in {"nan", "snan", "inf", "infinity"}:
        return f"must be a finite number, got {text!r}"
    if text.startswith("+"):
        return "must not start with '+'; write the number without a sign"
    if "e" in lowered and any(ch.isdigit() for ch in text):
        return f"must be written without exponent notation (got {text!r}; write e.g. 1000, not 1e3)"
    if text.startswith((".", "-.")) or text.endswith("."):
        return f"needs digits on both sides of the decimal point, got {text!r}"
    return f'is not a decimal string such as "49.00", got {text!r}'


# ---------------------------------------------------------------------------------------
# Major units <-> atomic units
# ---------------------------------------------------------------------------------------


def major_to_atomic(amount: Decimal, field: str) -> int:
    """Exact conversion; refuses (never rounds) an amount finer than 1e-9."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise _invalid(field, f"must be a finite decimal amount, got {amount!r}")
    if amount.copy_abs() >= MAX_ABS_DECIMAL:
        raise _invalid(field, "must be less than 1e65 in absolute value", "DECIMAL_OUT_OF_RANGE")
    scaled = amount.scaleb(ATOMIC_PLACES, context=exact_context())
    if scaled != scaled.to_integral_value():
        raise _invalid(
            field,
            f"has more than {ATOMIC_PLACES} decimal places and cannot be stored exactly",
            "TOO_MANY_DECIMAL_PLACES",
        )
    return int(scaled)


def _require_int(value: object, name: str) -> int:
    # bool is an int subclass; True dollars is always a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int of atomic units, got {type(value).__name__}")
    return value


def format_major(atomic: int, min_places: int = 2) -> str:
    """The shortest exact major-unit string with at least ``min_places`` decimals.

    Built from integer digits, never from Decimal's str(), which switches to exponent
    notation for small values ("1E-7") that REST clients would misread.
    """
    atomic = _require_int(atomic, "atomic")
    if min_places < 0:
        raise ValueError("min_places must not be negative")
    sign = "-" if atomic < 0 else ""
    whole, fraction = divmod(abs(atomic), ATOMIC_PER_MAJOR)
    digits = f"{fraction:0{ATOMIC_PLACES}d}".rstrip("0").ljust(min_places, "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def atomic_to_major(atomic: int) -> Decimal:
    """Exact major-unit value, with no trailing zeros beyond what the amount needs."""
    return Decimal(format_major(atomic, min_places=0))


# The one rounding rule of money (DESIGN.md section 3); provenance records its name.
ROUNDING_MODE: Final = "half_up"


def round_to_minor(amount_atomic: Decimal | int, currency: str) -> int:
    """Round an exact atomic amount once, half up, to the currency's minor unit.

    Half up means a half goes away from zero (Decimal's ROUND_HALF_UP): 0.045 USD
    becomes 0.05 and 0.125 becomes 0.13. The input may be fractional (0.5 units x 3
    atomic = 1.5 atomic); the output is always a whole multiple of the minor unit in
    atomic units (USD: of 10**7). Negative amounts (rebates, credits) round
    symmetrically, so -0.045 USD becomes -0.05: a credit is the mirror of the charge.
    """
    unit = minor_unit_atomic(currency)
    if isinstance(amount_atomic, bool):
        raise TypeError("amount_atomic must be an int or Decimal, not bool")
    if isinstance(amount_atomic, int):
        amount = Decimal(amount_atomic)
    elif isinstance(amount_atomic, Decimal) and amount_atomic.is_finite():
        amount = amount_atomic
    else:
        raise TypeError(f"amount_atomic must be an int or finite Decimal, got {amount_atomic!r}")
    ctx = exact_context()
    minor_units = amount.scaleb(-(ATOMIC_PLACES - currency_exponent(currency)), context=ctx)
    rounded = minor_units.to_integral_value(rounding=ROUND_HALF_UP, context=ctx)
    return int(rounded) * unit


def round_half_up(amount_atomic: Decimal | int, currency: str) -> int:
    """The same as :func:`round_to_minor`, by the name the billing rules use."""
    return round_to_minor(amount_atomic, currency)


@dataclass(frozen=True, slots=True)
class Money:
    """An amount already rounded or at least known, tagged with its currency.

    Adding different currencies is a programming error, not bad input, hence ValueError.
    """

    amount_atomic: int
    currency: str

    def __post_init__(self) -> None:
        _require_int(self.amount_atomic, "amount_atomic")
        currency_exponent(self.currency)

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount_atomic + other.amount_atomic, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        if other.currency != self.currency:
            raise ValueError(f"cannot subtract {other.currency} from {self.currency}")
        return Money(self.amount_atomic - other.amount_atomic, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount_atomic, self.currency)

    def to_major_string(self) -> str:
        """Major units, padded to the currency's own minor unit ("49.00", "100", "1.500")."""
        return format_major(self.amount_atomic, currency_exponent(self.currency))
