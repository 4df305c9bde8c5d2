"""Invariants of invoice calculation over generated inputs (hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.core.money import minor_unit_atomic
from libs.core.pricing import StandardPrice
from services.invoicing.domain.calculation import (
    Billed,
    Carry,
    Charge,
    Composition,
    InvoiceCalculation,
    TaxSettings,
    Usage,
    Window,
    calculate_invoice,
)

PROPERTY = settings(max_examples=150, deadline=None)
NO_TAX = TaxSettings(behavior="exclusive", default_rate=Decimal(0), customer_rates={}, exempt=False, plan_id="plan_1")
START = datetime(2028, 1, 31, tzinfo=UTC)
END = datetime(2028, 2, 29, tzinfo=UTC)  # a leap-year month-end period: 29 days
PERIOD = Window(START, END, START, END, 0)
SECONDS = int((END - START).total_seconds())


def _fee(unit_price_atomic: int, quantity: int) -> Charge:
    return Charge(
        price_id="price_fee",
        key="fee",
        kind="fee",
        source_id="fee_1",
        display_name="Seats",
        payment_term="in_advance",
        price=StandardPrice(unit_price_atomic),
        cadence=None,
        quantity=quantity,
    )


def _run(
    charge: Charge,
    currency: str,
    *,
    advance: Sequence[Window] = (),
    credits: Sequence[Window] = (),
    billed_before: Sequence[Billed] = (),
) -> InvoiceCalculation:
    return calculate_invoice(
        currency=currency,
        charges=[charge],
        composition=Composition(arrears=[], advance=advance, credits=credits, one_time_fees=False),
        usage=[],
        billed_before=billed_before,
        late_usage=[],
        tax=NO_TAX,
        carry=Carry(Decimal(0), 0),
    )


@PROPERTY
@given(
    unit_price=st.integers(min_value=1, max_value=10**15),
    quantity=st.integers(min_value=1, max_value=1000),
    cut=st.integers(min_value=1, max_value=SECONDS - 1),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_credit_plus_used_part_is_the_full_charge(unit_price: int, quantity: int, cut: int, currency: str) -> None:
    charge = _fee(unit_price, quantity)
    t = START + timedelta(seconds=cut)
    invoice_0 = _run(charge, currency, advance=[PERIOD])
    final = _run(charge, currency, credits=[Window(t, END, START, END, 0)], billed_before=invoice_0.billed)
    used = _run(charge, currency, advance=[Window(START, t, START, END, 0)])
    (credit,) = final.lines
    (used_line,) = [line for line in used.lines if line.kind == "charge"]
    assert used_line.exact_amount - credit.exact_amount == Decimal(unit_price * quantity)
    # the rounded parts are each within half a minor unit of their exact values
    half = Decimal(minor_unit_atomic(currency)) / 2
    assert abs(credit.amount - credit.exact_amount) <= half
    assert abs(used_line.amount - used_line.exact_amount) <= half


@PROPERTY
@given(
    prices=st.lists(st.integers(min_value=1, max_value=30_000_000), min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=SECONDS), min_size=1, max_size=30),
    currency=st.sampled_from(["USD", "JPY", "KWD"]),
)
def test_billed_cumulative_total_never_drifts_half_a_minor_unit(prices: list[int], cuts: list[int], currency: str) -> None:
    # Sub-cent fees over prorated windows and sub-cent usage, invoice after invoice.
    half = Decimal(minor_unit_atomic(currency)) / 2
    carry = Carry(Decimal(0), 0)
    exact = Decimal(0)
    usage_charge = Charge("price_api", "api", "metered", "metric_api", "API", "in_arrears", StandardPrice(3_333_333), None, 0)
    for price, cut in zip(prices, cuts, strict=False):
        window = Window(START, START + timedelta(seconds=cut), START, END, 0)
        result = calculate_invoice(
            currency=currency,
            charges=[_fee(price, 1), usage_charge],
            composition=Composition(arrears=[PERIOD], advance=[window], credits=[], one_time_fees=False),
            usage=[Usage("price_api", PERIOD, Decimal(price % 7), {})],
            billed_before=[],
            late_usage=[],
            tax=NO_TAX,
            carry=carry,
        )
        exact += sum((line.exact_amount for line in result.lines), Decimal(0))
        assert result.carry_after.exact_total == exact
        assert result.carry_after.billed_total == carry.billed_total + result.subtotal
        assert abs(result.carry_after.billed_total - exact) <= half
        carry = result.carry_after
