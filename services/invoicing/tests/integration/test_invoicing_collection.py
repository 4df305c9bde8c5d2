"""Invoicing and the payment service, over real gRPC and the real PostgreSQL: the invoicing
service in-process with its real PaymentClient, against a small fake PaymentService
servicer on a free port (OpenSessions, ChargeInvoice and RefundInvoice answer what the
test sets and record what they are asked). The catalog, metering and the subscription
service are the fakes of tests/fakes.py.

* Sessions: an IssueInvoices batch opens every checkout in one OpenSessions call, with
  the merchant's token, amounts as decimal strings; hosted_link renews one.
* retryPayment: concurrent retries get different attempt keys, one is charged and the
  other hears CONCURRENT_ATTEMPT (409) in the SDK's RetryPaymentResponse shape; the fake
  reports the outcome back (RecordChargeOutcome) while answering, as the payment service
  may, and nothing deadlocks; a decline is 402 with the decline.
* RecordChargeOutcome under concurrency records once and never un-pays.
* Refunds: concurrent refunds refund once; the credit note is listed and voidable; the
  carry row moves and comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, TypeAlias

import grpc
import pytest
import sqlalchemy as sa
from accrue.invoicing.v1 import invoicing_service_pb2 as svc
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.payment.v1 import payment_service_pb2 as pay
from accrue.payment.v1 import payment_service_pb2_grpc
from paygentic_sdk import errors as sdk_errors

from libs.core.errors import DomainError, ErrorCode, FailedPrecondition, http_status
from libs.infra import grpc_client
from libs.infra.grpc_errors import to_grpc_status
from libs.infra.service import Runtime
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.invoicing import app
from services.invoicing.clients import PaymentClient
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.server import InvoicingServicer
from services.invoicing.tests.fakes import FakeCatalog, FakeMeter, FakeSubscriptions
from services.invoicing.tests.integration.test_invoicing_store import _issue, _open
from services.invoicing.tests.unit.world import FEE, METERED, METRIC, MONTHS

pytestmark = pytest.mark.integration

A, B = "org_pay_a", "org_pay_b"
USD = 1_000_000_000

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class FakePaymentService(payment_service_pb2_grpc.PaymentServiceServicer):
    """Sessions per (entity type, entity id) (``replace`` renews); ChargeInvoice lets one
    attempt of an invoice be in flight (another: CONCURRENT_ATTEMPT), waits ``hold`` while
    it is, reports the outcome to invoicing (``report``) and answers ``outcome``;
    RefundInvoice records its request. Every request and whether it carried a token kept."""

    def __init__(self) -> None:
        self.session_calls: list[pay.OpenSessionsRequest] = []
        self.sessions: dict[tuple[str, str], pay.PaymentSession] = {}
        self.charges: list[pay.ChargeInvoiceRequest] = []
        self.refunds: list[pay.RefundInvoiceRequest] = []
        self.authorized: list[bool] = []
        self.in_flight: set[str] = set()
        self.hold: asyncio.Event | None = None
        self.outcome: Callable[[pay.ChargeInvoiceRequest], pay.ChargeOutcome] = lambda r: pay.ChargeOutcome(
            status="succeeded", attempt_key=r.attempt_key, provider_payment_ref="ch_" + r.attempt_key.rsplit(":", 1)[1]
        )
        self.report: Callable[[pay.ChargeInvoiceRequest, pay.ChargeOutcome, str], Any] | None = None
        # RefundInvoice: money back through the processor (a charge paid it) or not (out of band)
        self.refunded = True

    def _token(self, context: Context) -> str:
        found = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        self.authorized.append(bool(found) and str(found[0]).startswith("Bearer "))
        return str(found[0]) if found else ""

    async def OpenSessions(self, request: pay.OpenSessionsRequest, context: Context) -> pay.OpenSessionsResponse:
        self._token(context)
        self.session_calls.append(request)
        out = []
        for item in request.items:
            key = (item.entity_type, item.entity_id)
            if key not in self.sessions or item.replace:
                number = len(self.sessions) + 1
                self.sessions[key] = pay.PaymentSession(
                    id=f"ps_fake{number}", entity_type=item.entity_type, entity_id=item.entity_id, amount=item.amount,
                    currency=item.currency, status="pending", url=f"http://pay.example/checkout/m/ps_fake{number}",
                )  # fmt: skip
            out.append(self.sessions[key])
        return pay.OpenSessionsResponse(sessions=out)

    async def ChargeInvoice(self, request: pay.ChargeInvoiceRequest, context: Context) -> pay.ChargeOutcome:
        token = self._token(context)
        self.charges.append(request)
        if request.invoice_id in self.in_flight:  # as the payment service refuses it: a domain error
            refusal = FailedPrecondition("CONCURRENT_ATTEMPT", f"another attempt of {request.invoice_id} is in flight")
            await context.abort_with_status(to_grpc_status(refusal))
        self.in_flight.add(request.invoice_id)
        try:
            if self.hold is not None:
                await self.hold.wait()
            outcome = self.outcome(request)
            if self.report is not None:
                await self.report(request, outcome, token)
            return outcome
        finally:
            self.in_flight.discard(request.invoice_id)

    async def RefundInvoice(self, request: pay.RefundInvoiceRequest, context: Context) -> pay.RefundInvoiceResponse:
        self._token(context)
        self.refunds.append(request)
        if not self.refunded:
            return pay.RefundInvoiceResponse(refunded=False, status="succeeded")
        return pay.RefundInvoiceResponse(refunded=True, provider_refund_ref="re_" + request.credit_note_id, status="succeeded")


@dataclasses.dataclass
class Service:
    stub: invoicing_service_pb2_grpc.InvoicingServiceStub
    payment: FakePaymentService
    meter: FakeMeter
    subscriptions: FakeSubscriptions
    runtime: Runtime

    async def call(self, method: str, request: Any, merchant: str = A) -> Any:
        return await getattr(self.stub, method)(request, metadata=[merchant_metadata(merchant)])

    async def scalar(self, query: str) -> Any:
        async with self.runtime.db.engine.connect() as conn:
            return (await conn.execute(sa.text(query))).scalar()


@pytest.fixture
async def service(start_host: StartHost) -> AsyncIterator[Service]:
    fake = FakePaymentService()  # type: ignore[abstract]  # only the three RPCs invoicing calls
    server = grpc.aio.server()
    payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    meter, subscriptions = FakeMeter(), FakeSubscriptions()
    sources = Sources(FakeCatalog([FEE, METERED]), meter, subscriptions, payments=PaymentClient(f"127.0.0.1:{port}"))

    def register(grpc_server: grpc.aio.Server, runtime: Runtime) -> None:
        servicer = InvoicingServicer(runtime.db, runtime.clock, sources, Policy(usage_wait_seconds=0.5))
        invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(servicer, grpc_server)

    host = await start_host(dataclasses.replace(app.DEFINITION, register=register, talks_to=()), outbox_relay_enabled=False)
    assert host.runtime is not None
    try:
        async with grpc_client.channel(f"127.0.0.1:{host.grpc_port}") as channel:
            yield Service(invoicing_service_pb2_grpc.InvoicingServiceStub(channel), fake, meter, subscriptions, host.runtime)
    finally:
        await server.stop(None)


async def _issued(service: Service, subscription_id: str, k: int = 1) -> svc.Invoice:
    await service.call("OpenInvoice", _open(subscription_id, k))
    invoice: svc.Invoice = await service.call("IssueInvoice", _issue(subscription_id, k))
    return invoice


def _body(err: DomainError) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.metadata["body"])
    return body


# --- sessions ------------------------------------------------------------------------------


async def test_a_batch_opens_every_checkout_in_one_call(service: Service) -> None:
    subs = [f"sub_b{i}" for i in range(3)]
    for s in subs:
        await service.call("OpenInvoice", _open(s, 0))
    answer = await service.call("IssueInvoices", svc.IssueInvoicesRequest(items=[_issue(s, 0) for s in subs]))
    issued = [r.invoice for r in answer.results]
    assert [i.status for i in issued] == ["ISSUED"] * 3
    (call,) = service.payment.session_calls
    assert all(service.payment.authorized)  # with the merchant's token
    assert [(item.entity_type, item.entity_id, item.amount, item.currency) for item in call.items] == [
        ("subscription", i.id, "53.90", "USD") for i in issued
    ]
    item = call.items[0]
    assert [(line.description, line.amount, line.quantity) for line in item.lines] == [("Base fee", "49.00", "1"), ("Tax", "4.90", "1")]
    assert item.entity_label == f"Invoice {issued[0].invoice_number}" and item.subscription_id == subs[0]
    assert item.HasField("expires_at") and not item.replace
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued[0].id))
    session = service.payment.sessions[("subscription", issued[0].id)]
    assert (got.payment_url, got.payment_session_id) == (session.url, session.id) == (issued[0].payment_url, issued[0].payment_session_id)
    assert await service.scalar(f"SELECT payment_url FROM invoices WHERE id = '{issued[0].id}'") == session.url


async def test_hosted_link_answers_a_fresh_session(service: Service) -> None:
    issued = await _issued(service, "sub_link")
    linked = await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=issued.id, method="hosted_link"))
    assert (linked.method, linked.provider) == ("hosted_link", "sandbox")
    assert linked.payment_session_id != issued.payment_session_id
    assert linked.invoice.payment_url == linked.payment_url and linked.invoice.status == "ISSUED"
    assert service.payment.session_calls[-1].items[0].replace
    with pytest.raises(DomainError) as other:
        await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=issued.id, method="hosted_link"), merchant=B)
    assert other.value.code is ErrorCode.NOT_FOUND


# --- retryPayment --------------------------------------------------------------------------


async def test_concurrent_retries_charge_once_and_the_other_hears_a_concurrent_attempt(service: Service) -> None:
    issued = await _issued(service, "sub_retry")
    service.payment.hold = asyncio.Event()

    async def report(request: pay.ChargeInvoiceRequest, outcome: pay.ChargeOutcome, token: str) -> None:
        # the payment service reports the outcome to invoicing while answering the charge
        await service.stub.RecordChargeOutcome(
            svc.RecordChargeOutcomeRequest(
                invoice_id=request.invoice_id, status=outcome.status, attempt_key=request.attempt_key, amount=request.amount,
                provider_payment_ref=outcome.provider_payment_ref,
            ),
            metadata=[("authorization", token)],
        )  # fmt: skip

    service.payment.report = report
    first = asyncio.create_task(service.call("RetryInvoicePayment", svc.RetryInvoicePaymentRequest(id=issued.id)))
    while not service.payment.in_flight:
        await asyncio.sleep(0.01)
    with pytest.raises(FailedPrecondition) as concurrent:
        await service.call("RetryInvoicePayment", svc.RetryInvoicePaymentRequest(id=issued.id))
    service.payment.hold.set()
    paid = await first
    assert (paid.object, paid.success, paid.invoice_id, paid.payment_intent_id, paid.processing) == (
        "retry_payment_result", True, issued.id, "ch_1", False,
    )  # fmt: skip
    assert [c.attempt_key for c in service.payment.charges] == [f"{issued.id}:retry:1", f"{issued.id}:retry:2"]
    assert (service.payment.charges[0].amount, service.payment.charges[0].trigger) == ("53.90", "manual")
    err = concurrent.value
    assert (err.reason, http_status(err.code, err.reason)) == ("CONCURRENT_ATTEMPT", 409)
    parsed = sdk_errors.RetryPaymentResponseErrorData.model_validate(_body(err))
    assert parsed.success is False and parsed.error is not None and parsed.error.code == "concurrent_attempt"
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id))
    assert (got.status, got.paid_amount) == ("PAID", "53.90")
    assert await service.scalar(f"SELECT retry_attempts FROM invoices WHERE id = '{issued.id}'") == 2
    assert await service.scalar(f"SELECT count(*) FROM charge_outcomes WHERE invoice_id = '{issued.id}'") == 1  # reported twice, kept once
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.paid'") == 1
    # a retry of the paid invoice answers the charge that paid it (200) and charges nothing
    again = await service.call("RetryInvoicePayment", svc.RetryInvoicePaymentRequest(id=issued.id))
    assert (again.success, again.payment_intent_id, again.processing) == (True, "ch_1", False)
    assert len(service.payment.charges) == 2


async def test_a_declined_retry_is_402_with_the_decline_and_fails_the_invoice(service: Service) -> None:
    issued = await _issued(service, "sub_decline")
    service.payment.outcome = lambda r: pay.ChargeOutcome(
        status="failed", attempt_key=r.attempt_key, provider_payment_ref="ch_d", failure_code="card_declined",
        failure_message="Your card was declined.", decline_code="generic_decline",
    )  # fmt: skip
    with pytest.raises(DomainError) as caught:
        await service.call("RetryInvoicePayment", svc.RetryInvoicePaymentRequest(id=issued.id))
    err = caught.value
    assert (err.reason, http_status(err.code, err.reason)) == ("PAYMENT_DECLINED", 402)
    parsed = sdk_errors.RetryPaymentResponseErrorData.model_validate(_body(err))
    assert (parsed.invoice_id, parsed.payment_intent_id) == (issued.id, "ch_d")
    assert parsed.error is not None and (parsed.error.code, parsed.error.decline_code) == ("card_declined", "generic_decline")
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id))
    assert (got.status, got.failure_reason, got.payment_url) == ("PAYMENT_FAILED", "card_declined", issued.payment_url)
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.payment_failed'") == 1
    service.payment.outcome = lambda r: pay.ChargeOutcome(status="processing", attempt_key=r.attempt_key)
    processing = await service.call("RetryInvoicePayment", svc.RetryInvoicePaymentRequest(id=issued.id))
    assert (processing.processing, processing.success, processing.error.code) == (True, False, "processing")


# --- RecordChargeOutcome -------------------------------------------------------------------


async def test_concurrent_reports_of_an_outcome_record_it_once_and_never_unpay(service: Service) -> None:
    zero = await _issued(service, "sub_outcome", k=0)
    request = svc.RecordChargeOutcomeRequest(invoice_id=zero.id, status="succeeded", attempt_key="ps_x:0", amount="53.90")
    answers = await asyncio.gather(*(service.call("RecordChargeOutcome", request) for _ in range(6)))
    assert {a.status for a in answers} == {"PAID"}
    assert service.subscriptions.paid == [("sub_outcome", zero.id, 0)]  # Invoice 0 activated once
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.paid'") == 1
    late = svc.RecordChargeOutcomeRequest(
        invoice_id=zero.id, status="failed", attempt_key=f"{zero.id}:auto:0", failure_code="card_declined"
    )
    after = await service.call("RecordChargeOutcome", late)
    assert (after.status, after.paid_amount, after.HasField("failure_reason")) == ("PAID", "53.90", False)
    with pytest.raises(DomainError) as other:
        await service.call("RecordChargeOutcome", request, merchant=B)
    assert other.value.code is ErrorCode.NOT_FOUND


# --- refunds -------------------------------------------------------------------------------


async def test_a_refund_happens_once_is_listed_voided_and_the_carry_comes_back(service: Service) -> None:
    service.meter.set(METRIC, "cus_1", MONTHS[0], MONTHS[1], "0.4")  # a sub-cent usage: a carry row with a fraction
    issued = await _issued(service, "sub_refund")
    await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=issued.id, method="out_of_band"))
    service.payment.refunded = False  # paid out of band: no processor refund, the credit note is voidable
    carry = "SELECT exact_total, billed_total FROM customer_carry WHERE customer_id = 'cus_1'"
    async with service.runtime.db.engine.connect() as conn:
        before = tuple((await conn.execute(sa.text(carry))).one())
    results = await asyncio.gather(
        *(service.call("CreateInvoiceRefund", svc.CreateInvoiceRefundRequest(id=issued.id, reason="asked")) for _ in range(4)),
        return_exceptions=True,
    )
    refunds = [r for r in results if isinstance(r, svc.InvoiceRefund)]
    refused = [r for r in results if isinstance(r, DomainError)]
    assert len(refunds) == 1 and {e.reason for e in refused} == {"INVOICE_ALREADY_REFUNDED"} and len(refused) == 3
    (refund,) = refunds
    assert (refund.object, refund.status, refund.amount, refund.tax_amount, refund.total) == (
        "invoice_refund",
        "ISSUED",
        "49.00",
        "4.90",
        "53.90",
    )
    assert refund.id.startswith("crn_") and not refund.HasField("provider_refund_ref")
    (asked,) = service.payment.refunds
    assert (asked.invoice_id, asked.credit_note_id, asked.amount, asked.currency, asked.reason) == (
        issued.id,
        refund.id,
        "53.90",
        "USD",
        "asked",
    )
    async with service.runtime.db.engine.connect() as conn:
        during = tuple((await conn.execute(sa.text(carry))).one())
    assert during == (before[0] - Decimal(49 * USD), before[1] - Decimal(49 * USD))
    listed = await service.call("ListInvoiceRefunds", svc.ListInvoiceRefundsRequest(id=issued.id))
    assert [r.id for r in listed.data] == [refund.id]
    voided = await service.call("VoidInvoiceRefund", svc.VoidInvoiceRefundRequest(id=issued.id, refund_id=refund.id))
    again = await service.call("VoidInvoiceRefund", svc.VoidInvoiceRefundRequest(id=issued.id, refund_id=refund.id))
    assert voided.status == again.status == "VOIDED" and voided.voided_at == again.voided_at
    async with service.runtime.db.engine.connect() as conn:
        assert tuple((await conn.execute(sa.text(carry))).one()) == before
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id))
    assert got.status == "PAID"
    for subject, count in (("refunded", 1), ("refund_voided", 1)):
        assert await service.scalar(f"SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.{subject}'") == count
    index = await service.scalar("SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_credit_notes_issued_refund'")
    assert "UNIQUE" in index and "status = 'ISSUED'" in index
    with pytest.raises(DomainError) as other:
        await service.call("ListInvoiceRefunds", svc.ListInvoiceRefundsRequest(id=issued.id), merchant=B)
    assert other.value.code is ErrorCode.NOT_FOUND


async def test_a_charge_that_paid_is_named_and_its_refund_cannot_be_voided(service: Service) -> None:
    """paid_by_attempt_key is stored (the payment service compares it with a late charge's
    key); a refund whose money went back through the processor is not voidable
    (REFUND_SETTLED, 409, naming refundId), and a second refund stays
    INVOICE_ALREADY_REFUNDED."""
    issued = await _issued(service, "sub_settled")
    key = f"{issued.id}:auto:0"
    outcome = svc.RecordChargeOutcomeRequest(invoice_id=issued.id, status="succeeded", attempt_key=key, amount="53.90")
    paid = await service.call("RecordChargeOutcome", outcome)
    assert (paid.status, paid.paid_by_attempt_key) == ("PAID", key)
    assert await service.scalar(f"SELECT paid_by_attempt_key FROM invoices WHERE id = '{issued.id}'") == key
    late = svc.RecordChargeOutcomeRequest(invoice_id=issued.id, status="succeeded", attempt_key=f"{issued.id}:retry:1", amount="53.90")
    assert (await service.call("RecordChargeOutcome", late)).paid_by_attempt_key == key  # a duplicate sees another key
    got = await service.call("GetInvoice", svc.GetInvoiceRequest(id=issued.id))
    assert got.paid_by_attempt_key == key and not got.HasField("payment_in_flight")

    refund = await service.call("CreateInvoiceRefund", svc.CreateInvoiceRefundRequest(id=issued.id))
    assert refund.provider_refund_ref == "re_" + refund.id
    with pytest.raises(DomainError) as refused:
        await service.call("VoidInvoiceRefund", svc.VoidInvoiceRefundRequest(id=issued.id, refund_id=refund.id))
    err = refused.value
    assert (err.reason, http_status(err.code, err.reason), err.field) == ("REFUND_SETTLED", 409, "refundId")
    assert "would not bring it back" in err.message
    listed = await service.call("ListInvoiceRefunds", svc.ListInvoiceRefundsRequest(id=issued.id))
    assert [(r.id, r.status) for r in listed.data] == [(refund.id, "ISSUED")]
    with pytest.raises(DomainError) as twice:
        await service.call("CreateInvoiceRefund", svc.CreateInvoiceRefundRequest(id=issued.id))
    assert (twice.value.reason, http_status(twice.value.code, twice.value.reason)) == ("INVOICE_ALREADY_REFUNDED", 409)
    assert len(service.payment.refunds) == 1
    assert await service.scalar("SELECT count(*) FROM outbox WHERE subject = 'accrue.invoicing.v1.invoice.refund_voided'") == 0


async def test_an_out_of_band_payment_is_stored_with_no_attempt(service: Service) -> None:
    issued = await _issued(service, "sub_oob")
    answer = await service.call("RecordInvoicePayment", svc.RecordInvoicePaymentRequest(id=issued.id, method="out_of_band"))
    assert answer.invoice.status == "PAID" and not answer.invoice.HasField("paid_by_attempt_key")
    late = svc.RecordChargeOutcomeRequest(invoice_id=issued.id, status="succeeded", attempt_key=f"{issued.id}:auto:0", amount="53.90")
    after = await service.call("RecordChargeOutcome", late)
    assert after.status == "PAID" and not after.HasField("paid_by_attempt_key")  # the late charge is the duplicate
    assert await service.scalar(f"SELECT paid_by_attempt_key FROM invoices WHERE id = '{issued.id}'") is None
