"""Billing scenarios through the official SDK, for end-to-end tests in the style of Kill
Bill's beatrix and Lago's scenario specs: build a catalog, a customer and a subscription
on a test clock set at a fixed instant, send usage stamped in clock time, move the clock
across boundaries and grace ends, and read every invoice with its lines.

Every call goes through ``paygentic_sdk`` (so each answer must parse in its models),
except two the SDK cannot make: creating graduated and package prices (its write enum
has only standard and volume) and reading Accrue's own line fields (``kind``,
``quantityDecimal``, ``correctsPeriodStart``/``End``), which its models drop. Those two
go over plain REST with the same key; an invoice is read both ways (:class:`Bill`).

Expected lines are written as :class:`Line` and compared field by field, as strings:
money is a decimal string in major units rounded to the cent ("17927.99"), never a float.
"""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import httpx
from paygentic_sdk import Paygentic, models

from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient

# Creating a subscription makes Invoice 0, an advance runs every boundary in between:
# both answer only when that work is done, which takes longer than the SDK's default.
TIMEOUT_MS: Final = 120_000


class _Any:
    """Matches anything: a line field the scenario does not pin down."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final[Any] = _Any()


def at(text: str) -> datetime:
    """An instant from its ISO text ("2027-01-31T00:00:00Z"), always in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` + ``months`` months on the grid's rule: the anchor's day of month, or the
    month's last day where it has none (Jan 31 -> Feb 28/29 -> Mar 31)."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    return anchor.replace(year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1]))


def new_merchant(mesh: Mesh, name: str) -> MerchantClient:
    """A merchant of its own (invoice numbers are gapless per merchant: a scenario that
    checks them must be the only one issuing)."""
    merchant_id, api_key = mesh.create_merchant(name)
    sdk = Paygentic(bearer_auth=api_key, server_url=mesh.gateway_url)
    return MerchantClient(merchant_id, api_key, sdk, mesh.gateway_url)


# ---------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    id: str
    event_type: str
    name: str
    unit: str


@dataclass
class Catalog:
    """A product and what a scenario prices under it."""

    client: MerchantClient
    product_id: str

    @classmethod
    def create(cls, client: MerchantClient, name: str) -> Catalog:
        product = client.sdk.products.create(merchant_id=client.merchant_id, name=name, description=f"{name} (scenario)")
        return cls(client, product.id)

    def metric(self, name: str = "Tokens", unit: str = "tokens") -> Metric:
        """A SUM metric of ``$.value`` on an event type of its own."""
        event_type = f"scenario.{uuid.uuid4().hex[:12]}"
        created = self.client.sdk.billable_metrics.create(
            merchant_id=self.client.merchant_id, product_id=self.product_id, name=name, description=f"{name} used",
            unit=unit, aggregation="SUM", event_type=event_type, value_property="$.value",
        )  # fmt: skip
        return Metric(created.id, event_type, name, unit)

    def fee(self, name: str) -> str:
        created = self.client.sdk.fees.create(merchant_id=self.client.merchant_id, product_id=self.product_id, name=name, description=name)
        return str(created.id)

    def fee_price(
        self, fee_id: str, unit_price: str, *, name: str, payment_term: str = "in_advance", cadence: str = "P1M", quantity: int = 1
    ) -> str:
        created = self.client.sdk.prices.create(
            invoice_display_name=name, payment_term=payment_term, model="standard", fee_id=fee_id, billing_cadence=cadence,
            quantity=quantity, properties=models.StandardPriceProperties(unit_price=unit_price),
        )  # fmt: skip
        assert created.properties.unit_price == unit_price
        return str(created.id)

    def standard_price(self, metric: Metric, unit_price: str, *, name: str) -> str:
        created = self.client.sdk.prices.create(
            invoice_display_name=name, payment_term="in_arrears", model="standard", billable_metric_id=metric.id,
            properties=models.StandardPriceProperties(unit_price=unit_price),
        )  # fmt: skip
        return str(created.id)

    def volume_price(self, metric: Metric, tiers: Sequence[tuple[str | None, str]], *, name: str) -> str:
        created = self.client.sdk.prices.create(
            invoice_display_name=name, payment_term="in_arrears", model="volume", billable_metric_id=metric.id,
            properties=models.VolumePriceProperties(tiers=[models.VolumeTier(up_to=up_to, unit_price=price) for up_to, price in tiers]),
        )  # fmt: skip
        return str(created.id)

    def rest_price(self, metric: Metric, model: str, properties: dict[str, Any], *, name: str) -> str:
        """Accrue's graduated and package models (not in the SDK's write enum), read back
        through the SDK."""
        body = {
            "invoiceDisplayName": name,
            "paymentTerm": "in_arrears",
            "model": model,
            "billableMetricId": metric.id,
            "properties": properties,
        }
        created = httpx.post(f"{self.client.base_url}/v0/prices", json=body, headers=self.client.headers, timeout=30)
        assert created.status_code == 201, created.text
        price_id = str(created.json()["id"])
        assert self.client.sdk.prices.get(id=price_id).model == model
        return price_id

    def plan(
        self,
        prices: Iterable[str],
        *,
        name: str = "Scenario plan",
        currency: str = "USD",
        tax_rate: float = 0,
        tax_behavior: str = "exclusive",
    ) -> models.Plan:
        plan: models.Plan = self.client.sdk.plans.create(
            merchant_id=self.client.merchant_id, product_id=self.product_id, name=name, currency=currency, billing_cadence="P1M",
            prices=list(prices), default_tax_rate=tax_rate, tax_behavior=tax_behavior,
        )  # fmt: skip
        return plan


# ---------------------------------------------------------------------------------------
# Customers, clocks, subscriptions, usage
# ---------------------------------------------------------------------------------------


def customer(client: MerchantClient, name: str, *, external_id: str | None = None, tax_rates: dict[str, float] | None = None) -> str:
    suffix = uuid.uuid4().hex[:10]
    created = client.sdk.customers.create(
        merchant_id=client.merchant_id,
        external_id=external_id,
        tax_rates=tax_rates,
        consumer={
            "name": name,
            "email": f"billing+{suffix}@scenario.test",
            "address": {"line1": "1 Market St", "city": "San Francisco", "state": "CA", "zip_code": "94105", "country": "US"},
        },
    )
    return str(created.customer_id)


def clock(client: MerchantClient, current_time: datetime, name: str) -> models.TestClock:
    created: models.TestClock = client.sdk.test_clocks.create(merchant_id=client.merchant_id, name=name, current_time=current_time)
    assert created.current_time == current_time
    return created


def subscribe(client: MerchantClient, plan_id: str, customer_id: str, test_clock: models.TestClock, **options: Any) -> models.Subscription:
    """A subscription on the clock, started at the clock's time unless ``started_at`` is given."""
    options.setdefault("started_at", test_clock.current_time)
    created: models.Subscription = client.sdk.subscriptions.create(
        name="Scenario subscription",
        plan_id=plan_id,
        customer_id=customer_id,
        test_clock_id=test_clock.id,
        timeout_ms=TIMEOUT_MS,
        **options,
    )
    return created


def advance(client: MerchantClient, clock_id: str, to: datetime) -> models.TestClock:
    """Move the clock to ``to``; it answers when the work due in between is done."""
    moved: models.TestClock = client.sdk.test_clocks.advance(
        id=clock_id, request_body=models.AdvanceTestClockRequestBody1(current_time=to), timeout_ms=TIMEOUT_MS
    )
    assert moved.current_time == to
    return moved


def advance_by(client: MerchantClient, clock_id: str, duration: str) -> models.TestClock:
    moved: models.TestClock = client.sdk.test_clocks.advance(
        id=clock_id, request_body=models.AdvanceTestClockRequestBody2(advance_by=duration), timeout_ms=TIMEOUT_MS
    )
    return moved


def usage(
    client: MerchantClient,
    metric: Metric,
    value: int | str,
    when: datetime,
    *,
    subject: str | None = None,
    external_subject: str | None = None,
) -> str:
    """One meter event of ``value`` stamped ``when`` (clock time) for a customer id or an
    external id; the id of the accepted event."""
    request: dict[str, Any] = {
        "type": metric.event_type,
        "source": "https://scenario.test",
        "data": {"value": value},
        "timestamp": when,
        "idempotencyKey": f"usage-{uuid.uuid4().hex}",
    }
    if subject is not None:
        request["subject"] = subject
    if external_subject is not None:
        request["externalSubject"] = external_subject
    accepted = client.sdk.events.ingest(request=request)
    assert accepted.id is not None
    return str(accepted.id)


def metered(client: MerchantClient, metric: Metric, subject: str, start: datetime, end: datetime) -> str:
    """Metering's total of the metric for the subject over [start, end), as a decimal string."""
    params = {"from": start.isoformat(), "to": end.isoformat(), "subject": subject}
    response = httpx.get(f"{client.base_url}/v0/billableMetrics/{metric.id}/meter", params=params, headers=client.headers, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["totalValueDecimal"])


# ---------------------------------------------------------------------------------------
# Invoices
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bill:
    """One invoice as the SDK parses it (``model``) and as the JSON says it (``raw``, with
    Accrue's own line fields), both read with ``expand=lineItems``."""

    model: models.Invoice
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def status(self) -> str:
        return str(self.raw["status"])

    @property
    def sequence(self) -> int:
        return int(self.raw["sequenceNumber"])

    @property
    def lines(self) -> list[dict[str, Any]]:
        items = self.raw.get("lineItems") or {}
        lines: list[dict[str, Any]] = items.get("lineItems", [])
        return lines

    def time(self, name: str) -> datetime | None:
        value = self.raw.get(name)
        return None if value is None else at(value)


def invoice(client: MerchantClient, invoice_id: str) -> Bill:
    model = client.sdk.invoices_v2.get(id=invoice_id, expand="lineItems")
    response = httpx.get(f"{client.base_url}/v2/invoices/{invoice_id}", params={"expand": "lineItems"}, headers=client.headers, timeout=30)
    assert response.status_code == 200, response.text
    return Bill(model, response.json())


def invoice_0(client: MerchantClient, subscription: models.Subscription) -> Bill:
    """Invoice 0, as the subscription's ``payment`` names it."""
    payment = subscription.payment
    assert isinstance(payment, (models.PaymentPending, models.PaymentPaid, models.PaymentAwaitingApproval)), payment
    assert payment.invoice_id is not None
    return invoice(client, payment.invoice_id)


def invoices(client: MerchantClient, subscription_id: str) -> list[Bill]:
    """Every invoice of the subscription, by sequence number, each with its lines."""
    listed = client.sdk.invoices_v2.list(request={"subscription_id": subscription_id, "limit": 100})
    assert all(item.subscription_id == subscription_id for item in listed.data)
    bills = [invoice(client, item.id) for item in listed.data]
    return sorted(bills, key=lambda bill: bill.sequence)


def statuses(client: MerchantClient, subscription_id: str) -> list[tuple[int, str]]:
    """(sequenceNumber, status) of every invoice of the subscription, in order."""
    listed = client.sdk.invoices_v2.list(request={"subscription_id": subscription_id, "limit": 100})
    return sorted((int(item.sequence_number), str(item.status)) for item in listed.data)


def pay(client: MerchantClient, invoice_id: str) -> models.Invoice:
    """Record an out-of-band payment; the invoice as it answers."""
    result = client.sdk.invoices_v2.record_invoice_payment(
        id=invoice_id, method="out_of_band", reason="Wire received", timeout_ms=TIMEOUT_MS
    )
    assert isinstance(result, models.OutOfBandPaymentResult), result
    paid: models.Invoice = result.invoice
    return paid


# ---------------------------------------------------------------------------------------
# Expected lines
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """An expected invoice line. Money in decimal strings as the wire shows them; ``ANY``
    where the scenario does not pin the field. ``total_amount`` defaults to
    ``total_price`` + ``total_tax``."""

    name: str
    total_price: str
    kind: str = "charge"
    start: datetime | None = ANY
    end: datetime | None = ANY
    quantity: str = ANY
    unit_price: str = ANY
    payment_term: str | None = ANY
    source_id: str = ANY
    price_id: str = ANY
    tax_rate: str = "0"
    total_tax: str = "0.00"
    total_amount: str = field(default=ANY)
    corrects: tuple[datetime, datetime] = ANY

    def expected(self) -> dict[str, Any]:
        """The fields to compare (ANY ones left out), numbers in their plain spelling."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if values["total_amount"] is ANY:
            values["total_amount"] = cents(Decimal(self.total_price) + Decimal(self.total_tax))
        for name in ("quantity", "tax_rate"):
            if values[name] is not ANY:
                values[name] = _decimal_text(values[name])
        return {name: value for name, value in values.items() if value is not ANY}


def cents(amount: Decimal) -> str:
    """A cent-exact amount as the wire renders it ("-17927.99", "0.00")."""
    assert amount == amount.quantize(Decimal("0.01")), amount
    return f"{amount.quantize(Decimal('0.01'))}"


def _decimal_text(value: Any) -> str | None:
    """A number or decimal string in its plain normalized spelling ("0.13", "1500")."""
    if value is None:
        return None
    number = Decimal(str(value)).normalize()
    return f"{number:f}"


def _actual(line: dict[str, Any]) -> dict[str, Any]:
    def time(name: str) -> datetime | None:
        value = line.get(name)
        return None if value is None else at(value)

    corrects = None
    if line.get("correctsPeriodStart") is not None:
        corrects = (at(line["correctsPeriodStart"]), at(line.get("correctsPeriodEnd") or line["correctsPeriodStart"]))
    return {
        "name": line.get("invoiceDisplayName"),
        "total_price": line.get("totalPrice"),
        "kind": line.get("kind"),
        "start": time("periodStart"),
        "end": time("periodEnd"),
        "quantity": _decimal_text(line.get("quantityDecimal")),
        "unit_price": line.get("unitPrice"),
        "payment_term": line.get("paymentTerm"),
        "source_id": line.get("eventSourceId"),
        "price_id": line.get("priceId"),
        "tax_rate": _decimal_text(line.get("taxRate")),
        "total_tax": line.get("totalTax"),
        "total_amount": line.get("totalAmount"),
        "corrects": corrects,
    }


def _sort_key(values: dict[str, Any]) -> tuple[str, str, str]:
    """Kind, window start, amount: what tells lines apart without their names (an expected
    line may leave its name open, as a credit's or a correction's label is the service's)."""
    start = values.get("start")
    return (str(values["kind"]), start.isoformat() if isinstance(start, datetime) else "", str(values["total_price"]))


def assert_lines(bill: Bill, expected: Sequence[Line]) -> None:
    """The invoice has exactly these lines (in any order), each field equal where given."""
    actual = sorted((_actual(line) for line in bill.lines), key=_sort_key)
    wanted = sorted((line.expected() for line in expected), key=_sort_key)
    shown = "\n".join(f"  {line}" for line in actual)
    assert len(actual) == len(wanted), f"invoice {bill.sequence} has {len(actual)} lines, expected {len(wanted)}:\n{shown}"
    for got, want in zip(actual, wanted, strict=True):
        assert {name: got[name] for name in want} == want, (
            f"invoice {bill.sequence}, line {want.get('name', want['kind'])!r}; all lines:\n{shown}"
        )
    assert bill.raw["itemCount"] == len(expected)
    sdk_lines = bill.model.line_items.line_items if isinstance(bill.model.line_items, models.InvoiceLineItems) else []
    assert sorted(line.total_amount for line in sdk_lines) == sorted(line["totalAmount"] for line in bill.lines)


def assert_totals(bill: Bill, subtotal: str, total_tax: str = "0.00") -> None:
    """Subtotal and tax as given, grand total their sum, each equal to the sum of the lines."""
    grand = cents(Decimal(subtotal) + Decimal(total_tax))
    got = (bill.raw["subtotal"], bill.raw["totalTax"], bill.raw["grandTotal"])
    assert got == (subtotal, total_tax, grand), f"invoice {bill.sequence}: {got}"
    assert cents(sum((Decimal(line["totalPrice"]) for line in bill.lines), Decimal(0))) == subtotal
    assert cents(sum((Decimal(line["totalTax"]) for line in bill.lines), Decimal(0))) == total_tax
    assert cents(sum((Decimal(line["totalAmount"]) for line in bill.lines), Decimal(0))) == grand
    assert (bill.model.subtotal, bill.model.total_tax, bill.model.grand_total) == got


def assert_issued(bill: Bill, *, sequence: int, issued_at: datetime, due_at: datetime, grace_end: datetime | None = None) -> None:
    """An issued invoice: its number, issue time and due date in clock time."""
    assert bill.sequence == sequence
    assert bill.status in ("ISSUED", "PAID"), bill.status
    assert bill.raw.get("invoiceNumber"), bill.raw
    assert (bill.time("issuedAt"), bill.time("dueAt")) == (issued_at, due_at)
    if grace_end is not None:
        assert bill.time("gracePeriodEnd") == grace_end
