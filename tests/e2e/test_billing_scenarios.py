"""Billing scenarios through the official SDK against the real mesh, each on its own test
clock set at a fixed instant, in the style of Kill Bill's beatrix and Lago's scenario
specs: every invoice line and total is asserted to the cent, with the arithmetic by hand
in a comment (exact amount, then rounded once, half up, to the cent).

The rules are DESIGN.md sections 3 and 7: Invoice 0 at creation (in-advance charges of
period 0 and one-time fees); invoice k at boundary k (usage of period k-1 + the
in-advance fees of period k), ACTIVE while it accrues, CLOSING during the grace hour,
ISSUED at its end; late usage as a correction naming its period; the rounding carry;
termination's prorated credit, exact to the second. Usage is stamped in clock time, so
the clock is always moved to (or past) an event's timestamp before the event is sent.

Taxes are in test_billing_taxes.py, tenancy in test_billing_tenancy.py; the helpers in
libs/testing/billing.py.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from paygentic_sdk import errors, models

from libs.infra.runner import Mesh
from libs.testing.billing import (
    ANY,
    Catalog,
    Line,
    add_months,
    advance,
    advance_by,
    assert_issued,
    assert_lines,
    assert_totals,
    at,
    clock,
    customer,
    invoice,
    invoice_0,
    invoices,
    metered,
    new_merchant,
    pay,
    statuses,
    subscribe,
    usage,
)
from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e

HOUR = timedelta(hours=1)
ROUNDING_LINE = "Rounding carried from earlier invoices"


def _error_code(error: errors.PaygenticError) -> str:
    return str(json.loads(error.body)["code"])


# --- Invoice 0 ---------------------------------------------------------------------------


def test_invoice_0_gates_activation_until_paid_out_of_band(merchant_a: MerchantClient) -> None:
    t0 = at("2027-01-01T00:00:00Z")
    feb1 = at("2027-02-01T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Invoice 0")
    tokens = catalog.metric()
    setup_fee, platform_fee = catalog.fee("Setup"), catalog.fee("Platform")
    setup = catalog.fee_price(setup_fee, "100.00", name="Setup", cadence="P0D")
    platform = catalog.fee_price(platform_fee, "49.00", name="Platform fee")
    token_usage = catalog.standard_price(tokens, "0.002", name="Token usage")
    plan = catalog.plan([setup, platform, token_usage])
    customer_id = customer(merchant_a, "Invoice 0 Inc")
    test_clock = clock(merchant_a, t0, "invoice-0")

    sub = subscribe(merchant_a, plan.id, customer_id, test_clock, payment_term_days=14)

    assert sub.status == "pending_payment"
    assert (sub.customer_id, sub.plan_id, sub.test_clock_id) == (customer_id, plan.id, test_clock.id)
    assert (sub.plan_version_id, sub.version_number) == (plan.default_version_id, 1)
    assert (sub.started_at, sub.billing_starts_at, sub.billing_anchor) == (t0, t0, t0)
    assert (sub.billing_cadence, sub.elapsed_period_billing, sub.payment_term_days) == ("P1M", "none", 14)
    payment = sub.payment
    assert isinstance(payment, models.PaymentPending), payment
    # Invoice 0: Setup 100.00 (one-time, P0D) + Platform fee 49.00 for [Jan 1, Feb 1) = 149.00
    assert (payment.amount, payment.breakdown.upfront_charges, payment.breakdown.wallet_charge) == ("149.00", "149.00", "0.00")
    assert payment.payment_session_id.startswith("ps_")
    assert payment.checkout_url.startswith("http")
    assert payment.checkout_url.endswith(f"/checkout/{merchant_a.merchant_id}/{payment.payment_session_id}")
    assert payment.invoice_id is not None

    first = invoice(merchant_a, payment.invoice_id)
    assert first.status == "ISSUED"
    # issued at once in clock time; due = issue date + 14 days, midnight UTC
    assert_issued(first, sequence=0, issued_at=t0, due_at=at("2027-01-15T00:00:00Z"))
    assert_lines(
        first,
        [
            Line("Setup", "100.00", start=t0, quantity="1", unit_price="100.00", payment_term="in_advance", source_id=setup_fee, price_id=setup),
            Line("Platform fee", "49.00", start=t0, end=feb1, quantity="1", unit_price="49.00", payment_term="in_advance",
                 source_id=platform_fee, price_id=platform),
        ],
    )  # fmt: skip
    assert_totals(first, "149.00")
    assert (first.raw["paidAmount"], first.raw["unpaidAmount"]) == ("0.00", "149.00")
    assert (first.raw["customerId"], first.raw["subscriptionId"], first.raw["currency"]) == (customer_id, sub.id, "USD")
    # invoice 1 (usage of January + the fee of February) accrues from the start
    assert statuses(merchant_a, sub.id) == [(0, "ISSUED"), (1, "ACTIVE")]
    assert merchant_a.sdk.subscriptions.get(id=sub.id).status == "pending_payment"

    # only an ISSUED (or PAYMENT_FAILED) invoice takes a payment: the accruing one is refused
    accruing = next(bill for bill in invoices(merchant_a, sub.id) if bill.sequence == 1)
    with pytest.raises(errors.PaygenticError) as not_payable:
        merchant_a.sdk.invoices_v2.record_invoice_payment(id=accruing.id, method="out_of_band")
    assert not_payable.value.status_code == 422
    assert _error_code(not_payable.value) == "INVOICE_NOT_LINKABLE_STATUS"

    paid = pay(merchant_a, first.id)
    assert (paid.status, paid.paid_amount, paid.unpaid_amount) == ("PAID", "149.00", "0.00")
    # read your writes: when the payment call returns, the subscription is active
    assert merchant_a.sdk.subscriptions.get(id=sub.id).status == "active"
    assert invoice(merchant_a, first.id).status == "PAID"
    with pytest.raises(errors.PaygenticError) as twice:
        pay(merchant_a, first.id)
    assert twice.value.status_code == 409
    assert invoice(merchant_a, first.id).raw["paidAmount"] == "149.00"


def test_a_zero_invoice_0_is_paid_at_once_and_the_subscription_active_on_creation(merchant_a: MerchantClient) -> None:
    t0 = at("2027-01-01T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Zero Invoice 0")
    tokens = catalog.metric()
    plan = catalog.plan([catalog.standard_price(tokens, "0.002", name="Token usage")])  # nothing in advance
    test_clock = clock(merchant_a, t0, "zero-invoice-0")

    sub = subscribe(merchant_a, plan.id, customer(merchant_a, "Zero Inc"), test_clock)

    assert sub.status == "active"
    payment = sub.payment
    assert isinstance(payment, models.PaymentPaid), payment
    assert payment.amount == "0.00"
    first = invoice(merchant_a, payment.invoice_id)
    assert first.status == "PAID"
    assert_issued(first, sequence=0, issued_at=t0, due_at=t0)
    assert_lines(first, [])
    assert_totals(first, "0.00")
    assert (first.raw["paidAmount"], first.raw["unpaidAmount"]) == ("0.00", "0.00")
    assert statuses(merchant_a, sub.id) == [(0, "PAID"), (1, "ACTIVE")]
    assert merchant_a.sdk.subscriptions.get(id=sub.id).status == "active"


# --- Renewals ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renewals_merchant(mesh: Mesh) -> MerchantClient:
    """Invoice numbers are gapless per merchant: this scenario's merchant issues nothing else."""
    return new_merchant(mesh, f"Renewals {uuid.uuid4().hex[:6]}")


