"""The engine's steps for many invoices at once (OpenInvoices, CloseInvoices, IssueInvoices).

Each item is answered on its own (its invoice or its error) and means exactly what the
single step means (use_cases.py): idempotent by (subscription, sequence number), one
invoice per pair (the store's unique key), usage read only once metering's watermark has
passed the moment of calculation, numbers gapless. What a batch saves is the round trips:
one transaction per batch, one query per kind of row, one metering call (and one watermark
wait) for the usage of every item, one entitlement call for the coverage of every
entitled price's usage, the plan versions' charges read once per batch, one payment call
for the checkout sessions of every invoice issued with something owed.

An error of the database fails the whole call (nothing of it is committed; the engine
runs every item again); an error of one item's inputs or rules fails that item only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.core.clock import Clock
from libs.core.errors import DomainError, NotFound, Unavailable
from services.invoicing.domain import use_cases
from services.invoicing.domain.calculation import Carry, Charge, Coverage, Line, Window
from services.invoicing.domain.commands import CloseInvoice, IssueInvoice, OpenInvoice
from services.invoicing.domain.model import Invoice, Terms, invoice_number
from services.invoicing.domain.payments import open_sessions_at_issue
from services.invoicing.domain.ports import InvoicingUnitOfWork, Reading
from services.invoicing.domain.use_cases import Inputs, Policy, Sources, UnitOfWorkFactory

MAX_ITEMS = 1000


@dataclass(frozen=True)
class StepResult:
    invoice: Invoice | None = None
    error: DomainError | None = None


def _failed(err: DomainError) -> StepResult:
    return StepResult(error=err)


def _not_open(terms: Terms, k: int) -> DomainError:
    return use_cases.not_open(terms, k)


# --- open --------------------------------------------------------------------------------


async def open_invoices(
    unit_of_work: UnitOfWorkFactory, merchant_id: str, now: datetime, commands: Sequence[OpenInvoice]
) -> list[StepResult]:
    results: list[StepResult | None] = [None] * len(commands)
    fresh: dict[tuple[str, int], Invoice] = {}
    wanted: dict[int, tuple[str, int]] = {}
    for index, command in enumerate(commands):
        try:
            terms = command.terms.check()
            key = (terms.subscription_id, command.sequence_number)
            wanted[index] = key
            if key not in fresh:
                fresh[key] = Invoice.open(
                    merchant_id=merchant_id,
                    terms=terms,
                    sequence_number=command.sequence_number,
                    layout=command.layout,
                    at=command.effective_time,
                    now=now,
                )
        except DomainError as err:
            results[index] = _failed(err)
            wanted.pop(index, None)
    async with unit_of_work() as uow:
        stored = await uow.invoices.add_many_if_absent(list(fresh.values()))
    for index, key in wanted.items():
        found = stored.get(key)
        if found is None:
            results[index] = _failed(NotFound("subscription", key[0], field="terms.subscriptionId"))
        else:
            results[index] = StepResult(invoice=found)
    return [r if r is not None else _failed(Unavailable("BATCH_ITEM_LOST", "not answered")) for r in results]


# --- close -------------------------------------------------------------------------------


async def close_invoices(
    unit_of_work: UnitOfWorkFactory, merchant_id: str, now: datetime, commands: Sequence[CloseInvoice]
) -> list[StepResult]:
    results: list[StepResult] = []
    async with unit_of_work() as uow:
        keys = [(c.terms.subscription_id, c.sequence_number) for c in commands]
        found = await uow.invoices.by_sequences(merchant_id, keys, lock=True)
        changed: dict[str, Invoice] = {}
        for command, key in zip(commands, keys, strict=True):
            try:
                invoice = found.get(key)
                if invoice is None:
                    raise _not_open(command.terms, command.sequence_number)
                use_cases.same_subscription(invoice, command.terms)
                if invoice.close(grace_period_end=command.grace_period_end, layout=command.layout, now=now):
                    changed[invoice.id] = invoice
                results.append(StepResult(invoice=invoice))
            except DomainError as err:
                results.append(_failed(err))
        await uow.invoices.save_many(list(changed.values()))
    return results


# --- issue -------------------------------------------------------------------------------


@dataclass
class _Issue:
    index: int
    command: IssueInvoice
    terms: Terms
    invoice: Invoice
    earlier: list[Invoice]
    charges: list[Charge] | None = None
    current: list[Window] | None = None
    late: list[Window] | None = None
    horizon: datetime | None = None
    inputs: Inputs | None = None


async def _charges_once(sources: Sources, terms: Terms, cache: dict[tuple[str, str, int], list[Charge]]) -> list[Charge]:
    key = (terms.plan_id, terms.plan_version_id, terms.plan_version_number)
    if key not in cache:
        cache[key] = await sources.catalog.charges(terms)
    return cache[key]


async def _read_all(
    sources: Sources, policy: Policy, wanted: list[tuple[str, str, Window]], complete_at: datetime
) -> dict[tuple[str, str, Window], Reading]:
    """Every (metric, subject, window) reading, asked once metering's watermark has passed
    ``complete_at`` (the answer's watermark is read before its totals)."""
    keys = list(dict.fromkeys(wanted))
    if not keys:
        return {}
    waited, delay = 0.0, 0.05
    while True:
        readings, until = await sources.meter.usages([(m, s, w.start, w.end) for m, s, w in keys])
        if until is not None and until >= complete_at:
            return dict(zip(keys, readings, strict=True))
        if waited >= policy.usage_wait_seconds:
            raise use_cases.usage_not_complete(until, complete_at)
        await policy.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.5)


