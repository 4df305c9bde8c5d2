"""Taxes on invoices through the official SDK, each line taxed and rounded once, half up:
the plan's ``defaultTaxRate`` with ``taxBehavior`` exclusive (tax = round(net x rate)) or
inclusive (the price is gross: tax = round(gross x rate / (1 + rate)), net = gross - tax),
the customer's ``taxRates`` (a metric id wins over the plan id, which wins over
``default``, which wins over the plan's rate), and ``taxExempt`` (0 %).

Several customers share one clock here: each subscription is billed on its own, and one
advance bills them all. Every amount below is cent-exact before tax, so the rounding
carry never adds a line; only tax is rounded.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from paygentic_sdk import models

from libs.testing.billing import (
    Catalog,
    Line,
    advance,
    assert_lines,
    assert_totals,
    at,
    clock,
    customer,
    invoice_0,
    invoices,
    pay,
    subscribe,
    usage,
)
from libs.testing.fixtures import MerchantClient

pytestmark = pytest.mark.e2e

JAN1, FEB1 = at("2027-01-01T00:00:00Z"), at("2027-02-01T00:00:00Z")
HOUR = timedelta(hours=1)


def _fee(total_price: str, tax_rate: str, total_tax: str, start: str = "2027-01-01", end: str = "2027-02-01") -> Line:
    return Line("Platform fee", total_price, start=at(f"{start}T00:00:00Z"), end=at(f"{end}T00:00:00Z"), payment_term="in_advance",
                tax_rate=tax_rate, total_tax=total_tax)  # fmt: skip


def _calls(total_price: str, quantity: str, tax_rate: str, total_tax: str) -> Line:
    return Line("API calls", total_price, start=JAN1, end=FEB1, quantity=quantity, payment_term="in_arrears", tax_rate=tax_rate,
                total_tax=total_tax)  # fmt: skip


def test_exclusive_tax_with_customer_overrides_and_exemption(merchant_a: MerchantClient) -> None:
    catalog = Catalog.create(merchant_a, "Exclusive tax")
    calls = catalog.metric("API calls", "calls")
    platform = catalog.fee_price(catalog.fee("Platform"), "49.99", name="Platform fee")
    plan = catalog.plan([platform, catalog.standard_price(calls, "0.01", name="API calls")], tax_rate=20, tax_behavior="exclusive")
    assert (plan.default_tax_rate, plan.tax_behavior) == (20, "exclusive")
    test_clock = clock(merchant_a, JAN1, "exclusive-tax")
    plain = customer(merchant_a, "Plain Tax")
    by_metric = customer(merchant_a, "Metric Tax", tax_rates={"default": 8.25, calls.id: 5})
    by_plan = customer(merchant_a, "Plan Tax", tax_rates={plan.id: 13, "default": 8.25})
    exempt = customer(merchant_a, "Exempt Tax", tax_rates={"default": 8.25})
    subs = {
        "plain": subscribe(merchant_a, plan.id, plain, test_clock),
        "by_metric": subscribe(merchant_a, plan.id, by_metric, test_clock),
        "by_plan": subscribe(merchant_a, plan.id, by_plan, test_clock),
        "exempt": subscribe(merchant_a, plan.id, exempt, test_clock, tax_exempt=True),
    }
    assert subs["exempt"].tax_exempt is True

    # Invoice 0, the fee of 49.99 net:
    #   plain      plan 20 %:               49.99 x 0.20   = 9.998     -> 10.00, 59.99
    #   by_metric  "default" 8.25 % (the metric rate is for the calls): 49.99 x 0.0825 = 4.124175 -> 4.12, 54.11
    #   by_plan    the plan id's 13 %:      49.99 x 0.13   = 6.4987    -> 6.50, 56.49
    #   exempt     0 %:                                                   0.00, 49.99
    first = {
        "plain": (_fee("49.99", "0.2", "10.00"), "10.00", "59.99"),
        "by_metric": (_fee("49.99", "0.0825", "4.12"), "4.12", "54.11"),
        "by_plan": (_fee("49.99", "0.13", "6.50"), "6.50", "56.49"),
        "exempt": (_fee("49.99", "0", "0.00"), "0.00", "49.99"),
    }
    for name, (line, tax, grand) in first.items():
        sub = subs[name]
        assert isinstance(sub.payment, models.PaymentPending), (name, sub.payment)
        assert sub.payment.amount == grand, name
        bill = invoice_0(merchant_a, sub)
        assert_lines(bill, [line])
        assert_totals(bill, "49.99", tax)
        pay(merchant_a, bill.id)

    advance(merchant_a, test_clock.id, at("2027-01-15T00:00:00Z"))
    for customer_id in (plain, by_metric, by_plan, exempt):
        usage(merchant_a, calls, 1234, at("2027-01-14T09:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, FEB1 + HOUR)

    # Invoice 1: calls 1234 x 0.01 = 12.34 net and the fee for February, 49.99 net; subtotal 62.33
    #   plain      calls 12.34 x 0.20 = 2.468  -> 2.47;  fee 10.00;  tax 12.47, 74.80
    #   by_metric  calls 12.34 x 0.05 = 0.617  -> 0.62;  fee  4.12;  tax  4.74, 67.07
    #   by_plan    calls 12.34 x 0.13 = 1.6042 -> 1.60;  fee  6.50;  tax  8.10, 70.43
    #   exempt     0.00;                                             tax  0.00, 62.33
    second = {
        "plain": ([_calls("12.34", "1234", "0.2", "2.47"), _fee("49.99", "0.2", "10.00", "2027-02-01", "2027-03-01")], "12.47"),
        "by_metric": ([_calls("12.34", "1234", "0.05", "0.62"), _fee("49.99", "0.0825", "4.12", "2027-02-01", "2027-03-01")], "4.74"),
        "by_plan": ([_calls("12.34", "1234", "0.13", "1.60"), _fee("49.99", "0.13", "6.50", "2027-02-01", "2027-03-01")], "8.10"),
        "exempt": ([_calls("12.34", "1234", "0", "0.00"), _fee("49.99", "0", "0.00", "2027-02-01", "2027-03-01")], "0.00"),
    }
    for name, (lines, tax) in second.items():
        bill = invoices(merchant_a, subs[name].id)[1]
        assert (bill.sequence, bill.status) == (1, "ISSUED"), name
        assert_lines(bill, lines)
        assert_totals(bill, "62.33", tax)


def test_inclusive_tax_takes_the_tax_out_of_the_gross_price(merchant_a: MerchantClient) -> None:
    catalog = Catalog.create(merchant_a, "Inclusive tax")
    calls = catalog.metric("API calls", "calls")
    platform = catalog.fee_price(catalog.fee("Platform"), "49.99", name="Platform fee")
    plan = catalog.plan([platform, catalog.standard_price(calls, "0.01", name="API calls")], tax_rate=10, tax_behavior="inclusive")
    assert (plan.default_tax_rate, plan.tax_behavior) == (10, "inclusive")
    test_clock = clock(merchant_a, JAN1, "inclusive-tax")
    plain = customer(merchant_a, "Inclusive Plain")
    quarter = customer(merchant_a, "Inclusive Quarter", tax_rates={"default": 25})
    plain_sub = subscribe(merchant_a, plan.id, plain, test_clock)
    quarter_sub = subscribe(merchant_a, plan.id, quarter, test_clock)

    # Invoice 0, the fee of 49.99 gross:
    #   10 %: tax 49.99 x 0.10 / 1.10 = 4.544545... -> 4.54, net 49.99 - 4.54 = 45.45
    #   25 %: tax 49.99 x 0.25 / 1.25 = 9.998       -> 10.00, net 39.99
    for sub, line, net, tax in (
        (plain_sub, _fee("45.45", "0.1", "4.54"), "45.45", "4.54"),
        (quarter_sub, _fee("39.99", "0.25", "10.00"), "39.99", "10.00"),
    ):
        assert isinstance(sub.payment, models.PaymentPending)
        assert sub.payment.amount == "49.99"  # what the customer pays is the gross price
        bill = invoice_0(merchant_a, sub)
        assert_lines(bill, [line])
        assert_totals(bill, net, tax)
        pay(merchant_a, bill.id)

    advance(merchant_a, test_clock.id, at("2027-01-20T00:00:00Z"))
    usage(merchant_a, calls, 1238, at("2027-01-19T00:00:00Z"), subject=plain)
    usage(merchant_a, calls, 1235, at("2027-01-19T00:00:00Z"), subject=quarter)
    advance(merchant_a, test_clock.id, FEB1 + HOUR)

    # 10 %: calls 1238 x 0.01 = 12.38 gross: tax 12.38 x 0.10 / 1.10 = 1.125454... -> 1.13, net 11.25
    #       fee 49.99 gross: tax 4.54, net 45.45
    #       subtotal 11.25 + 45.45 = 56.70, tax 1.13 + 4.54 = 5.67, grand total 62.37 (= 12.38 + 49.99)
    plain_bill = invoices(merchant_a, plain_sub.id)[1]
    assert_lines(plain_bill, [_calls("11.25", "1238", "0.1", "1.13"), _fee("45.45", "0.1", "4.54", "2027-02-01", "2027-03-01")])
    assert_totals(plain_bill, "56.70", "5.67")
    # 25 %: calls 1235 x 0.01 = 12.35 gross: tax 12.35 x 0.25 / 1.25 = 2.47, net 9.88
    #       fee 49.99 gross: tax 10.00, net 39.99
    #       subtotal 9.88 + 39.99 = 49.87, tax 2.47 + 10.00 = 12.47, grand total 62.34 (= 12.35 + 49.99)
    quarter_bill = invoices(merchant_a, quarter_sub.id)[1]
    assert_lines(quarter_bill, [_calls("9.88", "1235", "0.25", "2.47"), _fee("39.99", "0.25", "10.00", "2027-02-01", "2027-03-01")])
    assert_totals(quarter_bill, "49.87", "12.47")
    assert (plain_bill.raw["grandTotal"], quarter_bill.raw["grandTotal"]) == ("62.37", "62.34")
