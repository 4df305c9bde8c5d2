"""Invoicing and the entitlement service, over real gRPC and the real PostgreSQL: the
invoicing service in-process with its real EntitlementClient, against a small fake
EntitlementService servicer on a free port (GetCoverages answers what the test set,
RecordPurchasePaid records what it is told). The catalog and metering are the fakes of
tests/fakes.py.

* A metered price with a metered feature bills the coverage's billable quantity, one
  GetCoverages call per step, with the merchant's token; the line's provenance records
  the coverage; found=false bills metering's usage as before.
* IssueAdHocInvoice: idempotent by (purpose, reference), also when callers race (one
  invoice, one number: numbering stays gapless), listed, payable out of band; paid ->
  RecordPurchasePaid(invoice id) before the payment answers, and InvoiceChanged paid in
  the outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_events_pb2 as ev
from accrue.invoicing.v1 import invoicing_service_pb2 as svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc

from libs.core.errors import DomainError
from libs.infra import grpc_client
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.service import Runtime
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.invoicing import app
from services.invoicing.clients import EntitlementClient
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.server import InvoicingServicer
from services.invoicing.tests.fakes import FakeCatalog, FakeMeter, FakePayments, FakeSubscriptions
from services.invoicing.tests.integration.test_invoicing_store import _issue, _open
from services.invoicing.tests.unit.world import FEE, METERED, METRIC, MONTHS

pytestmark = pytest.mark.integration

A = "org_ent_a"
ENTITLED = dataclasses.replace(METERED, entitled=True)


class FakeEntitlementService(entitlement_service_pb2_grpc.EntitlementServiceServicer):
    """Coverage per (subscription, metric, from, to); every request and its authorization kept."""

    def __init__(self) -> None:
        self.coverages: dict[tuple[str, str, datetime, datetime], ent.Coverage] = {}
        self.coverage_calls: list[ent.GetCoveragesRequest] = []
        self.paid: list[ent.RecordPurchasePaidRequest] = []
        self.authorized: list[bool] = []

    def _saw(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.authorized.append(any(k == "authorization" and v.startswith("Bearer ") for k, v in context.invocation_metadata() or ()))

    async def GetCoverages(self, request: ent.GetCoveragesRequest, context: grpc.aio.ServicerContext[Any, Any]) -> ent.GetCoveragesResponse:
        self._saw(context)
        self.coverage_calls.append(request)
        answers = [
            self.coverages.get(
                (q.subscription_id, q.billable_metric_id, from_timestamp(q.from_time), from_timestamp(q.to_time)), ent.Coverage(found=False)
            )
            for q in request.queries
        ]
        return ent.GetCoveragesResponse(coverages=answers, usage_counted_until=to_timestamp(datetime(2999, 1, 1, tzinfo=UTC)))

    async def RecordPurchasePaid(self, request: ent.RecordPurchasePaidRequest, context: grpc.aio.ServicerContext[Any, Any]) -> ent.Grant:
        self._saw(context)
        self.paid.append(request)
        return ent.Grant(id="grant_paid")


@dataclasses.dataclass
class Service:
    stub: invoicing_service_pb2_grpc.InvoicingServiceStub
    meter: FakeMeter
    entitlements: FakeEntitlementService
    runtime: Runtime
    payments: FakePayments

    async def call(self, method: str, request: Any) -> Any:
        return await getattr(self.stub, method)(request, metadata=[merchant_metadata(A)])

    async def scalar(self, query: str) -> Any:
        async with self.runtime.db.engine.connect() as conn:
            return (await conn.execute(sa.text(query))).scalar()


@pytest.fixture
async def service(start_host: StartHost) -> AsyncIterator[Service]:
    fake = FakeEntitlementService()  # type: ignore[abstract]  # only the two RPCs invoicing calls
    server = grpc.aio.server()
    entitlement_service_pb2_grpc.add_EntitlementServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    meter = FakeMeter()
    payments = FakePayments()
    sources = Sources(FakeCatalog([FEE, ENTITLED]), meter, FakeSubscriptions(), EntitlementClient(f"127.0.0.1:{port}"), payments)

    def register(grpc_server: grpc.aio.Server, runtime: Runtime) -> None:
        servicer = InvoicingServicer(runtime.db, runtime.clock, sources, Policy(usage_wait_seconds=0.5))
        invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(servicer, grpc_server)

    host = await start_host(dataclasses.replace(app.DEFINITION, register=register, talks_to=()), outbox_relay_enabled=False)
    assert host.runtime is not None
    try:
        async with grpc_client.channel(f"127.0.0.1:{host.grpc_port}") as channel:
            yield Service(invoicing_service_pb2_grpc.InvoicingServiceStub(channel), meter, fake, host.runtime, payments)
    finally:
        await server.stop(None)


def _coverage(**values: Any) -> ent.Coverage:
    base: dict[str, Any] = {
        "found": True,
        "entitlement_id": "ent_tokens",
        "is_soft_limit": True,
        "usage_decimal": "1500",
        "covered_decimal": "1000",
        "billable_decimal": "500",
        "grants": [ent.GrantCoverage(grant_id="grant_allowance", covered_decimal="1000")],
    }
    base.update(values)
    return ent.Coverage(**base)


async def _issued_usage_line(service: Service, subscription_id: str) -> tuple[svc.Invoice, svc.InvoiceLineItem]:
    await service.call("OpenInvoice", _open(subscription_id, 1))
    issued = await service.call("IssueInvoice", _issue(subscription_id, 1))
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id, expand="lineItems,lineProvenance"))
    (usage,) = [li for li in got.line_items.line_items if li.event_type == "usage"]
    return got, usage


async def test_a_covered_line_bills_the_billable_quantity_and_records_the_coverage(service: Service) -> None:
    service.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1490")
    service.entitlements.coverages[("sub_cov", METRIC, MONTHS[0], MONTHS[1])] = _coverage()
    opened = await service.call("OpenInvoice", _open("sub_cov", 1))
    live = await service.call("GetInvoice", svc.GetInvoiceRequest(id=opened.id, expand="lineItems"))
    assert {li.invoice_display_name: li.quantity_decimal for li in live.line_items.line_items}["Tokens"] == "500"  # the estimate too
    calls_before = len(service.entitlements.coverage_calls)
    got, usage = await _issued_usage_line(service, "sub_cov")
    assert len(service.entitlements.coverage_calls) == calls_before + 1  # one call for the step
    (query,) = service.entitlements.coverage_calls[-1].queries
    assert (query.subscription_id, query.billable_metric_id) == ("sub_cov", METRIC)
    assert (from_timestamp(query.from_time), from_timestamp(query.to_time)) == (MONTHS[0], MONTHS[1])
    assert all(service.entitlements.authorized)  # called with the merchant's token
    assert (usage.quantity_decimal, usage.total_price, usage.total_tax) == ("500", "5.00", "0.50")  # 500 x 0.01, + 10 % tax
    assert got.grand_total == "59.40"  # (49.00 + 5.00) + 10 %
    recorded = struct_to_dict(usage.provenance)["recorded"]
    assert recorded["coverage"] == {
        "entitlementId": "ent_tokens",
        "usage": "1500",
        "covered": "1000",
        "billable": "500",
        "isSoftLimit": True,
        "grants": [{"grantId": "grant_allowance", "covered": "1000"}],
    }
    assert recorded["inputs"]["selector"]["value"] == "1500"  # the coverage's usage, not metering's 1490


async def test_found_false_bills_meterings_usage_as_before(service: Service) -> None:
    service.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "1490")
    got, usage = await _issued_usage_line(service, "sub_nocov")  # the fake answers found=false for it
    assert service.entitlements.coverage_calls  # asked
    assert (usage.quantity_decimal, usage.total_price) == ("1490", "14.90")
    assert "coverage" not in struct_to_dict(usage.provenance)["recorded"]
    assert got.grand_total == "70.29"  # (49.00 + 14.90) + 10 % (6.39)


def _ad_hoc(reference: str, amount: str = "12.345") -> svc.IssueAdHocInvoiceRequest:
    request = svc.IssueAdHocInvoiceRequest(
        customer_id="cus_1",
        currency="USD",
        lines=[svc.AdHocLine(description="Tokens: 5000 units", quantity_decimal="5000", amount_decimal=amount)],
        purpose="grant_purchase",
        reference=reference,
        subscription_id="sub_cov",
        effective_time=to_timestamp(MONTHS[2]),
        success_url="https://shop.example/ok",
        payment_expires_at=to_timestamp(MONTHS[3]),
    )
    request.metadata.update({"purchaseId": reference})
    return request


async def test_an_ad_hoc_invoice_is_idempotent_numbered_listed_and_payable(service: Service) -> None:
    answers = await asyncio.gather(*(service.call("IssueAdHocInvoice", _ad_hoc("gpur_race")) for _ in range(6)))
    assert len({a.id for a in answers}) == 1 and len({a.invoice_number for a in answers}) == 1
    first = answers[0]
    assert (first.status, first.purpose, first.subscription_id, first.grand_total) == ("ISSUED", "grant_purchase", "sub_cov", "12.35")
    assert first.invoice_number.startswith("INV-2026-")
    # its checkout, opened once (at issue) however many raced, for the purchase's expiry and URLs
    ((asked,),) = service.payments.calls
    assert (asked.entity_type, asked.entity_id, asked.amount, asked.expires_at) == ("topup", first.id, 1235 * 10**7, MONTHS[3])
    assert (asked.success_redirect_url, asked.failure_redirect_url, asked.save_payment_method) == ("https://shop.example/ok", None, False)
    assert asked.label == f"Purchase, invoice {first.invoice_number}"
    assert first.payment_url == service.payments.sessions[("topup", first.id)].url and first.payment_session_id.startswith("ps_")
    assert first.issued_at.ToDatetime() == MONTHS[2].replace(tzinfo=None) and first.due_at.ToDatetime() == MONTHS[2].replace(tzinfo=None)
    assert struct_to_dict(first.metadata) == {"purchaseId": "gpur_race"}
    again = await service.call("IssueAdHocInvoice", _ad_hoc("gpur_race", amount="99.00"))
    assert again.id == first.id and again.grand_total == "12.35"
    assert await service.scalar("SELECT count(*) FROM invoices WHERE reference = 'gpur_race'") == 1
    second = await service.call("IssueAdHocInvoice", _ad_hoc("gpur_next"))
    # one number taken per invoice, however many raced: gapless
    assert int(second.invoice_number.rsplit("-", 1)[1]) == int(first.invoice_number.rsplit("-", 1)[1]) + 1
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.issued'") == 2

    listed = await service.call("ListInvoices", svc.ListInvoicesRequest(customer_id="cus_1"))
    assert {i.id: i.purpose for i in listed.data} == {second.id: "grant_purchase", first.id: "grant_purchase"}
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=first.id, expand="lineItems"))
    (line,) = got.line_items.line_items
    assert (line.invoice_display_name, line.quantity_decimal, line.total_amount, line.total_tax) == (
        "Tokens: 5000 units",
        "5000",
        "12.35",
        "0.00",
    )

    paid = await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=first.id, method="out_of_band"))
    assert paid.invoice.status == "PAID" and paid.invoice.paid_amount == "12.35" and not paid.invoice.HasField("payment_url")
    (told,) = service.entitlements.paid
    assert told.invoice_id == first.id
    assert not told.HasField("paid_at")  # paid now: the customer's time (a test clock's) is the entitlement service's
    payload = await service.scalar("SELECT payload FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.paid'")
    event = ev.InvoiceChanged.FromString(payload)
    assert event.kind == ev.INVOICE_CHANGE_KIND_PAID and event.invoice.id == first.id and event.invoice.purpose == "grant_purchase"
    with pytest.raises(DomainError) as caught:
        await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=first.id, method="out_of_band"))
    assert caught.value.reason == "INVOICE_ALREADY_PAID" and len(service.entitlements.paid) == 1


async def test_a_bad_ad_hoc_request_names_its_field_and_writes_nothing(service: Service) -> None:
    bad = _ad_hoc("gpur_bad")
    bad.purpose = "subscription"
    with pytest.raises(DomainError) as caught:
        await service.call("IssueAdHocInvoice", bad)
    assert (caught.value.reason, caught.value.field) == ("INVALID_ENUM_VALUE", "purpose")
    assert await service.scalar("SELECT count(*) FROM invoices WHERE reference = 'gpur_bad'") == 0


async def test_the_timeline_key_is_a_partial_unique_index(service: Service) -> None:
    definition = await service.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_invoices_subscription_sequence'")
    assert "UNIQUE" in definition and "WHERE (purpose = 'subscription'::text)" in definition
    # an ad-hoc invoice of a subscription does not take its Invoice 0's key
    await service.call("IssueAdHocInvoice", _ad_hoc("gpur_key"))
    zero = await service.call("OpenInvoice", _open("sub_cov", 0))
    assert zero.status == "ACTIVE" and zero.purpose == "subscription"
