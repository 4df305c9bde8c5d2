"""The invoicing service in-process against the real PostgreSQL, called over gRPC with
merchant tokens: the unique (subscription, k) under concurrent OpenInvoice and
IssueInvoice, gapless numbers under concurrent issues, a payment recorded once however
many record it at the same time, the events it leaves in the outbox, and tenancy (another
merchant's invoice is NOT_FOUND on every RPC). The catalog, metering and the subscription
service are in-memory fakes (tests/fakes.py); their clients are tested end to end."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.invoicing.v1 import invoicing_events_pb2 as ev
from accrue.invoicing.v1 import invoicing_service_pb2 as svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc

from libs.core.errors import DomainError, FailedPrecondition, NotFound, Unprocessable
from libs.infra import grpc_client
from libs.infra.proto_time import to_timestamp
from libs.infra.service import Host, Runtime
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.invoicing import app
from services.invoicing.domain.calculation import Window
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.server import InvoicingServicer
from services.invoicing.tests.fakes import FakeCatalog, FakeMeter, FakeSubscriptions
from services.invoicing.tests.unit.world import FEE, GRACE, METERED, METRIC, MONTHS

pytestmark = pytest.mark.integration

A, B = "org_store_a", "org_store_b"
USD = 1_000_000_000


@dataclasses.dataclass
class Service:
    host: Host
    stub: invoicing_service_pb2_grpc.InvoicingServiceStub
    meter: FakeMeter
    subscriptions: FakeSubscriptions

    async def call(self, method: str, request: Any, merchant: str = A) -> Any:
        return await getattr(self.stub, method)(request, metadata=[merchant_metadata(merchant)])

    async def scalar(self, query: str) -> Any:
        assert self.host.runtime is not None
        async with self.host.runtime.db.engine.connect() as conn:
            return (await conn.execute(sa.text(query))).scalar()


@pytest.fixture
async def service(start_host: StartHost) -> AsyncIterator[Service]:
    meter, subscriptions = FakeMeter(), FakeSubscriptions()
    sources = Sources(FakeCatalog([FEE, METERED]), meter, subscriptions)

    def register(server: grpc.aio.Server, runtime: Runtime) -> None:
        servicer = InvoicingServicer(runtime.db, runtime.clock, sources, Policy(usage_wait_seconds=0.5))
        invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(servicer, server)

    host = await start_host(dataclasses.replace(app.DEFINITION, register=register, talks_to=()), outbox_relay_enabled=False)
    async with grpc_client.channel(f"127.0.0.1:{host.grpc_port}") as channel:
        yield Service(host, invoicing_service_pb2_grpc.InvoicingServiceStub(channel), meter, subscriptions)


def _terms(subscription_id: str, customer_id: str = "cus_1") -> svc.BillingTerms:
    return svc.BillingTerms(
        subscription_id=subscription_id,
        customer_id=customer_id,
        plan_id="plan_1",
        plan_version_id="pv_1",
        plan_version_number=1,
        currency="USD",
        billing_anchor=to_timestamp(MONTHS[0]),
        billing_cadence="P1M",
        payment_term_days=7,
        tax_behavior="exclusive",
        default_tax_rate="10",
    )


def _window(k: int) -> svc.BillingWindow:
    w = Window(MONTHS[k], MONTHS[k + 1], MONTHS[k], MONTHS[k + 1], k)
    return svc.BillingWindow(
        start=to_timestamp(w.start),
        end=to_timestamp(w.end),
        period_start=to_timestamp(w.start),
        period_end=to_timestamp(w.end),
        period_index=k,
    )


def _open(subscription_id: str, k: int, customer_id: str = "cus_1") -> svc.OpenInvoiceRequest:
    composition = (
        svc.InvoiceComposition(advance=[_window(0)], one_time_fees=True)
        if k == 0
        else svc.InvoiceComposition(arrears=[_window(k - 1)], advance=[_window(k)])
    )
    return svc.OpenInvoiceRequest(
        terms=_terms(subscription_id, customer_id),
        sequence_number=k,
        composition=composition,
        effective_time=to_timestamp(MONTHS[max(k - 1, 0)]),
    )


def _issue(subscription_id: str, k: int, customer_id: str = "cus_1") -> svc.IssueInvoiceRequest:
    at = MONTHS[0] if k == 0 else MONTHS[k] + GRACE
    return svc.IssueInvoiceRequest(terms=_terms(subscription_id, customer_id), sequence_number=k, effective_time=to_timestamp(at))


async def _invoice_zero(service: Service, subscription_id: str, merchant: str = A) -> svc.Invoice:
    await service.call("OpenInvoice", _open(subscription_id, 0), merchant)
    issued: svc.Invoice = await service.call("IssueInvoice", _issue(subscription_id, 0), merchant)
    return issued


async def test_concurrent_opens_make_one_invoice_per_subscription_and_k(service: Service) -> None:
    answers = await asyncio.gather(*(service.call("OpenInvoice", _open("sub_race", 1)) for _ in range(8)))
    assert len({a.id for a in answers}) == 1
    assert {a.status for a in answers} == {"ACTIVE"}
    assert await service.scalar("SELECT count(*) FROM invoices WHERE subscription_id = 'sub_race'") == 1


async def test_concurrent_issues_issue_once_and_numbers_stay_gapless(service: Service) -> None:
    subscriptions = [f"sub_n{i}" for i in range(6)]
    for subscription in subscriptions:
        await service.call("OpenInvoice", _open(subscription, 0))
    # every subscription's Invoice 0, each issued by three racing callers
    answers = await asyncio.gather(*(service.call("IssueInvoice", _issue(s, 0)) for s in subscriptions for _ in range(3)))
    numbers = {a.subscription_id: a.invoice_number for a in answers}
    assert len({(a.subscription_id, a.invoice_number) for a in answers}) == len(subscriptions)  # each answered with one number
    assert sorted(numbers.values()) == [f"INV-2026-{n:06d}" for n in range(1, 7)]
    issued = answers[0]
    assert issued.status == "ISSUED" and issued.grand_total == "53.90"  # 49.00 + 10 % tax
    assert issued.subtotal == "49.00" and issued.total_tax == "4.90" and issued.unpaid_amount == "53.90"
    assert issued.due_at.ToDatetime() == (MONTHS[0] + timedelta(days=7)).replace(tzinfo=None)
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.issued'") == 6
    assert await service.scalar("SELECT last_number FROM invoice_counters") == 6


async def test_concurrent_issues_of_one_customer_keep_the_rounding_carry_exact(service: Service) -> None:
    service.meter.set(METRIC, "cus_shared", MONTHS[0], MONTHS[1], "0.4")  # 0.004 USD on each invoice
    subscriptions = [f"sub_c{i}" for i in range(10)]
    for subscription in subscriptions:
        await service.call("OpenInvoice", _open(subscription, 1, customer_id="cus_shared"))
    answers = await asyncio.gather(*(service.call("IssueInvoice", _issue(s, 1, customer_id="cus_shared")) for s in subscriptions))
    billed = sum(Decimal(a.subtotal) for a in answers)
    exact = await service.scalar("SELECT exact_total FROM customer_carry WHERE customer_id = 'cus_shared'")
    total = await service.scalar("SELECT billed_total FROM customer_carry WHERE customer_id = 'cus_shared'")
    # each: 49.00 + 0.004 of usage (pre-tax), exact; the lines round 0.004 to 0.00, the carry
    # lines bring the billed total to the cent of the exact one: no update of the row lost
    assert exact == Decimal("490.04") * USD
    assert total == Decimal("490.04") * USD == billed * USD


async def test_an_issued_invoice_shows_its_lines_and_their_provenance(service: Service) -> None:
    service.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1234")
    opened = await service.call("OpenInvoice", _open("sub_lines", 1))
    open_ = await service.call("GetInvoice", svc.GetInvoiceRequest(id=opened.id, expand="lineItems"))
    assert open_.status == "ACTIVE" and open_.grand_total == "67.47"  # live: (49.00 + 12.34) + 10 %
    assert {li.invoice_display_name for li in open_.line_items.line_items} == {"Base fee", "Tokens"}
    issued = await service.call("IssueInvoice", _issue("sub_lines", 1))
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id, expand="lineItems,lineProvenance", line_items_limit=1))
    assert got.grand_total == "67.47" and got.item_count == 2
    assert got.line_items.total_count == 2 and len(got.line_items.line_items) == 1 and got.line_items.next_page_token
    rest = await service.call(
        "GetInvoiceLineItems", svc.GetInvoiceLineItemsRequest(id=issued.id, page_token=got.line_items.next_page_token)
    )
    lines = [*got.line_items.line_items, *rest.line_items]
    usage = next(li for li in lines if li.event_type == "usage")
    assert (usage.quantity_decimal, usage.total_price, usage.total_tax, usage.total_amount) == ("1234", "12.34", "1.23", "13.57")
    assert usage.metric_unit == "token" and usage.billable_metric_id == METRIC and usage.unit_price == "0.01"
    assert got.line_items.line_items[0].HasField("provenance")
    engine = await service.call("ListLineItems", svc.ListLineItemsRequest(subscription_id="sub_lines"))
    assert engine.total_count == 2 and {li.status for li in engine.data} == {"invoiced"}


async def test_an_open_invoice_is_estimated_on_read_and_shown_as_stored_when_it_cannot_be(service: Service) -> None:
    service.meter.set(METRIC, "cus_1", MONTHS[1], MONTHS[2], "500")
    opened = await service.call("OpenInvoice", _open("sub_estimate", 2))
    pending = await service.call("ListLineItems", svc.ListLineItemsRequest(subscription_id="sub_estimate", status="pending"))
    assert {(li.status, li.display_name, li.estimated_subtotal) for li in pending.data} == {
        ("pending", "Base fee", "49.00"),
        ("pending", "Tokens", "5.00"),
    }
    invoiced = await service.call("ListLineItems", svc.ListLineItemsRequest(subscription_id="sub_estimate", status="invoiced"))
    assert invoiced.total_count == 0
    service.meter.down = True
    shown = await service.call("GetInvoice", svc.GetInvoiceRequest(id=opened.id, expand="lineItems"))
    assert (shown.status, shown.grand_total, shown.line_items.total_count) == ("ACTIVE", "0.00", 0)
    service.meter.down = False
    live = await service.call("GetInvoice", svc.GetInvoiceRequest(id=opened.id))
    assert live.grand_total == "59.40"  # (49.00 + 5.00) + 10 %
    assert await service.scalar(f"SELECT grand_total FROM invoices WHERE id = '{opened.id}'") == 0  # stored nowhere


async def test_a_payment_recorded_concurrently_is_recorded_once(service: Service) -> None:
    issued = await _invoice_zero(service, "sub_pay")
    request = svc.RecordInvoicePaymentRequest(id=issued.id, method="out_of_band", reason="wire")
    results = await asyncio.gather(*(service.call("RecordInvoicePayment", request) for _ in range(6)), return_exceptions=True)
    paid = [r for r in results if isinstance(r, svc.RecordInvoicePaymentResponse)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(paid) == 1 and len(refused) == 5
    assert all(isinstance(r, FailedPrecondition) and r.reason == "INVOICE_ALREADY_PAID" for r in refused)
    assert paid[0].method == "out_of_band" and paid[0].invoice.status == "PAID" and paid[0].invoice.paid_amount == "53.90"
    assert service.subscriptions.paid == [("sub_pay", issued.id, 0)]
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.paid'") == 1
    payload = await service.scalar("SELECT payload FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.paid'")
    event = ev.InvoiceChanged.FromString(payload)
    assert event.kind == ev.INVOICE_CHANGE_KIND_PAID and event.invoice.id == issued.id and event.merchant_id == A


async def test_paying_an_open_invoice_is_refused_and_hosted_links_need_the_payment_service(service: Service) -> None:
    active = await service.call("OpenInvoice", _open("sub_open", 1))
    with pytest.raises(Unprocessable) as caught:
        await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=active.id, method="out_of_band"))
    assert caught.value.reason == "INVOICE_NOT_LINKABLE_STATUS"
    issued = await _invoice_zero(service, "sub_nolink")
    assert not issued.HasField("payment_url")  # no payment service configured: issued without a checkout
    with pytest.raises(DomainError) as unconfigured:
        await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=issued.id, method="hosted_link"))
    assert (unconfigured.value.code.name, unconfigured.value.reason) == ("UNAVAILABLE", "PAYMENT_NOT_CONFIGURED")


async def test_another_merchants_invoice_is_not_found_on_every_rpc(service: Service) -> None:
    issued = await _invoice_zero(service, "sub_tenant")
    calls = {
        "GetInvoice": svc.GetInvoiceRequest(id=issued.id),
        "GetInvoiceLineItems": svc.GetInvoiceLineItemsRequest(id=issued.id),
        "ListLineItems": svc.ListLineItemsRequest(invoice_id=issued.id),
        "RecordInvoicePayment": svc.RecordInvoicePaymentRequest(id=issued.id, method="out_of_band"),
    }
    for method, request in calls.items():
        with pytest.raises(NotFound):
            await service.call(method, request, merchant=B)
    listed = await service.call("ListInvoices", svc.ListInvoicesRequest(subscription_id="sub_tenant"), merchant=B)
    assert list(listed.data) == [] and listed.pagination.total == 0
    with pytest.raises(NotFound):
        await service.call("ListInvoices", svc.ListInvoicesRequest(merchant_id=A), merchant=B)
    lines = await service.call("ListLineItems", svc.ListLineItemsRequest(subscription_id="sub_tenant"), merchant=B)
    assert lines.total_count == 0
    with pytest.raises(FailedPrecondition):  # the engine's steps of B do not reach A's invoice
        await service.call("IssueInvoice", _issue("sub_tenant", 0), merchant=B)
    with pytest.raises(NotFound):
        await service.call("OpenInvoice", _open("sub_tenant", 0), merchant=B)
    mine = await service.call("ListInvoices", svc.ListInvoicesRequest(subscription_id="sub_tenant"))
    assert [i.id for i in mine.data] == [issued.id]


async def test_lists_filter_and_order_newest_first(service: Service) -> None:
    for k in range(3):
        await service.call("OpenInvoice", _open("sub_list", k))
    await service.call("IssueInvoice", _issue("sub_list", 0))
    listed = await service.call("ListInvoices", svc.ListInvoicesRequest(subscription_id="sub_list"))
    assert [i.sequence_number for i in listed.data] == [2, 1, 0]
    active = await service.call("ListInvoices", svc.ListInvoicesRequest(subscription_id="sub_list", status="ACTIVE", limit=1))
    assert [i.sequence_number for i in active.data] == [2] and active.pagination.total == 2
    with pytest.raises(DomainError) as caught:
        await service.call("ListLineItems", svc.ListLineItemsRequest())
    assert caught.value.code.name == "INVALID_ARGUMENT" and caught.value.field == "subscriptionId"