def _serial(invoice_number: str) -> int:
    found = re.search(r"(\d+)$", invoice_number)
    assert found is not None, invoice_number
    return int(found.group(1))


def test_three_monthly_renewals(renewals_merchant: MerchantClient) -> None:
    client = renewals_merchant
    jan1, feb1, mar1, apr1, may1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3, 4, 5))
    catalog = Catalog.create(client, "Renewals")
    calls = catalog.metric("API calls", "calls")
    platform_fee = catalog.fee("Platform")
    platform = catalog.fee_price(platform_fee, "49.00", name="Platform fee")
    api = catalog.standard_price(calls, "0.002", name="API calls")
    plan = catalog.plan([platform, api])
    customer_id = customer(client, "Renewals Ltd")
    test_clock = clock(client, jan1, "renewals")
    sub = subscribe(client, plan.id, customer_id, test_clock, payment_term_days=14)

    def fee(start: datetime, end: datetime) -> Line:
        return Line("Platform fee", "49.00", start=start, end=end, quantity="1", unit_price="49.00", payment_term="in_advance",
                    source_id=platform_fee, price_id=platform)  # fmt: skip

    def api_calls(start: datetime, end: datetime, quantity: str, total: str) -> Line:
        return Line("API calls", total, start=start, end=end, quantity=quantity, unit_price="0.002", payment_term="in_arrears",
                    source_id=calls.id, price_id=api)  # fmt: skip

    # Invoice 0: Platform fee 49.00 for [Jan 1, Feb 1); issued at creation, due Jan 1 + 14 d
    first = invoice_0(client, sub)
    assert_issued(first, sequence=0, issued_at=jan1, due_at=at("2027-01-15T00:00:00Z"))
    assert_lines(first, [fee(jan1, feb1)])
    assert_totals(first, "49.00")
    pay(client, first.id)
    assert client.sdk.subscriptions.get(id=sub.id).status == "active"

    # January: 1000 + 500 calls
    advance(client, test_clock.id, at("2027-01-15T12:00:00Z"))
    usage(client, calls, 1000, at("2027-01-15T11:00:00Z"), subject=customer_id)
    usage(client, calls, 500, at("2027-01-15T11:30:00Z"), subject=customer_id)
    # invoice 1 accrues with a live estimate: 1500 x 0.002 = 3.00 of usage + 49.00 of February's fee = 52.00
    accruing = next(bill for bill in invoices(client, sub.id) if bill.sequence == 1)
    assert accruing.status == "ACTIVE"
    assert eventually(lambda: invoice(client, accruing.id).raw["grandTotal"], "52.00") == "52.00"
    assert invoice(client, accruing.id).raw.get("invoiceNumber") is None

    # Feb 1 00:00, boundary 1: invoice 1 stops accruing and waits the grace hour; invoice 2 opens
    advance(client, test_clock.id, feb1)
    assert statuses(client, sub.id) == [(0, "PAID"), (1, "CLOSING"), (2, "ACTIVE")]
    closing = invoice(client, accruing.id)
    assert closing.time("gracePeriodEnd") == feb1 + HOUR
    assert closing.raw.get("invoiceNumber") is None
    advance(client, test_clock.id, at("2027-02-01T00:30:00Z"))
    assert statuses(client, sub.id) == [(0, "PAID"), (1, "CLOSING"), (2, "ACTIVE")]

    # Feb 1 01:00, grace end: invoice 1 issued, due Feb 1 + 14 d
    advance(client, test_clock.id, feb1 + HOUR)
    assert statuses(client, sub.id) == [(0, "PAID"), (1, "ISSUED"), (2, "ACTIVE")]
    second = invoice(client, accruing.id)
    assert_issued(second, sequence=1, issued_at=feb1 + HOUR, due_at=at("2027-02-15T00:00:00Z"), grace_end=feb1 + HOUR)
    # usage [Jan 1, Feb 1): 1500 x 0.002 = 3.00; fee [Feb 1, Mar 1): 49.00; 52.00
    assert_lines(second, [api_calls(jan1, feb1, "1500", "3.00"), fee(feb1, mar1)])
    assert_totals(second, "52.00")
    assert (second.time("periodStart"), second.time("periodEnd")) == (jan1, mar1)
    document = client.sdk.invoices_v2.get_line_items(id=second.id)
    assert (document.invoice_id, document.total_count) == (second.id, 2)
    assert sorted(line.total_amount for line in document.line_items) == ["3.00", "49.00"]
    assert (second.raw["paidAmount"], second.raw["unpaidAmount"]) == ("0.00", "52.00")
    assert pay(client, second.id).status == "PAID"
    assert client.sdk.subscriptions.get(id=sub.id).status == "active"

    # February: 2250 calls; March 1 01:00: invoice 2
    advance(client, test_clock.id, at("2027-02-20T00:00:00Z"))
    usage(client, calls, 2250, at("2027-02-19T08:00:00Z"), subject=customer_id)
    advance(client, test_clock.id, mar1 + HOUR)
    third = next(bill for bill in invoices(client, sub.id) if bill.sequence == 2)
    assert_issued(third, sequence=2, issued_at=mar1 + HOUR, due_at=at("2027-03-15T00:00:00Z"), grace_end=mar1 + HOUR)
    assert third.status == "ISSUED"
    # usage [Feb 1, Mar 1): 2250 x 0.002 = 4.50; fee [Mar 1, Apr 1): 49.00; 53.50
    assert_lines(third, [api_calls(feb1, mar1, "2250", "4.50"), fee(mar1, apr1)])
    assert_totals(third, "53.50")

    # March: 3125 calls in its last second; one stamped on the boundary belongs to April
    advance(client, test_clock.id, apr1)
    usage(client, calls, 3125, at("2027-03-31T23:59:59Z"), subject=customer_id)
    usage(client, calls, 999, apr1, subject=customer_id)
    assert statuses(client, sub.id) == [(0, "PAID"), (1, "PAID"), (2, "ISSUED"), (3, "CLOSING"), (4, "ACTIVE")]
    advance(client, test_clock.id, apr1 + HOUR)
    bills = invoices(client, sub.id)
    fourth = bills[3]
    assert_issued(fourth, sequence=3, issued_at=apr1 + HOUR, due_at=at("2027-04-15T00:00:00Z"), grace_end=apr1 + HOUR)
    # usage [Mar 1, Apr 1): 3125 x 0.002 = 6.25; fee [Apr 1, May 1): 49.00; 55.25
    assert_lines(fourth, [api_calls(mar1, apr1, "3125", "6.25"), fee(apr1, may1)])
    assert_totals(fourth, "55.25")
    assert [(bill.sequence, bill.status) for bill in bills] == [(0, "PAID"), (1, "PAID"), (2, "ISSUED"), (3, "ISSUED"), (4, "ACTIVE")]
    # gapless per merchant, in issue order; the merchant's only four issued invoices
    numbers = [str(bill.raw["invoiceNumber"]) for bill in bills[:4]]
    assert [_serial(number) for number in numbers] == [1, 2, 3, 4], numbers
    assert bills[4].raw.get("invoiceNumber") is None
    # an issued invoice never changes
    assert invoice(client, second.id).raw["grandTotal"] == "52.00"


