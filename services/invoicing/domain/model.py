"""The invoicing service's aggregate: the Invoice, its state machine, its stored lines,
what it billed (for later credits and corrections), credit notes and numbering.

An invoice is made by the billing engine (the subscription service's timeline) in
three steps, each idempotent by (subscription, sequence number)::

    OpenInvoice  -> ACTIVE    accruing; GET shows live estimated totals
    CloseInvoice -> CLOSING   the period ended; late usage is taken until grace_period_end
    IssueInvoice -> ISSUED    calculated, numbered (gapless per merchant), dueAt set
                 -> PAID      at once when nothing is owed (total 0)
    RecordInvoicePayment (out_of_band): ISSUED | PAYMENT_FAILED -> PAID
    RecordChargeOutcome succeeded:      ISSUED | PAYMENT_FAILED -> PAID
    RecordChargeOutcome failed:         ISSUED | PAYMENT_FAILED -> PAYMENT_FAILED (PAID stays PAID)

An issued invoice with something owed has a checkout session of the payment service
(``payment_session_id``, ``payment_url``), opened in the issuing transaction; hosted_link
replaces it. A PAID invoice may be refunded in full, once at a time: a credit note of kind
refund (``CreditNote``), ISSUED until voided; the invoice stays PAID.

Invoice 0 is opened and issued at once (ACTIVE -> ISSUED: it has nothing in arrears).
A step repeated on an invoice already past it answers the invoice unchanged.

An ad-hoc invoice (``purpose`` grant_purchase, outside any timeline; ``Invoice.ad_hoc``)
is issued at once with its given lines, one per (merchant, purpose, reference), and is
paid like any issued invoice. Timeline invoices have purpose ``subscription``.

Attribute names are the stored column names (store.py builds an Invoice from a row).
Pure: no SQLAlchemy, gRPC or NATS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any

from libs.core.domain import Aggregate, DomainEvent
from libs.core.errors import FailedPrecondition, InvalidArgument, Unprocessable
from libs.core.ids import new_id
from libs.core.money import ATOMIC_PLACES, ROUNDING_MODE, currency_exponent, exact_context, format_major, parse_decimal, round_half_up
from services.invoicing.domain.calculation import (
    PROVENANCE_VERSION,
    Composition,
    InvoiceCalculation,
    Line,
    TaxSettings,
    Window,
    exact_decimal,
)


class Status(StrEnum):
    ACTIVE = "ACTIVE"
    CLOSING = "CLOSING"
    ISSUED = "ISSUED"
    PAID = "PAID"
    PAYMENT_FAILED = "PAYMENT_FAILED"


class Purpose(StrEnum):
    """What an invoice is for (Invoice.purpose)."""

    SUBSCRIPTION = "subscription"  # the subscription's timeline (the engine's steps)
    GRANT_PURCHASE = "grant_purchase"  # an entitlement grant bought (ad hoc)


AD_HOC_PURPOSES = frozenset({Purpose.GRANT_PURCHASE.value})

OPEN_STATUSES = frozenset({Status.ACTIVE, Status.CLOSING})
PAYABLE_STATUSES = frozenset({Status.ISSUED, Status.PAYMENT_FAILED})


class ChangeKind(StrEnum):
    """What InvoiceChanged says happened (invoicing_events.proto InvoiceChangeKind)."""

    ISSUED = "issued"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    VOIDED = "voided"
    REFUNDED = "refunded"
    REFUND_VOIDED = "refund_voided"


class CreditNoteKind(StrEnum):
    """Why a credit note exists."""

    BALANCE = "balance"  # the part of a final invoice below zero
    REFUND = "refund"  # a PAID invoice refunded in full


class CreditNoteStatus(StrEnum):
    ISSUED = "ISSUED"
    VOIDED = "VOIDED"


# Invoice 0's checkout lives this long unless the subscription says otherwise
# (sessionExpiryMinutes); every other invoice's link 30 days (reference 3.6)
DEFAULT_SESSION_EXPIRY_MINUTES = 240
INVOICE_LINK_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class InvoiceChanged(DomainEvent):
    """An invoice was issued or paid; rendered as it is at commit (events.py)."""

    kind: ChangeKind
    invoice_id: str
    merchant_id: str
    effective_time: datetime


# --- billing terms and composition (the engine's inputs, stored as JSON) ---------------


@dataclass(frozen=True)
class Terms:
    """The subscription an invoice bills, as the engine sent it (BillingTerms)."""

    subscription_id: str
    customer_id: str
    plan_id: str
    plan_version_id: str
    currency: str
    billing_anchor: datetime | None = None
    billing_cadence: str = ""
    payment_term_days: int = 0
    tax_exempt: bool = False
    customer_tax_rates: Mapping[str, str] = field(default_factory=dict)
    test_clock_id: str | None = None
    tax_behavior: str = "exclusive"
    default_tax_rate: str = "0"
    auto_approve: bool = True
    plan_version_number: int = 0
    # collection (issue 11): charged off-session at issue; Invoice 0's checkout redirects
    # and lifetime
    auto_charge: bool = False
    success_redirect_url: str | None = None
    failure_redirect_url: str | None = None
    session_expiry_minutes: int | None = None

    def check(self) -> Terms:
        for name, value in (
            ("terms.subscriptionId", self.subscription_id),
            ("terms.customerId", self.customer_id),
            ("terms.planId", self.plan_id),
            ("terms.planVersionId", self.plan_version_id),
            ("terms.currency", self.currency),
        ):
            if not value:
                raise InvalidArgument(name, f"{name} is required", reason="REQUIRED")
        if self.payment_term_days < 0:
            raise InvalidArgument("terms.paymentTermDays", "terms.paymentTermDays must not be negative", reason="OUT_OF_RANGE")
        if self.tax_behavior not in ("exclusive", "inclusive"):
            raise InvalidArgument("terms.taxBehavior", "terms.taxBehavior must be exclusive or inclusive", reason="INVALID_ENUM_VALUE")
        if self.session_expiry_minutes is not None and self.session_expiry_minutes < 1:
            raise InvalidArgument("terms.sessionExpiryMinutes", "terms.sessionExpiryMinutes must be 1 or more", reason="OUT_OF_RANGE")
        self.tax_settings()  # the rates parse
        return self

    def tax_settings(self) -> TaxSettings:
        def rate(text: str, name: str) -> Decimal:
            try:
                value = Decimal(text or "0")
            except ArithmeticError:
                raise InvalidArgument(name, f"{name} must be a decimal percent, got {text!r}", reason="INVALID_DECIMAL") from None
            if not value.is_finite() or value < 0:
                raise InvalidArgument(name, f"{name} must be a finite percent of 0 or more, got {text!r}", reason="INVALID_DECIMAL")
            return value

        return TaxSettings(
            behavior="inclusive" if self.tax_behavior == "inclusive" else "exclusive",
            default_rate=rate(self.default_tax_rate, "terms.defaultTaxRate"),
            customer_rates={key: rate(value, f"terms.customerTaxRates.{key}") for key, value in self.customer_tax_rates.items()},
            exempt=self.tax_exempt,
            plan_id=self.plan_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "subscriptionId": self.subscription_id,
            "customerId": self.customer_id,
            "planId": self.plan_id,
            "planVersionId": self.plan_version_id,
            "planVersionNumber": self.plan_version_number,
            "currency": self.currency,
            "billingAnchor": _iso(self.billing_anchor),
            "billingCadence": self.billing_cadence,
            "paymentTermDays": self.payment_term_days,
            "taxExempt": self.tax_exempt,
            "customerTaxRates": dict(self.customer_tax_rates),
            "testClockId": self.test_clock_id,
            "taxBehavior": self.tax_behavior,
            "defaultTaxRate": self.default_tax_rate,
            "autoApprove": self.auto_approve,
            "autoCharge": self.auto_charge,
            "successRedirectUrl": self.success_redirect_url,
            "failureRedirectUrl": self.failure_redirect_url,
            "sessionExpiryMinutes": self.session_expiry_minutes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Terms:
        return cls(
            subscription_id=data["subscriptionId"],
            customer_id=data["customerId"],
            plan_id=data["planId"],
            plan_version_id=data["planVersionId"],
            plan_version_number=int(data.get("planVersionNumber") or 0),
            currency=data["currency"],
            billing_anchor=_parse_iso(data.get("billingAnchor")),
            billing_cadence=data.get("billingCadence", ""),
            payment_term_days=int(data.get("paymentTermDays", 0)),
            tax_exempt=bool(data.get("taxExempt", False)),
            customer_tax_rates=dict(data.get("customerTaxRates") or {}),
            test_clock_id=data.get("testClockId"),
            tax_behavior=data.get("taxBehavior", "exclusive"),
            default_tax_rate=data.get("defaultTaxRate", "0"),
            auto_approve=bool(data.get("autoApprove", True)),
            auto_charge=bool(data.get("autoCharge", False)),
            success_redirect_url=data.get("successRedirectUrl"),
            failure_redirect_url=data.get("failureRedirectUrl"),
            session_expiry_minutes=None if data.get("sessionExpiryMinutes") is None else int(data["sessionExpiryMinutes"]),
        )


@dataclass(frozen=True)
class Layout:
    """What an invoice bills (the engine's InvoiceComposition): the calculation's
    Composition, and whether it is the subscription's final invoice."""

    composition: Composition
    final: bool = False

    def check(self) -> Layout:
        for kind, windows in (
            ("arrears", self.composition.arrears),
            ("advance", self.composition.advance),
            ("credits", self.composition.credits),
        ):
            for index, w in enumerate(windows):
                here = f"composition.{kind}[{index}]"
                if not (w.period_start <= w.start < w.end <= w.period_end) and not (w.start == w.end):
                    raise InvalidArgument(
                        here, f"{here}: the window [{w.start}, {w.end}) must lie inside its period [{w.period_start}, {w.period_end})",
                        reason="INVALID_WINDOW",
                    )  # fmt: skip
        return self

    def windows(self) -> list[Window]:
        c = self.composition
        return [*c.arrears, *c.advance, *c.credits]

    def span(self, fallback: datetime) -> tuple[datetime, datetime]:
        """The union of its windows (periodStart, periodEnd); an invoice of one-time fees only: [fallback, fallback)."""
        windows = self.windows()
        if not windows:
            return fallback, fallback
        return min(w.start for w in windows), max(w.end for w in windows)

    def to_json(self) -> dict[str, Any]:
        c = self.composition
        return {
            "arrears": [window_json(w) for w in c.arrears],
            "advance": [window_json(w) for w in c.advance],
            "credits": [window_json(w) for w in c.credits],
            "oneTimeFees": c.one_time_fees,
            "final": self.final,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        return cls(
            Composition(
                arrears=[window_of(w) for w in data.get("arrears", [])],
                advance=[window_of(w) for w in data.get("advance", [])],
                credits=[window_of(w) for w in data.get("credits", [])],
                one_time_fees=bool(data.get("oneTimeFees", False)),
            ),
            final=bool(data.get("final", False)),
        )


def window_json(w: Window) -> dict[str, Any]:
    return {
        "start": _iso(w.start),
        "end": _iso(w.end),
        "periodStart": _iso(w.period_start),
        "periodEnd": _iso(w.period_end),
        "periodIndex": w.period_index,
    }


def window_of(data: Mapping[str, Any]) -> Window:
    return Window(
        start=_required_iso(data["start"]),
        end=_required_iso(data["end"]),
        period_start=_required_iso(data["periodStart"]),
        period_end=_required_iso(data["periodEnd"]),
        period_index=int(data["periodIndex"]),
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _parse_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _required_iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- stored lines, billed rows, credit notes -------------------------------------------


@dataclass(frozen=True)
class InvoiceLine:
    """One stored line of an issued invoice: the calculation's Line, with its identity,
    position and the labels of its metric."""

    id: str
    invoice_id: str
    position: int
    line: Line
    metric_name: str = ""
    metric_unit: str = ""
    metric_description: str = ""


@dataclass(frozen=True)
class CreditNote:
    """What is owed back to a customer (atomic units, > 0), of one of two kinds:

    * balance: a final invoice whose total came out below zero is issued at zero; the
      rest is this credit note (``amount``, no tax);
    * refund: a PAID invoice refunded in full: ``amount`` its subtotal, ``tax_amount``
      its tax, ``total`` its grand total; ISSUED until voided. ``carry_amount`` is what it
      took off the customer's rounding carry (E and B alike; a void gives it back), and
      ``refunded`` whether money went back through the processor (``provider_refund_ref``).
    """

    id: str
    merchant_id: str
    invoice_id: str
    customer_id: str
    currency: str
    amount: int
    reason: str | None
    created_at: datetime
    kind: str = CreditNoteKind.BALANCE.value
    status: str = CreditNoteStatus.ISSUED.value
    tax_amount: int = 0
    carry_amount: int = 0
    refunded: bool = False
    provider_refund_ref: str | None = None
    voided_at: datetime | None = None
    void_reason: str | None = None

    @property
    def total(self) -> int:
        return self.amount + self.tax_amount

    def void(self, *, reason: str | None, now: datetime) -> CreditNote:
        """VOIDED now (a voided one is answered as it is)."""
        if self.status == CreditNoteStatus.VOIDED:
            return self
        return replace(self, status=CreditNoteStatus.VOIDED.value, voided_at=now, void_reason=reason)


def invoice_number(year: int, sequence: int) -> str:
    """``INV-<year of issue>-<the merchant's counter, 6 digits or more>``. The counter is
    one per merchant, never reset (the year is a label): gapless across years too."""
    return f"INV-{year}-{sequence:06d}"


def due_at(issued_at: datetime, payment_term_days: int) -> datetime:
    """The issue date (UTC) plus Net-X days, at midnight UTC (reference 3.4)."""
    day = issued_at.astimezone(UTC).date() + timedelta(days=payment_term_days)
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


# --- the aggregate ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Invoice(Aggregate):
    merchant_id: str
    subscription_id: str
    customer_id: str
    sequence_number: int
    status: str
    currency: str
    billing_anchor: datetime | None
    billing_cadence: str
    terms: dict[str, Any]
    composition: dict[str, Any]
    grace_period_end: datetime
    period_start: datetime
    period_end: datetime
    test_clock_id: str | None
    auto_approve: bool
    subtotal: int = 0
    total_tax: int = 0
    grand_total: int = 0
    paid_amount: int = 0
    item_count: int = 0
    invoice_number: str | None = None
    issued_at: datetime | None = None
    due_at: datetime | None = None
    paid_at: datetime | None = None
    payment_reason: str | None = None
    failure_reason: str | None = None
    opened_at: datetime
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    purpose: str = Purpose.SUBSCRIPTION.value
    # ad hoc: the purpose's own id (the grant purchase), unique per merchant and purpose
    reference: str | None = None
    # the payment service's checkout session behind paymentUrl (opened at issue)
    payment_session_id: str | None = None
    payment_url: str | None = None
    # retryPayment attempts so far: attempt n's key is "<invoice>:retry:<n>" (1, 2, ...)
    retry_attempts: int = 0
    # the charge attempt (its key) whose success paid it; None: unpaid, paid out of band
    # or at issue (nothing owed). A charge that succeeds for an invoice paid some other
    # way is a duplicate the payment service refunds (it compares its key with this one).
    paid_by_attempt_key: str | None = None

    # --- reading ---

    @property
    def billing_terms(self) -> Terms:
        return Terms.from_json(self.terms)

    @property
    def layout(self) -> Layout:
        return Layout.from_json(self.composition)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def unpaid_amount(self) -> int:
        if self.status in OPEN_STATUSES:
            return 0
        return max(self.grand_total - self.paid_amount, 0)

    @property
    def is_collectable(self) -> bool:
        """Something is owed and can be paid: ISSUED or PAYMENT_FAILED, unpaid > 0."""
        return self.status in PAYABLE_STATUSES and self.unpaid_amount > 0

    @property
    def entity_type(self) -> str:
        """What the payment service calls this payable: subscription (Invoice 0 of a
        timeline), topup (a grant purchase) or invoice."""
        if self.purpose == Purpose.GRANT_PURCHASE:
            return "topup"
        if self.purpose == Purpose.SUBSCRIPTION and self.sequence_number == 0:
            return "subscription"
        return "invoice"

    @property
    def carry_share(self) -> int:
        """What this invoice added to its customer's rounding carry (E and B alike,
        calculation.py): the priced amounts, i.e. the net subtotal when tax is exclusive and
        the gross when it is inclusive. Ad-hoc invoices are outside the carry (0)."""
        if self.purpose != Purpose.SUBSCRIPTION:
            return 0
        return self.grand_total if self.terms.get("taxBehavior") == "inclusive" else self.subtotal

    # --- the engine's steps ---

    @classmethod
    def open(cls, *, merchant_id: str, terms: Terms, sequence_number: int, layout: Layout, at: datetime, now: datetime) -> Invoice:
        """A new ACTIVE invoice k of the subscription (the store keeps one per (subscription, k))."""
        terms.check()
        layout.check()
        if sequence_number < 0:
            raise InvalidArgument("sequenceNumber", "sequenceNumber must be 0 or more", reason="OUT_OF_RANGE")
        start, end = layout.span(at)
        return cls(
            id=new_id("inv"),
            merchant_id=merchant_id,
            subscription_id=terms.subscription_id,
            customer_id=terms.customer_id,
            sequence_number=sequence_number,
            status=Status.ACTIVE.value,
            currency=terms.currency,
            billing_anchor=terms.billing_anchor,
            billing_cadence=terms.billing_cadence,
            terms=terms.to_json(),
            composition=layout.to_json(),
            # until it closes, late usage is taken until its period's end
            grace_period_end=max(end, at),
            period_start=start,
            period_end=end,
            test_clock_id=terms.test_clock_id,
            auto_approve=terms.auto_approve,
            opened_at=at,
            created_at=now,
            updated_at=now,
        )

    @classmethod
    def ad_hoc(
        cls,
        *,
        merchant_id: str,
        customer_id: str,
        currency: str,
        purpose: str,
        reference: str,
        subscription_id: str | None,
        items: Sequence[tuple[str, str, str]],
        at: datetime,
        now: datetime,
        checkout: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Invoice, list[Line]]:
        """An invoice outside any timeline, ISSUED at ``at`` (PAID at once when nothing is
        owed), with its lines: ``items`` are (description, quantity, amount) as decimal
        strings, each amount rounded once, half up, to the currency's minor unit; no tax
        (the amount is the price). Due the day of issue (Net 0, as ``due_at``). The number
        follows (``number``), last in the issuing transaction."""
        if purpose not in AD_HOC_PURPOSES:
            raise InvalidArgument(
                "purpose", f"purpose must be one of {', '.join(sorted(AD_HOC_PURPOSES))}, got {purpose!r}", reason="INVALID_ENUM_VALUE"
            )
        for name, value in (("customerId", customer_id), ("reference", reference)):
            if not value:
                raise InvalidArgument(name, f"{name} is required", reason="REQUIRED")
        currency_exponent(currency)  # INVALID_CURRENCY / UNKNOWN_CURRENCY naming currency
        if not items:
            raise InvalidArgument("lines", "lines must hold at least one line", reason="REQUIRED")
        lines = [_ad_hoc_line(currency, index, *item) for index, item in enumerate(items)]
        terms = Terms(
            subscription_id=subscription_id or "", customer_id=customer_id, plan_id="", plan_version_id="", currency=currency
        ).to_json()
        if checkout:
            terms["checkout"] = dict(checkout)
        subtotal = sum(line.amount for line in lines)
        invoice = cls(
            id=new_id("inv"),
            merchant_id=merchant_id,
            subscription_id=subscription_id or "",
            customer_id=customer_id,
            sequence_number=0,
            status=Status.ISSUED.value,
            currency=currency,
            billing_anchor=None,
            billing_cadence="",
            terms=terms,
            composition=Layout(Composition(arrears=[], advance=[], credits=[], one_time_fees=False)).to_json(),
            grace_period_end=at,
            period_start=at,
            period_end=at,
            test_clock_id=None,
            auto_approve=True,
            subtotal=subtotal,
            total_tax=0,
            grand_total=subtotal,
            item_count=len(lines),
            issued_at=at,
            due_at=due_at(at, 0),
            opened_at=at,
            metadata=dict(metadata or {}),
            created_at=now,
            updated_at=now,
            purpose=purpose,
            reference=reference,
        )
        invoice.record(InvoiceChanged(ChangeKind.ISSUED, invoice.id, merchant_id, at))
        if subtotal == 0:
            invoice.status = Status.PAID.value
            invoice.paid_at = at
            invoice.record(InvoiceChanged(ChangeKind.PAID, invoice.id, merchant_id, at))
        return invoice, lines

    def close(self, *, grace_period_end: datetime, layout: Layout | None, now: datetime) -> bool:
        """ACTIVE -> CLOSING (a CLOSING one may still get a final composition). A repeat
        on an issued invoice changes nothing; a new composition for it is refused.
        Whether anything changed."""
        if not self.is_open:
            if layout is not None and layout.to_json() != self.composition:
                raise FailedPrecondition(
                    "INVOICE_ALREADY_ISSUED",
                    f"invoice {self.id} is {self.status}: its composition can no longer change",
                    metadata={"invoice_id": self.id, "status": self.status},
                )
            return False
        changed = False
        if layout is not None and layout.check().to_json() != self.composition:
            self.composition = layout.to_json()
            self.period_start, self.period_end = layout.span(self.opened_at)
            changed = True
        if self.status != Status.CLOSING or self.grace_period_end != grace_period_end:
            self.status = Status.CLOSING.value
            self.grace_period_end = grace_period_end
            changed = True
        if changed:
            self.updated_at = now
        return changed

    def issue(self, *, calculation: InvoiceCalculation, issued_at: datetime, now: datetime) -> tuple[list[Line], CreditNote | None]:
        """Totals from the calculation, ISSUED (PAID at once when nothing is owed); the
        number follows (``number``), last in the issuing transaction. A total below zero is
        issued as zero: a credit note holds the rest, and a line says so. The lines to store
        and the credit note, if any."""
        if not self.is_open:
            raise FailedPrecondition("INVOICE_ALREADY_ISSUED", f"invoice {self.id} is already {self.status}")
        lines = list(calculation.lines)
        subtotal, total_tax, grand_total = calculation.subtotal, calculation.total_tax, calculation.grand_total
        credit_note: CreditNote | None = None
        if grand_total < 0:
            credit_note = CreditNote(
                id=new_id("crn"),
                merchant_id=self.merchant_id,
                invoice_id=self.id,
                customer_id=self.customer_id,
                currency=self.currency,
                amount=-grand_total,
                reason="the final invoice's total was below zero",
                created_at=now,
            )
            lines.append(credit_note_line(credit_note))
            subtotal += credit_note.amount
            grand_total = 0
        if self.status == Status.ACTIVE:  # Invoice 0 (nothing in arrears) is issued without a grace
            self.grace_period_end = issued_at
        self.subtotal, self.total_tax, self.grand_total = subtotal, total_tax, grand_total
        self.item_count = len(lines)
        self.issued_at = issued_at
        self.due_at = due_at(issued_at, self.billing_terms.payment_term_days)
        self.status = Status.ISSUED.value
        self.updated_at = now
        self.record(InvoiceChanged(ChangeKind.ISSUED, self.id, self.merchant_id, issued_at))
        if grand_total == 0:
            self.status = Status.PAID.value
            self.paid_amount = 0
            self.paid_at = issued_at
            self.record(InvoiceChanged(ChangeKind.PAID, self.id, self.merchant_id, issued_at))
        return lines, credit_note

    def number(self, number: str) -> None:
        """Its invoice number, once: given in the issuing transaction, after everything else,
        so the merchant's counter row is locked for as short a time as can be."""
        if self.is_open or self.invoice_number is not None:
            raise FailedPrecondition("INVOICE_NOT_NUMBERABLE", f"invoice {self.id} is {self.status} and numbered {self.invoice_number}")
        self.invoice_number = number

    # --- payments ---

    def check_payable(self, what: str = "paid") -> None:
        """ISSUED or PAYMENT_FAILED with something unpaid; paid already is a conflict
        (409), any other status cannot be paid (422), nothing unpaid neither (422)."""
        if self.status == Status.PAID:
            raise FailedPrecondition(
                "INVOICE_ALREADY_PAID", f"invoice {self.id} is already paid", metadata={"invoice_id": self.id, "status": self.status}
            )
        if self.status not in PAYABLE_STATUSES:
            # the reference's 422 reason for "not in a payable status"
            raise Unprocessable(
                "INVOICE_NOT_LINKABLE_STATUS",
                f"invoice {self.id} is {self.status}: only ISSUED or PAYMENT_FAILED invoices can be {what}",
                metadata={"invoice_id": self.id, "status": self.status},
            )
        if self.unpaid_amount <= 0:
            raise Unprocessable(
                "INVOICE_NO_BALANCE", f"invoice {self.id} has nothing unpaid", metadata={"invoice_id": self.id, "status": self.status}
            )

    def record_out_of_band_payment(self, *, reason: str | None, now: datetime) -> None:
        """ISSUED or PAYMENT_FAILED -> PAID, the whole amount, now. Paying twice is a
        conflict (409); any other status cannot be paid (422)."""
        self.check_payable()
        self._paid(self.grand_total, at=now, now=now)
        self.payment_reason = reason
        self.paid_by_attempt_key = None

    def _paid(self, amount: int, *, at: datetime, now: datetime) -> None:
        self.status = Status.PAID.value
        self.paid_amount = amount
        self.paid_at = at
        self.failure_reason = None
        self.updated_at = now
        self.record(InvoiceChanged(ChangeKind.PAID, self.id, self.merchant_id, at))

    def attach_session(self, session_id: str, url: str, *, now: datetime) -> None:
        """The checkout session that collects it now (opened at issue, or by hosted_link)."""
        if (self.payment_session_id, self.payment_url) != (session_id, url):
            self.payment_session_id, self.payment_url = session_id, url
            self.updated_at = now

    def next_retry_key(self) -> str:
        """The attempt key of a new retryPayment: ``<invoice>:retry:<n>``, n counted on
        the row (locked by the caller), so concurrent retries get different keys."""
        self.check_payable("charged")
        self.retry_attempts += 1
        return f"{self.id}:retry:{self.retry_attempts}"

    def record_charge_succeeded(self, *, attempt_key: str, amount: int | None, at: datetime, now: datetime) -> bool:
        """A charge of the payment service succeeded: PAID (``amount`` charged; None: the
        amount owed), at ``at``, by attempt ``attempt_key`` (paid_by_attempt_key). An
        invoice already PAID (another attempt, out of band) stays as it is, still naming
        what paid it. Whether it changed."""
        if self.status == Status.PAID:
            return False
        if self.status not in PAYABLE_STATUSES:
            raise Unprocessable(
                "INVOICE_NOT_LINKABLE_STATUS",
                f"invoice {self.id} is {self.status}: only ISSUED or PAYMENT_FAILED invoices can be paid",
                metadata={"invoice_id": self.id, "status": self.status},
            )
        self._paid(self.grand_total if amount is None else amount, at=at, now=now)
        self.paid_by_attempt_key = attempt_key
        return True

    def record_charge_failed(self, *, failure_code: str, at: datetime, now: datetime) -> bool:
        """A charge failed: PAYMENT_FAILED with its code as failureReason, unless PAID
        (never un-paid) or not issued. Whether it changed."""
        if self.status not in PAYABLE_STATUSES:
            return False
        self.status = Status.PAYMENT_FAILED.value
        self.failure_reason = failure_code
        self.updated_at = now
        self.record(InvoiceChanged(ChangeKind.PAYMENT_FAILED, self.id, self.merchant_id, at))
        return True

    # --- refunds ---

    def refund(self, *, existing: Sequence[CreditNote], reason: str | None, now: datetime) -> CreditNote:
        """A full refund of a PAID invoice: its credit note (subtotal, tax, grand total),
        ISSUED. One at a time: another ISSUED refund is a conflict (409); the invoice stays
        PAID."""
        if self.status != Status.PAID:
            raise FailedPrecondition(
                "INVOICE_NOT_PAID",
                f"invoice {self.id} is {self.status}: only a PAID invoice can be refunded",
                metadata={"invoice_id": self.id, "status": self.status},
            )
        issued = [n for n in existing if n.kind == CreditNoteKind.REFUND and n.status == CreditNoteStatus.ISSUED]
        if issued:
            raise FailedPrecondition(
                "INVOICE_ALREADY_REFUNDED",
                f"invoice {self.id} is already refunded by credit note {issued[0].id} (void it first)",
                metadata={"invoice_id": self.id, "credit_note_id": issued[0].id},
            )
        if self.grand_total <= 0 or self.paid_amount <= 0:
            raise FailedPrecondition(
                "INVOICE_NOTHING_TO_REFUND", f"invoice {self.id} was paid {self.paid_amount} atomic units: nothing to refund",
                metadata={"invoice_id": self.id},
            )  # fmt: skip
        note = CreditNote(
            id=new_id("crn"),
            merchant_id=self.merchant_id,
            invoice_id=self.id,
            customer_id=self.customer_id,
            currency=self.currency,
            amount=self.subtotal,
            tax_amount=self.total_tax,
            reason=reason,
            created_at=now,
            kind=CreditNoteKind.REFUND.value,
            carry_amount=self.carry_share,
        )
        self.updated_at = now
        self.record(InvoiceChanged(ChangeKind.REFUNDED, self.id, self.merchant_id, now))
        return note

    def refund_voided(self, *, now: datetime) -> None:
        self.updated_at = now
        self.record(InvoiceChanged(ChangeKind.REFUND_VOIDED, self.id, self.merchant_id, now))


def _ad_hoc_line(currency: str, index: int, description: str, quantity_text: str, amount_text: str) -> Line:
    here = f"lines[{index}]"
    if not description:
        raise InvalidArgument(f"{here}.description", f"{here}.description is required", reason="REQUIRED")
    quantity = parse_decimal(quantity_text, f"{here}.quantityDecimal", allow_negative=False)
    amount = parse_decimal(amount_text, f"{here}.amountDecimal", allow_negative=False)
    ctx = exact_context()
    exact = amount.scaleb(ATOMIC_PLACES, context=ctx)  # atomic units, maybe fractional
    rounded = round_half_up(exact, currency)
    exponent = currency_exponent(currency)
    # atomic per unit such that quantity x unit price is the amount (kept as calculation keeps it)
    unit_price = Decimal(rounded) if quantity == 0 else exact_decimal(Fraction(rounded) / Fraction(quantity))[0]
    shown = format_major(rounded, exponent)
    provenance: dict[str, Any] = {
        "status": "recorded",
        "version": PROVENANCE_VERSION,
        "currency": currency,
        "precision": {"significantDigits": exponent, "scale": exponent, "rounding": ROUNDING_MODE},
        "inputs": {"kind": "given", "quantity": format(quantity, "f"), "amount": amount_text},
        "sources": {"amount": {"type": "merchant", "reason": "the ad-hoc invoice's line as asked"}},
        "steps": [
            {
                "op": "round",
                "on": "amount",
                "in": {"amount": amount_text},
                "out": {"amount": shown},
                "params": {"mode": ROUNDING_MODE, "scale": exponent, "unit": f"{currency} minor unit"},
                "source": "amount",
            }
        ],
        "result": {"amount": shown, "quantity": format(quantity, "f"), "taxRate": "0", "tax": format_major(0, exponent), "total": shown},
    }
    return Line(
        kind="charge",
        price_id=None,
        source_id=None,
        event_type="fee",
        display_name=description,
        payment_term=None,
        window=None,
        quantity=quantity,
        unit_price=unit_price,
        exact_amount=Decimal(rounded),
        amount=rounded,
        tax_rate=Decimal(0),
        tax=0,
        total=rounded,
        corrects=None,
        provenance=provenance,
        priced_exact_amount=exact,
        priced_amount=rounded,
    )


def credit_note_line(note: CreditNote) -> Line:
    """The line that brings a negative final invoice to zero: the balance moved to the credit note."""
    return Line(
        kind="credit_note",  # type: ignore[arg-type]  # Accrue's fifth kind, outside the calculation's
        price_id=None,
        source_id=note.id,
        event_type="discount",
        display_name=f"Balance carried to credit note {note.id}",
        payment_term=None,
        window=None,
        quantity=Decimal(1),
        unit_price=Decimal(note.amount),
        exact_amount=Decimal(note.amount),
        amount=note.amount,
        tax_rate=Decimal(0),
        tax=0,
        total=note.amount,
        corrects=None,
        provenance={"status": "recorded", "inputs": {"kind": "given", "amount": str(note.amount)}, "creditNoteId": note.id},
    )


def late_usage_horizon(issued_before: Sequence[datetime], at: datetime, max_event_age: timedelta) -> datetime:
    """Windows ending after this instant may have received usage since the subscription's
    last issued invoice: metering takes events up to ``max_event_age`` old, judged at the
    time they arrive, and every arrival since the last issue was at or after it."""
    last = max(issued_before, default=at)
    return min(last, at) - max_event_age
