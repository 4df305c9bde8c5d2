"""In-memory repositories, unit of work and neighbouring services for the invoicing use
cases (domain/ports.py), after cosmicpython's fakes: the same named queries over dicts.

``FakeStore`` is the database: a ``FakeUnitOfWork`` over it keeps its writes aside and
applies them on a clean exit only (a failed step leaves nothing behind, as a rolled-back
transaction does), and collects the events the aggregates recorded into ``outbox``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType

from libs.core.domain import DomainEvent, EventCollector
from libs.core.errors import NotFound, Unavailable
from libs.core.paging import Page
from services.invoicing.domain.calculation import Billed, Carry, Charge, Coverage
from services.invoicing.domain.commands import InvoiceFilters
from services.invoicing.domain.model import CreditNote, Invoice, InvoiceLine, Terms
from services.invoicing.domain.ports import (
    ChargeRequest,
    ChargeResult,
    CoverageQuery,
    Reading,
    ReceivedOutcome,
    RefundResult,
    Session,
    SessionRequest,
)


@dataclass
class FakeStore:
    invoices: dict[str, Invoice] = field(default_factory=dict)
    lines: dict[str, list[InvoiceLine]] = field(default_factory=dict)
    billed: list[tuple[str, str, Billed]] = field(default_factory=list)  # (merchant, subscription, row)
    carry: dict[tuple[str, str, str], Carry] = field(default_factory=dict)
    credit_notes: list[CreditNote] = field(default_factory=list)
    outcomes: dict[tuple[str, str], ReceivedOutcome] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    outbox: list[DomainEvent] = field(default_factory=list)


class FakeInvoices:
    def __init__(self, data: FakeStore, seen: EventCollector) -> None:
        self._data = data
        self._seen = seen

    async def get(self, merchant_id: str, invoice_id: str, *, lock: bool = False, field: str = "id") -> Invoice:
        found = self._data.invoices.get(invoice_id)
        if found is None or found.merchant_id != merchant_id:
            raise NotFound("invoice", invoice_id, field=field)
        return self._seen.track(found)

    async def by_sequence(self, merchant_id: str, subscription_id: str, sequence_number: int, *, lock: bool = False) -> Invoice | None:
        for found in self._data.invoices.values():
            key = (found.merchant_id, found.subscription_id, found.sequence_number, found.purpose)
            if key == (merchant_id, subscription_id, sequence_number, "subscription"):
                return self._seen.track(found)
        return None

    async def by_reference(self, merchant_id: str, purpose: str, reference: str) -> Invoice | None:
        for found in self._data.invoices.values():
            if (found.merchant_id, found.purpose, found.reference) == (merchant_id, purpose, reference):
                return self._seen.track(found)
        return None

    async def add_ad_hoc_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        assert invoice.reference is not None
        existing = await self.by_reference(invoice.merchant_id, invoice.purpose, invoice.reference)
        if existing is not None:
            return existing, False
        self._data.invoices[invoice.id] = self._seen.track(invoice)
        return invoice, True

    async def add_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        existing = await self.by_sequence(invoice.merchant_id, invoice.subscription_id, invoice.sequence_number)
        if existing is not None:
            return existing, False
        self._data.invoices[invoice.id] = self._seen.track(invoice)
        return invoice, True

    async def save(self, invoice: Invoice) -> None:
        assert invoice.id in self._data.invoices
        self._data.invoices[invoice.id] = self._seen.track(invoice)

    async def list_page(self, merchant_id: str, filters: InvoiceFilters, page: Page) -> tuple[list[Invoice], int]:
        matching = [
            i
            for i in self._data.invoices.values()
            if i.merchant_id == merchant_id
            and filters.status in (None, i.status)
            and filters.subscription_id in (None, i.subscription_id)
            and filters.customer_id in (None, i.customer_id)
        ]
        matching.sort(key=lambda i: (i.created_at, i.sequence_number, i.id), reverse=True)
        return matching[page.offset : page.offset + page.limit], len(matching)

    async def of_subscription(self, merchant_id: str, subscription_id: str) -> list[Invoice]:
        found = [
            i
            for i in self._data.invoices.values()
            if i.merchant_id == merchant_id and i.subscription_id == subscription_id and i.purpose == "subscription"
        ]
        return [self._seen.track(i) for i in sorted(found, key=lambda i: i.sequence_number)]

    async def by_sequences(
        self, merchant_id: str, keys: Sequence[tuple[str, int]], *, lock: bool = False
    ) -> dict[tuple[str, int], Invoice]:
        out = {}
        for sub, k in keys:
            found = await self.by_sequence(merchant_id, sub, k, lock=lock)
            if found is not None:
                out[(sub, k)] = found
        return out

    async def add_many_if_absent(self, batch: Sequence[Invoice]) -> dict[tuple[str, int], Invoice]:
        return {(i.subscription_id, i.sequence_number): (await self.add_if_absent(i))[0] for i in batch}

    async def save_many(self, batch: Sequence[Invoice]) -> None:
        for invoice in batch:
            await self.save(invoice)

    async def of_subscriptions(self, merchant_id: str, subscription_ids: Sequence[str]) -> dict[str, list[Invoice]]:
        return {s: await self.of_subscription(merchant_id, s) for s in subscription_ids}


class FakeLines:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def add_all(self, merchant_id: str, lines: Sequence[InvoiceLine]) -> None:
        for line in lines:
            self._data.lines.setdefault(line.invoice_id, []).append(line)

    async def of_invoices(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLine]]:
        return {i: sorted(self._data.lines.get(i, []), key=lambda line: line.position) for i in invoice_ids}


class FakeBilled:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def add_all(self, merchant_id: str, subscription_id: str, billed: Sequence[Billed]) -> None:
        self._data.billed.extend((merchant_id, subscription_id, b) for b in billed)

    async def of_subscription(self, merchant_id: str, subscription_id: str, *, window_end_after: datetime) -> list[Billed]:
        return [b for m, s, b in self._data.billed if (m, s) == (merchant_id, subscription_id) and b.window.end > window_end_after]

    async def add_many(self, merchant_id: str, billed: Sequence[tuple[str, Sequence[Billed]]]) -> None:
        for subscription_id, rows in billed:
            await self.add_all(merchant_id, subscription_id, rows)

    async def of_subscriptions(
        self, merchant_id: str, subscription_ids: Sequence[str], *, window_end_after: datetime
    ) -> dict[str, list[Billed]]:
        return {s: await self.of_subscription(merchant_id, s, window_end_after=window_end_after) for s in subscription_ids}


class FakeCarry:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def lock(self, merchant_id: str, customer_id: str, currency: str) -> Carry:
        return await self.peek(merchant_id, customer_id, currency)

    async def peek(self, merchant_id: str, customer_id: str, currency: str) -> Carry:
        return self._data.carry.get((merchant_id, customer_id, currency), Carry(Decimal(0), 0))

    async def save(self, merchant_id: str, customer_id: str, currency: str, carry: Carry, now: datetime) -> None:
        self._data.carry[(merchant_id, customer_id, currency)] = carry

    async def lock_many(self, merchant_id: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Carry]:
        return {(c, cur): await self.lock(merchant_id, c, cur) for c, cur in sorted(set(keys))}

    async def save_many(self, merchant_id: str, carries: dict[tuple[str, str], Carry], now: datetime) -> None:
        for (c, cur), carry in carries.items():
            await self.save(merchant_id, c, cur, carry, now)


class FakeCreditNotes:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def add(self, note: CreditNote) -> None:
        issued_refunds = [
            n for n in self._data.credit_notes if n.invoice_id == note.invoice_id and n.kind == "refund" and n.status == "ISSUED"
        ]
        if note.kind == "refund" and note.status == "ISSUED" and issued_refunds:
            raise AssertionError(f"the store's unique index: invoice {note.invoice_id} has an ISSUED refund")
        self._data.credit_notes.append(note)

    async def save(self, note: CreditNote) -> None:
        (index,) = [i for i, n in enumerate(self._data.credit_notes) if n.id == note.id]
        self._data.credit_notes[index] = note

    async def of_invoice(self, invoice_id: str) -> list[CreditNote]:
        return sorted((n for n in self._data.credit_notes if n.invoice_id == invoice_id), key=lambda n: (n.created_at, n.id))


class FakeOutcomes:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def add_if_absent(self, outcome: ReceivedOutcome) -> bool:
        key = (outcome.attempt_key, outcome.status)
        if key in self._data.outcomes:
            return False
        self._data.outcomes[key] = outcome
        return True

    async def succeeded_charge_of(self, invoice_id: str) -> str | None:
        paid = sorted(
            (o for o in self._data.outcomes.values() if o.invoice_id == invoice_id and o.status == "succeeded"),
            key=lambda o: o.received_at,
        )
        return None if not paid else (paid[0].provider_payment_ref or "")


class FakeNumbering:
    def __init__(self, data: FakeStore) -> None:
        self._data = data

    async def next_number(self, merchant_id: str) -> int:
        self._data.counters[merchant_id] = self._data.counters.get(merchant_id, 0) + 1
        return self._data.counters[merchant_id]

    async def next_numbers(self, merchant_id: str, count: int) -> list[int]:
        return [await self.next_number(merchant_id) for _ in range(count)]


class FakeUnitOfWork:
    """A transaction over ``store``: works on a copy, applied at a clean exit."""

    def __init__(self, store: FakeStore) -> None:
        self._store = store

    async def __aenter__(self) -> FakeUnitOfWork:
        self.seen = EventCollector()
        self._data = copy.deepcopy(self._store)
        self._data.outbox = []
        self.invoices = FakeInvoices(self._data, self.seen)
        self.lines = FakeLines(self._data)
        self.billed = FakeBilled(self._data)
        self.carry = FakeCarry(self._data)
        self.credit_notes = FakeCreditNotes(self._data)
        self.outcomes = FakeOutcomes(self._data)
        self.numbering = FakeNumbering(self._data)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None:
            return
        events = list(self.seen.collect_new_events())
        outbox = self._store.outbox
        self._store.__dict__.update(self._data.__dict__)
        self._store.outbox = [*outbox, *events]


# --- neighbouring services -------------------------------------------------------------


class FakeCatalog:
    def __init__(self, charges: Sequence[Charge] = ()) -> None:
        self.versions: dict[str, list[Charge]] = {}
        self.default = list(charges)
        self.calls = 0

    async def charges(self, terms: Terms) -> list[Charge]:
        self.calls += 1
        return list(self.versions.get(terms.plan_version_id, self.default))


class FakeMeter:
    """Usage per (metric, subject, window start, window end): a quantity set by the test
    (0 unless set), and one watermark for all (``complete_until``; None = far ahead).
    ``lagging`` answers: so many readings come with a watermark in the past first."""

    def __init__(self) -> None:
        self.quantities: dict[tuple[str, str, datetime, datetime], Decimal] = {}
        self.complete_until: datetime | None = None
        self.lagging = 0
        self.lag_until: datetime | None = None
        self.asked: list[tuple[str, str, datetime, datetime]] = []
        self.batches = 0
        self.down = False
        # runs once, after the next answer: events stored just after that answer's usage
        # was aggregated, though its watermark (read a moment later) already covers them
        self.after_next_answer: Callable[[], None] | None = None

    def set(self, metric_id: str, subject: str, start: datetime, end: datetime, quantity: str) -> None:
        self.quantities[(metric_id, subject, start, end)] = Decimal(quantity)

    async def usage(self, metric_id: str, subject: str, start: datetime, end: datetime) -> Reading:
        if self.down:
            raise Unavailable("METERING_DOWN", "metering is down")
        key = (metric_id, subject, start, end)
        self.asked.append(key)
        until = self.complete_until or datetime.max.replace(tzinfo=start.tzinfo)
        quantity = self.quantities.get(key, Decimal(0))
        if self.lagging > 0:
            self.lagging -= 1
            until = self.lag_until or datetime.min.replace(tzinfo=start.tzinfo)
        if self.after_next_answer is not None:
            hook, self.after_next_answer = self.after_next_answer, None
            hook()
        return Reading(quantity, until, {"billableMetricId": metric_id, "subject": subject, "value": str(quantity)})

    async def usages(self, wanted: Sequence[tuple[str, str, datetime, datetime]]) -> tuple[list[Reading], datetime | None]:
        """The batch reading: the watermark is taken before the quantities (one lagging
        answer counts once for the whole batch)."""
        if self.down:
            raise Unavailable("METERING_DOWN", "metering is down")
        self.batches += 1
        until: datetime | None = self.complete_until or datetime.max.replace(tzinfo=UTC)
        if self.lagging > 0:
            self.lagging -= 1
            until = self.lag_until or datetime.min.replace(tzinfo=UTC)
        out = []
        for key in wanted:
            self.asked.append(key)
            quantity = self.quantities.get(key, Decimal(0))
            out.append(Reading(quantity, until, {"billableMetricId": key[0], "subject": key[1], "value": str(quantity)}))
        return out, until


class FakeSubscriptions:
    def __init__(self) -> None:
        self.paid: list[tuple[str, str, int]] = []
        self.fail = False

    async def invoice_paid(self, invoice: Invoice) -> None:
        if self.fail:
            raise Unavailable("SUBSCRIPTION_DOWN", "the subscription service is down")
        self.paid.append((invoice.subscription_id, invoice.id, invoice.sequence_number))


class FakeEntitlements:
    """Coverages set by the test per (subscription, metric, window start, window end) (not
    found unless set), one watermark for all (``usage_counted_until``; None = far ahead),
    every call recorded; ``purchase_paid`` records (invoice id, paid at as sent)."""

    def __init__(self) -> None:
        self.coverage: dict[tuple[str, str, datetime, datetime], Coverage] = {}
        self.usage_counted_until: datetime | None = None
        self.calls: list[list[CoverageQuery]] = []
        self.paid: list[tuple[str, datetime | None]] = []
        self.fail = False

    def set(self, subscription_id: str, metric_id: str, start: datetime, end: datetime, coverage: Coverage) -> None:
        self.coverage[(subscription_id, metric_id, start, end)] = coverage

    async def coverages(self, queries: Sequence[CoverageQuery]) -> tuple[list[Coverage | None], datetime | None]:
        if self.fail:
            raise Unavailable("ENTITLEMENT_DOWN", "the entitlement service is down")
        self.calls.append(list(queries))
        until = self.usage_counted_until or datetime.max.replace(tzinfo=UTC)
        return [self.coverage.get((q.subscription_id, q.metric_id, q.start, q.end)) for q in queries], until

    async def purchase_paid(self, invoice: Invoice, paid_at: datetime | None) -> None:
        if self.fail:
            raise Unavailable("ENTITLEMENT_DOWN", "the entitlement service is down")
        self.paid.append((invoice.id, paid_at))


class FakePayments:
    """The payment service: sessions per entity (idempotent, ``replace`` renews), every
    OpenSessions call recorded (one list per call); ChargeInvoice answers ``charge`` (a
    function of the request, default succeeded) or raises ``charge_error``; RefundInvoice
    records (invoice, credit note, amount) and answers ``refunded`` (or raises
    ``refund_error``); ``fail`` makes every call UNAVAILABLE."""

    def __init__(self) -> None:
        self.calls: list[list[SessionRequest]] = []
        self.sessions: dict[tuple[str, str], Session] = {}
        self.charges: list[ChargeRequest] = []
        self.charge: Callable[[ChargeRequest], ChargeResult] = lambda r: ChargeResult("succeeded", r.attempt_key, "ch_" + r.attempt_key)
        self.charge_error: Exception | None = None
        self.refunds: list[tuple[str, str, int]] = []
        self.refunded = True
        self.refund_error: Exception | None = None
        self.fail = False
        self.merchants: list[str] = []

    async def open_sessions(self, merchant_id: str, requests: Sequence[SessionRequest]) -> list[Session]:
        if self.fail:
            raise Unavailable("PAYMENT_DOWN", "the payment service is down")
        self.merchants.append(merchant_id)
        self.calls.append(list(requests))
        out = []
        for r in requests:
            key = (r.entity_type, r.entity_id)
            if key not in self.sessions or r.replace:
                number = sum(len(c) for c in self.calls)
                session_id = f"ps_{r.entity_id.removeprefix('inv_')}_{number}"
                self.sessions[key] = Session(session_id, f"http://pay.example/checkout/{merchant_id}/{session_id}")
            out.append(self.sessions[key])
        return out

    async def charge_invoice(self, merchant_id: str, request: ChargeRequest) -> ChargeResult:
        if self.fail:
            raise Unavailable("PAYMENT_DOWN", "the payment service is down")
        self.merchants.append(merchant_id)
        self.charges.append(request)
        if self.charge_error is not None:
            raise self.charge_error
        return self.charge(request)

    async def refund_invoice(
        self, merchant_id: str, *, invoice_id: str, credit_note_id: str, amount: int, currency: str, reason: str | None
    ) -> RefundResult:
        if self.fail:
            raise Unavailable("PAYMENT_DOWN", "the payment service is down")
        self.merchants.append(merchant_id)
        if self.refund_error is not None:
            raise self.refund_error
        self.refunds.append((invoice_id, credit_note_id, amount))
        if not self.refunded:
            return RefundResult(False, None, "succeeded")
        return RefundResult(True, "re_" + credit_note_id.removeprefix("crn_"), "succeeded")
