"""Money: atomic units, ISO 4217 exponents, strict REST decimals, one rounding rule."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from decimal import Context, Decimal, Inexact, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.core.errors import InvalidArgument
from libs.core.money import (
    ATOMIC_PER_MAJOR,
    ROUNDING_MODE,
    Money,
    atomic_to_major,
    currency_exponent,
    format_major,
    is_known_currency,
    major_to_atomic,
    minor_unit_atomic,
    parse_decimal,
    round_half_up,
    round_to_minor,
)

# Test-side arithmetic must not round either: the default context keeps 28 digits.
EXACT = Context(prec=500, traps=[Inexact])
PROPERTY = settings(max_examples=200, deadline=None)


def _raises(call: object, *args: object, **kwargs: object) -> InvalidArgument:
    assert callable(call)
    with pytest.raises(InvalidArgument) as info:
        call(*args, **kwargs)
    return info.value


# --- constants and currencies -----------------------------------------------------------


def test_atomic_unit_is_one_billionth_of_the_major_unit() -> None:
    assert ATOMIC_PER_MAJOR == 1_000_000_000
    assert type(ATOMIC_PER_MAJOR) is int


@pytest.mark.parametrize(
    ("code", "exponent"),
    [
        ("USD", 2),
        ("EUR", 2),
        ("GBP", 2),
        ("JPY", 0),
        ("KRW", 0),
        ("ISK", 0),
        ("XOF", 0),
        ("KWD", 3),
        ("BHD", 3),
        ("TND", 3),
        ("CLF", 4),
        ("UYW", 4),
        ("MGA", 2),
        ("XCG", 2),
        ("ZWG", 2),
    ],
)
def test_currency_exponent_follows_iso_4217(code: str, exponent: int) -> None:
    assert currency_exponent(code) == exponent
    assert is_known_currency(code)


@pytest.mark.parametrize("code", ["ABC", "HRK", "ZWL", "XAU", "XXX", "XTS", "QQQ"])
def test_unknown_or_withdrawn_or_non_monetary_code_is_unknown(code: str) -> None:
    error = _raises(currency_exponent, code)
    assert error.field == "currency"
    assert error.reason == "UNKNOWN_CURRENCY"
    assert code in error.message
    assert not is_known_currency(code)


@pytest.mark.parametrize("code", ["usd", "Usd", "US", "USDD", "", " USD", "U5D", 840, None])
def test_code_must_be_three_upper_case_letters(code: object) -> None:
    error = _raises(currency_exponent, code)
    assert error.field == "currency"
    assert error.reason == "INVALID_CURRENCY"
    assert not is_known_currency(code)


def test_minor_unit_in_atomic_units() -> None:
    assert minor_unit_atomic("USD") == 10**7
    assert minor_unit_atomic("JPY") == 10**9
    assert minor_unit_atomic("KWD") == 10**6
    assert minor_unit_atomic("CLF") == 10**5


# --- parse_decimal ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("49.00", Decimal(49)),
        ("0.00002", Decimal("0.00002")),
        ("-1.5", Decimal("-1.5")),
        ("0", Decimal(0)),
        ("100", Decimal(100)),
        ("007.50", Decimal("7.5")),
        ("9" * 65, Decimal("9" * 65)),
    ],
)
def test_parse_decimal_accepts_plain_decimal_strings(text: str, expected: Decimal) -> None:
    value = parse_decimal(text, "unitPrice")
    assert type(value) is Decimal
    assert value == expected


def test_parse_decimal_keeps_every_digit() -> None:
    text = "12345678901234567890123456789012345.123456789012345678901"
    assert str(parse_decimal(text, "x")) == text


@pytest.mark.parametrize("value", [49.0, 0.1, 49, 0, True, False, None, ["1"], {"a": 1}, b"1"])
def test_parse_decimal_rejects_non_strings(value: object) -> None:
    error = _raises(parse_decimal, value, "properties.unitPrice")
    assert error.field == "properties.unitPrice"
    assert error.reason == "INVALID_DECIMAL"
    assert "properties.unitPrice" in error.message


def test_parse_decimal_explains_json_numbers() -> None:
    error = _raises(parse_decimal, 0.1, "unitPrice")
    assert "JSON number" in error.message


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("", "empty"),
        ("NaN", "finite"),
        ("nan", "finite"),
        ("-NaN", "finite"),
        ("sNaN", "finite"),
        ("Infinity", "finite"),
        ("-Infinity", "finite"),
        ("inf", "finite"),
        ("1e3", "exponent"),
        ("1E-2", "exponent"),
        ("1.5e+2", "exponent"),
        ("+1", "'+'"),
        ("+1.5", "'+'"),
        (" 1", "whitespace"),
        ("1 ", "whitespace"),
        ("1\n", "whitespace"),
        ("1 000", "whitespace"),
        ("\u00a01", "whitespace"),
        (".5", "both sides"),
        ("5.", "both sides"),
        ("-.5", "both sides"),
        ("-", "decimal string"),
        ("--1", "decimal string"),
        ("1,000", "decimal string"),
        ("1.2.3", "decimal string"),
        ("0x10", "decimal string"),
        ("1_000", "decimal string"),
        # Arabic-Indic digits: Decimal() itself would accept them.
        ("\u0661\u0662", "decimal string"),
        ("abc", "decimal string"),
    ],
)
def test_parse_decimal_rejects_malformed_text(text: str, hint: str) -> None:
    error = _raises(parse_decimal, text, "tiers[0].upTo")
    assert error.field == "tiers[0].upTo"
    assert error.reason == "INVALID_DECIMAL"
    assert hint in error.message


def test_parse_decimal_rejects_overlong_text_before_parsing() -> None:
    error = _raises(parse_decimal, "1" * 10_000, "quantity")
    assert error.field == "quantity"
    assert error.reason == "INVALID_DECIMAL"


def test_parse_decimal_max_places() -> None:
    assert parse_decimal("1.123456", "unitPrice", max_places=6) == Decimal("1.123456")
    # Trailing zeros add no precision, so they do not count against the limit.
    assert parse_decimal("1.1234560000", "unitPrice", max_places=6) == Decimal("1.123456")
    assert parse_decimal("5", "unitPrice", max_places=0) == 5
    error = _raises(parse_decimal, "1.1234567", "unitPrice", max_places=6)
    assert error.field == "unitPrice"
    assert error.reason == "TOO_MANY_DECIMAL_PLACES"
    assert "7" in error.message
    error = _raises(parse_decimal, "0.5", "quantity", max_places=0)
    assert error.field == "quantity"
    assert error.reason == "TOO_MANY_DECIMAL_PLACES"


@pytest.mark.parametrize("text", ["1" + "0" * 65, "-1" + "0" * 65, "9" * 66, "1" + "0" * 65 + ".5"])
def test_parse_decimal_rejects_values_of_1e65_and_beyond(text: str) -> None:
    error = _raises(parse_decimal, text, "upTo")
    assert error.field == "upTo"
    assert error.reason == "DECIMAL_OUT_OF_RANGE"


def test_parse_decimal_sign_rules() -> None:
    assert parse_decimal("-2", "unitPrice") == -2
    error = _raises(parse_decimal, "-0.01", "unitPrice", allow_negative=False)
    assert (error.field, error.reason) == ("unitPrice", "MUST_NOT_BE_NEGATIVE")
    assert parse_decimal("0", "unitPrice", allow_negative=False) == 0
    # "-0" is zero, not a negative amount, and never comes back signed.
    zero = parse_decimal("-0.00", "unitPrice", allow_negative=False)
    assert zero == 0
    assert not zero.is_signed()


@pytest.mark.parametrize("text", ["0", "0.000", "-0", "-3"])
def test_parse_decimal_positive_rejects_zero_and_negatives(text: str) -> None:
    error = _raises(parse_decimal, text, "packageSize", positive=True)
    assert error.field == "packageSize"
    assert error.reason == "MUST_BE_POSITIVE"


# --- major <-> atomic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "atomic"),
    [
        ("49.00", 49_000_000_000),
        ("0.00002", 20_000),
        ("-1.5", -1_500_000_000),
        ("0.000000001", 1),
        ("1.0000000000000", 1_000_000_000),
        ("0", 0),
    ],
)
def test_major_to_atomic_is_exact(text: str, atomic: int) -> None:
    result = major_to_atomic(Decimal(text), "unitPrice")
    assert type(result) is int
    assert result == atomic


def test_major_to_atomic_refuses_to_lose_precision() -> None:
    error = _raises(major_to_atomic, Decimal("0.0000000001"), "properties.unitPrice")
    assert error.field == "properties.unitPrice"
    assert error.reason == "TOO_MANY_DECIMAL_PLACES"
    error = _raises(major_to_atomic, Decimal("1.0000000015"), "unitPrice")
    assert error.field == "unitPrice"


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_major_to_atomic_rejects_non_finite(value: Decimal) -> None:
    error = _raises(major_to_atomic, value, "amount")
    assert error.field == "amount"
    assert error.reason == "INVALID_DECIMAL"


def test_major_to_atomic_rejects_out_of_range() -> None:
    error = _raises(major_to_atomic, Decimal("1e65"), "amount")
    assert (error.field, error.reason) == ("amount", "DECIMAL_OUT_OF_RANGE")


def test_atomic_to_major_is_exact() -> None:
    assert atomic_to_major(1) == Decimal("0.000000001")
    assert atomic_to_major(49_000_000_000) == Decimal(49)
    assert atomic_to_major(-1_500_000_000) == Decimal("-1.5")
    big = 123456789012345678901234567890123456789
    with localcontext(EXACT):
        assert atomic_to_major(big) * ATOMIC_PER_MAJOR == big
    assert type(atomic_to_major(7)) is Decimal


@pytest.mark.parametrize(
    ("atomic", "min_places", "text"),
    [
        (49_000_000_000, 2, "49.00"),
        (20_000, 2, "0.00002"),
        (1_234_500_000_000, 2, "1234.50"),
        (-1_500_000_000, 2, "-1.50"),
        (-20_000, 2, "-0.00002"),
        (0, 2, "0.00"),
        (1, 2, "0.000000001"),
        (49_000_000_000, 0, "49"),
        (100, 0, "0.0000001"),
        (1_500_000_000, 3, "1.500"),
        (1_000_000_000, 12, "1.000000000000"),
        (10**80, 2, "1" + "0" * 71 + ".00"),
    ],
)
def test_format_major(atomic: int, min_places: int, text: str) -> None:
    assert format_major(atomic, min_places) == text


def test_format_major_default_is_two_places() -> None:
    assert format_major(5_000_000_000) == "5.00"


def test_format_major_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="min_places"):
        format_major(1, -1)
    with pytest.raises(TypeError):
        format_major(True)
    with pytest.raises(TypeError):
        format_major(Decimal(1))  # type: ignore[arg-type]


# --- round_to_minor ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        (Decimal(45_000_000), "USD", 50_000_000),  # 0.045 -> 0.05 (half up)
        (-45_000_000, "USD", -50_000_000),  # -0.045 -> -0.05 (a half away from zero)
        (Decimal(125_000_000), "USD", 130_000_000),  # 0.125 -> 0.13 (half-to-even said 0.12)
        (Decimal(135_000_000), "USD", 140_000_000),  # 0.135 -> 0.14
        (-125_000_000, "USD", -130_000_000),  # symmetric for rebates
        (-135_000_000, "USD", -140_000_000),
        (Decimal("5000000.5"), "USD", 10_000_000),  # just over half a cent
        (Decimal("4999999.5"), "USD", 0),  # just under
        (Decimal("-4999999.5"), "USD", 0),
        (Decimal(5_000_000), "USD", 10_000_000),  # exactly half a cent
        (Decimal(-5_000_000), "USD", -10_000_000),
        (Decimal(2_469_120_000), "USD", 2_470_000_000),
        (500_000_000, "JPY", 1_000_000_000),  # 0.5 yen -> 1
        (1_500_000_000, "JPY", 2_000_000_000),
        (2_500_000_000, "JPY", 3_000_000_000),  # half-to-even said 2
        (-2_500_000_000, "JPY", -3_000_000_000),
        (Decimal("1234567.5"), "KWD", 1_000_000),
        (Decimal(500_000), "KWD", 1_000_000),  # 0.0005 KWD -> 0.001
        (Decimal(50_000), "CLF", 100_000),  # 0.00005 CLF -> 0.0001
        (Decimal(150_000), "CLF", 200_000),
        (Decimal("0.5"), "USD", 0),
        (0, "EUR", 0),
    ],
)
def test_round_to_minor_half_up(amount: Decimal | int, currency: str, rounded: int) -> None:
    result = round_to_minor(amount, currency)
    assert type(result) is int
    assert result == rounded
    assert round_half_up(amount, currency) == rounded


def test_rounding_mode_is_named_half_up() -> None:
    assert ROUNDING_MODE == "half_up"


def test_round_to_minor_keeps_precision_beyond_28_digits() -> None:
    # The default context would round this 40-digit amount before it was ever halved.
    amount = Decimal("1234567890123456789012345678901235000000.000000001")
    assert round_to_minor(amount, "USD") == 1234567890123456789012345678901240000000


def test_round_to_minor_rejects_unknown_currency_and_floats() -> None:
    error = _raises(round_to_minor, 1, "ABC")
    assert error.field == "currency"
    with pytest.raises(TypeError):
        round_to_minor(0.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        round_to_minor(Decimal("NaN"), "USD")


# --- Money ------------------------------------------------------------------------------


def test_money_adds_same_currency() -> None:
    total = Money(49_000_000_000, "USD") + Money(20_000, "USD")
    assert total == Money(49_000_020_000, "USD")
    assert total.to_major_string() == "49.00002"
    assert (total - Money(20_000, "USD")).to_major_string() == "49.00"
    assert (-Money(1, "USD")).amount_atomic == -1


def test_money_refuses_mixed_currencies() -> None:
    with pytest.raises(ValueError, match="EUR"):
        Money(1, "USD") + Money(1, "EUR")
    with pytest.raises(ValueError, match="EUR"):
        Money(1, "USD") - Money(1, "EUR")


def test_money_major_string_uses_the_currency_minor_unit() -> None:
    assert Money(49_000_000_000, "USD").to_major_string() == "49.00"
    assert Money(100_000_000_000, "JPY").to_major_string() == "100"
    assert Money(1_500_000_000, "KWD").to_major_string() == "1.500"
    assert Money(-1_500_000_000, "EUR").to_major_string() == "-1.50"


def test_money_is_frozen_and_validated() -> None:
    money = Money(1, "USD")
    with pytest.raises(FrozenInstanceError):
        money.amount_atomic = 2  # type: ignore[misc]
    error = _raises(Money, 1, "usd")
    assert error.field == "currency"
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(Decimal(1), "USD")  # type: ignore[arg-type]


def test_money_add_other_types_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        Money(1, "USD") + 1


# --- properties -------------------------------------------------------------------------

atomic_amounts = st.integers(min_value=-(10**40), max_value=10**40)
currencies = st.sampled_from(["USD", "EUR", "JPY", "KWD", "BHD", "CLF", "ISK"])


@PROPERTY
@given(atomic=atomic_amounts, min_places=st.integers(min_value=0, max_value=9))
def test_format_then_parse_round_trips(atomic: int, min_places: int) -> None:
    text = format_major(atomic, min_places)
    assert "e" not in text.lower()
    parsed = parse_decimal(text, "amount")
    assert major_to_atomic(parsed, "amount") == atomic
    assert atomic_to_major(atomic) == parsed


@PROPERTY
@given(
    value=st.decimals(
        min_value=Decimal("-1e30"),
        max_value=Decimal("1e30"),
        places=9,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_parse_of_any_plain_decimal_round_trips(value: Decimal) -> None:
    text = format(value, "f")
    parsed = parse_decimal(text, "amount")
    assert parsed == value
    atomic = major_to_atomic(parsed, "amount")
    assert parse_decimal(format_major(atomic), "amount") == value


@PROPERTY
@given(text=st.text(max_size=30))
def test_parse_decimal_only_ever_raises_invalid_argument(text: str) -> None:
    try:
        value = parse_decimal(text, "field")
    except InvalidArgument as error:
        assert error.field == "field"
    else:
        assert type(value) is Decimal
        assert value.is_finite()


@PROPERTY
@given(
    amount=st.one_of(
        atomic_amounts,
        st.decimals(
            min_value=Decimal("-1e30"),
            max_value=Decimal("1e30"),
            places=6,
            allow_nan=False,
            allow_infinity=False,
        ),
    ),
    currency=currencies,
)
def test_round_to_minor_is_within_half_a_minor_unit(amount: Decimal | int, currency: str) -> None:
    unit = minor_unit_atomic(currency)
    rounded = round_to_minor(amount, currency)
    assert type(rounded) is int
    assert rounded % unit == 0
    with localcontext(EXACT):
        error = abs(Decimal(amount) - rounded)
        assert error * 2 <= unit
        if error * 2 == unit:  # a tie went away from zero
            assert abs(rounded) > abs(Decimal(amount))
    assert round_to_minor(rounded, currency) == rounded


@PROPERTY
@given(a=atomic_amounts, b=atomic_amounts, currency=currencies)
def test_money_addition_is_integer_addition(a: int, b: int, currency: str) -> None:
    total = Money(a, currency) + Money(b, currency)
    assert type(total.amount_atomic) is int
    assert total.amount_atomic == a + b


@PROPERTY
@given(amount=atomic_amounts, currency=currencies)
def test_rounding_is_symmetric_around_zero(amount: int, currency: str) -> None:
    # half up goes away from zero on both sides: a credit is the exact mirror of its charge
    assert round_to_minor(-amount, currency) == -round_to_minor(amount, currency)
