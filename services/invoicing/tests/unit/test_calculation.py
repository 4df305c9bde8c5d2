"""Invoice calculation: every amount asserted to the atomic unit (1e-9 of the major unit).

USD 1.00 = 1_000_000_000 atomic, one cent = 10_000_000. Expected values are worked out
by hand in the comments, not by calling the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

import pytest

from libs.core.pricing import GraduatedPrice, PackagePrice, Price, StandardPrice, Tier, VolumePrice
from services.invoicing.domain.calculation import (
    ROUNDING_LINE_NAME,
    Billed,
    CalculationInputError,
    Carry,
    Charge,
    Composition,
    InvoiceCalculation,
    Line,
    TaxSettings,
    Usage,
    Window,
    calculate_invoice,
)

MAJOR = 10**9
CENT = 10**7
ZERO_CARRY = Carry(exact_total=Decimal(0), billed_total=0)
NO_TAX = TaxSettings(behavior="exclusive", default_rate=Decimal(0), customer_rates={}, exempt=False, plan_id="plan_1")
LADDER = (Tier(Decimal(100), 5 * MAJOR), Tier(None, 3 * MAJOR))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def period(start: datetime, end: datetime, index: int = 0) -> Window:
    return Window(start=start, end=end, period_start=start, period_end=end, period_index=index)


def part(of: Window, start: datetime | None = None, end: datetime | None = None) -> Window:
    return Window(start or of.start, end or of.end, of.period_start, of.period_end, of.period_index)


JANUARY = period(at(2026, 1, 1), at(2026, 2, 1))  # 31 days = 2_678_400 s


def fee(
    price_atomic: int,
    *,
    price_id: str = "price_fee",
    quantity: int = 1,
    term: Literal["in_advance", "in_arrears"] = "in_advance",
    cadence: str | None = None,
    taxable: bool = True,
) -> Charge:
    return Charge(
        price_id=price_id,
        key=price_id,
        kind="fee",
        source_id="fee_" + price_id,
        display_name="Platform fee",
        payment_term=term,
        price=StandardPrice(price_atomic),
        cadence=cadence,
        quantity=quantity,
        taxable=taxable,
    )


def metered(price: Price, *, price_id: str = "price_api", metric_id: str = "metric_api") -> Charge:
    return Charge(
        price_id=price_id,
        key=price_id,
        kind="metered",
        source_id=metric_id,
        display_name="API calls",
        payment_term="in_arrears",
        price=price,
        cadence=None,
        quantity=0,
        metric_name="api_calls",
        metric_unit="call",
    )


def query(window: Window, meter: str = "meter_api") -> dict[str, str]:
    return {"meterId": meter, "subject": "cus_1", "from": window.start.isoformat(), "to": window.end.isoformat()}


def reading(charge: Charge, window: Window, quantity: str) -> Usage:
    return Usage(price_id=charge.price_id, window=window, quantity=Decimal(quantity), query=query(window))


def run(
    charges: Sequence[Charge],
    *,
    advance: Sequence[Window] = (),
    arrears: Sequence[Window] = (),
    credits: Sequence[Window] = (),
    one_time_fees: bool = False,
    usage: Sequence[Usage] = (),
    billed_before: Sequence[Billed] = (),
    late_usage: Sequence[Usage] = (),
    tax: TaxSettings = NO_TAX,
    carry: Carry = ZERO_CARRY,
    currency: str = "USD",
    invoice_id: str = "inv_1",
) -> InvoiceCalculation:
    return calculate_invoice(
        currency=currency,
        charges=charges,
        composition=Composition(arrears=arrears, advance=advance, credits=credits, one_time_fees=one_time_fees),
        usage=usage,
        billed_before=billed_before,
        late_usage=late_usage,
        tax=tax,
        carry=carry,
        invoice_id=invoice_id,
    )


def only_line(result: InvoiceCalculation) -> Line:
    assert len(result.lines) == 1, [line.display_name for line in result.lines]
    return result.lines[0]


def meter_once(price: Price, quantity: str, *, currency: str = "USD", tax: TaxSettings = NO_TAX) -> Line:
    charge = metered(price)
    return only_line(run([charge], arrears=[JANUARY], usage=[reading(charge, JANUARY, quantity)], currency=currency, tax=tax))


def tax_settings(
    behavior: str = "exclusive", default: str = "0", rates: Mapping[str, str] | None = None, exempt: bool = False
) -> TaxSettings:
    return TaxSettings(
        behavior="inclusive" if behavior == "inclusive" else "exclusive",
        default_rate=Decimal(default),
        customer_rates={key: Decimal(value) for key, value in (rates or {}).items()},
        exempt=exempt,
        plan_id="plan_1",
    )


# ---------------------------------------------------------------------------------------
# Price models (metered: the usage of the window, never prorated)
# ---------------------------------------------------------------------------------------


def test_standard_usage_is_quantity_times_unit_price_rounded_once_half_up() -> None:
    # 1234.5 calls x 0.0125 = 15.43125 -> 15.43
    line = meter_once(StandardPrice(12_500_000), "1234.5")
    assert line.exact_amount == Decimal(15_431_250_000)
    assert line.amount == 1543 * CENT
    assert (line.quantity, line.unit_price) == (Decimal("1234.5"), Decimal(12_500_000))
    assert (line.kind, line.event_type, line.window) == ("charge", "usage", JANUARY)


def test_standard_usage_half_a_cent_rounds_away_from_zero() -> None:
    # 9 x 0.0005 = 0.0045 -> 0.00 ; 1 x 0.125 = 0.125 -> 0.13 (half-to-even would give 0.12)
    assert meter_once(StandardPrice(125_000_000), "1").amount == 13 * CENT
    assert meter_once(StandardPrice(500_000), "9").amount == 0


def test_volume_prices_every_unit_at_the_band_of_the_total_plus_its_flat_fee() -> None:
    ladder = (Tier(Decimal(100), 5 * MAJOR, flat_fee_atomic=2 * MAJOR), Tier(None, 3 * MAJOR, flat_fee_atomic=10 * MAJOR))
    # 150 units -> band 1: 150 x 3.00 + 10.00 = 460.00
    assert meter_once(VolumePrice(ladder), "150").amount == 460 * MAJOR
    # 100 units is still band 0 (upTo inclusive): 500.00 + 2.00
    assert meter_once(VolumePrice(ladder), "100").amount == 502 * MAJOR
    # zero usage lies in band 0, so its flat fee is charged
    assert meter_once(VolumePrice(ladder), "0").amount == 2 * MAJOR


def test_graduated_fills_bands_in_order() -> None:
    ladder = (Tier(Decimal(100), 5 * MAJOR, flat_fee_atomic=2 * MAJOR), Tier(None, 3 * MAJOR, flat_fee_atomic=10 * MAJOR))
    # 150 units: 100 x 5.00 + 2.00 + 50 x 3.00 + 10.00 = 662.00
    line = meter_once(GraduatedPrice(ladder), "150")
    assert line.amount == 662 * MAJOR
    # the average unit price makes quantity x unit price the exact amount: 662 / 150
    assert line.unit_price == Decimal("4413333333.333333333")
    assert meter_once(GraduatedPrice(ladder), "0").amount == 0


def test_package_counts_started_or_completed_packages() -> None:
    # 250 units in packages of 100 at 2.50: up -> 3 packages = 7.50, down -> 2 = 5.00
    assert meter_once(PackagePrice(Decimal(100), 250 * CENT, "up"), "250").amount == 750 * CENT
    assert meter_once(PackagePrice(Decimal(100), 250 * CENT, "down"), "250").amount == 500 * CENT
    assert meter_once(PackagePrice(Decimal(100), 250 * CENT, "up"), "200").amount == 500 * CENT


def test_usage_is_not_prorated_over_a_partial_window() -> None:
    charge = metered(StandardPrice(MAJOR))
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    line = only_line(run([charge], arrears=[half], usage=[reading(charge, half, "10")]))
    assert line.amount == 10 * MAJOR


def test_every_arrears_window_of_a_metered_price_needs_its_reading() -> None:
    charge = metered(StandardPrice(MAJOR))
    with pytest.raises(CalculationInputError) as info:
        run([charge], arrears=[JANUARY], usage=[])
    assert info.value.reason == "USAGE_READING_MISSING"


# ---------------------------------------------------------------------------------------
# Fees and proration
# ---------------------------------------------------------------------------------------


def test_a_full_period_fee_is_quantity_times_unit_price() -> None:
    line = only_line(run([fee(49 * MAJOR, quantity=3)], advance=[JANUARY]))
    assert (line.amount, line.quantity, line.unit_price) == (147 * MAJOR, Decimal(3), Decimal(49 * MAJOR))
    assert line.event_type == "fee"


def test_half_a_month_is_prorated_to_the_second() -> None:
    # 26_784.00 a month of 2_678_400 s is exactly 0.01 a second.
    monthly = fee(26_784 * MAJOR)
    half = part(JANUARY, start=at(2026, 1, 16, 12))  # 1_339_200 s = exactly half
    line = only_line(run([monthly], advance=[half]))
    assert line.exact_amount == Decimal(13_392 * MAJOR)
    assert line.amount == 13_392 * MAJOR
    one_second_more = part(JANUARY, start=at(2026, 1, 16, 11, 59, 59))
    assert only_line(run([monthly], advance=[one_second_more])).amount == 13_392 * MAJOR + CENT
    one_second_less = part(JANUARY, start=at(2026, 1, 16, 12, 0, 1))
    assert only_line(run([monthly], advance=[one_second_less])).amount == 13_392 * MAJOR - CENT


def test_half_a_month_of_49_is_24_50() -> None:
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    line = only_line(run([fee(49 * MAJOR)], advance=[half]))
    assert (line.exact_amount, line.amount) == (Decimal(24_500_000_000), 2450 * CENT)
    prorate = next(step for step in line.provenance["steps"] if step["op"] == "prorate")
    assert prorate["params"]["fraction"] == "1/2"
    assert prorate["params"]["coveredSeconds"] == "1339200"
    assert prorate["params"]["periodSeconds"] == "2678400"


@pytest.mark.parametrize(
    ("start", "end", "exact", "amount"),
    [
        # the last 14 days of the month at 49.00 a month
        (at(2026, 2, 1), at(2026, 3, 1), Decimal(24_500_000_000), 2450 * CENT),  # 14/28 -> 24.50
        (at(2028, 2, 1), at(2028, 3, 1), Decimal("23655172413.793103448"), 2366 * CENT),  # 14/29 = 23.6551724... -> 23.66
        (at(2026, 3, 1), at(2026, 4, 1), Decimal("22129032258.064516129"), 2213 * CENT),  # 14/31 = 22.1290322... -> 22.13
    ],
    ids=["28-day February", "29-day February (2028)", "31-day March"],
)
def test_proration_uses_the_length_of_its_own_month(start: datetime, end: datetime, exact: Decimal, amount: int) -> None:
    window = part(period(start, end), start=end - timedelta(days=14))
    line = only_line(run([fee(49 * MAJOR)], advance=[window]))
    assert (line.exact_amount, line.amount) == (exact, amount)


def test_in_arrears_fees_bill_the_arrears_windows_and_in_advance_fees_the_advance_ones() -> None:
    february = period(at(2026, 2, 1), at(2026, 3, 1), 1)
    advance_fee = fee(10 * MAJOR, price_id="price_seat")
    arrears_fee = fee(7 * MAJOR, price_id="price_support", term="in_arrears")
    result = run([advance_fee, arrears_fee], arrears=[JANUARY], advance=[february])
    assert [(line.price_id, line.window, line.amount) for line in result.lines] == [
        ("price_seat", february, 10 * MAJOR),
        ("price_support", JANUARY, 7 * MAJOR),
    ]


def test_one_time_fees_bill_once_unprorated_and_only_when_asked() -> None:
    setup = fee(99 * MAJOR, price_id="price_setup", cadence="P0D")
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    line = only_line(run([setup], advance=[half], one_time_fees=True))
    assert line.amount == 99 * MAJOR
    assert line.window is not None and line.window.start == line.window.end == half.start
    assert run([setup], advance=[half], one_time_fees=False).lines == []


def test_per_period_catch_up_bills_every_window() -> None:
    february = period(at(2026, 2, 1), at(2026, 3, 1), 1)
    march = period(at(2026, 3, 1), at(2026, 4, 1), 2)
    api = metered(StandardPrice(MAJOR))
    result = run(
        [fee(49 * MAJOR), api],
        advance=[JANUARY, february, march],
        arrears=[JANUARY, february],
        usage=[reading(api, JANUARY, "3"), reading(api, february, "4")],
    )
    assert [line.amount for line in result.lines] == [49 * MAJOR, 49 * MAJOR, 49 * MAJOR, 3 * MAJOR, 4 * MAJOR]
    assert result.subtotal == result.grand_total == 154 * MAJOR


def test_a_window_outside_its_period_is_refused() -> None:
    outside = Window(at(2026, 1, 1), at(2026, 2, 2), at(2026, 1, 1), at(2026, 2, 1), 0)
    with pytest.raises(CalculationInputError) as info:
        run([fee(MAJOR)], advance=[outside])
    assert info.value.reason == "WINDOW_OUTSIDE_PERIOD"


# ---------------------------------------------------------------------------------------
# Taxes
# ---------------------------------------------------------------------------------------


def test_exclusive_tax_is_added_and_a_half_cent_rounds_up() -> None:
    # 10.05 at 10 %: tax 1.005 -> 1.01 (half-to-even: 1.00); total 11.06
    line = only_line(run([fee(1005 * CENT)], advance=[JANUARY], tax=tax_settings(default="10")))
    assert (line.amount, line.tax, line.total, line.tax_rate) == (1005 * CENT, 101 * CENT, 1106 * CENT, Decimal("0.1"))
    # 10.00 at 13 %: 1.30
    line = only_line(run([fee(10 * MAJOR)], advance=[JANUARY], tax=tax_settings(default="13")))
    assert (line.amount, line.tax, line.total) == (10 * MAJOR, 130 * CENT, 1130 * CENT)


def test_inclusive_tax_is_taken_out_of_the_gross() -> None:
    # gross 10.00 at 13 %: tax = 10.00 x 0.13 / 1.13 = 1.1504... -> 1.15; net 8.85
    line = only_line(run([fee(10 * MAJOR)], advance=[JANUARY], tax=tax_settings("inclusive", default="13")))
    assert (line.amount, line.tax, line.total) == (885 * CENT, 115 * CENT, 10 * MAJOR)
    assert line.priced_amount == 10 * MAJOR
    # exact net = 10.00 / 1.13 = 8.849557522123893805...
    assert line.exact_amount == Decimal("8849557522.123893805")


def test_inclusive_tax_half_a_cent_rounds_up() -> None:
    # gross 10.04 at 60 %: tax = 10.04 x 0.6 / 1.6 = 3.765 exactly -> 3.77; net 6.27
    line = only_line(run([fee(1004 * CENT)], advance=[JANUARY], tax=tax_settings("inclusive", default="60")))
    assert (line.amount, line.tax, line.total) == (627 * CENT, 377 * CENT, 1004 * CENT)


def test_inclusive_carry_counts_the_gross_so_tax_rounding_adds_no_cent() -> None:
    # the exact net 6.275 would round to 6.28, but the customer owes the gross 10.04
    result = run([fee(1004 * CENT)], advance=[JANUARY], tax=tax_settings("inclusive", default="60"))
    assert [line.kind for line in result.lines] == ["charge"]
    assert result.grand_total == 1004 * CENT
    assert result.carry_after == Carry(exact_total=Decimal(1004 * CENT), billed_total=1004 * CENT)
    # gross 0.004 per period at 13 %: 0.00 lines, the carry bills 0.01 (untaxed) at 0.008
    api = metered(StandardPrice(4_000_000))
    carry = ZERO_CARRY
    totals = []
    for _ in range(3):
        result = run([api], arrears=[JANUARY], usage=[reading(api, JANUARY, "1")], carry=carry, tax=tax_settings("inclusive", default="13"))
        totals.append(result.grand_total)
        carry = result.carry_after
    assert totals == [0, CENT, 0]
    assert carry == Carry(exact_total=Decimal(12_000_000), billed_total=CENT)


def test_invoice_totals_are_the_sums_of_the_rounded_lines() -> None:
    api = metered(StandardPrice(MAJOR))
    result = run(
        [fee(1005 * CENT), api],
        advance=[JANUARY],
        arrears=[JANUARY],
        usage=[reading(api, JANUARY, "5")],
        tax=tax_settings(default="10"),
    )
    # 10.05 + 1.01 tax, 5.00 + 0.50 tax
    assert (result.subtotal, result.total_tax, result.grand_total) == (1505 * CENT, 151 * CENT, 1656 * CENT)


@pytest.mark.parametrize(
    ("rates", "usage_rate", "fee_rate"),
    [
        ({"metric_api": "20", "plan_1": "10", "default": "5"}, "0.2", "0.1"),  # metric > plan
        ({"plan_1": "10", "default": "5"}, "0.1", "0.1"),  # plan > default
        ({"default": "5"}, "0.05", "0.05"),  # default > the plan's default rate
        ({}, "0.13", "0.13"),  # the plan's default rate
        ({"metric_other": "20", "plan_other": "10"}, "0.13", "0.13"),  # keys of others do not apply
    ],
)
def test_customer_tax_rates_take_precedence_metric_plan_default(rates: dict[str, str], usage_rate: str, fee_rate: str) -> None:
    api = metered(StandardPrice(MAJOR))
    result = run(
        [api, fee(10 * MAJOR)],
        advance=[JANUARY],
        arrears=[JANUARY],
        usage=[reading(api, JANUARY, "10")],
        tax=tax_settings(default="13", rates=rates),
    )
    usage_line, fee_line = result.lines
    assert (usage_line.tax_rate, fee_line.tax_rate) == (Decimal(usage_rate), Decimal(fee_rate))
    assert usage_line.tax == int(10 * MAJOR * Decimal(usage_rate))
    assert fee_line.tax == int(10 * MAJOR * Decimal(fee_rate))


def test_an_exempt_customer_pays_no_tax_whatever_the_rates() -> None:
    api = metered(StandardPrice(MAJOR))
    tax = tax_settings(default="13", rates={"metric_api": "20", "default": "5"}, exempt=True)
    result = run([api, fee(10 * MAJOR)], advance=[JANUARY], arrears=[JANUARY], usage=[reading(api, JANUARY, "10")], tax=tax)
    assert [(line.tax_rate, line.tax) for line in result.lines] == [(Decimal(0), 0), (Decimal(0), 0)]
    assert result.total_tax == 0 and result.grand_total == 20 * MAJOR
    assert result.lines[0].provenance["sources"]["taxRate"]["type"] == "exempt"


def test_a_price_outside_tax_scope_is_not_taxed() -> None:
    line = only_line(run([fee(10 * MAJOR, taxable=False)], advance=[JANUARY], tax=tax_settings(default="13")))
    assert (line.tax, line.total) == (0, 10 * MAJOR)


# ---------------------------------------------------------------------------------------
# Currencies
# ---------------------------------------------------------------------------------------


def test_jpy_rounds_to_whole_yen() -> None:
    # 1000 JPY a month for 15 of 31 days = 483.870967... -> 484 JPY; 10 % tax = 48.4 -> 48
    window = part(JANUARY, start=at(2026, 1, 17))
    line = only_line(run([fee(1000 * MAJOR)], advance=[window], currency="JPY", tax=tax_settings(default="10")))
    assert line.exact_amount == Decimal("483870967741.935483871")
    assert (line.amount, line.tax, line.total) == (484 * MAJOR, 48 * MAJOR, 532 * MAJOR)
    # 1001 JPY for half the month = 500.5 -> 501
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    assert only_line(run([fee(1001 * MAJOR)], advance=[half], currency="JPY")).amount == 501 * MAJOR
    assert line.provenance["precision"]["scale"] == 0
    assert line.provenance["result"]["amount"] == "484"


def test_kwd_rounds_to_the_fils() -> None:
    # 1 unit at 0.0125 KWD = 0.0125 -> 0.013 (half-to-even: 0.012); 5 % tax = 0.00065 -> 0.001
    fils = 10**6
    line = meter_once(StandardPrice(12_500_000), "1", currency="KWD", tax=tax_settings(default="5"))
    assert (line.amount, line.tax, line.total) == (13 * fils, 1 * fils, 14 * fils)
    assert line.provenance["result"]["amount"] == "0.013"


# ---------------------------------------------------------------------------------------
# Rounding carry
# ---------------------------------------------------------------------------------------


def _half_up_usd(exact_atomic: Decimal) -> int:
    # Independent of the code under test: Decimal's quantize at the cent.
    return int((exact_atomic / CENT).quantize(Decimal(1), rounding=ROUND_HALF_UP)) * CENT


@pytest.mark.parametrize("unit_price_atomic", [4_000_000, 6_000_000, 3_333_333], ids=["0.004", "0.006", "0.003333333"])
def test_carry_over_24_periods_keeps_billed_within_half_a_cent_of_exact(unit_price_atomic: int) -> None:
    api = metered(StandardPrice(unit_price_atomic))
    carry = ZERO_CARRY
    exact_total = Decimal(0)
    carry_lines = 0
    start = at(2026, 1, 1)
    for k in range(24):
        end = (start + timedelta(days=32)).replace(day=1)
        window = period(start, end, k)
        result = run([api], arrears=[window], usage=[reading(api, window, "1")], carry=carry)
        exact_total += unit_price_atomic
        expected_billed = _half_up_usd(exact_total)
        # the usage line alone: 0.004 -> 0.00, 0.006 -> 0.01, 0.003333333 -> 0.00
        usage_line = result.lines[0]
        assert usage_line.amount == _half_up_usd(Decimal(unit_price_atomic))
        needed = expected_billed - (carry.billed_total + usage_line.amount)
        rounding = [line for line in result.lines if line.kind == "rounding"]
        if needed == 0:
            assert rounding == []
        else:
            (line,) = rounding
            assert (line.display_name, line.amount, line.tax, line.total) == (ROUNDING_LINE_NAME, needed, 0, needed)
            carry_lines += 1
        assert result.carry_after == Carry(exact_total=exact_total, billed_total=expected_billed)
        assert abs(result.carry_after.billed_total - exact_total) <= CENT // 2
        assert result.subtotal == expected_billed - carry.billed_total
        carry = result.carry_after
        start = end
    # 24 x 0.004 = 0.096 billed as 0.10 (carry lines at k=2,4,7,9,12,14,17,19,22,24 -> 10)
    # 24 x 0.006 = 0.144 billed as 0.14: every line is 0.01, carried back -0.01 ten times
    assert carry_lines == {4_000_000: 10, 6_000_000: 10, 3_333_333: 8}[unit_price_atomic]


def test_no_carry_line_when_the_lines_already_round_to_the_exact_total() -> None:
    api = metered(StandardPrice(CENT))
    result = run([api], arrears=[JANUARY], usage=[reading(api, JANUARY, "7")])
    assert [line.kind for line in result.lines] == ["charge"]


def test_the_carry_line_settles_the_lines_own_rounding_within_one_invoice() -> None:
    # three fees of 0.005 each: each line rounds up to 0.01 (0.03), exact 0.015 -> 0.02
    fees = [fee(5_000_000, price_id=f"price_{n}") for n in range(3)]
    result = run(fees, advance=[JANUARY], tax=tax_settings(default="10"))
    assert [line.amount for line in result.lines] == [CENT, CENT, CENT, -CENT]
    rounding = result.lines[-1]
    assert (rounding.kind, rounding.event_type, rounding.tax, rounding.price_id) == ("rounding", "discount", 0, None)
    assert result.subtotal == 2 * CENT
    assert result.carry_after == Carry(exact_total=Decimal(15_000_000), billed_total=2 * CENT)


# ---------------------------------------------------------------------------------------
# Termination credits
# ---------------------------------------------------------------------------------------


def test_credit_plus_used_part_is_the_full_charge() -> None:
    monthly = fee(49 * MAJOR)
    invoice_0 = run([monthly], advance=[JANUARY], invoice_id="inv_0")
    (billed_row,) = invoice_0.billed
    assert (billed_row.exact_amount, billed_row.invoice_id, billed_row.window) == (Decimal(49 * MAJOR), "inv_0", JANUARY)
    t = at(2026, 1, 10, 13, 17, 9)
    final = run([monthly], credits=[part(JANUARY, start=t)], billed_before=invoice_0.billed, carry=invoice_0.carry_after)
    credit = only_line(final)
    used = only_line(run([monthly], advance=[part(JANUARY, end=t)]))
    assert credit.kind == "credit" and credit.amount < 0
    assert used.exact_amount - credit.exact_amount == Decimal(49 * MAJOR)
    # used 9 d 13:17:09 of 31 d: 49.00 x 826_629 / 2_678_400 = 15.1008... -> 15.10; credit -33.90
    assert (credit.amount, used.amount) == (-3390 * CENT, 1510 * CENT)
    assert credit.window == part(JANUARY, start=t)


def test_a_credit_prorates_over_the_window_as_it_was_billed() -> None:
    # Invoice 0 billed from Jan 5 (a backdated start billed from creation): 27 of 31 days
    billed_window = part(JANUARY, start=at(2026, 1, 5))
    invoice_0 = run([fee(31 * MAJOR)], advance=[billed_window], invoice_id="inv_0")
    assert invoice_0.lines[0].amount == 27 * MAJOR
    # price changed since: the credit uses what was billed, not the charge's price now
    repriced = fee(100 * MAJOR)
    final = run([repriced], credits=[part(JANUARY, start=at(2026, 1, 23))], billed_before=invoice_0.billed)
    # 9 of the 27 billed days unused: 27.00 x 9/27 = 9.00
    assert only_line(final).amount == -9 * MAJOR


def test_a_credit_half_a_cent_rounds_away_from_zero_and_returns_the_billed_tax() -> None:
    billed = Billed("price_fee", JANUARY, Decimal(1), Decimal(9 * CENT), "inv_0", tax_rate=Decimal("0.2"))
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    line = only_line(run([fee(9 * CENT)], credits=[half], billed_before=[billed], tax=tax_settings(default="10")))
    # -0.045 -> -0.05 ; tax at the billed 20 %: -0.01
    assert (line.exact_amount, line.amount, line.tax_rate, line.tax) == (Decimal(-45_000_000), -5 * CENT, Decimal("0.2"), -CENT)


def test_credits_ignore_arrears_fees_metered_prices_and_one_time_fees() -> None:
    charges = [
        fee(MAJOR, price_id="price_arrears", term="in_arrears"),
        fee(MAJOR, price_id="price_setup", cadence="P0D"),
        metered(StandardPrice(MAJOR)),
    ]
    billed = [Billed(charge.price_id, JANUARY, Decimal(1), Decimal(MAJOR), "inv_0") for charge in charges]
    assert run(charges, credits=[part(JANUARY, start=at(2026, 1, 20))], billed_before=billed).lines == []


def test_a_second_credit_of_the_same_window_nets_to_nothing() -> None:
    monthly = fee(49 * MAJOR)
    invoice_0 = run([monthly], advance=[JANUARY], invoice_id="inv_0")
    credit_window = part(JANUARY, start=at(2026, 1, 20))
    first = run([monthly], credits=[credit_window], billed_before=invoice_0.billed, invoice_id="inv_1")
    again = run([monthly], credits=[credit_window], billed_before=[*invoice_0.billed, *first.billed])
    assert sum(line.exact_amount for line in again.lines) == 0


# ---------------------------------------------------------------------------------------
# Late-usage corrections
# ---------------------------------------------------------------------------------------


def _bill_january(price: Price, quantity: str) -> tuple[Charge, InvoiceCalculation]:
    api = metered(price)
    return api, run([api], arrears=[JANUARY], usage=[reading(api, JANUARY, quantity)], invoice_id="inv_1")


def test_a_graduated_correction_is_the_rerated_period_minus_what_was_billed() -> None:
    api, invoice_1 = _bill_january(GraduatedPrice(LADDER), "90")
    assert invoice_1.lines[0].amount == 450 * MAJOR
    # 120 now: 100 x 5 + 20 x 3 = 560; billed 450 -> +110.00 for 30 more units
    february = period(at(2026, 2, 1), at(2026, 3, 1), 1)
    invoice_2 = run(
        [api],
        arrears=[february],
        usage=[reading(api, february, "0")],
        billed_before=invoice_1.billed,
        late_usage=[reading(api, JANUARY, "120")],
        invoice_id="inv_2",
    )
    correction = next(line for line in invoice_2.lines if line.kind == "correction")
    assert (correction.amount, correction.quantity, correction.corrects) == (110 * MAJOR, Decimal(30), JANUARY)
    assert "2026-01-01" in correction.display_name and "2026-02-01" in correction.display_name
    assert correction.provenance["corrects"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z", "periodIndex": 0}


def test_a_volume_correction_can_lower_the_bill() -> None:
    api, invoice_1 = _bill_january(VolumePrice(LADDER), "90")
    assert invoice_1.lines[0].amount == 450 * MAJOR
    # 120 now: all units at 3.00 = 360; billed 450 -> -90.00
    line = only_line(run([api], billed_before=invoice_1.billed, late_usage=[reading(api, JANUARY, "120")]))
    assert (line.kind, line.amount, line.quantity) == ("correction", -90 * MAJOR, Decimal(30))


def test_a_second_late_arrival_corrects_only_what_the_first_correction_missed() -> None:
    api, invoice_1 = _bill_january(GraduatedPrice(LADDER), "90")
    invoice_2 = run([api], billed_before=invoice_1.billed, late_usage=[reading(api, JANUARY, "120")], invoice_id="inv_2")
    history = [*invoice_1.billed, *invoice_2.billed]
    # 130 now: 500 + 90 = 590; billed 450 + 110 -> +30.00 for 10 more units
    line = only_line(run([api], billed_before=history, late_usage=[reading(api, JANUARY, "130")]))
    assert (line.amount, line.quantity) == (30 * MAJOR, Decimal(10))
    # nothing new: no line
    assert run([api], billed_before=history, late_usage=[reading(api, JANUARY, "120")]).lines == []


def test_usage_that_does_not_change_the_amount_makes_no_correction() -> None:
    # 150 units in packages of 100 (up) = 2 packages; 180 is still 2
    api, invoice_1 = _bill_january(PackagePrice(Decimal(100), MAJOR, "up"), "150")
    assert run([api], billed_before=invoice_1.billed, late_usage=[reading(api, JANUARY, "180")]).lines == []


def test_a_correction_of_a_period_billed_with_sub_cent_remainders_uses_exact_amounts() -> None:
    # billed 3 x 0.004 = 0.012 (line 0.01); now 4 x 0.004 = 0.016: the correction is the
    # exact 0.004 (line 0.00) and the carry settles the cent, so the total billed for the
    # period is round_half_up(0.016) = 0.02.
    api, invoice_1 = _bill_january(StandardPrice(4_000_000), "3")
    result = run([api], billed_before=invoice_1.billed, late_usage=[reading(api, JANUARY, "4")], carry=invoice_1.carry_after)
    assert [(line.kind, line.amount) for line in result.lines] == [("correction", 0), ("rounding", CENT)]
    assert result.carry_after == Carry(exact_total=Decimal(16_000_000), billed_total=2 * CENT)


def test_late_usage_for_a_price_that_is_not_metered_is_refused() -> None:
    with pytest.raises(CalculationInputError) as info:
        run([fee(MAJOR)], late_usage=[Usage("price_fee", JANUARY, Decimal(1), {})])
    assert info.value.reason == "LATE_USAGE_NOT_METERED"


# ---------------------------------------------------------------------------------------
# Provenance and billed rows
# ---------------------------------------------------------------------------------------


def test_provenance_explains_the_line_and_is_json() -> None:
    api = metered(GraduatedPrice(LADDER))
    line = only_line(run([api], arrears=[JANUARY], usage=[reading(api, JANUARY, "120")], tax=tax_settings(default="13")))
    provenance = json.loads(json.dumps(line.provenance))
    assert provenance["status"] == "recorded"
    assert (provenance["version"], provenance["currency"]) == (1, "USD")
    assert provenance["precision"] == {"significantDigits": 2, "scale": 2, "rounding": "half_up"}
    assert provenance["period"] == {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}
    inputs = provenance["inputs"]
    assert (inputs["kind"], inputs["quantity"], inputs["selector"]) == ("priced", "120", query(JANUARY))
    assert inputs["price"]["fn"]["model"] == "graduated"
    assert inputs["price"]["fn"]["bands"][0] == {"upTo": "100", "rate": "5.00", "flatFee": "0.00"}
    ops = [step["op"] for step in provenance["steps"]]
    assert ops == ["evaluate", "evaluate", "evaluate", "round", "scale", "round"]
    amount_round = provenance["steps"][3]
    assert amount_round["params"]["mode"] == "half_up" and amount_round["params"]["scale"] == 2
    assert amount_round["in"] == {"amount": "560.00"} and amount_round["out"]["amount"] == "560.00"
    assert provenance["result"] == {
        "amount": "560.00",
        "quantity": "120",
        "unitPrice": "4.666666666666666667",
        "exactAmount": "560.00",
        "taxRate": "0.13",
        "tax": "72.80",
        "total": "632.80",
    }
    assert provenance["sources"]["taxRate"]["type"] == "planDefaultTaxRate"


def test_billed_rows_record_what_each_priced_line_billed() -> None:
    api = metered(StandardPrice(MAJOR))
    half = part(JANUARY, start=at(2026, 1, 16, 12))
    result = run([fee(49 * MAJOR), api], advance=[half], arrears=[JANUARY], usage=[reading(api, JANUARY, "2.5")], invoice_id="inv_9")
    assert result.billed == [
        Billed("price_fee", half, Decimal(1), Decimal(24_500_000_000), "inv_9", tax_rate=Decimal(0)),
        Billed("price_api", JANUARY, Decimal("2.5"), Decimal(2_500_000_000), "inv_9", tax_rate=Decimal(0)),
    ]
