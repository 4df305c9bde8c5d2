"""Collecting invoices through the payment service (issue 11): checkout sessions at issue
and by hosted_link, retryPayment, the charge outcomes the payment service reports, and
refunds.

* Sessions. Every invoice issued with something owed gets a checkout session of the
  payment service (OpenSessions; one call per batch) in the issuing transaction, after
  its number is given (the session's label names it) and before the commit: a failure of
  the payment service fails the step (UNAVAILABLE) and the engine runs it again, as a
  failed ``tell_paid`` does. The invoice keeps the session's id and page URL
  (``paymentUrl``). hosted_link opens a fresh one that replaces it.
* retryPayment. The attempt's key ``<invoice>:retry:<n>`` comes from a per-invoice counter
  incremented in its own short transaction (two concurrent retries get different keys; the
  payment service lets one be in flight and answers the other CONCURRENT_ATTEMPT). The
  charge (ChargeInvoice) is asked with no transaction open: the payment service reports
  the outcome back (RecordChargeOutcome) while it is answering, and so does this use case
  once it has the answer; both are the same idempotent recording.
* RecordChargeOutcome is idempotent by attempt key (charge_outcomes): succeeded -> PAID
  (and ``tell_paid`` before the commit), failed -> PAYMENT_FAILED; a PAID invoice is never
  un-paid, whatever arrives after.
* Refunds: a PAID invoice's grand total, once at a time, as a credit note (kind refund)
  and a processor refund (RefundInvoice, keyed by the credit note id) before the commit.
  The credit note takes the invoice's share off its customer's rounding carry (E and B
  alike, so B = round_half_up(E) still holds); a void gives it back.

Storage and the other services only through domain/ports.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from libs.core.clock import Clock
from libs.core.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable, Unprocessable
from libs.core.money import major_to_atomic, parse_decimal
from services.invoicing.domain.calculation import Carry, Line
from services.invoicing.domain.commands import RecordChargeOutcome
from services.invoicing.domain.model import (
    DEFAULT_SESSION_EXPIRY_MINUTES,
    INVOICE_LINK_LIFETIME,
    CreditNote,
    CreditNoteKind,
    CreditNoteStatus,
    Invoice,
    Purpose,
    Status,
)
from services.invoicing.domain.ports import (
    ChargeRequest,
    ChargeResult,
    CheckoutLine,
    InvoicingUnitOfWork,
    Payments,
    ReceivedOutcome,
    Session,
    SessionRequest,
)

if TYPE_CHECKING:
    from services.invoicing.domain.use_cases import Sources

UnitOfWorkFactory = Callable[[], AbstractAsyncContextManager[InvoicingUnitOfWork]]

# what the hosted_link answer names as the provider (the payment service's processor)
PROVIDER = "sandbox"


def payments_of(sources: Sources) -> Payments:
    if sources.payments is None:
        raise Unavailable("PAYMENT_NOT_CONFIGURED", "invoicing has no address of the payment service (ACCRUE_PAYMENT_ADDR)")
    return sources.payments


# --- sessions ----------------------------------------------------------------------------


def checkout_lines(invoice: Invoice, lines: Sequence[Line]) -> list[CheckoutLine]:
    """What the hosted page lists: each document line's pre-tax amount, then the tax, so
    that they add up to the amount owed."""
    out = [CheckoutLine(line.display_name, line.amount, line.quantity) for line in lines]
    if invoice.total_tax:
        out.append(CheckoutLine("Tax", invoice.total_tax))
    return out


def _label(invoice: Invoice) -> str:
    number = invoice.invoice_number or invoice.id
    if invoice.purpose == Purpose.GRANT_PURCHASE:
        return f"Purchase, invoice {number}"
    return f"Invoice {number}"


def _checkout(invoice: Invoice) -> dict[str, str]:
    found = invoice.terms.get("checkout")
    return dict(found) if isinstance(found, dict) else {}


def session_request(invoice: Invoice, lines: Sequence[Line], now: datetime, *, replace: bool = False) -> SessionRequest:
    """The checkout session of an issued invoice: Invoice 0's lives the subscription's
    sessionExpiryMinutes (default 240) and sends the payer to its redirects; a grant
    purchase's lives until the purchase's payment expiry and sends the payer to its success
    and cancel URLs; every other invoice's link (and every hosted_link) lives 30 days.
    ``now`` is wall time (a session expires in real time, whatever clock the subscription
    lives on). An autoCharge subscription's page saves the card for later charges."""
    terms = invoice.billing_terms
    success: str | None = None
    failure: str | None = None
    expires_at = now + INVOICE_LINK_LIFETIME
    save = False
    if invoice.purpose == Purpose.GRANT_PURCHASE:
        checkout = _checkout(invoice)
        success, failure = checkout.get("successUrl"), checkout.get("cancelUrl")
        if checkout.get("expiresAt"):
            expires_at = datetime.fromisoformat(checkout["expiresAt"])
    else:
        save = terms.auto_charge
        if invoice.sequence_number == 0:
            success, failure = terms.success_redirect_url, terms.failure_redirect_url
            if not replace:
                expires_at = now + timedelta(minutes=terms.session_expiry_minutes or DEFAULT_SESSION_EXPIRY_MINUTES)
    return SessionRequest(
        entity_type=invoice.entity_type,
        entity_id=invoice.id,
        customer_id=invoice.customer_id,
        subscription_id=invoice.subscription_id or None,
        amount=invoice.unpaid_amount,
        currency=invoice.currency,
        label=_label(invoice),
        lines=checkout_lines(invoice, lines),
        success_redirect_url=success,
        failure_redirect_url=failure,
        expires_at=expires_at,
        replace=replace,
        save_payment_method=save,
    )