# --- Price models --------------------------------------------------------------------------


def test_usage_priced_with_each_model(merchant_a: MerchantClient) -> None:
    jan1, feb1, mar1, apr1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3, 4))
    catalog = Catalog.create(merchant_a, "Models")
    std_m, vol_m, grad_m, pkg_m = (catalog.metric(f"{name} calls", "calls") for name in ("Standard", "Volume", "Graduated", "Package"))
    standard = catalog.standard_price(std_m, "0.25", name="Standard")
    volume = catalog.volume_price(vol_m, [("100", "0.10"), ("1000", "0.08"), (None, "0.05")], name="Volume")
    graduated = catalog.rest_price(
        grad_m, "graduated", {"tiers": [{"upTo": "1000", "unitPrice": "0.01"}, {"upTo": None, "unitPrice": "0.005", "flatFee": "2"}]},
        name="Graduated",
    )  # fmt: skip
    package = catalog.rest_price(pkg_m, "package", {"unitPrice": "1.50", "packageSize": "1000", "rounding": "up"}, name="Package")
    plan = catalog.plan([standard, volume, graduated, package])
    customer_id = customer(merchant_a, "Models GmbH")
    test_clock = clock(merchant_a, jan1, "models")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)
    assert sub.status == "active"  # nothing in advance: Invoice 0 is zero

    def period(quantities: tuple[int, int, int, int], sent_at: datetime) -> None:
        for metric, quantity in zip((std_m, vol_m, grad_m, pkg_m), quantities, strict=True):
            usage(merchant_a, metric, quantity, sent_at, subject=customer_id)

    def lines(start: datetime, end: datetime, quantities: tuple[int, int, int, int], totals: tuple[str, str, str, str]) -> list[Line]:
        names, metrics, prices = (
            ("Standard", "Volume", "Graduated", "Package"),
            (std_m, vol_m, grad_m, pkg_m),
            (standard, volume, graduated, package),
        )
        out = [
            Line(name, total, start=start, end=end, quantity=str(quantity), payment_term="in_arrears", source_id=metric.id, price_id=price)
            for name, metric, price, quantity, total in zip(names, metrics, prices, quantities, totals, strict=True)
        ]
        # the standard line's unit price is the price's; a tiered line's depends on the tiers
        return [replace(out[0], unit_price="0.25"), *out[1:]]

    advance(merchant_a, test_clock.id, at("2027-01-20T00:00:00Z"))
    period((37, 250, 1500, 2001), at("2027-01-19T12:00:00Z"))
    advance(merchant_a, test_clock.id, feb1 + HOUR)
    # standard:  37 x 0.25 = 9.25
    # volume:    250 lies in (100, 1000]: every unit at 0.08 -> 250 x 0.08 = 20.00
    # graduated: 1000 x 0.01 = 10.00, 500 x 0.005 = 2.50, + flat 2.00 of the second band = 14.50
    # package:   2001 calls = 3 started packages of 1000 -> 3 x 1.50 = 4.50
    # 9.25 + 20.00 + 14.50 + 4.50 = 48.25
    first = invoices(merchant_a, sub.id)[1]
    assert first.status == "ISSUED"
    assert_lines(first, lines(jan1, feb1, (37, 250, 1500, 2001), ("9.25", "20.00", "14.50", "4.50")))
    assert_totals(first, "48.25")
    # every line can be explained: its provenance was recorded and ends at the line's amount
    explained = httpx.get(
        f"{merchant_a.base_url}/v2/invoices/{first.id}", params={"expand": "lineProvenance"}, headers=merchant_a.headers, timeout=30
    )
    assert explained.status_code == 200, explained.text
    for line in explained.json()["lineItems"]["lineItems"]:
        provenance = line["provenance"]
        assert provenance["status"] == "recorded", line
        assert Decimal(provenance["result"]["amount"]) == Decimal(line["totalPrice"]), line
        assert provenance["steps"], line

    advance(merchant_a, test_clock.id, at("2027-02-10T00:00:00Z"))
    period((4, 1200, 800, 1000), at("2027-02-09T12:00:00Z"))
    advance(merchant_a, test_clock.id, mar1 + HOUR)
    # standard:  4 x 0.25 = 1.00
    # volume:    1200 > 1000: every unit at 0.05 -> 60.00
    # graduated: 800 x 0.01 = 8.00 (the second band holds nothing: no flat fee)
    # package:   1000 calls = exactly 1 package -> 1.50
    # 1.00 + 60.00 + 8.00 + 1.50 = 70.50
    second = invoices(merchant_a, sub.id)[2]
    assert_lines(second, lines(feb1, mar1, (4, 1200, 800, 1000), ("1.00", "60.00", "8.00", "1.50")))
    assert_totals(second, "70.50")

    advance(merchant_a, test_clock.id, at("2027-03-10T00:00:00Z"))
    period((1, 100, 1001, 1), at("2027-03-09T12:00:00Z"))
    advance(merchant_a, test_clock.id, apr1 + HOUR)
    # standard:  1 x 0.25 = 0.25
    # volume:    100 is the first band's bound (inclusive): 100 x 0.10 = 10.00
    # graduated: 1000 x 0.01 = 10.00 + 1 x 0.005 + flat 2.00 = 12.005 -> 12.01 (half up, not 12.00)
    # package:   1 call starts a package -> 1.50
    # 0.25 + 10.00 + 12.01 + 1.50 = 23.76; exact 23.755, billed 23.76: |drift| = 0.005, no carry line
    third = invoices(merchant_a, sub.id)[3]
    assert_lines(third, lines(mar1, apr1, (1, 100, 1001, 1), ("0.25", "10.00", "12.01", "1.50")))
    assert_totals(third, "23.76")