def _reader(readings: dict[tuple[str, str, Window], Reading], subject: str) -> Callable[[str, Window], Reading]:
    def read(metric_id: str, window: Window) -> Reading:
        return readings[(metric_id, subject, window)]

    return read


def _coverer(
    covered: dict[use_cases.CoverageKey, tuple[Coverage, dict[str, Any]]], subscription_id: str
) -> Callable[[str, Window], tuple[Coverage, dict[str, Any]] | None]:
    def cover(metric_id: str, window: Window) -> tuple[Coverage, dict[str, Any]] | None:
        return covered.get((subscription_id, metric_id, window))

    return cover


async def issue_invoices(
    unit_of_work: UnitOfWorkFactory, sources: Sources, policy: Policy, clock: Clock, merchant_id: str, commands: Sequence[IssueInvoice]
) -> list[StepResult]:
    results: list[StepResult | None] = [None] * len(commands)
    checked: dict[int, Terms] = {}
    for index, command in enumerate(commands):
        try:
            checked[index] = command.terms.check()
        except DomainError as err:
            results[index] = _failed(err)
    # one item per subscription in this batch; the rest run one by one afterwards
    later: list[int] = []
    seen: set[str] = set()
    mine: list[int] = []
    for index, terms in checked.items():
        if terms.subscription_id in seen:
            later.append(index)
        else:
            seen.add(terms.subscription_id)
            mine.append(index)
    work: list[_Issue] = []
    async with unit_of_work() as uow:
        keys = [(checked[i].subscription_id, commands[i].sequence_number) for i in mine]
        found = await uow.invoices.by_sequences(merchant_id, keys)
        earlier_of = await uow.invoices.of_subscriptions(merchant_id, sorted({k[0] for k in keys}))
    for index, key in zip(mine, keys, strict=True):
        terms = checked[index]
        try:
            invoice = found.get(key)
            if invoice is None:
                raise _not_open(terms, key[1])
            use_cases.same_subscription(invoice, terms)
        except DomainError as err:
            results[index] = _failed(err)
            continue
        if not invoice.is_open:
            results[index] = StepResult(invoice=invoice)
            continue
        work.append(_Issue(index, commands[index], terms, invoice, earlier_of.get(terms.subscription_id, [])))
    complete_at = clock.now()
    cache: dict[tuple[str, str, int], list[Charge]] = {}
    wanted: list[tuple[str, str, Window]] = []
    planned: list[_Issue] = []
    for item in work:
        try:
            item.charges = await _charges_once(sources, item.terms, cache)
            item.current, item.late, item.horizon = use_cases.windows_to_read(
                policy, item.invoice, item.earlier, at=item.command.effective_time
            )
        except DomainError as err:
            results[item.index] = _failed(err)
            continue
        metered = [c for c in item.charges if c.kind == "metered"]
        wanted += [(c.source_id, item.terms.customer_id, w) for c in metered for w in (*item.current, *item.late)]
        planned.append(item)
    covering: list[use_cases.CoverageKey] = []
    for item in planned:
        assert item.charges is not None and item.current is not None and item.late is not None
        covering += use_cases.coverage_keys(item.terms.subscription_id, item.charges, [*item.current, *item.late])
    try:
        readings = await _read_all(sources, policy, wanted, complete_at)
        # the grants' coverage of every entitled price's usage: one call for the batch
        covered = await use_cases.read_coverages(sources, policy, covering, complete_at=complete_at)
    except DomainError as err:
        for item in planned:
            results[item.index] = _failed(err)
        planned = []
    for item in planned:
        assert item.charges is not None and item.current is not None and item.late is not None and item.horizon is not None
        item.inputs = use_cases.inputs_of(
            item.charges,
            item.current,
            item.late,
            item.horizon,
            _reader(readings, item.terms.customer_id),
            _coverer(covered, item.terms.subscription_id),
        )
    if planned:
        await _issue_planned(unit_of_work, sources, policy, clock, merchant_id, planned, results)
    for index in later:  # a second step of a subscription already in this batch
        try:
            invoice = await use_cases.issue_invoice(unit_of_work, sources, policy, clock, merchant_id, commands[index])
            results[index] = StepResult(invoice=invoice)
        except DomainError as err:
            results[index] = _failed(err)
    return [r if r is not None else _failed(Unavailable("BATCH_ITEM_LOST", "not answered")) for r in results]


