"""The invoicing use cases: the engine's three steps, ad-hoc invoices, the payment, and
the live estimate.

Each step is idempotent by (subscription, sequence number): the store keeps one invoice
per pair (OpenInvoice inserts or finds it), CloseInvoice and IssueInvoice lock its row
and do nothing to an invoice already past the step. IssueInvoice reads its inputs from
the other services first (no transaction is held across those calls), then, in one
transaction with the invoice row, the customer's carry row and the merchant's number
counter locked (always in that order), calculates, stores the lines, what was billed and
the carry, numbers the invoice and issues it, then opens its checkout session at the
payment service when something is owed (domain/payments.py). A crash or a failed call
anywhere before that commit leaves the invoice open, and the engine's retry runs the step
again from the start.

Included quantities: the usage of a metered price carrying a metered feature is asked of
the entitlement service too (GetCoverages, one call for every such (subscription, metric,
window) of the step, after metering's watermark wait); where the subscription has a
metered entitlement on the metric, the line bills the coverage's billable quantity and
reads the coverage's usage (one source). Without an entitlement address, as before.

Pure in the cosmicpython sense: storage and the other services only through
domain/ports.py, so they run on the fakes of tests/fakes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from libs.core.clock import Clock
from libs.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from libs.core.ids import new_id
from services.invoicing.domain import calculation
from services.invoicing.domain.calculation import Billed, Carry, Charge, Coverage, InvoiceCalculation, Usage, Window
from services.invoicing.domain.commands import CloseInvoice, IssueAdHocInvoice, IssueInvoice, OpenInvoice, RecordPayment
from services.invoicing.domain.model import Invoice, InvoiceLine, Status, Terms, invoice_number, late_usage_horizon
from services.invoicing.domain.payments import hosted_link, open_sessions_at_issue, tell_paid
from services.invoicing.domain.ports import (
    Catalog,
    CoverageQuery,
    Entitlements,
    InvoicingUnitOfWork,
    Meter,
    Payments,
    Reading,
    Subscriptions,
)

DEFAULT_MAX_EVENT_AGE = timedelta(days=35)
# the entitlement service's GetCoverages takes at most this many queries per call
MAX_COVERAGE_QUERIES = 1000


class Calculate(Protocol):
    def __call__(
        self,
        *,
        currency: str,
        charges: Sequence[Charge],
        composition: calculation.Composition,
        usage: Sequence[Usage],
        billed_before: Sequence[Billed],
        late_usage: Sequence[Usage],
        tax: calculation.TaxSettings,
        carry: Carry,
        invoice_id: str = "",
    ) -> InvoiceCalculation: ...


def _calculate_invoice(**kwargs: Any) -> InvoiceCalculation:
    result: InvoiceCalculation = calculation.calculate_invoice(**kwargs)
    return result


@dataclass(frozen=True)
class Sources:
    """The services an invoice is made from and the one it tells."""

    catalog: Catalog
    meter: Meter
    subscriptions: Subscriptions
    # included quantities and grant purchases; None: no entitlement service configured
    # (usage is billed as it is)
    entitlements: Entitlements | None = None
    # checkout sessions, charges and refunds; None: no payment service configured
    # (invoices are issued without a checkout session; collecting them is UNAVAILABLE)
    payments: Payments | None = None


@dataclass(frozen=True)
class Policy:
    # metering's backdating window (ACCRUE_METERING_MAX_EVENT_AGE_DAYS): how far back a
    # late event can land, so which issued periods are read again for corrections
    max_event_age: timedelta = DEFAULT_MAX_EVENT_AGE
    # how long IssueInvoice waits for metering's completeness watermark before it fails
    # with UNAVAILABLE (the engine retries the step)
    usage_wait_seconds: float = 3.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    calculate: Calculate = field(default=_calculate_invoice)


UnitOfWorkFactory = Callable[[], AbstractAsyncContextManager[InvoicingUnitOfWork]]


def not_open(terms: Terms, sequence_number: int) -> FailedPrecondition:
    return FailedPrecondition(
        "INVOICE_NOT_OPEN",
        f"invoice {sequence_number} of subscription {terms.subscription_id} was never opened",
        metadata={"subscription_id": terms.subscription_id, "sequence_number": str(sequence_number)},
    )


def usage_not_complete(until: datetime | None, complete_at: datetime) -> Unavailable:
    return Unavailable(
        "USAGE_NOT_COMPLETE",
        f"metering's usage is complete until {until.isoformat() if until else 'never (no aggregator yet)'}, "
        f"not yet until {complete_at.isoformat()}; retry the step",
        metadata={"complete_at": complete_at.isoformat()},
    )


def same_subscription(invoice: Invoice, terms: Terms) -> None:
    _same_subscription(invoice, terms)


def _same_subscription(invoice: Invoice, terms: Terms) -> None:
    if invoice.customer_id != terms.customer_id or invoice.currency != terms.currency:
        raise FailedPrecondition(
            "INVOICE_TERMS_MISMATCH",
            f"invoice {invoice.id} bills customer {invoice.customer_id} in {invoice.currency}, not {terms.customer_id} in {terms.currency}",
            metadata={"invoice_id": invoice.id},
        )


async def _the_invoice(uow: InvoicingUnitOfWork, merchant_id: str, terms: Terms, sequence_number: int, *, lock: bool) -> Invoice:
    invoice = await uow.invoices.by_sequence(merchant_id, terms.subscription_id, sequence_number, lock=lock)
    if invoice is None:
        raise not_open(terms, sequence_number)
    _same_subscription(invoice, terms)
    return invoice


# --- the engine's steps ----------------------------------------------------------------


async def open_invoice(uow: InvoicingUnitOfWork, merchant_id: str, now: datetime, command: OpenInvoice) -> Invoice:
    """Invoice k of the subscription, ACTIVE; a repeat (or a racing twin) answers the one that exists."""
    terms = command.terms.check()
    existing = await uow.invoices.by_sequence(merchant_id, terms.subscription_id, command.sequence_number)
    if existing is not None:
        return existing
    invoice = Invoice.open(
        merchant_id=merchant_id,
        terms=terms,
        sequence_number=command.sequence_number,
        layout=command.layout,
        at=command.effective_time,
        now=now,
    )
    found, _ = await uow.invoices.add_if_absent(invoice)
    return found


async def close_invoice(uow: InvoicingUnitOfWork, merchant_id: str, now: datetime, command: CloseInvoice) -> Invoice:
    invoice = await _the_invoice(uow, merchant_id, command.terms, command.sequence_number, lock=True)
    if invoice.close(grace_period_end=command.grace_period_end, layout=command.layout, now=now):
        await uow.invoices.save(invoice)
    return invoice


@dataclass(frozen=True)
class Inputs:
    """What a calculation of one invoice reads from the other services."""

    charges: list[Charge]
    usage: list[Usage]
    late_usage: list[Usage]
    horizon: datetime


async def _wait_until_complete(meter: Meter, probe: tuple[str, Window], subject: str, complete_at: datetime, policy: Policy) -> None:
    """Until metering says every event it accepted before ``complete_at`` is counted: one
    reading asked again with a short backoff (the watermark is metering's, one for every
    metric); UNAVAILABLE when it does not come within the policy's wait."""
    metric_id, window = probe
    waited, delay = 0.0, 0.05
    while True:
        until = (await meter.usage(metric_id, subject, window.start, window.end)).complete_until
        if until is not None and until >= complete_at:
            return
        if waited >= policy.usage_wait_seconds:
            raise usage_not_complete(until, complete_at)
        await policy.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.5)