# --- Calendar edges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "boundaries"),
    [
        ("2027-01-31", ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"]),
        ("2028-01-31", ["2028-02-29", "2028-03-31", "2028-04-30", "2028-05-31"]),
    ],
    ids=["month-end anchor", "leap year"],
)
def test_a_month_end_anchor_keeps_its_day(start: str, boundaries: list[str], merchant_a: MerchantClient) -> None:
    t0 = at(f"{start}T00:00:00Z")
    grid = [t0] + [at(f"{day}T00:00:00Z") for day in boundaries]
    assert grid[1:] == [add_months(t0, k) for k in range(1, 5)]  # the rule, restated
    catalog = Catalog.create(merchant_a, f"Month end {start}")
    units = catalog.metric("Units", "units")
    platform_fee = catalog.fee("Platform")
    platform = catalog.fee_price(platform_fee, "28.00", name="Platform fee")
    plan = catalog.plan([platform, catalog.standard_price(units, "0.01", name="Units")])
    customer_id = customer(merchant_a, f"Month End {start}")
    test_clock = clock(merchant_a, t0, f"month-end-{start}")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)

    first = invoice_0(merchant_a, sub)
    # Invoice 0: the fee of period 0, [Jan 31, Feb 28|29): 28.00 (a whole period, whatever its length)
    assert_lines(first, [Line("Platform fee", "28.00", start=grid[0], end=grid[1], payment_term="in_advance", price_id=platform)])
    assert_totals(first, "28.00")
    pay(merchant_a, first.id)

    for k in range(3):
        begin, end, after = grid[k], grid[k + 1], grid[k + 2]
        # usage of period k: 100(k+1) twelve hours into it, 10(k+1) in its last second
        advance(merchant_a, test_clock.id, end - timedelta(seconds=1))
        usage(merchant_a, units, 100 * (k + 1), begin + timedelta(hours=12), subject=customer_id)
        usage(merchant_a, units, 10 * (k + 1), end - timedelta(seconds=1), subject=customer_id)
        advance(merchant_a, test_clock.id, end)
        assert statuses(merchant_a, sub.id)[k + 1 :] == [(k + 1, "CLOSING"), (k + 2, "ACTIVE")]
        advance(merchant_a, test_clock.id, end + HOUR)
        bill = invoices(merchant_a, sub.id)[k + 1]
        assert_issued(bill, sequence=k + 1, issued_at=end + HOUR, due_at=end, grace_end=end + HOUR)
        # usage [b_k, b_k+1): 110(k+1) x 0.01 = 1.10 | 2.20 | 3.30; fee [b_k+1, b_k+2): 28.00
        quantity = 110 * (k + 1)
        usage_total = f"{Decimal(quantity) / 100:.2f}"
        assert_lines(
            bill,
            [
                Line("Units", usage_total, start=begin, end=end, quantity=str(quantity), unit_price="0.01", payment_term="in_arrears"),
                Line("Platform fee", "28.00", start=end, end=after, payment_term="in_advance", price_id=platform),
            ],
        )
        assert_totals(bill, f"{Decimal(quantity) / 100 + 28:.2f}")  # 29.10 | 30.20 | 31.30
        assert (bill.time("periodStart"), bill.time("periodEnd")) == (begin, after)


def test_advance_by_a_month_clamps_to_the_month_end(merchant_a: MerchantClient) -> None:
    """advanceBy adds to the clock's current time: Jan 31 + P1M = Feb 28, then + P1M = Mar 28."""
    test_clock = clock(merchant_a, at("2027-01-31T00:00:00Z"), "advance-by")
    assert advance_by(merchant_a, test_clock.id, "P1M").current_time == at("2027-02-28T00:00:00Z")
    assert advance_by(merchant_a, test_clock.id, "P1M").current_time == at("2027-03-28T00:00:00Z")
    assert advance_by(merchant_a, test_clock.id, "P1Y2M3DT4H5M6S").current_time == at("2028-05-31T04:05:06Z")
    assert merchant_a.sdk.test_clocks.get(id=test_clock.id).current_time == at("2028-05-31T04:05:06Z")
    with pytest.raises(errors.PaygenticError) as backwards:
        advance(merchant_a, test_clock.id, at("2028-01-01T00:00:00Z"))
    assert backwards.value.status_code == 400