async def open_sessions_at_issue(
    sources: Sources, merchant_id: str, issued: Sequence[tuple[Invoice, Sequence[Line]]], now: datetime
) -> None:
    """The checkout session of every invoice just issued with something owed, in one
    OpenSessions call, kept on the invoices (their rows are saved after this). Any failure
    is UNAVAILABLE: the step did not happen, and the engine runs it again (the payment
    service answers an entity's open session again, so a repeat opens no second one).
    Nothing without a payment service configured."""
    wanted = [(invoice, lines) for invoice, lines in issued if invoice.is_collectable]
    if sources.payments is None or not wanted:
        return
    try:
        sessions = await sources.payments.open_sessions(merchant_id, [session_request(i, lines, now) for i, lines in wanted])
    except DomainError as err:
        if err.retryable:
            raise
        raise Unavailable(
            "PAYMENT_SESSIONS_FAILED",
            f"the payment service did not open the checkout sessions ({err.reason}: {err.message}); retry the step",
            metadata={"payment_reason": err.reason},
        ) from err
    if len(sessions) != len(wanted):
        raise Unavailable("PAYMENT_SESSIONS_FAILED", f"the payment service answered {len(sessions)} sessions of {len(wanted)}")
    for (invoice, _), session in zip(wanted, sessions, strict=True):
        invoice.attach_session(session.id, session.url, now=now)


async def hosted_link(
    uow: InvoicingUnitOfWork, sources: Sources, merchant_id: str, now: datetime, invoice_id: str
) -> tuple[Invoice, Session]:
    """A fresh checkout session replacing the invoice's (the invoice stays unpaid, its
    paymentUrl the new page): ISSUED or PAYMENT_FAILED with something owed only."""
    payments = payments_of(sources)
    invoice = await uow.invoices.get(merchant_id, invoice_id, lock=True)
    invoice.check_payable("linked")
    lines = [stored.line for stored in (await uow.lines.of_invoices([invoice.id]))[invoice.id]]
    (session,) = await payments.open_sessions(merchant_id, [session_request(invoice, lines, now, replace=True)])
    invoice.attach_session(session.id, session.url, now=now)
    await uow.invoices.save(invoice)
    return invoice, session


# --- paid --------------------------------------------------------------------------------


async def tell_paid(sources: Sources, invoice: Invoice, *, customer_time: datetime | None) -> None:
    """The synchronous part of "paid", inside the paying transaction (a failure records no
    payment; the caller retries): Invoice 0 activates its subscription, a grant purchase
    mints its grant (entitlement's RecordPurchasePaid, with the instant of payment in the
    customer's time when invoicing knows it). InvoiceChanged paid goes out too."""
    if invoice.purpose == Purpose.GRANT_PURCHASE:
        if sources.entitlements is None:
            raise Unavailable("ENTITLEMENT_NOT_CONFIGURED", "invoicing has no address of the entitlement service (ACCRUE_ENTITLEMENT_ADDR)")
        await sources.entitlements.purchase_paid(invoice, customer_time)
    elif invoice.purpose == Purpose.SUBSCRIPTION and invoice.sequence_number == 0:
        await sources.subscriptions.invoice_paid(invoice)