async def _read_usage(
    meter: Meter, wanted: Sequence[tuple[str, Window]], subject: str, *, complete_at: datetime | None, policy: Policy
) -> dict[tuple[str, Window], Reading]:
    """Metering's reading of each (metric, window) for the customer. With ``complete_at``,
    the readings are asked only once metering's watermark has passed that instant: a
    reading whose own answer shows the watermark passed may have been aggregated a moment
    before it did, so the wait comes first and the readings after it."""
    keys = list(dict.fromkeys(wanted))
    if complete_at is not None and keys:
        await _wait_until_complete(meter, keys[0], subject, complete_at, policy)
    answers = await asyncio.gather(*(meter.usage(metric_id, subject, w.start, w.end) for metric_id, w in keys))
    return dict(zip(keys, answers, strict=True))


def windows_to_read(
    policy: Policy, invoice: Invoice, earlier: Sequence[Invoice], *, at: datetime
) -> tuple[list[Window], list[Window], datetime]:
    """The invoice's arrears windows, the earlier issued invoices' arrears windows that
    late events can still reach, and that horizon. ``at``: the step's instant."""
    issued = [e for e in earlier if e.issued_at is not None and e.sequence_number < invoice.sequence_number]
    horizon = late_usage_horizon([e.issued_at for e in issued if e.issued_at is not None], at, policy.max_event_age)
    current = list(invoice.layout.composition.arrears)
    late = list(dict.fromkeys(w for e in issued for w in e.layout.composition.arrears if w.end > horizon and w.start < w.end))
    return current, late, horizon


