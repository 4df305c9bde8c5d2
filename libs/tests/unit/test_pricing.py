"""Price maths: every model, every ladder rule, rounding once, and provenance."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Context, Decimal, Inexact, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.core.errors import InvalidArgument
from libs.core.money import ATOMIC_PER_MAJOR, minor_unit_atomic
from libs.core.pricing import (
    CalculationStep,
    GraduatedPrice,
    PackagePrice,
    Price,
    PriceCalculation,
    StandardPrice,
    Tier,
    VolumePrice,
    calculate,
    validate_tiers,
)

EXACT = Context(prec=500, traps=[Inexact])
PROPERTY = settings(max_examples=200, deadline=None)
MAJOR = ATOMIC_PER_MAJOR
USD_CENT = 10**7

# The SDK's own example ladder: 100 units at 5, then everything beyond at 3.
LADDER = (Tier(Decimal(100), 5 * MAJOR), Tier(None, 3 * MAJOR))


def _raises(call: object, *args: object, **kwargs: object) -> InvalidArgument:
    assert callable(call)
    with pytest.raises(InvalidArgument) as info:
        call(*args, **kwargs)
    return info.value


def _kinds(calc: PriceCalculation) -> list[str]:
    return [step.kind for step in calc.steps]


def _assert_plain_decimal_strings(calc: PriceCalculation) -> None:
    for step in calc.steps:
        assert isinstance(step, CalculationStep)
        for key, text in {**step.inputs, **step.outputs}.items():
            assert isinstance(text, str), key
            if key in {"mode", "rounding"} or text == "null":
                continue
            assert "e" not in text.lower(), (key, text)
            Decimal(text)  # every value parses back exactly


# --- examples from the brief and the SDK ------------------------------------------------


@pytest.mark.parametrize(("quantity", "major"), [(100, 500), (101, 303), (1, 5), (250, 750)])
def test_volume_prices_every_unit_at_the_band_rate(quantity: int, major: int) -> None:
    calc = calculate(VolumePrice(LADDER), Decimal(quantity), "USD")
    assert calc.amount_atomic == major * MAJOR
    assert calc.exact_amount_atomic == major * MAJOR
    assert _kinds(calc) == ["select_band", "multiply", "round"]
    _assert_plain_decimal_strings(calc)


def test_volume_band_selection_is_recorded() -> None:
    calc = calculate(VolumePrice(LADDER), Decimal(101), "USD")
    select = calc.steps[0]
    assert select.inputs == {"quantity": "101"}
    assert select.outputs["band"] == "1"
    assert select.outputs["from"] == "100"
    assert select.outputs["upTo"] == "null"
    assert select.outputs["unitPrice"] == "3.00"
    assert calc.steps[1].outputs == {"amount": "303.00"}
    assert calc.steps[-1].outputs == {"amount": "303.00", "remainder": "0.00"}


@pytest.mark.parametrize(("quantity", "major"), [(100, 500), (101, 503), (50, 250), (200, 800)])
def test_graduated_fills_bands_in_order(quantity: int, major: int) -> None:
    calc = calculate(GraduatedPrice(LADDER), Decimal(quantity), "USD")
    assert calc.amount_atomic == major * MAJOR


def test_graduated_records_each_band_and_the_sum() -> None:
    calc = calculate(GraduatedPrice(LADDER), Decimal(101), "USD")
    assert _kinds(calc) == ["band", "band", "sum", "round"]
    first, second, total = calc.steps[:3]
    assert first.inputs["units"] == "100"
    assert first.outputs == {"amount": "500.00"}
    assert second.inputs["from"] == "100"
    assert second.inputs["units"] == "1"
    assert second.outputs == {"amount": "3.00"}
    assert total.inputs == {"band0": "500.00", "band1": "3.00"}
    assert total.outputs == {"amount": "503.00"}
    _assert_plain_decimal_strings(calc)


def test_standard_multiplies_then_rounds_once() -> None:
    calc = calculate(StandardPrice(20_000), Decimal(123_456), "USD")  # 0.00002 per unit
    assert calc.exact_amount_atomic == Decimal(2_469_120_000)  # 2.46912
    assert calc.amount_atomic == 2_470_000_000  # 2.47
    assert calc.remainder_atomic == Decimal(-880_000)
    assert _kinds(calc) == ["multiply", "round"]
    multiply, rounding = calc.steps
    assert multiply.inputs == {"quantity": "123456", "unitPrice": "0.00002"}
    assert multiply.outputs == {"amount": "2.46912"}
    assert rounding.inputs == {"amount": "2.46912", "scale": "2", "mode": "half_up"}
    assert rounding.outputs == {"amount": "2.47", "remainder": "-0.00088"}


@pytest.mark.parametrize(
    ("unit_price", "rounded"),
    [
        (125_000_000, 130_000_000),  # 0.125 -> 0.13
        (135_000_000, 140_000_000),  # 0.135 -> 0.14
        (-125_000_000, -130_000_000),  # a rebate rounds symmetrically, away from zero
        (124_999_999, 120_000_000),  # below the half: down
        (145_000_000, 150_000_000),
    ],
)
def test_rounding_is_half_up(unit_price: int, rounded: int) -> None:
    calc = calculate(StandardPrice(unit_price), Decimal(1), "USD")
    assert calc.amount_atomic == rounded


def test_standard_allows_a_negative_unit_price() -> None:
    calc = calculate(StandardPrice(-2 * MAJOR), Decimal("1.5"), "USD")
    assert calc.amount_atomic == -3 * MAJOR
    assert calc.steps[0].inputs["unitPrice"] == "-2.00"


def test_fractional_atomic_amounts_stay_exact_until_the_round() -> None:
    calc = calculate(StandardPrice(3), Decimal("0.5"), "USD")
    assert calc.exact_amount_atomic == Decimal("1.5")
    assert calc.amount_atomic == 0
    assert calc.remainder_atomic == Decimal("1.5")
    assert calc.steps[0].outputs == {"amount": "0.0000000015"}


def test_rounding_uses_the_currency_minor_unit() -> None:
    assert calculate(StandardPrice(MAJOR // 2), Decimal(5), "JPY").amount_atomic == 3 * MAJOR  # 2.5 -> 3
    kwd = calculate(StandardPrice(1_234_567), Decimal(1), "KWD")  # 0.001234567
    assert kwd.amount_atomic == 1_000_000
    assert kwd.steps[-1].inputs["scale"] == "3"
    jpy = calculate(StandardPrice(100 * MAJOR), Decimal(1), "JPY")
    assert jpy.steps[-1].outputs["amount"] == "100"


def test_precision_beyond_the_default_28_digits() -> None:
    quantity = Decimal("12345678901234567890123.123456")
    calc = calculate(StandardPrice(123_456_789_012_345), quantity, "USD")
    with localcontext(EXACT):
        assert calc.exact_amount_atomic == quantity * 123_456_789_012_345
    assert calc.amount_atomic % USD_CENT == 0


# --- flat fees ---------------------------------------------------------------------------

FEE_LADDER = (
    Tier(Decimal(10), 2 * MAJOR, flat_fee_atomic=10 * MAJOR),
    Tier(Decimal(20), 1 * MAJOR, flat_fee_atomic=5 * MAJOR),
    Tier(None, 0, flat_fee_atomic=1 * MAJOR),
)


def test_volume_adds_the_chosen_band_flat_fee_once() -> None:
    calc = calculate(VolumePrice(FEE_LADDER), Decimal(15), "USD")
    assert calc.amount_atomic == (15 * 1 + 5) * MAJOR
    assert _kinds(calc) == ["select_band", "multiply", "flat_fee", "round"]
    assert calc.steps[2].inputs == {"amount": "15.00", "flatFee": "5.00"}
    assert calc.steps[2].outputs == {"amount": "20.00"}


def test_volume_at_zero_is_in_the_first_band_and_pays_its_flat_fee() -> None:
    calc = calculate(VolumePrice(FEE_LADDER), Decimal(0), "USD")
    assert calc.amount_atomic == 10 * MAJOR
    assert calc.steps[0].outputs["band"] == "0"


def test_graduated_adds_the_flat_fee_of_every_touched_band() -> None:
    assert calculate(GraduatedPrice(FEE_LADDER), Decimal(5), "USD").amount_atomic == 20 * MAJOR
    # 10 x 2 + 10 (band 0) + 10 x 1 + 5 (band 1) + 5 x 0 + 1 (band 2)
    assert calculate(GraduatedPrice(FEE_LADDER), Decimal(25), "USD").amount_atomic == 46 * MAJOR
    # Exactly on a bound: the next band holds no units, so its fee is not due.
    assert calculate(GraduatedPrice(FEE_LADDER), Decimal(10), "USD").amount_atomic == 30 * MAJOR


def test_graduated_at_zero_touches_no_band() -> None:
    calc = calculate(GraduatedPrice(FEE_LADDER), Decimal(0), "USD")
    assert calc.amount_atomic == 0
    assert _kinds(calc) == ["sum", "round"]


# --- package -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "rounding", "packages"),
    [
        ("0", "up", 0),
        ("0", "down", 0),
        ("1", "up", 1),
        ("1", "down", 0),
        ("1000", "up", 1),
        ("1000", "down", 1),
        ("1000.000001", "up", 2),
        ("1000.000001", "down", 1),
        ("2999", "up", 3),
        ("2999", "down", 2),
    ],
)
def test_package_counts_started_or_completed_packages(quantity: str, rounding: str, packages: int) -> None:
    price = PackagePrice(Decimal(1000), 5 * MAJOR, rounding)  # type: ignore[arg-type]
    calc = calculate(price, Decimal(quantity), "USD")
    assert calc.amount_atomic == packages * 5 * MAJOR
    assert _kinds(calc) == ["package", "multiply", "round"]
    assert calc.steps[0].outputs == {"packages": str(packages)}
    _assert_plain_decimal_strings(calc)


def test_package_size_may_be_fractional() -> None:
    calc = calculate(PackagePrice(Decimal("2.5"), MAJOR), Decimal("7.6"), "USD")
    assert calc.amount_atomic == 4 * MAJOR


def test_package_price_below_the_minor_unit_is_rounded_once() -> None:
    # 0.001 per package
    calc = calculate(PackagePrice(Decimal(1), 1_000_000), Decimal(15), "USD")
    assert calc.exact_amount_atomic == 15_000_000
    assert calc.amount_atomic == 20_000_000  # 0.015 -> 0.02 (half up)


@pytest.mark.parametrize("size", [Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity")])
def test_package_size_must_be_positive(size: Decimal) -> None:
    error = _raises(PackagePrice, size, MAJOR)
    assert error.field == "properties.packageSize"
    assert error.reason == "PACKAGE_SIZE_NOT_POSITIVE"


def test_package_price_must_not_be_negative() -> None:
    error = _raises(PackagePrice, Decimal(1), -1)
    assert error.field == "properties.packagePrice"
    assert error.reason == "NEGATIVE_PACKAGE_PRICE"


def test_package_rounding_must_be_up_or_down() -> None:
    error = _raises(PackagePrice, Decimal(1), 1, "nearest")
    assert error.field == "properties.rounding"
    assert error.reason == "INVALID_PACKAGE_ROUNDING"


# --- calculate() input errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "reason"),
    [
        (Decimal(-1), "NEGATIVE_QUANTITY"),
        (Decimal("-0.000001"), "NEGATIVE_QUANTITY"),
        (Decimal("NaN"), "INVALID_DECIMAL"),
        (Decimal("Infinity"), "INVALID_DECIMAL"),
        (Decimal("1e65"), "DECIMAL_OUT_OF_RANGE"),
    ],
)
def test_bad_quantity_names_the_quantity_field(quantity: Decimal, reason: str) -> None:
    for price in (StandardPrice(1), VolumePrice(LADDER), GraduatedPrice(LADDER)):
        error = _raises(calculate, price, quantity, "USD")
        assert error.field == "quantity"
        assert error.reason == reason


def test_negative_zero_quantity_is_zero() -> None:
    calc = calculate(StandardPrice(MAJOR), Decimal("-0"), "USD")
    assert calc.amount_atomic == 0
    assert calc.steps[0].inputs["quantity"] == "0"


def test_unknown_currency_names_the_currency_field() -> None:
    error = _raises(calculate, StandardPrice(1), Decimal(1), "XYZ")
    assert error.field == "currency"
    assert error.reason == "UNKNOWN_CURRENCY"


def test_float_inputs_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        calculate(StandardPrice(1), 1.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        StandardPrice(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Tier(Decimal(1), 1, flat_fee_atomic=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        calculate("standard", Decimal(1), "USD")  # type: ignore[arg-type]


# --- validate_tiers ----------------------------------------------------------------------


def _tiers(*bounds: int | str | None, price: int = MAJOR) -> tuple[Tier, ...]:
    return tuple(Tier(None if b is None else Decimal(b), price) for b in bounds)


@pytest.mark.parametrize(
    ("tiers", "field", "reason"),
    [
        ((), "properties.tiers", "EMPTY_TIERS"),
        (_tiers(100, 50, None), "properties.tiers[1].upTo", "TIERS_NOT_ASCENDING"),
        (_tiers(100, 100, None), "properties.tiers[1].upTo", "TIERS_NOT_ASCENDING"),
        (
            _tiers(10, 20, "19.999999", None),
            "properties.tiers[2].upTo",
            "TIERS_NOT_ASCENDING",
        ),
        (_tiers(None, 100), "properties.tiers[0].upTo", "OPEN_ENDED_TIER_NOT_LAST"),
        (
            _tiers(100, None, 200),
            "properties.tiers[1].upTo",
            "OPEN_ENDED_TIER_NOT_LAST",
        ),
        (
            _tiers(100, None, None),
            "properties.tiers[2].upTo",
            "MULTIPLE_OPEN_ENDED_TIERS",
        ),
        (_tiers(None, None), "properties.tiers[1].upTo", "MULTIPLE_OPEN_ENDED_TIERS"),
        (_tiers(100), "properties.tiers[0].upTo", "MISSING_OPEN_ENDED_TIER"),
        (_tiers(100, 200), "properties.tiers[1].upTo", "MISSING_OPEN_ENDED_TIER"),
        (_tiers(0, None), "properties.tiers[0].upTo", "TIER_BOUND_NOT_POSITIVE"),
        (_tiers(-5, None), "properties.tiers[0].upTo", "TIER_BOUND_NOT_POSITIVE"),
        (_tiers(10, "1e65", None), "properties.tiers[1].upTo", "DECIMAL_OUT_OF_RANGE"),
        (_tiers("NaN", None), "properties.tiers[0].upTo", "INVALID_DECIMAL"),
        (
            (Tier(Decimal(1), MAJOR), Tier(None, -1)),
            "properties.tiers[1].unitPrice",
            "NEGATIVE_TIER_PRICE",
        ),
        (
            (Tier(Decimal(1), MAJOR, flat_fee_atomic=-1), Tier(None, 1)),
            "properties.tiers[0].flatFee",
            "NEGATIVE_FLAT_FEE",
        ),
    ],
)
def test_validate_tiers_names_the_offending_element(tiers: Sequence[Tier], field: str, reason: str) -> None:
    error = _raises(validate_tiers, tiers)
    assert error.field == field
    assert error.reason == reason
    assert field in error.message
    # The price constructors enforce the same rules.
    for model in (VolumePrice, GraduatedPrice):
        error = _raises(model, tiers)
        assert (error.field, error.reason) == (field, reason)


def test_validate_tiers_uses_the_given_prefix() -> None:
    error = _raises(validate_tiers, _tiers(100, 50, None), field_prefix="phases[0].tiers")
    assert error.field == "phases[0].tiers[1].upTo"


def test_validate_tiers_accepts_a_good_ladder() -> None:
    validate_tiers(_tiers(None))
    validate_tiers(_tiers("0.000001", "0.5", 1, 10**64, None))
    validate_tiers((Tier(Decimal(1), 0), Tier(None, 0)))  # free tiers are fine


def test_tier_models_are_frozen_and_hashable() -> None:
    price = VolumePrice(list(LADDER))  # type: ignore[arg-type]
    assert isinstance(price.tiers, tuple)
    assert hash(price) == hash(VolumePrice(LADDER))


# --- properties --------------------------------------------------------------------------

bounds_strategy = st.lists(
    st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**6), places=6),
    max_size=5,
    unique=True,
).map(sorted)
tier_price = st.integers(min_value=0, max_value=10**13)
flat_fee = st.one_of(st.just(0), st.integers(min_value=0, max_value=10**12))


@st.composite
def ladders(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds: list[Decimal | None] = [*draw(bounds_strategy), None]
    return tuple(Tier(b, draw(tier_price), draw(flat_fee)) for b in bounds)


@st.composite
def ladder_and_quantity(draw: st.DrawFn) -> tuple[tuple[Tier, ...], Decimal]:
    ladder = draw(ladders())
    finite = [t.up_to for t in ladder if t.up_to is not None]
    # Quantities right on a bound are where off-by-one band choices hide.
    on_bound = st.sampled_from(finite) if finite else st.just(Decimal(0))
    anywhere = st.decimals(min_value=0, max_value=Decimal(2 * 10**6), places=6)
    quantity = draw(st.one_of(on_bound, anywhere, st.just(Decimal(0))))
    return ladder, quantity


currencies = st.sampled_from(["USD", "EUR", "JPY", "KWD", "CLF"])


def _expected_band(ladder: Sequence[Tier], quantity: Decimal) -> int:
    return next(i for i, t in enumerate(ladder) if t.up_to is None or quantity <= t.up_to)


@PROPERTY
@given(case=ladder_and_quantity(), currency=currencies)
def test_volume_applies_one_band_rate_to_all_units(case: tuple[tuple[Tier, ...], Decimal], currency: str) -> None:
    ladder, quantity = case
    calc = calculate(VolumePrice(ladder), quantity, currency)
    band = _expected_band(ladder, quantity)
    chosen = ladder[band]
    with localcontext(EXACT):
        assert calc.exact_amount_atomic == (quantity * chosen.unit_price_atomic + chosen.flat_fee_atomic)
    assert calc.steps[0].kind == "select_band"
    assert calc.steps[0].outputs["band"] == str(band)
    if band > 0:
        previous = ladder[band - 1].up_to
        assert previous is not None
        assert quantity > previous


@PROPERTY
@given(case=ladder_and_quantity(), currency=currencies)
def test_graduated_is_the_sum_over_bands(case: tuple[tuple[Tier, ...], Decimal], currency: str) -> None:
    ladder, quantity = case
    calc = calculate(GraduatedPrice(ladder), quantity, currency)
    expected = Decimal(0)
    floor = Decimal(0)
    with localcontext(EXACT):
        for tier in ladder:
            top = quantity if tier.up_to is None else min(quantity, tier.up_to)
            units = max(Decimal(0), top - floor)
            if units > 0:
                expected += units * tier.unit_price_atomic + tier.flat_fee_atomic
            if tier.up_to is not None:
                floor = tier.up_to
    assert calc.exact_amount_atomic == expected
    band_steps = [s for s in calc.steps if s.kind == "band"]
    with localcontext(EXACT):
        assert sum(Decimal(s.inputs["units"]) for s in band_steps) == quantity


@PROPERTY
@given(
    ladder=ladders(),
    a=st.decimals(min_value=0, max_value=Decimal(2 * 10**6), places=6),
    b=st.decimals(min_value=0, max_value=Decimal(2 * 10**6), places=6),
    currency=currencies,
)
def test_graduated_is_monotonic_in_quantity(ladder: tuple[Tier, ...], a: Decimal, b: Decimal, currency: str) -> None:
    low, high = sorted((a, b))
    price = GraduatedPrice(ladder)
    first, second = calculate(price, low, currency), calculate(price, high, currency)
    assert first.exact_amount_atomic <= second.exact_amount_atomic
    assert first.amount_atomic <= second.amount_atomic


@st.composite
def any_price(draw: st.DrawFn) -> Price:
    kind = draw(st.sampled_from(["standard", "volume", "graduated", "package"]))
    if kind == "standard":
        return StandardPrice(draw(st.integers(min_value=-(10**13), max_value=10**13)))
    if kind == "volume":
        return VolumePrice(draw(ladders()))
    if kind == "graduated":
        return GraduatedPrice(draw(ladders()))
    return PackagePrice(
        draw(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**4), places=6)),
        draw(tier_price),
        draw(st.sampled_from(["up", "down"])),
    )


@PROPERTY
@given(
    price=any_price(),
    quantity=st.decimals(min_value=0, max_value=Decimal(10**9), places=6),
    currency=currencies,
)
def test_rounding_happens_once_per_line(price: Price, quantity: Decimal, currency: str) -> None:
    calc = calculate(price, quantity, currency)
    unit = minor_unit_atomic(currency)
    # No floats anywhere: integers and Decimals only.
    assert type(calc.amount_atomic) is int
    assert type(calc.exact_amount_atomic) is Decimal
    assert type(calc.remainder_atomic) is Decimal
    assert type(calc.quantity) is Decimal
    assert calc.amount_atomic % unit == 0
    with localcontext(EXACT):
        assert abs(calc.remainder_atomic) * 2 <= unit
        assert calc.exact_amount_atomic - calc.amount_atomic == calc.remainder_atomic
    kinds = _kinds(calc)
    assert kinds.count("round") == 1
    assert kinds[-1] == "round"
    round_step = calc.steps[-1]
    with localcontext(EXACT):
        assert Decimal(round_step.outputs["amount"]) * ATOMIC_PER_MAJOR == calc.amount_atomic
        assert Decimal(round_step.inputs["amount"]) * ATOMIC_PER_MAJOR == (calc.exact_amount_atomic)
        assert Decimal(round_step.outputs["remainder"]) * ATOMIC_PER_MAJOR == (calc.remainder_atomic)
    _assert_plain_decimal_strings(calc)


@PROPERTY
@given(
    size=st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(10**4), places=6),
    package_price=tier_price,
    quantity=st.decimals(min_value=0, max_value=Decimal(10**7), places=6),
)
def test_package_up_is_down_or_one_more_package(size: Decimal, package_price: int, quantity: Decimal) -> None:
    up = calculate(PackagePrice(size, package_price, "up"), quantity, "USD")
    down = calculate(PackagePrice(size, package_price, "down"), quantity, "USD")
    packages_up = Decimal(up.steps[0].outputs["packages"])
    packages_down = Decimal(down.steps[0].outputs["packages"])
    with localcontext(EXACT):
        assert packages_down * size <= quantity <= packages_up * size
        assert packages_up - packages_down in (0, 1)
        assert (packages_up == packages_down) == (quantity % size == 0)
        assert up.exact_amount_atomic == packages_up * package_price


@PROPERTY
@given(
    unit_price=st.integers(min_value=-(10**13), max_value=10**13),
    quantity=st.decimals(min_value=0, max_value=Decimal(10**12), places=6),
)
def test_standard_is_exactly_quantity_times_price(unit_price: int, quantity: Decimal) -> None:
    calc = calculate(StandardPrice(unit_price), quantity, "USD")
    with localcontext(EXACT):
        assert calc.exact_amount_atomic == quantity * unit_price