# --- charge outcomes -----------------------------------------------------------------------


def _outcome_amount(command: RecordChargeOutcome) -> int | None:
    if command.status != "succeeded" or not command.amount:
        return None
    return major_to_atomic(parse_decimal(command.amount, "amount", allow_negative=False), "amount")


async def record_charge_outcome(
    unit_of_work: UnitOfWorkFactory, sources: Sources, clock: Clock, merchant_id: str, command: RecordChargeOutcome
) -> Invoice:
    """Record once per attempt key: succeeded -> PAID (paidAt the outcome's effective time,
    else now; the subscription or the entitlement service told before the commit, as an
    out-of-band payment tells them), failed
    -> PAYMENT_FAILED with the failure code (a PAID invoice stays PAID). A repeated key,
    or an invoice paid by another attempt, changes nothing; the invoice is answered."""
    if command.status not in ("succeeded", "failed"):
        raise InvalidArgument("status", f"status must be succeeded or failed, got {command.status!r}", reason="INVALID_ENUM_VALUE")
    if not command.attempt_key:
        raise InvalidArgument("attemptKey", "attemptKey is required", reason="REQUIRED")
    return await _record_outcome(unit_of_work, sources, clock, merchant_id, command, _outcome_amount(command))


async def _record_outcome(
    unit_of_work: UnitOfWorkFactory, sources: Sources, clock: Clock, merchant_id: str, command: RecordChargeOutcome, amount: int | None
) -> Invoice:
    async with unit_of_work() as uow:
        invoice = await uow.invoices.get(merchant_id, command.invoice_id, lock=True, field="invoiceId")
        now = clock.now()
        at = command.effective_time or now
        first = await uow.outcomes.add_if_absent(
            ReceivedOutcome(
                attempt_key=command.attempt_key,
                merchant_id=merchant_id,
                invoice_id=invoice.id,
                status=command.status,
                amount=amount,
                provider_payment_ref=command.provider_payment_ref,
                failure_code=command.failure_code,
                payment_session_id=command.payment_session_id,
                effective_time=command.effective_time,
                received_at=now,
            )
        )
        if not first:
            return invoice
        if command.status == "succeeded":
            if invoice.record_charge_succeeded(attempt_key=command.attempt_key, amount=amount, at=at, now=now):
                await uow.invoices.save(invoice)
                # paid now: the customer's time (a test clock's) is the entitlement
                # service's to tell (the report's time may be wall time), as out of band
                await tell_paid(sources, invoice, customer_time=None)
        elif invoice.record_charge_failed(failure_code=command.failure_code or "payment_failed", at=at, now=now):
            await uow.invoices.save(invoice)
        return invoice


# --- retryPayment --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryResult:
    """A retry that did not fail: paid (``processing`` False) or not answered yet."""

    invoice_id: str
    processing: bool
    payment_intent_id: str | None = None


def _retry_metadata(invoice_id: str, code: str, **extra: str | None) -> dict[str, str]:
    return {"invoice_id": invoice_id, "retry_code": code, **{k: v for k, v in extra.items() if v}}


def _declined(invoice_id: str, result: ChargeResult) -> FailedPrecondition:
    code = result.failure_code or "card_declined"
    return FailedPrecondition(
        "PAYMENT_DECLINED",
        result.failure_message or f"the charge of invoice {invoice_id} was declined ({code})",
        metadata=_retry_metadata(
            invoice_id, code, error_type="card_error", decline_code=result.decline_code, payment_intent_id=result.provider_payment_ref
        ),
    )


def _provider_unavailable(invoice_id: str, message: str) -> Unavailable:
    return Unavailable(
        "PROVIDER_UNAVAILABLE", message, metadata=_retry_metadata(invoice_id, "provider_unavailable", error_type="api_error")
    )