# --- Grace and late usage --------------------------------------------------------------------


def test_grace_takes_late_usage_and_after_issue_it_is_a_correction(merchant_a: MerchantClient) -> None:
    jan1, feb1, mar1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3))
    catalog = Catalog.create(merchant_a, "Grace")
    calls = catalog.metric("Calls", "calls")
    tiers = {"tiers": [{"upTo": "100", "unitPrice": "0.01"}, {"upTo": None, "unitPrice": "0.02"}]}
    price = catalog.rest_price(calls, "graduated", tiers, name="Calls")
    plan = catalog.plan([price])
    customer_id = customer(merchant_a, "Grace Co")
    test_clock = clock(merchant_a, jan1, "grace")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)

    advance(merchant_a, test_clock.id, at("2027-01-10T00:00:00Z"))
    usage(merchant_a, calls, 100, at("2027-01-10T00:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, feb1)
    closing = invoices(merchant_a, sub.id)[1]
    assert (closing.status, closing.time("gracePeriodEnd")) == ("CLOSING", feb1 + HOUR)
    # late, but inside the grace window: on the closing invoice
    usage(merchant_a, calls, 50, at("2027-01-31T23:30:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, feb1 + HOUR - timedelta(seconds=1))
    assert invoice(merchant_a, closing.id).status == "CLOSING"
    advance(merchant_a, test_clock.id, feb1 + HOUR)
    issued = invoice(merchant_a, closing.id)
    assert_issued(issued, sequence=1, issued_at=feb1 + HOUR, due_at=feb1)
    # [Jan 1, Feb 1): 150 calls, graduated: 100 x 0.01 = 1.00 + 50 x 0.02 = 1.00 -> 2.00
    assert_lines(issued, [Line("Calls", "2.00", start=jan1, end=feb1, quantity="150", payment_term="in_arrears", price_id=price)])
    assert_totals(issued, "2.00")

    # after issue: a January event is late usage, billed on the next invoice
    usage(merchant_a, calls, 20, at("2027-01-31T12:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, at("2027-02-15T00:00:00Z"))
    usage(merchant_a, calls, 300, at("2027-02-15T00:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, mar1 + HOUR)
    assert eventually(lambda: metered(merchant_a, calls, customer_id, jan1, feb1), "170") == "170"
    bills = invoices(merchant_a, sub.id)
    second = bills[2]
    assert_issued(second, sequence=2, issued_at=mar1 + HOUR, due_at=mar1)
    # [Feb 1, Mar 1): 300 calls: 100 x 0.01 = 1.00 + 200 x 0.02 = 4.00 -> 5.00
    # correction of [Jan 1, Feb 1): re-rated with all 170 calls: 1.00 + 70 x 0.02 = 2.40, billed 2.00 -> +0.40
    #   (not 20 x 0.01 = 0.20: the late calls fall in the second band once the period is re-rated)
    assert_lines(
        second,
        [
            Line("Calls", "5.00", start=feb1, end=mar1, quantity="300", payment_term="in_arrears", price_id=price),
            Line(ANY, "0.40", kind="correction", corrects=(jan1, feb1), quantity="20", source_id=calls.id, price_id=price),
        ],
    )
    assert_totals(second, "5.40")
    assert invoice(merchant_a, issued.id).raw["grandTotal"] == "2.00"  # the issued invoice is unchanged
    # the contract (InvoiceLineItem.payment_term): "unset for rounding and corrections"
    correction = next(line for line in second.lines if line.get("kind") == "correction")
    assert correction.get("paymentTerm") is None, json.dumps({k: v for k, v in correction.items() if k != "provenance"})


# --- Rounding carry --------------------------------------------------------------------------


def test_the_rounding_carry_keeps_the_billed_total_within_half_a_cent(merchant_a: MerchantClient) -> None:
    grid = [at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3, 4, 5)]
    catalog = Catalog.create(merchant_a, "Rounding")
    calls = catalog.metric("Calls", "calls")
    price = catalog.standard_price(calls, "0.001", name="Calls")
    plan = catalog.plan([price])
    customer_id = customer(merchant_a, "Sub-cent SA")
    test_clock = clock(merchant_a, grid[0], "rounding")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)

    # per period: quantity, exact = quantity x 0.001, the line rounded half up, the carry line, the total
    #   E (exact cumulative)   B (billed cumulative) must equal round_half_up(E) after each invoice
    # 1: 14 -> 0.014 -> 0.01; E 0.014 -> 0.01, B+S 0.01: no carry;            total 0.01, B 0.01
    # 2: 14 -> 0.014 -> 0.01; E 0.028 -> 0.03, B+S 0.02: carry +0.01;         total 0.02, B 0.03
    # 3:  5 -> 0.005 -> 0.01 (half up); E 0.033 -> 0.03, B+S 0.04: carry -0.01; total 0.00, B 0.03
    # 4: 14 -> 0.014 -> 0.01; E 0.047 -> 0.05, B+S 0.04: carry +0.01;         total 0.02, B 0.05
    # without the carry B would be 0.04 against an exact 0.047: 0.007 off, more than half a cent
    plan_of_periods = [(14, "0.01", None, "0.01"), (14, "0.01", "0.01", "0.02"), (5, "0.01", "-0.01", "0.00"), (14, "0.01", "0.01", "0.02")]
    exact, billed = Decimal(0), Decimal(0)
    for k, (quantity, line_total, carry, total) in enumerate(plan_of_periods):
        advance(merchant_a, test_clock.id, grid[k] + timedelta(days=10))
        usage(merchant_a, calls, quantity, grid[k] + timedelta(days=9), subject=customer_id)
        advance(merchant_a, test_clock.id, grid[k + 1] + HOUR)
        bill = invoices(merchant_a, sub.id)[k + 1]
        expected = [Line("Calls", line_total, start=grid[k], end=grid[k + 1], quantity=str(quantity), unit_price="0.001", price_id=price)]
        if carry is not None:
            expected.append(Line(ROUNDING_LINE, carry, kind="rounding", payment_term=None))
        assert_lines(bill, expected)
        assert_totals(bill, total)
        # nothing owed: issued PAID at once
        assert bill.status == ("PAID" if total == "0.00" else "ISSUED")
        exact += Decimal(quantity) * Decimal("0.001")
        billed += Decimal(bill.raw["grandTotal"])
        assert abs(billed - exact) <= Decimal("0.005"), (k, billed, exact)
    assert (exact, billed) == (Decimal("0.047"), Decimal("0.05"))


# --- Termination -----------------------------------------------------------------------------


def test_termination_mid_period_credits_the_unused_part_to_the_second(merchant_a: MerchantClient) -> None:
    mar1, apr1 = at("2027-03-01T00:00:00Z"), at("2027-04-01T00:00:00Z")
    ended = at("2027-03-11T06:00:01Z")
    catalog = Catalog.create(merchant_a, "Termination")
    compute = catalog.metric("Compute", "units")
    seat_fee = catalog.fee("Enterprise seat")
    seat = catalog.fee_price(seat_fee, "26784.00", name="Enterprise seat")
    compute_price = catalog.standard_price(compute, "1.00", name="Compute")
    plan = catalog.plan([seat, compute_price])
    customer_id = customer(merchant_a, "Leaving Corp")
    test_clock = clock(merchant_a, mar1, "termination")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock, payment_term_days=30)
    first = invoice_0(merchant_a, sub)
    assert_lines(first, [Line("Enterprise seat", "26784.00", start=mar1, end=apr1, payment_term="in_advance", price_id=seat)])
    pay(merchant_a, first.id)

    advance(merchant_a, test_clock.id, at("2027-03-05T12:00:00Z"))
    usage(merchant_a, compute, 12000, at("2027-03-05T10:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, ended)
    usage(merchant_a, compute, 7000, ended - timedelta(seconds=1), subject=customer_id)  # the last second before the end

    terminated = merchant_a.sdk.subscriptions.terminate(id=sub.id, reason="Moving on", timeout_ms=120_000)
    assert (terminated.status, terminated.terminated_at, terminated.termination_reason) == ("terminated", ended, "Moving on")
    assert statuses(merchant_a, sub.id) == [(0, "PAID"), (1, "CLOSING")]
    final = invoices(merchant_a, sub.id)[1]
    assert final.time("gracePeriodEnd") == ended + HOUR

    advance(merchant_a, test_clock.id, at("2027-03-11T06:10:00Z"))
    usage(merchant_a, compute, 1000, at("2027-03-10T12:00:00Z"), subject=customer_id)  # late, before the end, in grace: billed
    usage(merchant_a, compute, 5000, ended, subject=customer_id)  # at the end: not billed
    usage(merchant_a, compute, 700, at("2027-03-11T06:04:01Z"), subject=customer_id)  # after the end: not billed
    advance(merchant_a, test_clock.id, ended + HOUR)

    final = invoice(merchant_a, final.id)
    assert_issued(final, sequence=1, issued_at=ended + HOUR, due_at=at("2027-04-10T00:00:00Z"), grace_end=ended + HOUR)
    # usage [Mar 1, Mar 11 06:00:01): 12000 + 7000 + 1000 = 20000 x 1.00 = 20000.00
    # credit [Mar 11 06:00:01, Apr 1) of the seat billed for [Mar 1, Apr 1) (2,678,400 s):
    #   20 d 17:59:59 = 1,792,799 s -> 26784.00 x 1792799 / 2678400 = 0.01 x 1792799 = 17927.99 exactly
    # 20000.00 - 17927.99 = 2072.01
    assert_lines(
        final,
        [
            Line("Compute", "20000.00", start=mar1, end=ended, quantity="20000", unit_price="1.00", payment_term="in_arrears",
                 source_id=compute.id, price_id=compute_price),
            Line(ANY, "-17927.99", kind="credit", start=ended, end=apr1, source_id=seat_fee, price_id=seat),
        ],
    )  # fmt: skip
    assert_totals(final, "2072.01")
    assert (final.time("periodStart"), final.time("periodEnd")) == (mar1, apr1)
    credit = next(line for line in final.lines if line.get("kind") == "credit")
    assert credit["invoiceDisplayName"].startswith("Enterprise seat"), credit

    # the subscription has ended: no invoice after the final one, whatever time passes
    advance(merchant_a, test_clock.id, at("2027-05-01T02:00:00Z"))
    assert statuses(merchant_a, sub.id) == [(0, "PAID"), (1, "ISSUED")]
    fetched = merchant_a.sdk.subscriptions.get(id=sub.id)
    assert (fetched.status, fetched.terminated_at) == ("terminated", ended)
    # the events at and after the end are stored all the same
    assert metered(merchant_a, compute, customer_id, mar1, apr1) == "25700"


def test_a_scheduled_end_and_a_patched_termination_make_final_invoices(merchant_a: MerchantClient) -> None:
    jan1, feb1, mar1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3))
    ending_at, patched_at = at("2027-02-10T12:00:00Z"), at("2027-02-05T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Scheduled end")
    units = catalog.metric("Units", "units")
    platform = catalog.fee_price(catalog.fee("Platform"), "31.00", name="Platform fee")
    units_price = catalog.standard_price(units, "0.01", name="Units")
    plan = catalog.plan([platform, units_price])
    scheduled_customer, patched_customer = customer(merchant_a, "Scheduled End"), customer(merchant_a, "Patched End")
    test_clock = clock(merchant_a, jan1, "scheduled-end")
    scheduled = subscribe(merchant_a, plan.id, scheduled_customer, test_clock, ending_at=ending_at)
    patched = subscribe(merchant_a, plan.id, patched_customer, test_clock)
    assert scheduled.ending_at == ending_at
    for sub in (scheduled, patched):
        pay(merchant_a, invoice_0(merchant_a, sub).id)  # the fee of January, 31.00
    advance(merchant_a, test_clock.id, at("2027-01-20T00:00:00Z"))
    for customer_id in (scheduled_customer, patched_customer):
        usage(merchant_a, units, 1000, at("2027-01-20T00:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, feb1 + HOUR)
    for sub in (scheduled, patched):
        # usage of January 1000 x 0.01 = 10.00 + the fee of February 31.00 = 41.00
        assert_totals(invoices(merchant_a, sub.id)[1], "41.00")

    # PATCH status terminated: the end is now, in clock time (Feb 5 00:00)
    advance(merchant_a, test_clock.id, patched_at)
    usage(merchant_a, units, 3000, at("2027-02-04T12:00:00Z"), subject=patched_customer)
    usage(merchant_a, units, 3000, at("2027-02-04T12:00:00Z"), subject=scheduled_customer)
    ended = merchant_a.sdk.subscriptions.update_subscription(id=patched.id, status="terminated", timeout_ms=120_000)
    assert (ended.status, ended.terminated_at) == ("terminated", patched_at)
    assert merchant_a.sdk.subscriptions.get(id=scheduled.id).status == "active"

    # the scheduled end is reached by the clock
    advance(merchant_a, test_clock.id, ending_at)
    fetched = merchant_a.sdk.subscriptions.get(id=scheduled.id)
    assert (fetched.status, fetched.terminated_at) == ("terminated", ending_at)
    assert statuses(merchant_a, scheduled.id) == [(0, "PAID"), (1, "ISSUED"), (2, "CLOSING")]
    advance(merchant_a, test_clock.id, at("2027-02-12T00:00:00Z"))
    usage(merchant_a, units, 300, at("2027-02-11T00:00:00Z"), subject=scheduled_customer)  # after the end: not billed
    advance(merchant_a, test_clock.id, at("2027-04-01T02:00:00Z"))

    # scheduled: usage [Feb 1, Feb 10 12:00) 3000 x 0.01 = 30.00
    #   credit [Feb 10 12:00, Mar 1) = 18.5 d = 1,598,400 s of February's 2,419,200 s:
    #   31.00 x 1598400 / 2419200 = 20.482142857... -> -20.48;  30.00 - 20.48 = 9.52
    #   (exact cumulative 31 + 41 + 9.517857... = 81.517857 -> 81.52 = billed: no carry line)
    final = invoices(merchant_a, scheduled.id)[2]
    assert_issued(final, sequence=2, issued_at=ending_at + HOUR, due_at=at("2027-02-10T00:00:00Z"), grace_end=ending_at + HOUR)
    assert_lines(
        final,
        [
            Line("Units", "30.00", start=feb1, end=ending_at, quantity="3000", payment_term="in_arrears", price_id=units_price),
            Line(ANY, "-20.48", kind="credit", start=ending_at, end=mar1, price_id=platform),
        ],
    )
    assert_totals(final, "9.52")
    # patched: usage [Feb 1, Feb 5) 3000 x 0.01 = 30.00
    #   credit [Feb 5, Mar 1) = 24 d of 28 d: 31.00 x 24 / 28 = 26.571428... -> -26.57;  30.00 - 26.57 = 3.43
    patched_final = invoices(merchant_a, patched.id)[2]
    assert_issued(patched_final, sequence=2, issued_at=patched_at + HOUR, due_at=patched_at, grace_end=patched_at + HOUR)
    assert_lines(
        patched_final,
        [
            Line("Units", "30.00", start=feb1, end=patched_at, quantity="3000", payment_term="in_arrears", price_id=units_price),
            Line(ANY, "-26.57", kind="credit", start=patched_at, end=mar1, price_id=platform),
        ],
    )
    assert_totals(patched_final, "3.43")
    # and nothing after the final invoices
    assert statuses(merchant_a, scheduled.id) == [(0, "PAID"), (1, "ISSUED"), (2, "ISSUED")]
    assert statuses(merchant_a, patched.id) == [(0, "PAID"), (1, "ISSUED"), (2, "ISSUED")]


# --- Backdated starts --------------------------------------------------------------------------


def test_a_backdated_start_with_elapsed_period_billing_none_bills_from_creation(merchant_a: MerchantClient) -> None:
    feb1, apr1, may1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (2, 4, 5))
    created_at = at("2027-03-15T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Backdated none")
    units = catalog.metric("Units", "units")
    platform = catalog.fee_price(catalog.fee("Platform"), "31.00", name="Platform fee")
    units_price = catalog.standard_price(units, "0.01", name="Units")
    plan = catalog.plan([platform, units_price])
    customer_id = customer(merchant_a, "Late Starter")
    test_clock = clock(merchant_a, created_at, "backdated-none")

    sub = subscribe(merchant_a, plan.id, customer_id, test_clock, started_at=feb1, elapsed_period_billing="none")

    # started 42 days before creation: the grid keeps the start, billing starts at creation
    assert (sub.started_at, sub.billing_anchor, sub.billing_starts_at, sub.elapsed_period_billing) == (feb1, feb1, created_at, "none")
    assert sub.status == "pending_payment"
    # Invoice 0: the fee of the current period [Mar 1, Apr 1) from creation: [Mar 15, Apr 1) = 17 d of 31 d
    #   31.00 x 1,468,800 s / 2,678,400 s = 17.00; nothing for February
    assert isinstance(sub.payment, models.PaymentPending)
    assert sub.payment.amount == "17.00"
    first = invoice_0(merchant_a, sub)
    assert_issued(first, sequence=0, issued_at=created_at, due_at=created_at)
    assert_lines(first, [Line("Platform fee", "17.00", start=created_at, end=apr1, payment_term="in_advance", price_id=platform)])
    assert_totals(first, "17.00")
    pay(merchant_a, first.id)

    advance(merchant_a, test_clock.id, at("2027-03-20T00:00:00Z"))
    usage(merchant_a, units, 500, at("2027-03-20T00:00:00Z"), subject=customer_id)
    advance(merchant_a, test_clock.id, apr1 + HOUR)
    # the grid continues at its boundary 2 (Apr 1): usage [Mar 15, Apr 1) 500 x 0.01 = 5.00 + fee [Apr 1, May 1) 31.00
    assert statuses(merchant_a, sub.id) == [(0, "PAID"), (2, "ISSUED"), (3, "ACTIVE")]
    renewal = invoices(merchant_a, sub.id)[1]
    assert_issued(renewal, sequence=2, issued_at=apr1 + HOUR, due_at=apr1, grace_end=apr1 + HOUR)
    assert_lines(
        renewal,
        [
            Line("Units", "5.00", start=created_at, end=apr1, quantity="500", payment_term="in_arrears", price_id=units_price),
            Line("Platform fee", "31.00", start=apr1, end=may1, payment_term="in_advance", price_id=platform),
        ],
    )
    assert_totals(renewal, "36.00")


def test_a_backdated_start_with_per_period_bills_every_elapsed_period_on_invoice_0(merchant_a: MerchantClient) -> None:
    jan1, feb1, mar1, apr1, may1 = (at(f"2027-{m:02d}-01T00:00:00Z") for m in (1, 2, 3, 4, 5))
    created_at = at("2027-03-15T00:00:00Z")
    catalog = Catalog.create(merchant_a, "Backdated per period")
    platform = catalog.fee_price(catalog.fee("Platform"), "31.00", name="Platform fee")
    support = catalog.fee_price(catalog.fee("Support"), "10.00", name="Support", payment_term="in_arrears")
    plan = catalog.plan([platform, support])
    test_clock = clock(merchant_a, created_at, "backdated-per-period")

    sub = subscribe(merchant_a, plan.id, customer(merchant_a, "Catch Up"), test_clock, started_at=jan1, elapsed_period_billing="per_period")

    assert (sub.started_at, sub.billing_anchor, sub.billing_starts_at, sub.elapsed_period_billing) == (jan1, jan1, jan1, "per_period")
    # Invoice 0 bills every elapsed period up to the current one ([Mar 1, Apr 1) holds the creation):
    #   Platform fee in advance for January, February, March: 3 x 31.00 = 93.00
    #   Support in arrears for January and February:          2 x 10.00 = 20.00   -> 113.00
    assert isinstance(sub.payment, models.PaymentPending)
    assert sub.payment.amount == "113.00"
    first = invoice_0(merchant_a, sub)
    assert_issued(first, sequence=0, issued_at=created_at, due_at=created_at)
    assert_lines(
        first,
        [
            Line("Platform fee", "31.00", start=jan1, end=feb1, payment_term="in_advance", price_id=platform),
            Line("Platform fee", "31.00", start=feb1, end=mar1, payment_term="in_advance", price_id=platform),
            Line("Platform fee", "31.00", start=mar1, end=apr1, payment_term="in_advance", price_id=platform),
            Line("Support", "10.00", start=jan1, end=feb1, payment_term="in_arrears", price_id=support),
            Line("Support", "10.00", start=feb1, end=mar1, payment_term="in_arrears", price_id=support),
        ],
    )
    assert_totals(first, "113.00")
    assert (first.time("periodStart"), first.time("periodEnd")) == (jan1, apr1)
    pay(merchant_a, first.id)

    advance(merchant_a, test_clock.id, apr1 + HOUR)
    # the grid continues with invoice 3 at Apr 1: Support for March 10.00 + Platform fee for April 31.00 = 41.00
    assert statuses(merchant_a, sub.id) == [(0, "PAID"), (3, "ISSUED"), (4, "ACTIVE")]
    renewal = invoices(merchant_a, sub.id)[1]
    assert_issued(renewal, sequence=3, issued_at=apr1 + HOUR, due_at=apr1)
    assert_lines(
        renewal,
        [
            Line("Support", "10.00", start=mar1, end=apr1, payment_term="in_arrears", price_id=support),
            Line("Platform fee", "31.00", start=apr1, end=may1, payment_term="in_advance", price_id=platform),
        ],
    )
    assert_totals(renewal, "41.00")

    # more than 12 months back is refused with per_period
    too_old = httpx.post(
        f"{merchant_a.base_url}/v0/subscriptions",
        json={"name": "Too old", "planId": plan.id, "customerId": customer(merchant_a, "Too Old"), "testClockId": test_clock.id,
              "startedAt": "2026-03-01T00:00:00Z", "elapsedPeriodBilling": "per_period"},
        headers=merchant_a.headers, timeout=60,
    )  # fmt: skip
    assert too_old.status_code == 400, too_old.text
    assert too_old.json().get("details", {}).get("field") == "startedAt", too_old.text


# --- Metering's external subjects --------------------------------------------------------------


def test_usage_sent_for_an_external_id_before_the_customer_existed_is_billed_to_it(merchant_a: MerchantClient) -> None:
    # Before the customer exists no clock is known for it, so the event is bounded by real
    # time: this clock starts three days back, at a midnight, instead of a fixed instant.
    t0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    b1 = add_months(t0, 1)
    catalog = Catalog.create(merchant_a, "External subject")
    tokens = catalog.metric()
    price = catalog.standard_price(tokens, "0.01", name="Tokens")
    plan = catalog.plan([price])
    external_id = f"crm-{uuid.uuid4().hex[:10]}"

    usage(merchant_a, tokens, 700, t0 + timedelta(hours=2), external_subject=external_id)
    customer_id = customer(merchant_a, "Known Later", external_id=external_id)
    test_clock = clock(merchant_a, t0, "external-subject")
    sub = subscribe(merchant_a, plan.id, customer_id, test_clock)
    # metering's external-subject map attributes the earlier event to the new customer
    assert eventually(lambda: metered(merchant_a, tokens, customer_id, t0, b1), "700") == "700"

    advance(merchant_a, test_clock.id, t0 + timedelta(days=1))
    usage(merchant_a, tokens, 300, t0 + timedelta(hours=23), subject=customer_id)
    advance(merchant_a, test_clock.id, b1 + HOUR)
    bill = invoices(merchant_a, sub.id)[1]
    assert_issued(bill, sequence=1, issued_at=b1 + HOUR, due_at=b1)
    # [t0, t0 + 1 month): 700 (by external id) + 300 = 1000 x 0.01 = 10.00
    assert_lines(bill, [Line("Tokens", "10.00", start=t0, end=b1, quantity="1000", payment_term="in_arrears", price_id=price)])
    assert_totals(bill, "10.00")