# (subscription, metric, window) -> the grants' coverage of that usage (None: not found)
CoverageKey = tuple[str, str, Window]


def inputs_of(
    charges: list[Charge],
    current: Sequence[Window],
    late: Sequence[Window],
    horizon: datetime,
    reading: Callable[[str, Window], Reading],
    coverage: Callable[[str, Window], tuple[Coverage, dict[str, Any]] | None] | None = None,
) -> Inputs:
    """The calculation's usage: metering's reading of each (metered price, window), or,
    for an entitled price whose coverage was found, the coverage (its usage is the line's
    reading, its billable the quantity billed) with the query it answered."""
    metered = [c for c in charges if c.kind == "metered"]

    def usage_of(windows: Sequence[Window]) -> list[Usage]:
        out = []
        for c in metered:
            for w in windows:
                covered = coverage(c.source_id, w) if coverage is not None and c.entitled else None
                if covered is not None:
                    found, query = covered
                    out.append(Usage(price_id=c.price_id, window=w, quantity=found.usage, query=query, coverage=found))
                    continue
                r = reading(c.source_id, w)
                out.append(Usage(price_id=c.price_id, window=w, quantity=r.quantity, query=r.query))
        return out

    return Inputs(charges=charges, usage=usage_of(current), late_usage=usage_of(late), horizon=horizon)


def coverage_keys(subscription_id: str, charges: Sequence[Charge], windows: Sequence[Window]) -> list[CoverageKey]:
    """What to ask the entitlement service: each entitled price's metric over each window."""
    return [(subscription_id, c.source_id, w) for c in charges if c.kind == "metered" and c.entitled for w in windows if w.start < w.end]


def _coverage_query(key: CoverageKey, found: Coverage, until: datetime | None) -> dict[str, Any]:
    subscription_id, metric_id, w = key
    return {
        "meter": "entitlement.GetCoverages",
        "billableMetricId": metric_id,
        "subscriptionId": subscription_id,
        "entitlementId": found.entitlement_id,
        "from": w.start.isoformat(),
        "to": w.end.isoformat(),
        "value": format(found.usage, "f"),
        "completeUntil": None if until is None else until.isoformat(),
    }


async def read_coverages(
    sources: Sources, policy: Policy, wanted: Sequence[CoverageKey], *, complete_at: datetime | None
) -> dict[CoverageKey, tuple[Coverage, dict[str, Any]]]:
    """The coverages found for ``wanted`` (GetCoverages, one call per 1000 queries) with
    each one's query; none without an entitlement service. With ``complete_at``, an answer
    whose usage is counted until an earlier instant is not taken (asked again with a short
    backoff, then UNAVAILABLE, as metering's watermark)."""
    keys = list(dict.fromkeys(wanted))
    if sources.entitlements is None or not keys:
        return {}
    entitlements = sources.entitlements
    queries = [CoverageQuery(sub, metric, w.start, w.end) for sub, metric, w in keys]
    waited, delay = 0.0, 0.05
    while True:
        answers: list[Coverage | None] = []
        untils: list[datetime] = []
        calls = range(0, len(queries), MAX_COVERAGE_QUERIES)
        for start in calls:
            chunk, chunk_until = await entitlements.coverages(queries[start : start + MAX_COVERAGE_QUERIES])
            if len(chunk) != len(queries[start : start + MAX_COVERAGE_QUERIES]):
                raise Unavailable("COVERAGE_UNREADABLE", f"the entitlement service answered {len(chunk)} coverages of {len(queries)}")
            answers += chunk
            if chunk_until is not None:
                untils.append(chunk_until)
        until = min(untils) if len(untils) == len(calls) else None
        # the watermark matters only for an answer that is used (a coverage found); an
        # answer without one read no usage (the entitlement service states it whenever it
        # reads metering, and reads it fresh, after this step's own wait)
        if complete_at is None or all(a is None for a in answers) or until is None or until >= complete_at:
            break
        if waited >= policy.usage_wait_seconds:
            raise usage_not_complete(until, complete_at)
        await policy.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.5)
    return {key: (found, _coverage_query(key, found, until)) for key, found in zip(keys, answers, strict=True) if found is not None}