def _charge_error(invoice_id: str, err: DomainError) -> DomainError:
    """ChargeInvoice's own refusals, with the retry code the REST answer carries."""
    if err.reason == "CONCURRENT_ATTEMPT":
        return FailedPrecondition(
            "CONCURRENT_ATTEMPT",
            f"another payment attempt of invoice {invoice_id} is in flight; retry when it has ended",
            metadata=_retry_metadata(invoice_id, "concurrent_attempt", error_type="invalid_request_error"),
        )
    if err.reason == "PROVIDER_UNAVAILABLE":
        return _provider_unavailable(invoice_id, err.message)
    err.metadata.setdefault("invoice_id", invoice_id)
    err.metadata.setdefault("retry_code", err.reason)
    return err


async def retry_payment(unit_of_work: UnitOfWorkFactory, sources: Sources, clock: Clock, merchant_id: str, invoice_id: str) -> RetryResult:
    """Charge an ISSUED or PAYMENT_FAILED invoice again on the customer's saved method.
    Paid -> RetryResult; not answered yet -> RetryResult(processing); declined ->
    PAYMENT_DECLINED (the invoice PAYMENT_FAILED with the code); no saved method ->
    NO_PAYMENT_METHOD; another attempt in flight -> CONCURRENT_ATTEMPT; the processor
    unreachable -> PROVIDER_UNAVAILABLE."""
    payments = payments_of(sources)
    async with unit_of_work() as uow:
        invoice = await uow.invoices.get(merchant_id, invoice_id, lock=True)
        if invoice.status == Status.PAID:
            # paid already (a concurrent retry, an automatic charge, the page): the retry's
            # goal holds, so it answers 200 with the charge that paid it and charges nothing;
            # paid out of band, there is no charge to name: 409 INVOICE_ALREADY_PAID below
            paid_by = await uow.outcomes.succeeded_charge_of(invoice.id)
            if paid_by is not None:
                return RetryResult(invoice.id, processing=False, payment_intent_id=paid_by or None)
        try:
            key = invoice.next_retry_key()
        except DomainError as err:
            err.metadata.setdefault("retry_code", err.reason)
            raise
        await uow.invoices.save(invoice)
    request = ChargeRequest(
        invoice_id=invoice.id,
        customer_id=invoice.customer_id,
        subscription_id=invoice.subscription_id or None,
        amount=invoice.unpaid_amount,
        currency=invoice.currency,
        attempt_key=key,
        trigger="manual",
    )
    try:
        result = await payments.charge_invoice(merchant_id, request)
    except DomainError as err:
        raise _charge_error(invoice.id, err) from err
    if result.status == "processing":
        return RetryResult(invoice.id, processing=True, payment_intent_id=result.provider_payment_ref)
    if result.status == "no_payment_method":
        raise Unprocessable(
            "NO_PAYMENT_METHOD",
            f"customer {invoice.customer_id} has no saved payment method to charge",
            metadata=_retry_metadata(invoice.id, "no_payment_method", error_type="invalid_request_error"),
        )
    if result.status == "failed" and result.failure_code == "provider_unavailable":
        raise _provider_unavailable(invoice.id, result.failure_message or "the payment processor could not be reached; retry later")
    if result.status not in ("succeeded", "failed"):
        raise Unavailable("PAYMENT_OUTCOME_UNKNOWN", f"the payment service answered status {result.status!r} for attempt {key}")
    # what the payment service reports too (RecordChargeOutcome): recorded once by its key
    outcome = RecordChargeOutcome(
        invoice_id=invoice.id,
        status=result.status,
        attempt_key=key,
        provider_payment_ref=result.provider_payment_ref,
        failure_code=result.failure_code,
        payment_session_id=result.payment_session_id,
    )
    await _record_outcome(unit_of_work, sources, clock, merchant_id, outcome, request.amount if result.status == "succeeded" else None)
    if result.status == "failed":
        raise _declined(invoice.id, result)
    return RetryResult(invoice.id, processing=False, payment_intent_id=result.provider_payment_ref)


# --- refunds -----------------------------------------------------------------------------


def _refunds(notes: Sequence[CreditNote]) -> list[CreditNote]:
    return [n for n in notes if n.kind == CreditNoteKind.REFUND]


