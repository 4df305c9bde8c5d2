"""Protos <-> the invoicing domain: the engine's requests in, invoices and lines out.

Money leaves as decimal strings in major units, padded to the currency's minor unit
("49.00", "0.00002": libs/core/money.format_major); quantities and tax rates are JSON
numbers where Paygentic's contract has numbers, with the exact value beside them
(``quantityDecimal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from accrue.catalog.v1 import catalog_resources_pb2 as catalog_res
from accrue.invoicing.v1 import invoicing_service_pb2 as svc

from libs.core.errors import DomainError
from libs.core.money import ATOMIC_PLACES, currency_exponent, exact_context, format_major
from libs.infra.proto_struct import dict_to_struct, struct_to_dict
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.catalog.domain.rules import price_properties
from services.invoicing.domain.calculation import Charge, Composition, InvoiceCalculation, Line, Window
from services.invoicing.domain.commands import AdHocItem, IssueAdHocInvoice, RecordChargeOutcome
from services.invoicing.domain.model import CreditNote, Invoice, InvoiceLine, Layout, Status, Terms
from services.invoicing.domain.payments import RetryResult
from services.invoicing.provenance import wire

# --- requests in -----------------------------------------------------------------------


def terms_of(message: svc.BillingTerms) -> Terms:
    return Terms(
        subscription_id=message.subscription_id,
        customer_id=message.customer_id,
        plan_id=message.plan_id,
        plan_version_id=message.plan_version_id,
        plan_version_number=message.plan_version_number,
        currency=message.currency,
        billing_anchor=from_timestamp(message.billing_anchor) if message.HasField("billing_anchor") else None,
        billing_cadence=message.billing_cadence,
        payment_term_days=message.payment_term_days,
        tax_exempt=message.tax_exempt,
        customer_tax_rates=dict(message.customer_tax_rates),
        test_clock_id=message.test_clock_id if message.HasField("test_clock_id") else None,
        tax_behavior=message.tax_behavior or "exclusive",
        default_tax_rate=message.default_tax_rate or "0",
        auto_approve=message.auto_approve,
        auto_charge=message.auto_charge,
        success_redirect_url=message.success_redirect_url if message.HasField("success_redirect_url") else None,
        failure_redirect_url=message.failure_redirect_url if message.HasField("failure_redirect_url") else None,
        session_expiry_minutes=message.session_expiry_minutes if message.HasField("session_expiry_minutes") else None,
    )


def window_of(message: svc.BillingWindow) -> Window:
    return Window(
        start=from_timestamp(message.start),
        end=from_timestamp(message.end),
        period_start=from_timestamp(message.period_start),
        period_end=from_timestamp(message.period_end),
        period_index=message.period_index,
    )


def layout_of(message: svc.InvoiceComposition) -> Layout:
    return Layout(
        Composition(
            arrears=[window_of(w) for w in message.arrears],
            advance=[window_of(w) for w in message.advance],
            credits=[window_of(w) for w in message.credits],
            one_time_fees=message.one_time_fees,
        ),
        final=message.final,
    )


def ad_hoc_of(message: svc.IssueAdHocInvoiceRequest) -> IssueAdHocInvoice:
    return IssueAdHocInvoice(
        customer_id=message.customer_id,
        currency=message.currency,
        lines=[AdHocItem(line.description, line.quantity_decimal, line.amount_decimal) for line in message.lines],
        purpose=message.purpose,
        reference=message.reference,
        subscription_id=message.subscription_id if message.HasField("subscription_id") and message.subscription_id else None,
        effective_time=from_timestamp(message.effective_time),
        success_url=message.success_url if message.HasField("success_url") else None,
        cancel_url=message.cancel_url if message.HasField("cancel_url") else None,
        payment_expires_at=from_timestamp(message.payment_expires_at) if message.HasField("payment_expires_at") else None,
        metadata=struct_to_dict(message.metadata) if message.HasField("metadata") else {},
    )


def charge_outcome_of(message: svc.RecordChargeOutcomeRequest) -> RecordChargeOutcome:
    return RecordChargeOutcome(
        invoice_id=message.invoice_id,
        status=message.status,
        attempt_key=message.attempt_key,
        amount=message.amount,
        provider_payment_ref=message.provider_payment_ref if message.HasField("provider_payment_ref") else None,
        failure_code=message.failure_code if message.HasField("failure_code") and message.failure_code else None,
        payment_session_id=message.payment_session_id if message.HasField("payment_session_id") else None,
        effective_time=from_timestamp(message.effective_time) if message.HasField("effective_time") else None,
    )


def charge(slot: catalog_res.PlanVersionPriceSlot, metric: catalog_res.BillableMetric | None) -> Charge:
    """A price slot of the pinned plan version, its properties parsed by the catalog's own
    rules; a metered one carrying a metered feature is entitled (its grants cover usage)."""
    metered = slot.HasField("billable_metric_id")
    price = price_properties(slot.model or "standard", struct_to_dict(slot.properties), metered=metered).model
    return Charge(
        price_id=slot.id,
        key=slot.key,
        kind="metered" if metered else "fee",
        source_id=slot.billable_metric_id if metered else slot.fee_id,
        display_name=slot.invoice_display_name,
        payment_term="in_advance" if slot.payment_term == "in_advance" else "in_arrears",
        price=price,
        cadence=slot.billing_cadence if slot.HasField("billing_cadence") else None,
        quantity=slot.quantity or 1,
        metric_name=metric.name if metric else "",
        metric_unit=metric.unit if metric else "",
        metric_description=metric.description if metric else "",
        taxable=slot.tax.supply_scope != "OUTSIDE_SCOPE",
        entitled=metered and any(f.feature.type == "metered" for f in slot.features),
    )


# --- money and numbers out -------------------------------------------------------------


def money(atomic: int, currency: str) -> str:
    return format_major(atomic, currency_exponent(currency))


def exact_money(atomic: Decimal, currency: str) -> str:
    """An exact (maybe fractional) atomic amount in major units: a unit price of 0.00002."""
    value = atomic.scaleb(-ATOMIC_PLACES, context=exact_context()).normalize(exact_context())
    text = format(value, "f")
    if text.startswith("-0") and value == 0:
        text = text[1:]
    whole, _, fraction = text.partition(".")
    fraction = fraction.ljust(currency_exponent(currency), "0")
    return f"{whole}.{fraction}" if fraction else whole


def decimal_text(value: Decimal) -> str:
    text = format(value.normalize(exact_context()), "f")
    return "0" if text in ("-0", "0") else text


# --- invoices out ----------------------------------------------------------------------


def _ts(value: datetime | None) -> Any:
    return None if value is None else to_timestamp(value)


def _line_type(line: Line) -> str:
    return "refund" if line.kind == "credit" else "charge"


def line_item(stored: InvoiceLine, currency: str, *, provenance: bool, of: Invoice | None = None) -> svc.InvoiceLineItem:
    line = stored.line
    out = svc.InvoiceLineItem(
        event_type=line.event_type,
        event_id=stored.id,
        event_source_id=line.source_id or "",
        billable_metric_id=line.source_id or "",
        invoice_display_name=line.display_name,
        line_item_type=_line_type(line),
        meter_event_id="",
        metric_description=stored.metric_description,
        metric_name=stored.metric_name,
        metric_unit=stored.metric_unit,
        quantity=float(line.quantity),
        tax_rate=float(line.tax_rate),
        total_amount=money(line.total, currency),
        total_price=money(line.amount, currency),
        total_tax=money(line.tax, currency),
        unit_price=exact_money(line.unit_price, currency),
        quantity_decimal=decimal_text(line.quantity),
        kind=line.kind,
    )
    if line.price_id is not None:
        out.price_id = line.price_id
    if line.window is not None:
        out.period_start.CopyFrom(to_timestamp(line.window.start))
        out.period_end.CopyFrom(to_timestamp(line.window.end))
    if line.payment_term is not None:
        out.payment_term = line.payment_term
    if line.corrects is not None:
        out.corrects_period_start.CopyFrom(to_timestamp(line.corrects.start))
        out.corrects_period_end.CopyFrom(to_timestamp(line.corrects.end))
    if provenance:
        calculated = None if of is None or of.issued_at is None else of.issued_at.isoformat()
        subscription_id = None if of is None else of.subscription_id
        out.provenance.CopyFrom(dict_to_struct(wire(line.provenance, subscription_id=subscription_id, calculated_at=calculated)))
    return out


def estimated_lines(invoice: Invoice, calc: InvoiceCalculation, charges: Sequence[Charge]) -> list[InvoiceLine]:
    """The lines of a live estimate, with stable ids of their position (they are stored nowhere)."""
    by_price = {c.price_id: c for c in charges}
    out = []
    for position, line in enumerate(calc.lines):
        c = by_price.get(line.price_id or "")
        out.append(
            InvoiceLine(
                id=f"li_{invoice.id.removeprefix('inv_')}_est{position}",
                invoice_id=invoice.id,
                position=position,
                line=line,
                metric_name=c.metric_name if c else "",
                metric_unit=c.metric_unit if c else "",
                metric_description=c.metric_description if c else "",
            )
        )
    return out


def invoice(
    found: Invoice,
    *,
    lines: Sequence[InvoiceLine] | None = None,
    lines_total: int | None = None,
    next_page_token: str | None = None,
    provenance: bool = False,
    estimate: InvoiceCalculation | None = None,
) -> svc.Invoice:
    """An invoice as the API shows it; an open one with the totals of its live estimate."""
    currency = found.currency
    subtotal, total_tax, grand_total, item_count = found.subtotal, found.total_tax, found.grand_total, found.item_count
    if estimate is not None and found.is_open:
        subtotal, total_tax, grand_total = estimate.subtotal, estimate.total_tax, estimate.grand_total
        item_count = len(estimate.lines)
    out = svc.Invoice(
        id=found.id,
        merchant_id=found.merchant_id,
        status=found.status,
        object="invoice",
        auto_approve=found.auto_approve,
        billing_anchor=to_timestamp(found.billing_anchor or found.period_start),
        billing_cadence=found.billing_cadence,
        currency=currency,
        grace_period_end=to_timestamp(found.grace_period_end),
        grand_total=money(grand_total, currency),
        item_count=item_count,
        paid_amount=money(found.paid_amount, currency),
        period_start=to_timestamp(found.period_start),
        period_end=to_timestamp(found.period_end),
        sequence_number=found.sequence_number,
        subscription_id=found.subscription_id,
        customer_id=found.customer_id,
        subtotal=money(subtotal, currency),
        total_tax=money(total_tax, currency),
        unpaid_amount=money(found.unpaid_amount, currency),
        metadata=dict_to_struct(found.metadata),
        create_time=to_timestamp(found.created_at),
        update_time=to_timestamp(found.updated_at),
        purpose=found.purpose,
    )
    out.tax.actual_tax = str(total_tax)
    if found.is_open:
        out.tax.estimated_tax = str(total_tax)
    out.tax.reconciled = not found.is_open
    if found.invoice_number is not None:
        out.invoice_number = found.invoice_number
    for name in ("paid_at", "issued_at", "due_at"):
        value = getattr(found, name)
        if value is not None:
            getattr(out, name).CopyFrom(to_timestamp(value))
    if found.failure_reason is not None:
        out.failure_reason = found.failure_reason
    # payment_in_flight stays unset: the payment service keeps the charge attempts, and
    # invoicing cannot tell whether one is in flight (claiming false would be a guess)
    if found.status in (Status.ISSUED, Status.PAYMENT_FAILED) and found.payment_url and found.unpaid_amount > 0:
        out.payment_url = found.payment_url
    if found.payment_session_id:
        out.payment_session_id = found.payment_session_id
    if found.status == Status.PAID and found.paid_by_attempt_key:
        out.paid_by_attempt_key = found.paid_by_attempt_key
    if lines is not None:
        out.line_items.CopyFrom(
            svc.InvoiceLineItems(
                invoice_id=found.id,
                line_items=[line_item(line, currency, provenance=provenance, of=found) for line in lines],
                total_count=len(lines) if lines_total is None else lines_total,
            )
        )
        if next_page_token is not None:
            out.line_items.next_page_token = next_page_token
    return out


_ENGINE_TYPES = {"credit": "discount", "rounding": "adjustment", "credit_note": "adjustment"}


def engine_line_item(found: Invoice, stored: InvoiceLine, *, provenance: bool) -> svc.LineItem:
    """A line in the engine's view (GET /v2/invoices/lineItems): pending while its invoice
    is open (the amounts are the live estimate's), invoiced once it is issued."""
    line, currency = stored.line, found.currency
    kind = _ENGINE_TYPES.get(line.kind) or ("metered" if line.event_type == "usage" else "fee")
    pending = found.is_open
    window_start = line.window.start if line.window else found.period_start
    window_end = line.window.end if line.window else found.period_end
    out = svc.LineItem(
        id=stored.id,
        subscription_id=found.subscription_id,
        customer_id=found.customer_id,
        type=kind,
        status="pending" if pending else "invoiced",
        display_name=line.display_name,
        currency=currency,
        period_start=to_timestamp(window_start),
        period_end=to_timestamp(window_end),
        invoice_at=to_timestamp(found.issued_at or found.grace_period_end),
        unit_price=exact_money(line.unit_price, currency),
        create_time=to_timestamp(found.created_at),
        update_time=to_timestamp(found.updated_at),
        invoice_id=found.id,
        quantity=decimal_text(line.quantity),
    )
    if line.price_id is not None:
        out.price_id = line.price_id
    if line.event_type == "usage":
        out.metered_quantity = decimal_text(line.quantity)
    if line.payment_term is not None:
        out.payment_term = line.payment_term
    if pending:
        out.estimated_subtotal = money(line.amount, currency)
    else:
        out.subtotal = money(line.amount, currency)
        out.taxes_total = money(line.tax, currency)
        out.total = money(line.total, currency)
        if found.issued_at is not None:
            out.calculated_at.CopyFrom(to_timestamp(found.issued_at))
    if provenance:
        calculated = None if found.issued_at is None else found.issued_at.isoformat()
        out.provenance.CopyFrom(dict_to_struct(wire(line.provenance, subscription_id=found.subscription_id, calculated_at=calculated)))
    return out


# --- collection out --------------------------------------------------------------------


def refund(note: CreditNote) -> svc.InvoiceRefund:
    """A refund's credit note as InvoiceRefund (amount pre-tax, its tax, the total)."""
    out = svc.InvoiceRefund(
        object="invoice_refund",
        id=note.id,
        invoice_id=note.invoice_id,
        merchant_id=note.merchant_id,
        amount=money(note.amount, note.currency),
        tax_amount=money(note.tax_amount, note.currency),
        total=money(note.total, note.currency),
        currency=note.currency,
        status=note.status,
        external_credit_note_id="",
        create_time=to_timestamp(note.created_at),
    )
    if note.reason:
        out.reason = note.reason
    if note.voided_at is not None:
        out.voided_at.CopyFrom(to_timestamp(note.voided_at))
    if note.provider_refund_ref:
        out.provider_refund_ref = note.provider_refund_ref
    return out


def retry_response(result: RetryResult) -> svc.RetryPaymentResponse:
    """A retry that paid (REST 200) or is still processing (202, error code processing)."""
    out = svc.RetryPaymentResponse(object="retry_payment_result", success=not result.processing, invoice_id=result.invoice_id)
    if result.payment_intent_id:
        out.payment_intent_id = result.payment_intent_id
    if result.processing:
        out.processing = True
        out.error.CopyFrom(
            svc.RetryPaymentError(
                message="the processor has not answered yet; the invoice is paid once it does", type="processing", code="processing"
            )
        )
    return out


def retry_failure_body(err: DomainError, invoice_id: str) -> dict[str, Any]:
    """What a failed retry answers in Paygentic's shape (RetryPaymentResponse, success
    false; REST JSON): the SDK parses a 402, 409, 422 or 502 of retryPayment as this, not
    as the error envelope. ``message`` and ``code`` of the envelope ride along (the SDK
    ignores them)."""
    meta = err.metadata
    error: dict[str, Any] = {"message": err.message, "code": meta.get("retry_code") or err.reason}
    if meta.get("error_type"):
        error["type"] = meta["error_type"]
    if meta.get("decline_code"):
        error["declineCode"] = meta["decline_code"]
    body: dict[str, Any] = {
        "object": "retry_payment_result",
        "success": False,
        "invoiceId": meta.get("invoice_id") or invoice_id,
        "error": error,
        "message": err.message,
        "code": err.reason,
    }
    if meta.get("payment_intent_id"):
        body["paymentIntentId"] = meta["payment_intent_id"]
    return body