async def gather_inputs(
    sources: Sources,
    policy: Policy,
    invoice: Invoice,
    terms: Terms,
    earlier: Sequence[Invoice],
    *,
    at: datetime,
    complete_at: datetime | None,
) -> Inputs:
    """The charges of the pinned plan version, the usage of the invoice's arrears windows,
    and fresh readings of the earlier issued invoices' arrears windows that late events can
    still reach (late usage); for entitled prices, the grants' coverage of that usage.
    ``at``: the step's instant in the subscription's time."""
    charges = await sources.catalog.charges(terms)
    metered = [c for c in charges if c.kind == "metered"]
    current, late, horizon = windows_to_read(policy, invoice, earlier, at=at)
    wanted = [(c.source_id, w) for c in metered for w in (*current, *late)]
    readings = await _read_usage(sources.meter, wanted, terms.customer_id, complete_at=complete_at, policy=policy) if wanted else {}
    covered = await read_coverages(
        sources, policy, coverage_keys(terms.subscription_id, charges, [*current, *late]), complete_at=complete_at
    )
    return inputs_of(
        charges,
        current,
        late,
        horizon,
        lambda metric_id, w: readings[(metric_id, w)],
        lambda metric_id, w: covered.get((terms.subscription_id, metric_id, w)),
    )


def calculate(
    policy: Policy, invoice: Invoice, terms: Terms, inputs: Inputs, billed_before: Sequence[Billed], carry: Carry
) -> InvoiceCalculation:
    return policy.calculate(
        currency=invoice.currency,
        charges=inputs.charges,
        composition=invoice.layout.composition,
        usage=inputs.usage,
        billed_before=billed_before,
        late_usage=inputs.late_usage,
        tax=terms.tax_settings(),
        carry=carry,
        invoice_id=invoice.id,
    )


def stored_lines(invoice: Invoice, lines: Sequence[calculation.Line], charges: Sequence[Charge]) -> list[InvoiceLine]:
    by_price = {c.price_id: c for c in charges}
    out = []
    for position, line in enumerate(lines):
        charge = by_price.get(line.price_id or "")
        out.append(
            InvoiceLine(
                id=new_id("li"),
                invoice_id=invoice.id,
                position=position,
                line=line,
                metric_name=charge.metric_name if charge else "",
                metric_unit=charge.metric_unit if charge else "",
                metric_description=charge.metric_description if charge else "",
            )
        )
    return out


async def issue_invoice(
    unit_of_work: UnitOfWorkFactory, sources: Sources, policy: Policy, clock: Clock, merchant_id: str, command: IssueInvoice
) -> Invoice:
    """Calculate (once metering's usage is complete up to now), number and issue invoice
    k; ISSUED, or PAID at once when nothing is owed. A repeat answers the issued invoice."""
    terms = command.terms.check()
    async with unit_of_work() as uow:
        invoice = await _the_invoice(uow, merchant_id, terms, command.sequence_number, lock=False)
        if not invoice.is_open:
            return invoice
        earlier = await uow.invoices.of_subscription(merchant_id, terms.subscription_id)
    # every event metering accepted before this instant must be counted (wall time: the
    # watermark is metering's, whatever clock the subscription lives on)
    complete_at = clock.now()
    inputs = await gather_inputs(sources, policy, invoice, terms, earlier, at=command.effective_time, complete_at=complete_at)
    async with unit_of_work() as uow:
        invoice = await _the_invoice(uow, merchant_id, terms, command.sequence_number, lock=True)
        if not invoice.is_open:  # a racing twin issued it meanwhile
            return invoice
        now = clock.now()
        billed_before = await uow.billed.of_subscription(merchant_id, terms.subscription_id, window_end_after=inputs.horizon)
        carry = await uow.carry.lock(merchant_id, invoice.customer_id, invoice.currency)
        result = calculate(policy, invoice, terms, inputs, billed_before, carry)
        invoice.terms = terms.to_json()  # the snapshot it was issued with
        lines, credit_note = invoice.issue(calculation=result, issued_at=command.effective_time, now=now)
        await uow.lines.add_all(merchant_id, stored_lines(invoice, lines, inputs.charges))
        await uow.billed.add_all(merchant_id, invoice.subscription_id, result.billed)
        await uow.carry.save(merchant_id, invoice.customer_id, invoice.currency, result.carry_after, now)
        if credit_note is not None:
            await uow.credit_notes.add(credit_note)
        # last: the merchant's counter row stays locked until the commit
        invoice.number(invoice_number(command.effective_time.year, await uow.numbering.next_number(merchant_id)))
        # its checkout (named by its number), before the commit: a failure fails the step
        await open_sessions_at_issue(sources, merchant_id, [(invoice, lines)], now)
        await uow.invoices.save(invoice)
        return invoice


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimateBasis:
    """What a live estimate reads from the invoicing database (in a read transaction)."""

    earlier: list[Invoice]
    billed_before: list[Billed]
    carry: Carry