async def _carry_move(uow: InvoicingUnitOfWork, note: CreditNote, sign: int, now: datetime) -> None:
    """Move the customer's carry by the note's share: E and B alike (-1 refund, +1 void)."""
    if note.carry_amount == 0:
        return
    carry = await uow.carry.lock(note.merchant_id, note.customer_id, note.currency)
    moved = Carry(carry.exact_total + sign * note.carry_amount, carry.billed_total + sign * note.carry_amount)
    await uow.carry.save(note.merchant_id, note.customer_id, note.currency, moved, now)


async def create_refund(
    uow: InvoicingUnitOfWork, sources: Sources, merchant_id: str, now: datetime, invoice_id: str, reason: str | None
) -> CreditNote:
    """A full refund of a PAID invoice (invoice row locked: concurrent refunds refund once,
    the others hear INVOICE_ALREADY_REFUNDED): its credit note, the carry moved, then the
    payment service's refund of what was charged (keyed by the credit note id), all before
    the commit. Paid out of band: the payment service refunds nothing (``refunded``
    false), the credit note stands."""
    payments = payments_of(sources)
    invoice = await uow.invoices.get(merchant_id, invoice_id, lock=True)
    note = invoice.refund(existing=await uow.credit_notes.of_invoice(invoice.id), reason=reason, now=now)
    await uow.credit_notes.add(note)
    await _carry_move(uow, note, -1, now)
    try:
        answer = await payments.refund_invoice(
            merchant_id, invoice_id=invoice.id, credit_note_id=note.id, amount=invoice.paid_amount, currency=invoice.currency, reason=reason
        )
    except DomainError as err:
        raise _refund_refused(invoice.id, err) from err
    note = replace(note, refunded=answer.refunded, provider_refund_ref=answer.provider_refund_ref)
    await uow.credit_notes.save(note)
    await uow.invoices.save(invoice)
    return note


def _refund_refused(invoice_id: str, err: DomainError) -> DomainError:
    """The payment service's refusal of a refund, naming the invoice (field ``id``, the
    path's) when it names no field of its own, with a message that says what was refused."""
    if err.field is not None or err.retryable:
        return err
    err.field = "id"
    err.metadata.setdefault("field", "id")
    err.metadata.setdefault("invoice_id", invoice_id)
    err.message = f"the payment service refused the refund of invoice {invoice_id} ({err.reason}): {err.message}"
    err.args = (err.message,)
    return err


async def list_refunds(uow: InvoicingUnitOfWork, merchant_id: str, invoice_id: str) -> list[CreditNote]:
    invoice = await uow.invoices.get(merchant_id, invoice_id)
    return _refunds(await uow.credit_notes.of_invoice(invoice.id))


async def void_refund(
    uow: InvoicingUnitOfWork, merchant_id: str, now: datetime, invoice_id: str, refund_id: str, reason: str | None
) -> CreditNote:
    """VOIDED (idempotent: a voided one is answered as it is); the carry gets the note's
    share back. Only a credit note whose money did not go back through the processor (an
    invoice paid out of band) can be voided: a void would not bring a processor refund
    back, and the books would say PAID, unrefunded, while the money was returned
    (REFUND_SETTLED, 409)."""
    invoice = await uow.invoices.get(merchant_id, invoice_id, lock=True)
    found = next((n for n in _refunds(await uow.credit_notes.of_invoice(invoice.id)) if n.id == refund_id), None)
    if found is None:
        raise NotFound("refund", refund_id, field="refundId")
    if found.status != CreditNoteStatus.VOIDED and (found.refunded or found.provider_refund_ref):
        raise FailedPrecondition(
            "REFUND_SETTLED",
            f"credit note {found.id} cannot be voided: the money was returned through the processor "
            f"(refund {found.provider_refund_ref or 'recorded'}); a void would not bring it back",
            field="refundId",
            metadata={"invoice_id": invoice.id, "credit_note_id": found.id, "provider_refund_ref": found.provider_refund_ref or ""},
        )
    voided = found.void(reason=reason, now=now)
    if voided is found:
        return found
    await uow.credit_notes.save(voided)
    await _carry_move(uow, voided, +1, now)
    invoice.refund_voided(now=now)
    await uow.invoices.save(invoice)
    return voided