class _SessionsFailed(Exception):
    """The batch's checkout sessions could not be opened: its transaction rolls back."""

    def __init__(self, error: DomainError, items: list[_Issue]) -> None:
        super().__init__(error.message)
        self.error = error
        self.items = items


async def _issue_planned(
    unit_of_work: UnitOfWorkFactory,
    sources: Sources,
    policy: Policy,
    clock: Clock,
    merchant_id: str,
    planned: list[_Issue],
    results: list[StepResult | None],
) -> None:
    """One transaction: the invoice rows, then the carry rows, then the counter locked
    (the single step's order), each invoice calculated and issued, numbered, then the
    checkout sessions of those with something owed (one OpenSessions call) before the
    commit. Should the sessions fail, nothing is committed and every item that was to be
    issued answers that (retryable) error; the engine runs them again."""
    answers: dict[int, StepResult] = {}
    try:
        async with unit_of_work() as uow:
            await _issue_in(uow, sources, policy, clock, merchant_id, planned, answers)
    except _SessionsFailed as failed:
        for item in failed.items:
            answers[item.index] = _failed(failed.error)
    for index, answer in answers.items():
        results[index] = answer


async def _issue_in(
    uow: InvoicingUnitOfWork,
    sources: Sources,
    policy: Policy,
    clock: Clock,
    merchant_id: str,
    planned: list[_Issue],
    answers: dict[int, StepResult],
) -> None:
    locked = await uow.invoices.by_sequences(
        merchant_id, [(i.terms.subscription_id, i.command.sequence_number) for i in planned], lock=True
    )
    now = clock.now()
    horizon = min(i.horizon for i in planned if i.horizon is not None)
    billed_of = await uow.billed.of_subscriptions(merchant_id, sorted({i.terms.subscription_id for i in planned}), window_end_after=horizon)
    carries = await uow.carry.lock_many(merchant_id, [(i.invoice.customer_id, i.invoice.currency) for i in planned])
    issued: list[tuple[_Issue, Invoice, list[Line]]] = []
    all_lines = []
    billed_rows = []
    touched: dict[tuple[str, str], Carry] = {}
    for item in planned:
        invoice = locked.get((item.terms.subscription_id, item.command.sequence_number))
        if invoice is None:
            answers[item.index] = _failed(_not_open(item.terms, item.command.sequence_number))
            continue
        if not invoice.is_open:  # a racing twin issued it meanwhile
            answers[item.index] = StepResult(invoice=invoice)
            continue
        assert item.inputs is not None and item.horizon is not None
        carry_key = (invoice.customer_id, invoice.currency)
        before = [b for b in billed_of.get(item.terms.subscription_id, []) if b.window.end > item.horizon]
        try:
            result = use_cases.calculate(policy, invoice, item.terms, item.inputs, before, carries[carry_key])
            invoice.terms = item.terms.to_json()
            lines, credit_note = invoice.issue(calculation=result, issued_at=item.command.effective_time, now=now)
        except DomainError as err:
            answers[item.index] = _failed(err)
            continue
        carries[carry_key] = touched[carry_key] = result.carry_after
        all_lines += use_cases.stored_lines(invoice, lines, item.inputs.charges)
        billed_rows.append((invoice.subscription_id, result.billed))
        if credit_note is not None:
            await uow.credit_notes.add(credit_note)
        issued.append((item, invoice, lines))
    await uow.lines.add_all(merchant_id, all_lines)
    await uow.billed.add_many(merchant_id, billed_rows)
    await uow.carry.save_many(merchant_id, touched, now)
    # last: the merchant's counter row stays locked until the commit
    numbers = await uow.numbering.next_numbers(merchant_id, len(issued))
    for (item, invoice, _), number in zip(issued, numbers, strict=True):
        invoice.number(invoice_number(item.command.effective_time.year, number))
        answers[item.index] = StepResult(invoice=invoice)
    try:
        await open_sessions_at_issue(sources, merchant_id, [(invoice, lines) for _, invoice, lines in issued], now)
    except DomainError as err:
        raise _SessionsFailed(err, [item for item, _, _ in issued]) from err
    await uow.invoices.save_many([invoice for _, invoice, _ in issued])