async def estimate_basis(uow: InvoicingUnitOfWork, invoice: Invoice, policy: Policy) -> EstimateBasis:
    earlier = await uow.invoices.of_subscription(invoice.merchant_id, invoice.subscription_id)
    issued = [e.issued_at for e in earlier if e.issued_at is not None and e.sequence_number < invoice.sequence_number]
    horizon = late_usage_horizon(issued, invoice.grace_period_end, policy.max_event_age)
    billed = await uow.billed.of_subscription(invoice.merchant_id, invoice.subscription_id, window_end_after=horizon)
    carry = await uow.carry.peek(invoice.merchant_id, invoice.customer_id, invoice.currency)
    return EstimateBasis(earlier, billed, carry)


async def estimate(sources: Sources, policy: Policy, invoice: Invoice, basis: EstimateBasis) -> tuple[InvoiceCalculation, list[Charge]]:
    """The open invoice calculated on read, stored nowhere: usage as metering has it now
    (no completeness wait), the carry as it stands."""
    terms = invoice.billing_terms
    inputs = await gather_inputs(sources, policy, invoice, terms, basis.earlier, at=invoice.grace_period_end, complete_at=None)
    return calculate(policy, invoice, terms, inputs, basis.billed_before, basis.carry), inputs.charges


# --- payments --------------------------------------------------------------------------


async def issue_ad_hoc(uow: InvoicingUnitOfWork, sources: Sources, merchant_id: str, now: datetime, command: IssueAdHocInvoice) -> Invoice:
    """An invoice outside any timeline (a grant purchase), issued and numbered at once;
    idempotent by (merchant, purpose, reference): a repeat, or a racing twin, answers the
    invoice that exists (whatever else it asks)."""
    existing = await uow.invoices.by_reference(merchant_id, command.purpose, command.reference)
    if existing is not None:
        return existing
    checkout = {
        key: value
        for key, value in (
            ("successUrl", command.success_url),
            ("cancelUrl", command.cancel_url),
            ("expiresAt", None if command.payment_expires_at is None else command.payment_expires_at.isoformat()),
        )
        if value
    }
    invoice, lines = Invoice.ad_hoc(
        merchant_id=merchant_id,
        customer_id=command.customer_id,
        currency=command.currency,
        purpose=command.purpose,
        reference=command.reference,
        subscription_id=command.subscription_id,
        items=[(line.description, line.quantity, line.amount) for line in command.lines],
        at=command.effective_time,
        now=now,
        checkout=checkout,
        metadata=command.metadata,
    )
    stored, inserted = await uow.invoices.add_ad_hoc_if_absent(invoice)
    if not inserted:
        return stored
    await uow.lines.add_all(merchant_id, stored_lines(invoice, lines, []))
    # last: the merchant's counter row stays locked until the commit (gapless numbers)
    invoice.number(invoice_number(command.effective_time.year, await uow.numbering.next_number(merchant_id)))
    # its checkout (named by its number), before the commit
    await open_sessions_at_issue(sources, merchant_id, [(invoice, lines)], now)
    await uow.invoices.save(invoice)
    if invoice.status == Status.PAID:  # nothing owed: paid at issue, in the customer's time
        await tell_paid(sources, invoice, customer_time=command.effective_time)
    return invoice


def check_payment_method(method: str) -> None:
    if method not in ("out_of_band", "hosted_link"):
        raise InvalidArgument("method", f"method must be out_of_band or hosted_link, got {method!r}", reason="INVALID_ENUM_VALUE")


async def record_payment(uow: InvoicingUnitOfWork, sources: Sources, merchant_id: str, now: datetime, command: RecordPayment) -> Invoice:
    """out_of_band: PAID now (row locked: concurrent recordings record once, the others
    hear INVOICE_ALREADY_PAID). Paying Invoice 0 tells the subscription service before
    the transaction commits, so the subscription reads active once this returns (and a
    failed call records no payment: the caller retries); paying a grant purchase tells
    the entitlement service the same way (``tell_paid``). hosted_link: a fresh checkout
    session (domain/payments.hosted_link; the invoice stays unpaid)."""
    check_payment_method(command.method)
    if command.method == "hosted_link":
        invoice, _ = await hosted_link(uow, sources, merchant_id, now, command.invoice_id)
        return invoice
    invoice = await uow.invoices.get(merchant_id, command.invoice_id, lock=True)
    invoice.record_out_of_band_payment(reason=command.reason, now=now)
    await uow.invoices.save(invoice)
    # paid now in real time; the customer's time (a test clock's) is the entitlement
    # service's to tell, so it is not sent
    await tell_paid(sources, invoice, customer_time=None)
    return invoice
