"""The batch steps (OpenInvoices, CloseInvoices, IssueInvoices) in-process against the
real PostgreSQL, over gRPC: each item answered on its own and exactly as its single RPC
would answer it; one invoice per (subscription, k) and gapless numbers when batches and
single steps race; one metering call (and one watermark wait) per batch; the rounding
carry of one customer's invoices in one batch; usage incomplete fails every item with a
retryable UNAVAILABLE. The catalog and metering are the fakes of tests/fakes.py."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from accrue.invoicing.v1 import invoicing_service_pb2 as svc

from libs.infra.proto_time import to_timestamp
from services.invoicing.tests.integration import test_invoicing_store as base
from services.invoicing.tests.integration.test_invoicing_store import USD, Service, _issue, _open, _terms
from services.invoicing.tests.unit.world import GRACE, METRIC, MONTHS

pytestmark = pytest.mark.integration

service = base.service  # the in-process invoicing service on the real PostgreSQL (fixture)


def _close(subscription_id: str, k: int, customer_id: str = "cus_1") -> svc.CloseInvoiceRequest:
    return svc.CloseInvoiceRequest(
        terms=_terms(subscription_id, customer_id),
        sequence_number=k,
        grace_period_end=to_timestamp(MONTHS[k] + GRACE),
        effective_time=to_timestamp(MONTHS[k]),
    )


def _invoices(answer: svc.InvoiceStepsResponse) -> list[svc.Invoice]:
    assert all(r.WhichOneof("result") == "invoice" for r in answer.results), answer
    return [r.invoice for r in answer.results]


async def test_a_batch_answers_each_item_on_its_own_and_repeats_are_idempotent(service: Service) -> None:
    bad = _open("sub_b_bad", 1)
    bad.composition.arrears[0].period_start.CopyFrom(to_timestamp(MONTHS[5]))  # a window outside its period: refused alone
    items = [_open(f"sub_b{i}", 1) for i in range(4)]
    opened = await service.call("OpenInvoices", svc.OpenInvoicesRequest(items=[*items, bad, items[0]]))
    kinds = [r.WhichOneof("result") for r in opened.results]
    assert kinds == ["invoice"] * 4 + ["error", "invoice"]
    assert (opened.results[4].error.code, opened.results[4].error.reason) == (3, "INVALID_WINDOW")  # INVALID_ARGUMENT
    assert opened.results[5].invoice.id == opened.results[0].invoice.id  # the same (subscription, k): one invoice
    again = _invoices(await service.call("OpenInvoices", svc.OpenInvoicesRequest(items=items)))
    assert [i.id for i in again] == [r.invoice.id for r in opened.results[:4]]
    assert await service.scalar("SELECT count(*) FROM invoices WHERE subscription_id LIKE 'sub_b%'") == 4

    never = _close("sub_b_never", 1)
    closed = await service.call("CloseInvoices", svc.CloseInvoicesRequest(items=[*[_close(f"sub_b{i}", 1) for i in range(4)], never]))
    assert [r.invoice.status for r in closed.results[:4]] == ["CLOSING"] * 4
    assert closed.results[4].error.reason == "INVOICE_NOT_OPEN" and not closed.results[4].error.retryable

    service.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1234")
    issued = await service.call(
        "IssueInvoices", svc.IssueInvoicesRequest(items=[*[_issue(f"sub_b{i}", 1) for i in range(4)], _issue("sub_b_never", 1)])
    )
    invoices = [r.invoice for r in issued.results[:4]]
    assert issued.results[4].error.reason == "INVOICE_NOT_OPEN"
    assert service.meter.batches == 1  # every item's usage in one metering call
    assert sorted(i.invoice_number for i in invoices) == [f"INV-2026-{n:06d}" for n in range(1, 5)]
    assert {(i.status, i.grand_total) for i in invoices} == {("ISSUED", "67.47")}  # (49.00 + 12.34) + 10 %
    repeat = _invoices(await service.call("IssueInvoices", svc.IssueInvoicesRequest(items=[_issue(f"sub_b{i}", 1) for i in range(4)])))
    assert [(i.id, i.invoice_number) for i in repeat] == [(i.id, i.invoice_number) for i in invoices]
    assert await service.scalar("SELECT last_number FROM invoice_counters") == 4


async def test_a_batch_issues_what_the_single_step_issues(service: Service) -> None:
    for subscription, customer in (("sub_one", "cus_one"), ("sub_many", "cus_many")):  # a carry each
        service.meter.set(METRIC, customer, MONTHS[0], MONTHS[1], "777.5")
        await service.call("OpenInvoice", _open(subscription, 1, customer))
        await service.call("CloseInvoice", _close(subscription, 1, customer))
    single = await service.call("IssueInvoice", _issue("sub_one", 1, "cus_one"))
    (batched,) = _invoices(await service.call("IssueInvoices", svc.IssueInvoicesRequest(items=[_issue("sub_many", 1, "cus_many")])))
    assert (batched.subtotal, batched.total_tax, batched.grand_total, batched.due_at, batched.issued_at) == (
        single.subtotal,
        single.total_tax,
        single.grand_total,
        single.due_at,
        single.issued_at,
    )

    def lines(invoice: svc.Invoice) -> list[tuple[str, str, str, str]]:
        return [(li.invoice_display_name, li.quantity_decimal, li.total_price, li.total_tax) for li in invoice.line_items.line_items]

    got = [await service.call("GetInvoice", svc.GetInvoiceRequest(id=i.id, expand="lineItems")) for i in (single, batched)]
    assert lines(got[0]) == lines(got[1]) and len(lines(got[0])) == 2  # the fee and the usage (7.775 -> 7.78)


async def test_batches_and_single_steps_racing_issue_once_with_gapless_numbers(service: Service) -> None:
    subscriptions = [f"sub_r{i}" for i in range(12)]
    await service.call("OpenInvoices", svc.OpenInvoicesRequest(items=[_open(s, 0) for s in subscriptions]))
    batch = svc.IssueInvoicesRequest(items=[_issue(s, 0) for s in subscriptions])
    answers = await asyncio.gather(
        service.call("IssueInvoices", batch),
        service.call("IssueInvoices", svc.IssueInvoicesRequest(items=list(reversed(batch.items)))),
        *(service.call("IssueInvoice", _issue(s, 0)) for s in subscriptions[::3]),
    )
    numbers: dict[str, set[str]] = {}
    for answer in answers:
        for invoice in _invoices(answer) if isinstance(answer, svc.InvoiceStepsResponse) else [answer]:
            numbers.setdefault(invoice.subscription_id, set()).add(invoice.invoice_number)
    assert all(len(n) == 1 for n in numbers.values()) and len(numbers) == 12
    assert sorted(n for (n,) in numbers.values()) == [f"INV-2026-{k:06d}" for k in range(1, 13)]
    assert await service.scalar("SELECT count(*) FROM invoices WHERE invoice_number IS NOT NULL") == 12
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.issued'") == 12


async def test_one_customers_invoices_in_one_batch_keep_the_rounding_carry_exact(service: Service) -> None:
    service.meter.set(METRIC, "cus_shared", MONTHS[0], MONTHS[1], "0.4")  # 0.004 USD on each invoice
    subscriptions = [f"sub_cb{i}" for i in range(10)]
    await service.call("OpenInvoices", svc.OpenInvoicesRequest(items=[_open(s, 1, customer_id="cus_shared") for s in subscriptions]))
    answer = await service.call(
        "IssueInvoices", svc.IssueInvoicesRequest(items=[_issue(s, 1, customer_id="cus_shared") for s in subscriptions])
    )
    billed = sum(Decimal(i.subtotal) for i in _invoices(answer))
    assert await service.scalar("SELECT exact_total FROM customer_carry WHERE customer_id = 'cus_shared'") == Decimal("490.04") * USD
    assert await service.scalar("SELECT billed_total FROM customer_carry WHERE customer_id = 'cus_shared'") == billed * USD
    assert billed == Decimal("490.04")


async def test_usage_not_complete_fails_every_item_retryably_and_a_lag_is_waited_out(service: Service) -> None:
    subscriptions = ["sub_w1", "sub_w2"]
    await service.call("OpenInvoices", svc.OpenInvoicesRequest(items=[_open(s, 1) for s in subscriptions]))
    service.meter.complete_until = MONTHS[0]  # far behind now: never complete within the wait
    failed = await service.call("IssueInvoices", svc.IssueInvoicesRequest(items=[_issue(s, 1) for s in subscriptions]))
    assert [(r.error.reason, r.error.retryable, r.error.code) for r in failed.results] == [("USAGE_NOT_COMPLETE", True, 14)] * 2
    assert await service.scalar("SELECT count(*) FROM invoices WHERE status = 'ISSUED'") == 0
    service.meter.complete_until = None
    service.meter.lagging, service.meter.batches = 2, 0
    done = _invoices(await service.call("IssueInvoices", svc.IssueInvoicesRequest(items=[_issue(s, 1) for s in subscriptions])))
    assert {i.status for i in done} == {"ISSUED"} and service.meter.batches == 3  # two lagging answers, then complete
    assert done[0].issued_at.ToDatetime() == (MONTHS[1] + GRACE).replace(tzinfo=None)
